"""Plantower PMS5003 particulate sensor on a UART (REFERENCE.md §2): the PMS5003 hooks of the
frame-sensor driver base (firmware/drivers/uart_pm.py, UartPmDriver: warm-up, silence and
garbled-frame faults, counters, commands). Modes "active" / "passive"; sleep and wake through the
SET pin and/or the E4 command.
"""

from firmware.drivers.uart_pm import _ITEM_ACK, _ITEM_ERROR, _ITEM_READING, UartPmDriver
from protocols import pms5003


class Pms5003Driver(UartPmDriver):
    """PMS5003: modes "active" / "passive"; sleep and wake through SET and/or the E4 command."""

    POLLED_MODE = "passive"
    NAME = "PMS5003"

    def _new_parser(self):
        return pms5003.Pms5003Parser()

    def _classify(self, item):
        if isinstance(item, pms5003.Pms5003Reading):
            return _ITEM_READING
        if isinstance(item, pms5003.Pms5003Ack):
            return _ITEM_ACK
        return _ITEM_ERROR

    def _cmd_mode(self, mode):
        return pms5003.cmd_passive_mode() if mode == "passive" else pms5003.cmd_active_mode()

    def _cmd_poll(self):
        return pms5003.cmd_passive_read()

    def _cmd_sleep(self):
        return pms5003.cmd_sleep()

    def _cmd_wake(self):
        return pms5003.cmd_wake()

    def _ack_is(self, item, op, arg):
        if op == "mode":
            want = (pms5003.CMD_MODE, pms5003.MODE_PASSIVE if arg == "passive" else pms5003.MODE_ACTIVE)
        else:
            want = (pms5003.CMD_SLEEP, 0 if op == "sleep" else 1)
        return item.command == want[0] and item.data == want[1]
