"""Nova SDS011 particulate sensor on a UART (REFERENCE.md §3).

The shape is the frame-sensor base (firmware/drivers/uart_pm.py, UartPmDriver: warm-up,
silence and garbled-frame faults, counters, commands); this module only speaks SDS011: modes
"active" (a report every second) and "query" (QUERY_DATA every poll_ms), sleep and work through
the 19-byte SLEEP_WORK command, each acknowledged by a C5 reply.

PM values keep the sensor's tenths exactly: the published value is tenths / 10, and the profile's
streams carry dec 1, so the batch encoder's round(v * 10) gives back the sensor's integer.
Device key sensor_id (default FFFF: whichever sensor is on the line) addresses the commands.
"""

from firmware.drivers.uart_pm import _ITEM_ACK, _ITEM_ERROR, _ITEM_READING, UartPmDriver
from protocols import sds011


class Sds011Driver(UartPmDriver):
    POLLED_MODE = "query"
    NAME = "SDS011"
    WAKE_NEEDS_ACK = True  # the sensor replies to every set command

    def __init__(self, device_cfg, profile, node):
        self._sensor_id = int(device_cfg.get("sensor_id", sds011.ALL_DEVICES))
        UartPmDriver.__init__(self, device_cfg, profile, node)

    def _new_parser(self):
        return sds011.Sds011Parser()

    def _classify(self, item):
        if isinstance(item, sds011.Sds011Reading):
            return _ITEM_READING
        if isinstance(item, sds011.Sds011Reply):
            return _ITEM_ACK
        return _ITEM_ERROR

    def _cmd_mode(self, mode):
        return sds011.cmd_set_reporting_mode(
            sds011.MODE_QUERY if mode == "query" else sds011.MODE_ACTIVE, self._sensor_id)

    def _cmd_poll(self):
        return sds011.cmd_query_data(self._sensor_id)

    def _cmd_sleep(self):
        return sds011.cmd_sleep(self._sensor_id)

    def _cmd_wake(self):
        return sds011.cmd_work(self._sensor_id)

    def _ack_is(self, item, op, arg):
        if not item.is_set:
            return False
        if op == "mode":
            return item.command == sds011.REPORTING_MODE and item.value == (
                sds011.MODE_QUERY if arg == "query" else sds011.MODE_ACTIVE)
        return item.command == sds011.SLEEP_WORK and item.value == (
            sds011.STATE_SLEEP if op == "sleep" else sds011.STATE_WORK)
