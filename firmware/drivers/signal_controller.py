"""A signal controller's NTCIP 1202 phase status bitmaps over Modbus → Indiana hi-res events.

Each poll reads the profile's preempt bitmap (role "preempt_bitmap") and then every phase bitmap
register (role "phase_bitmap": reds, yellows, greens, dont_walks, ped_clears, walks, ...), merged by
the read planner into as few requests as the register map allows, and hands the maps to firmware/phase_events.PhaseEventDetector,
whose events go out through the node with the poll's time (poll_ms 100 gives the 0.1 s resolution
ATSPM expects; REFERENCE.md §6).

The poll's time is when the phase reply began (the controller sampled its state no later than
that), never earlier than the state it reports: a stamp taken at the request could precede a change
the reply already shows. A change is thus stamped up to a poll period after it happened, and the
gateway's event window counts from that stamp: the poll period is part of a phase event's latency.

A poll that fails (any phase map unread) emits no events: the detector keeps its last good state,
so the next good poll reports what changed since. The failure is counted and published on the
"<device id>/poll" stream (a fault sample on each change of fault, then at most every
fault_repeat_ms), so the gateway sees the controller is down; the stream carries 1 again on the
first good poll after. A preempt map that cannot be read (e.g. exception 02 from a controller
without one) only stops preempt tracking for that poll.

Device config: max_red_clear_ms (default 6000: see PhaseEventDetector) besides ModbusDevice's.
"""

from firmware.drivers.modbus_device import ModbusDevice
from firmware.modbus_master import failed, fault_of, profile_plan
from protocols.quality_codes import FAULT_TIMEOUT, FAULT_UNAVAILABLE
from firmware.phase_events import PhaseEventDetector

_SILENT = (FAULT_TIMEOUT, FAULT_UNAVAILABLE)
_REQUIRED = ("greens", "yellows", "reds", "walks", "ped_clears", "dont_walks")


class SignalControllerDriver(ModbusDevice):
    DEFAULT_POLL_MS = 100
    POLL_STREAM = True

    def __init__(self, device, profile, node):
        ModbusDevice.__init__(self, device, profile, node)
        self.counters["events"] = 0
        if not self.ready:
            return
        entries = []
        self._names = []
        preempt = []
        for entry in self.checked(profile.get("registers", ())):
            role = entry.get("role")
            if role == "phase_bitmap":
                self._names.append(entry["name"])
                entries.append(entry)
            elif role == "preempt_bitmap":
                preempt.append(entry)
        missing = [name for name in _REQUIRED if name not in self._names]
        if missing:
            self.config_error("profile", "%s has no phase_bitmap register for %s"
                              % (profile.get("profile"), ", ".join(missing)))
            self.ready = False
            return
        # The preempt map is read first and the phase maps last, so the poll's stamp (the phase
        # reply's start) follows every sample the poll reports by as little as the bus allows.
        self._preempt_read = None
        if preempt:
            plan = profile_plan(profile, preempt[:1])
            self._preempt_read = plan.reads[0]
            self._preempt_at = plan.segments(0)[0][1]
        plan = profile_plan(profile, entries)
        self._reads = plan.reads
        # Where each map's (first) register is: the index of its read and its offset in the reply.
        self._read_of = []
        self._offset_of = []
        for w in range(len(entries)):
            segment = plan.segments(w)[0]
            self._read_of.append(segment[0])
            self._offset_of.append(segment[1])
        self._results = [None] * len(self._reads)
        # One dict of maps for the driver's life, every key always present (a failed or absent
        # map is None, which the detector does not track): a poll allocates no dict, and the
        # detector's lookup of an optional map never raises KeyError.
        self._maps = {"preempts": None, "detectors": None}
        for name in self._names:
            self._maps[name] = None
        self.detector = PhaseEventDetector(
            phases=profile.get("phases", 8),
            max_red_clear_us=int(device.get("max_red_clear_ms", 6000)) * 1000)
        self._events = []

    async def poll(self):
        # The master's request() per planned read rather than read_plan(): read_plan builds a list
        # of values per map (8 lists, their slices and the list of them) each poll, 25 times a
        # second on the demo's 40 ms poll; here each map's value is read from its reply in place.
        # The same reads in the same order, and the same rule: after a silence (timeout, unit
        # offline) the plan's remaining reads are not tried, they share that fault.
        unit = self.unit
        anyaddr = self.any_address
        preempt = None
        read = self._preempt_read
        if read is not None:
            try:
                preempt = (await self.master.request(unit, read.request(unit, anyaddr),
                                                     any_address=anyaddr))[self._preempt_at]
            except Exception as exc:  # noqa: BLE001 - ModbusError / ModbusException are results
                if not failed(exc):
                    raise
                preempt = exc
        maps = self._maps
        names = self._names
        results = self._results
        bad = None
        if failed(preempt) and fault_of(preempt)[0] in _SILENT:
            bad = preempt  # the unit is silent: its phase maps would only wait the timeout again
        else:
            reads = self._reads
            stop = None
            for i in range(len(reads)):
                if stop is None:
                    read = reads[i]
                    try:
                        results[i] = await self.master.request(unit, read.request(unit, anyaddr),
                                                               any_address=anyaddr)
                    except Exception as exc:  # noqa: BLE001 - as above
                        if not failed(exc):
                            raise
                        results[i] = exc
                        if fault_of(exc)[0] in _SILENT:
                            stop = exc
                else:
                    results[i] = stop
            read_of = self._read_of
            offset_of = self._offset_of
            for k in range(len(names)):
                got = results[read_of[k]]
                if failed(got):
                    maps[names[k]] = None
                    if bad is None and names[k] in _REQUIRED:
                        bad = got
                else:
                    maps[names[k]] = got[offset_of[k]]
            for i in range(len(results)):
                results[i] = None  # the replies are not kept between polls
        hal = self.hal
        if bad is not None:
            t_us = hal.ticks_us()
            self.detector.update(None, t_us)  # counted there too; no events from a failed poll
            self.poll_failed(bad, hal.ticks_ms())
            return
        maps["preempts"] = None if failed(preempt) else preempt
        # Stamped when the phase reply began, not when it was parsed: the controller sampled its
        # state no later than that (modbus_master.reply_start_us), and the stamp starts the
        # gateway's event window, so every millisecond here is a millisecond of latency.
        t_us = self.master.reply_start_us
        tick = hal.ticks_add(hal.ticks_ms(), -(hal.ticks_diff(hal.ticks_us(), t_us) // 1000))
        events = self._events
        events.clear()
        self.detector.update(maps, t_us, events)
        self.detector.poll(t_us, events)
        for t, code, param in events:
            self.node.event(code, param, hal.ticks_add(tick, hal.ticks_diff(t, t_us) // 1000))
        self.counters["events"] += len(events)
        self.poll_ok(tick)
