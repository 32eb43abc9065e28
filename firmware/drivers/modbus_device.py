"""ModbusDevice, what every Modbus driver shares (firmware/drivers/modbus_sensor.py,
loop_card.py, signal_controller.py): unit and timing from the profile and the device config, the
bus's master (one per bus, shared through NodeContext.modbus), poll pacing, the "<device>/poll"
health stream.

Device config keys (boards.toml): bus, address, poll_ms; optional timeout_ms, retries,
offline_after, backoff_ms, backoff_max_ms (else the profile's, else modbus_master's defaults) and
fault_repeat_ms (how often an unchanged fault is repeated on the poll stream; default 10 s).
"""

import asyncio

from firmware.modbus_master import ModbusMaster, fault_of
from firmware.register_entry import RegisterError, check_entry
from protocols.modbus_adu import ANY_ADDRESS, MAX_UNIT

_TUNING = ("timeout_ms", "retries", "offline_after", "backoff_ms", "backoff_max_ms")


class ModbusDevice:
    """Base of the Modbus drivers. Subclasses implement `async def poll(self)`; `ready` is False
    when the config left the driver nothing to do (the reason is a config error)."""

    DEFAULT_POLL_MS = 1000
    POLL_STREAM = False  # declare "<device id>/poll"

    def __init__(self, device, profile, node):
        self.node = node
        self.hal = node.hal
        # Not kept: the device and profile dicts (the register list is most of a node's config,
        # and nothing reads it after start); a subclass keeps what it needs.
        self.id = device["id"]
        self.counters = {"polls": 0, "poll_faults": 0}
        self.last_fault = None
        self.ready = False
        self.master = None
        self.poll_ms = int(device.get("poll_ms", profile.get("poll_ms", self.DEFAULT_POLL_MS)))
        self.unit = device.get("address")
        self.any_address = bool(profile.get("any_address")) and self.unit == ANY_ADDRESS
        self._poll_sid = None
        self._poll_fault = None  # fault code last published on the poll stream (0: up)
        self._poll_fault_at = 0
        if not isinstance(self.unit, int) or not (1 <= self.unit <= MAX_UNIT or self.any_address):
            self.config_error("address", "must be 1..247 (254 only when the profile sets any_address)")
            return
        try:
            self.master = node.modbus(device.get("bus"), ModbusMaster)
        except KeyError:
            self.config_error("bus", "%r is not a bus of this board" % (device.get("bus"),))
            return
        tuning = {}
        for key in _TUNING:
            value = device.get(key, profile.get(key))
            if value is not None:
                tuning[key] = value
        # The master's per-unit counters are this driver's: HEALTH shows one dict per device.
        unit_counters = self.master.configure(self.unit, turnaround_ms=profile.get("turnaround_ms", 0),
                                              **tuning)
        unit_counters.update(self.counters)
        self.counters = unit_counters
        if self.POLL_STREAM:
            self._poll_sid = node.streams.add("%s/poll" % self.id, unit="", kind="status", dec=0)
        self.repeat_ms = max(self.poll_ms, int(device.get("fault_repeat_ms", 10000)))
        self.ready = True

    def config_error(self, key, reason):
        self.node.config_error("devices.%s.%s" % (self.id, key), reason)

    def stream(self, quantity, entry):
        return self.node.streams.add("%s/%s" % (self.id, quantity), unit=entry.get("unit", ""),
                                     kind=entry.get("kind", "gauge"), dec=entry.get("dec"))

    def checked(self, entries):
        """The entries decode() can use; the others become config errors."""
        good = []
        for entry in entries:
            try:
                good.append(check_entry(entry))
            except RegisterError as exc:
                self.config_error("registers", str(exc))
        return good

    def read(self, plan):
        """The master's read_plan coroutine for `plan` at this unit (await it): returned, not
        awaited here, so a poll allocates one coroutine frame fewer."""
        return self.master.read_plan(self.unit, plan, any_address=self.any_address)

    def poll_failed(self, result, tick_ms):
        """Count a failed poll, keep its one-sentence reason, publish it on the poll stream."""
        fault, detail = fault_of(result)
        self.counters["poll_faults"] += 1
        self.last_fault = "%s: %s" % (self.id, result)
        if self._poll_sid is None:
            return
        # On a change of fault, then at most every repeat_ms: a 100 ms poll must not flood the
        # outbox with the same news.
        since = self.hal.ticks_diff(tick_ms, self._poll_fault_at)
        if fault != self._poll_fault or since >= self.repeat_ms:
            self.node.sample(self._poll_sid, None, fault, detail, tick_ms)
            self._poll_fault = fault
            self._poll_fault_at = tick_ms

    def poll_ok(self, tick_ms):
        if self._poll_sid is not None and self._poll_fault != 0:
            self.node.sample(self._poll_sid, 1, 0, 0, tick_ms)
            self._poll_fault = 0
            self._poll_fault_at = tick_ms

    def next_delay_ms(self, due):
        """Milliseconds until the next poll (subclasses may poll earlier, e.g. at a boundary)."""
        return self.hal.ticks_diff(due, self.hal.ticks_ms())

    async def run(self):
        if not self.ready:
            return
        hal = self.hal
        due = hal.ticks_ms()
        while True:
            self.counters["polls"] += 1
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - a bad reply or a driver bug: count, go on
                self.counters["poll_faults"] += 1
                self.last_fault = "%s: poll failed (%s: %s)" % (self.id, type(exc).__name__, exc)
                print("[%s] %s" % (self.id, self.last_fault))
            now = hal.ticks_ms()
            if hal.ticks_diff(now, due) >= 0:  # the scheduled poll, not an early one
                due = hal.ticks_add(due, self.poll_ms)
                if hal.ticks_diff(due, now) < 0:
                    due = now  # overran: poll again now, never in a burst to catch up
            await asyncio.sleep(max(0, self.next_delay_ms(due)) / 1000)
