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
        self._preempt_plan = profile_plan(profile, preempt[:1]) if preempt else None
        self._plan = profile_plan(profile, entries)
        self.detector = PhaseEventDetector(
            phases=profile.get("phases", 8),
            max_red_clear_us=int(device.get("max_red_clear_ms", 6000)) * 1000)
        self._events = []

    async def poll(self):
        preempt = None
        if self._preempt_plan is not None:
            preempt = (await self.read(self._preempt_plan))[0]
        if failed(preempt) and fault_of(preempt)[0] in _SILENT:
            results = None  # the unit is silent: its phase maps would only wait the timeout again
        else:
            results = await self.read(self._plan)
        hal = self.hal
        maps = {}
        bad = preempt if results is None else None
        for i in range(len(self._names) if results is not None else 0):
            name = self._names[i]
            got = results[i]
            if not failed(got):
                maps[name] = got[0]
            elif name in _REQUIRED and bad is None:
                bad = got
        if bad is not None:
            t_us = hal.ticks_us()
            self.detector.update(None, t_us)  # counted there too; no events from a failed poll
            self.poll_failed(bad, hal.ticks_ms())
            return
        if preempt is not None and not failed(preempt):
            maps["preempts"] = preempt[0]
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
