"""A loop detector card read over Modbus (profiles/loop-card-modbus.json): per-channel presence
bitmap → detector on/off events, per-channel vehicle counters → volume per interval.

Register roles: "channel_bitmap" (presence, bit k = channel k + 1; required),
"channel_fault_bitmap" (loop open/short per channel; optional), "channel_counter" (one counter per
channel, "channels" of them; optional). Device config: "detector" lists the detector channel
number of each card channel (the Indiana event parameter; default 1..channels), "interval_s"
overrides the node's interval, besides ModbusDevice's keys.

Events: 82 (detector on) / 81 (detector off) with the channel's detector number, stamped with the
poll that saw the change (poll_ms 100 gives 0.1 s). The first good poll only establishes state; a
failed poll emits nothing and the next good one reports what changed since. A channel whose fault
bit is set is treated as off.

Volume "<device id>/<channel>/volume": counter increments between the reads at two interval
boundaries (gateway-aligned through node.clock), published at the boundary. A counter wraps at
2**16 (u16) or 2**32 (u32): deltas are taken modulo that; a delta above half of it is a counter
reset (a card reboot) and the interval is FAULT_OUT_OF_RANGE. The counters are cumulative, so a
poll lost inside an interval loses nothing; a lost boundary read makes both intervals it separates
unknowable, and both carry the fault. So does the first interval after boot (it began unseen), and
a channel faulted during the interval (FAULT_SENSOR).
"""

from firmware.drivers.modbus_device import ModbusDevice
from firmware.modbus_master import failed, fault_of, profile_plan
from firmware.register_decode import decode_channels, type_words
from protocols.quality_codes import (
    EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON, FAULT_OUT_OF_RANGE, FAULT_SENSOR, FAULT_UNAVAILABLE)


def _by_role(entries, role):
    for entry in entries:
        if entry.get("role") == role:
            return entry
    return None


class LoopCardDriver(ModbusDevice):
    DEFAULT_POLL_MS = 100
    POLL_STREAM = True

    def __init__(self, device, profile, node):
        ModbusDevice.__init__(self, device, profile, node)
        self.counters["events"] = 0
        if not self.ready:
            return
        entries = self.checked(profile.get("registers", ()))
        presence = _by_role(entries, "channel_bitmap")
        self._fault_entry = _by_role(entries, "channel_fault_bitmap")
        self._counter = _by_role(entries, "channel_counter")
        n = int(profile.get("channels", 8))
        detectors = device.get("detector")
        if detectors is None:
            detectors = list(range(1, n + 1))
        if presence is None:
            self.config_error("profile", "%s has no channel_bitmap register" % profile.get("profile"))
        elif not isinstance(detectors, list) or len(detectors) != n:
            self.config_error("detector", "must list one detector number for each of the card's "
                                          "%d channels" % n)
        else:
            self._setup(device, profile, node, presence, detectors, n)
            return
        self.ready = False

    def _setup(self, device, profile, node, presence, detectors, n):
        self.channels = n
        self.detectors = detectors
        self._mask = (1 << n) - 1
        wanted = [presence]
        if self._fault_entry is not None:
            wanted.append(self._fault_entry)
        self._sids = []
        if self._counter is not None:
            wanted.append(self._counter)
            if self._counter.get("channels", 1) != n:
                self.config_error("registers", "%s counts %d channels, the card has %d"
                                  % (self._counter.get("name"), self._counter.get("channels", 1), n))
            spec = {"unit": self._counter.get("unit", "veh"), "kind": self._counter.get("kind", "count"),
                    "dec": 0}
            for k in range(1, n + 1):
                self._sids.append(self.stream("%d/volume" % k, spec))
            self._wrap = 1 << (16 * type_words(self._counter))
        self._plan = profile_plan(profile, wanted)
        self.interval_ms = int(float(device.get("interval_s", node.config.get("interval_s", 30))) * 1000)
        self._presence = None  # last good (presence & ~faulted)
        self._bad = 0  # channels faulted at the last good read
        self._boundary = None  # tick of the next interval boundary
        self._last = None  # counters at the last good read
        self._acc = [0] * n
        self._valid = False  # the interval's start (a boundary read) is known
        self._start_fault = FAULT_UNAVAILABLE
        self._chfault = 0  # channels faulted during the interval
        self._reset = 0  # channels whose counter went backwards during the interval

    def next_delay_ms(self, due):
        hal = self.hal
        now = hal.ticks_ms()
        delay = hal.ticks_diff(due, now)
        if self._boundary is not None:
            delay = min(delay, hal.ticks_diff(self._boundary, now))
        return delay

    def _next_boundary(self, tick):
        return self.hal.ticks_add(tick, self.node.clock.ms_to_boundary(self.interval_ms, tick))

    async def poll(self):
        results = await self.read(self._plan)
        hal = self.hal
        tick = hal.ticks_ms()
        if self._boundary is None:
            self._boundary = self._next_boundary(tick)
        closing = hal.ticks_diff(tick, self._boundary) >= 0
        i = 1
        faults = None
        if self._fault_entry is not None:
            faults = results[i]
            i += 1
        self._presence_update(results[0], faults, tick)
        if self._counter is not None:
            counts = results[i]
            if not failed(counts):
                self._count(decode_channels(self._counter, counts))
            if closing:
                self._close(None if not failed(counts) else counts)
        if closing:
            self._boundary = self._next_boundary(tick)
        for got in results:
            if failed(got):
                self.poll_failed(got, tick)
                return
        self.poll_ok(tick)

    def _presence_update(self, presence, faults, tick):
        if failed(presence):
            return
        if faults is not None and not failed(faults):
            self._bad = faults[0] & self._mask
        self._chfault |= self._bad
        on = presence[0] & self._mask & ~self._bad
        prev = self._presence
        self._presence = on
        if prev is None:
            return
        changed = on ^ prev
        k = 0
        while changed:
            if changed & 1:
                code = EVENT_DETECTOR_ON if on & (1 << k) else EVENT_DETECTOR_OFF
                self.node.event(code, self.detectors[k], tick)
                self.counters["events"] += 1
            changed >>= 1
            k += 1

    def _count(self, values):
        last = self._last
        self._last = values
        if last is None:
            return
        wrap = self._wrap
        for k in range(self.channels):
            delta = (values[k] - last[k]) % wrap
            if delta >= wrap // 2:
                self._reset |= 1 << k
            else:
                self._acc[k] += delta

    def _close(self, err):
        """The interval ends at self._boundary: one volume sample per channel."""
        at = self._boundary
        for k in range(self.channels):
            value = None
            detail = 0
            if err is not None:
                fault, detail = fault_of(err)
            elif not self._valid:
                fault = self._start_fault
            elif self._chfault & (1 << k):
                fault = FAULT_SENSOR
            elif self._reset & (1 << k):
                fault = FAULT_OUT_OF_RANGE
            else:
                fault = 0
                value = self._acc[k]
            self.node.sample(self._sids[k], value, fault, detail, at)
            self._acc[k] = 0
        self._valid = err is None
        self._start_fault = fault_of(err)[0] if err is not None else 0
        self._chfault = self._bad
        self._reset = 0
