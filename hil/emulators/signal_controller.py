"""An emulated NEMA 8-phase dual-ring signal controller (REFERENCE.md §6), fixed-time or actuated,
serving its NTCIP 1202 phase status bitmaps as Modbus holding registers laid out from
profiles/nema-phase-status.json.

Ring 1 runs 1 2 ‖ 3 4 and ring 2 runs 5 6 ‖ 7 8; each ring shows one phase at a time, both rings
are always on the same side of the barrier, and they cross it together only when both have cleared
(green, yellow, red clearance) everything on their side. Every phase on one side of one ring is
compatible with every phase on the same side of the other ring, so no state this machine can reach
shows conflicting greens; tests/hil/test_signal_controller.py checks that over random plans and
call sequences.

`DualRingController` is the sans-IO state machine: integer host-monotonic microseconds in, exact
interval changes out (each happens at its own due time, however late advance_to() is called).
Inputs (detector presence, pedestrian buttons, preempt) are scheduled with their own time and
applied in time order. Fixed-time: every configured phase, in ring order, for its `green` time.
Actuated: a phase without a call is skipped; a green lasts its minimum, is extended by `passage`
after each detector actuation (held while a vehicle is on the detector) up to `max_green` timed
from the start of green (a simplification: NEMA starts max on a conflicting call), and only ends
when some call needs it to (else it rests in green); "min"/"max" recall re-places a phase's call.
Pedestrian phases show walk then ped clear, and their green lasts until the clearance is done; a
ped call on a resting green recycles the walk. Preempt ends the greens at once (a walk is cut to
its clearance), holds all red while any preempt input is on, then resumes with the next side.

Ground truth: each interval change is logged as an Indiana event (1, 8, 9, 10, 11, 21, 22, 23,
102/104) with its t_us. Red clearance end (11) is stamped when the controller's red clearance
timing ends; when no conflicting green starts at that instant (the ring rests in red at the
barrier, or under preempt) the event carries "rest_in_red": true, because a node deriving events
from the bitmaps (firmware/phase_events.py) cannot see that instant and stamps 11 later.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware.phase_events import phases_conflict
from hil.emulators.ground_truth import Clock, GroundTruthLog
from hil.emulators.modbus_devices import ModbusDevice, ProfileLayoutError
from protocols.quality_codes import EVENT_PED_BEGIN_CLEARANCE as PED_BEGIN_CLEAR
from protocols.quality_codes import EVENT_PED_BEGIN_DONT_WALK as PED_BEGIN_DONT_WALK
from protocols.quality_codes import EVENT_PED_BEGIN_WALK as PED_BEGIN_WALK
from protocols.quality_codes import EVENT_PHASE_BEGIN_GREEN as BEGIN_GREEN
from protocols.quality_codes import EVENT_PHASE_BEGIN_RED_CLEARANCE as BEGIN_RED_CLEAR
from protocols.quality_codes import EVENT_PHASE_BEGIN_YELLOW as BEGIN_YELLOW
from protocols.quality_codes import EVENT_PHASE_END_RED_CLEARANCE as END_RED_CLEAR
from protocols.quality_codes import EVENT_PHASE_END_YELLOW as END_YELLOW
from protocols.quality_codes import EVENT_PREEMPT_CALL_OFF as PREEMPT_OFF
from protocols.quality_codes import EVENT_PREEMPT_CALL_ON as PREEMPT_ON

__all__ = ["MAPS", "DualRingController", "PhaseTiming", "PlanError", "SignalControllerEmulator",
           "SignalPlan", "phase_ring", "phase_side"]

MAPS = ("reds", "yellows", "greens", "dont_walks", "ped_clears", "walks", "veh_calls", "ped_calls", "preempt")
RECALLS = ("none", "min", "max")
GREEN, YELLOW, RED, IDLE = "green", "yellow", "red_clear", "idle"
WALK, CLEAR = "walk", "ped_clear"
# Typical timings (REFERENCE.md §6; min greens and passage unverified): lefts are the odd phases.
LEFT_DEFAULTS = {"min_green": 5.0, "max_green": 20.0, "green": 10.0, "passage": 2.5,
                 "yellow": 3.5, "red_clear": 1.5}
THROUGH_DEFAULTS = {"min_green": 10.0, "max_green": 40.0, "green": 25.0, "passage": 2.5,
                    "yellow": 4.0, "red_clear": 1.5}
PED_DEFAULTS = {"walk": 7.0, "ped_clear": 12.0, "recall": False}
_SETTLE_LIMIT = 64  # transitions at one instant; more means a bug, not a plan


def _conflict(p: int, q: int) -> bool:
    return bool(phases_conflict(p, q))  # type: ignore[no-untyped-call]


def phase_ring(p: int) -> int:
    """0 for ring 1 (phases 1-4), 1 for ring 2 (5-8)."""
    return (p - 1) // 4


def phase_side(p: int) -> int:
    """0 for the 1 2 / 5 6 side of the barrier, 1 for 3 4 / 7 8."""
    return ((p - 1) % 4) // 2


class PlanError(ValueError):
    """A signal plan is unusable: `key` names the setting, `value` what was given."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"signal plan {key}={value!r}: {reason}")


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


@dataclass(frozen=True)
class PhaseTiming:
    """One phase's timings in microseconds; walk/ped_clear 0 for a phase without pedestrians."""

    min_green: int
    max_green: int
    green: int
    passage: int
    yellow: int
    red_clear: int
    recall: str = "none"
    walk: int = 0
    ped_clear: int = 0
    ped_recall: bool = False

    @property
    def ped(self) -> bool:
        return self.walk > 0


@dataclass(frozen=True)
class SignalPlan:
    mode: str
    startup: int
    phases: dict[int, PhaseTiming]

    @classmethod
    def from_dict(cls, plan: Mapping[str, Any]) -> SignalPlan:
        """Read a plan: {"mode": "fixed"|"actuated", "startup_s": 2.0, "defaults": {...},
        "phases": {"2": {"min_green": 10, "max_green": 40, "green": 25, "passage": 2.5,
        "yellow": 4, "red_clear": 1.5, "recall": "min", "ped": {"walk": 7, "ped_clear": 12,
        "recall": false}}, ...}}. Times are seconds; only the listed phases run (all 8 when
        "phases" is absent); "ped" true/false/dict, default true on the even (through) phases."""
        mode = plan.get("mode", "fixed")
        if mode not in ("fixed", "actuated"):
            raise PlanError("mode", mode, "must be 'fixed' or 'actuated'")
        startup = plan.get("startup_s", 2.0)
        if not isinstance(startup, (int, float)) or startup < 0:
            raise PlanError("startup_s", startup, "must be a number of seconds >= 0")
        raw = plan.get("phases", {p: {} for p in range(1, 9)})
        defaults = dict(plan.get("defaults", {}))
        phases = {}
        for key, spec in raw.items():
            try:
                p = int(key)
            except (TypeError, ValueError):
                raise PlanError("phases", key, "a phase is a number 1..8") from None
            if not 1 <= p <= 8:
                raise PlanError("phases", key, "a phase is a number 1..8")
            phases[p] = _phase_timing(p, {**(THROUGH_DEFAULTS if p % 2 == 0 else LEFT_DEFAULTS),
                                          **defaults, **(spec or {})})
        if not phases:
            raise PlanError("phases", raw, "a plan needs at least one phase")
        return cls(mode, _us(startup), phases)


def _phase_timing(p: int, spec: dict[str, Any]) -> PhaseTiming:
    where = f"phases.{p}"
    times = {}
    for key in ("min_green", "max_green", "green", "passage", "yellow", "red_clear"):
        value = spec.get(key)
        low = 0 if key in ("passage", "red_clear") else 1e-3  # zero-length greens and yellows would loop
        if not isinstance(value, (int, float)) or value < low:
            raise PlanError(f"{where}.{key}", value, f"must be a number of seconds >= {low:g}")
        times[key] = _us(value)
    if times["max_green"] < times["min_green"]:
        raise PlanError(f"{where}.max_green", spec["max_green"], "must not be below min_green")
    recall = spec.get("recall", "none")
    if recall not in RECALLS:
        raise PlanError(f"{where}.recall", recall, f"must be one of {RECALLS}")
    ped = spec.get("ped", p % 2 == 0)
    walk = clear = 0
    ped_recall = False
    if ped:
        ped = {**PED_DEFAULTS, **(ped if isinstance(ped, Mapping) else {})}
        for key in ("walk", "ped_clear"):
            if not isinstance(ped[key], (int, float)) or ped[key] <= 0:
                raise PlanError(f"{where}.ped.{key}", ped[key], "must be a number of seconds > 0")
        walk, clear, ped_recall = _us(ped["walk"]), _us(ped["ped_clear"]), bool(ped["recall"])
    return PhaseTiming(recall=recall, walk=walk, ped_clear=clear, ped_recall=ped_recall, **times)


class _Ring:
    __slots__ = ("clear_end", "ends", "gap_end", "green_start", "index", "interval", "order", "ped",
                 "phase", "pos", "walk_end")
    gap_end: int | None
    ped: str | None

    def __init__(self, index: int, order: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self.index = index
        self.order = order     # configured phases of this ring, per side, in service order
        self.pos = -1          # index in order[side] of the phase served last (-1: none yet)
        self.phase = 0
        self.interval = IDLE
        self.ends = 0          # end of yellow / red clearance
        self.green_start = 0
        self.gap_end = 0       # passage timer end (None while a vehicle holds the detector)
        self.ped: str | None = None
        self.walk_end = 0
        self.clear_end = 0


Listener = Callable[[int, int, int, dict[str, Any]], None]


class DualRingController:
    """The sans-IO controller: schedule inputs, advance_to(t_us), read maps()."""

    def __init__(self, plan: SignalPlan | Mapping[str, Any], *, start_us: int,
                 on_event: Listener | None = None,
                 on_maps: Callable[[int, dict[str, int]], None] | None = None,
                 on_input: Callable[[int, str, dict[str, Any]], None] | None = None) -> None:
        self.plan = plan if isinstance(plan, SignalPlan) else SignalPlan.from_dict(plan)
        self.timing = self.plan.phases
        self.actuated = self.plan.mode == "actuated"
        self.on_event, self.on_maps, self.on_input = on_event, on_maps, on_input
        self.now = start_us
        self.side = 1  # as if side 3 4 / 7 8 had just cleared: the first crossing enters 1 2 / 5 6
        self.rings = [_Ring(r, (self._ring_side(r, 0), self._ring_side(r, 1))) for r in (0, 1)]
        self.starting = True
        self.startup_end = start_us + self.plan.startup
        self.veh_calls = 0
        self.ped_calls = 0
        self.presence = [0] * 9  # detectors on, per phase
        self.preempts = 0
        self._queue: list[tuple[int, int, str, int, bool]] = []
        self._seq = itertools.count()
        self._events: list[tuple[int, int]] = []
        self.configured = sum(1 << (p - 1) for p in self.timing)
        self._place_recalls(self.configured)
        self._maps = self._compute_maps()

    def _ring_side(self, ring: int, side: int) -> tuple[int, ...]:
        first = 4 * ring + 2 * side + 1
        return tuple(p for p in (first, first + 1) if p in self.timing)

    # -- inputs --------------------------------------------------------------------------------

    def detector(self, phase: int, on: bool, t_us: int) -> None:
        """A detector of `phase` turns on/off at t_us (a time already past counts as now)."""
        self._schedule(t_us, "detector", phase, on)

    def ped_button(self, phase: int, t_us: int) -> None:
        self._schedule(t_us, "ped", phase, True)

    def preempt(self, number: int, on: bool, t_us: int) -> None:
        """Preempt input `number` (1..16) on/off."""
        if not 1 <= number <= 16:
            raise ValueError(f"preempt input {number} is not 1..16")
        self._schedule(t_us, "preempt", number, on)

    def _schedule(self, t_us: int, kind: str, n: int, on: bool) -> None:
        heapq.heappush(self._queue, (max(t_us, self.now), next(self._seq), kind, n, on))

    def _apply(self, kind: str, n: int, on: bool) -> None:
        accepted = True
        if kind == "preempt":
            bit = 1 << (n - 1)
            was = self.preempts
            self.preempts = (was | bit) if on else (was & ~bit)
            if self.preempts != was:
                self._events.append((PREEMPT_ON if on else PREEMPT_OFF, n))
            if self.preempts and not was:
                for ring in self.rings:  # a walk is cut short to its clearance
                    if ring.interval == GREEN and ring.ped == WALK:
                        self._begin_clear(ring)
        elif n not in self.timing:
            accepted = False
        elif kind == "detector":
            serving = self._ring_showing_green(n)
            self.presence[n] = max(0, self.presence[n] + (1 if on else -1))
            if serving is None:
                if on:
                    self.veh_calls |= 1 << (n - 1)
            elif self.presence[n]:
                serving.gap_end = None  # a vehicle on the detector holds the green
            else:
                serving.gap_end = self.now + self.timing[n].passage
        elif self.timing[n].ped:
            self.ped_calls |= 1 << (n - 1)
        else:
            accepted = False
        if self.on_input is not None:
            self.on_input(self.now, kind, {"n": n, "on": on, "accepted": accepted})

    # -- time ------------------------------------------------------------------------------------

    def next_change_us(self) -> int | None:
        """When the state will next change without new inputs (or the next scheduled input)."""
        times = [self._queue[0][0]] if self._queue else []
        if self.starting:
            times.append(self.startup_end)
        for ring in self.rings:
            if ring.interval in (YELLOW, RED):
                times.append(ring.ends)
            elif ring.interval == GREEN:
                if ring.ped == WALK:
                    times.append(ring.walk_end)
                elif ring.ped == CLEAR:
                    times.append(ring.clear_end)
                end = self._green_end(ring)
                if end is not None:
                    times.append(end)
        return min(times) if times else None

    def advance_to(self, t_us: int) -> None:
        """Run every change due up to t_us, each at its own time."""
        stalled = 0
        while True:
            due = self.next_change_us()
            if due is None or due > t_us:
                break
            stalled = stalled + 1 if due <= self.now else 0
            if stalled > _SETTLE_LIMIT:
                raise RuntimeError(f"signal controller keeps falling due at {self.now} us")
            self.now = max(self.now, due)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, kind, n, on = heapq.heappop(self._queue)
                self._apply(kind, n, on)
            self._settle()
            self._publish()
        self.now = max(self.now, t_us)

    def maps(self) -> dict[str, int]:
        """The NTCIP bitmaps now (bit k = phase k + 1; preempt: bit k = input k + 1)."""
        return dict(self._maps)

    # -- the machine ---------------------------------------------------------------------------

    def _settle(self) -> None:
        for _ in range(_SETTLE_LIMIT):
            changed = False
            if self.starting and self.now >= self.startup_end:
                self.starting = False
                changed = True
            if not self.starting:
                for ring in self.rings:
                    changed |= self._step(ring)
                if all(r.interval == IDLE for r in self.rings) and not self.preempts:
                    changed |= self._cross()
                elif self.actuated and not self.preempts:
                    for ring in self.rings:
                        if ring.interval == IDLE:  # late entry beside a ring still on this side
                            changed |= self._enter_next(ring)
            if not changed:
                return
        raise RuntimeError(f"signal controller did not settle at {self.now} us")

    def _step(self, ring: _Ring) -> bool:
        now = self.now
        if ring.interval == GREEN:
            t = self.timing[ring.phase]
            if ring.ped == WALK and now >= ring.walk_end:
                self._begin_clear(ring)
                return True
            if ring.ped == CLEAR and now >= ring.clear_end:
                ring.ped = None
                self._events.append((PED_BEGIN_DONT_WALK, ring.phase))
                return True
            bit = 1 << (ring.phase - 1)
            if (ring.ped is None and t.ped and self.ped_calls & bit and self.actuated
                    and not self.preempts and not self._demand(ring)):
                self._begin_walk(ring)  # a ped call on a resting green recycles the walk
                return True
            end = self._green_end(ring)
            if end is not None and now >= end:
                ring.interval, ring.ends = YELLOW, now + t.yellow
                self._events.append((BEGIN_YELLOW, ring.phase))
                self._place_recalls(bit)
                return True
        elif ring.interval == YELLOW and now >= ring.ends:
            ring.interval, ring.ends = RED, now + self.timing[ring.phase].red_clear
            self._events += [(END_YELLOW, ring.phase), (BEGIN_RED_CLEAR, ring.phase)]
            return True
        elif ring.interval == RED and now >= ring.ends:
            ring.interval = IDLE
            self._events.append((END_RED_CLEAR, ring.phase))
            if not self.preempts:
                self._enter_next(ring)
            return True
        return False

    def _green_end(self, ring: _Ring) -> int | None:
        """When this green may end (None: it rests); a running ped clearance always finishes."""
        t = self.timing[ring.phase]
        ped_done = ring.clear_end if ring.ped is not None else ring.green_start
        if self.preempts:
            return max(ped_done, ring.green_start)
        if not self.actuated:
            return max(ring.green_start + t.green, ped_done)
        if not self._demand(ring):
            return None
        max_end = ring.green_start + t.max_green
        if t.recall == "max" or ring.gap_end is None:
            base = max_end
        else:
            base = min(ring.gap_end, max_end)
        return max(base, ring.green_start + t.min_green, ped_done)

    def _demand(self, ring: _Ring) -> bool:
        """Whether a call needs this ring's green to end: a call in the same ring, one across the
        barrier, or one in the other ring on this side that it has already passed."""
        calls = (self.veh_calls | self.ped_calls) & ~(1 << (ring.phase - 1))
        other = self.rings[1 - ring.index]
        for q in range(1, 9):
            if not calls & (1 << (q - 1)):
                continue
            if phase_ring(q) == ring.index or phase_side(q) != self.side:
                return True
            idx = other.order[self.side].index(q)
            if idx < other.pos or (idx == other.pos and other.interval != GREEN):
                return True
        return False

    def _has_call(self, q: int) -> bool:
        bit = 1 << (q - 1)
        return not self.actuated or bool((self.veh_calls | self.ped_calls) & bit)

    def _enter_next(self, ring: _Ring) -> bool:
        """Start the ring's next phase on this side that wants service; False if none."""
        order = ring.order[self.side]
        for i in range(ring.pos + 1, len(order)):
            if self._has_call(order[i]):
                self._begin_green(ring, i, order[i])
                return True
        return False

    def _cross(self) -> bool:
        """Both rings have cleared their side: cross the barrier (or come back round to this
        side) to the side that has calls; in fixed time, to the other side when it has phases."""
        sides = [s for s in (1 - self.side, self.side)
                 if any(self._has_call(p) for ring in self.rings for p in ring.order[s])]
        if not sides:
            return False  # actuated with no call anywhere: rest in red
        self.side = sides[0]
        started = False
        for ring in self.rings:
            ring.pos = -1
            started |= self._enter_next(ring)
        return started

    def _begin_green(self, ring: _Ring, index: int, p: int) -> None:
        t = self.timing[p]
        bit = 1 << (p - 1)
        ring.pos, ring.phase, ring.interval = index, p, GREEN
        ring.green_start = self.now
        ring.gap_end = None if self.presence[p] else self.now
        ring.ped = None
        self.veh_calls &= ~bit
        self._events.append((BEGIN_GREEN, p))
        if t.ped and (not self.actuated or self.ped_calls & bit or t.ped_recall) and not self.preempts:
            self._begin_walk(ring)

    def _begin_walk(self, ring: _Ring) -> None:
        t = self.timing[ring.phase]
        ring.ped, ring.walk_end = WALK, self.now + t.walk
        ring.clear_end = ring.walk_end + t.ped_clear
        self.ped_calls &= ~(1 << (ring.phase - 1))
        self._events.append((PED_BEGIN_WALK, ring.phase))

    def _begin_clear(self, ring: _Ring) -> None:
        ring.ped, ring.clear_end = CLEAR, self.now + self.timing[ring.phase].ped_clear
        self._events.append((PED_BEGIN_CLEAR, ring.phase))

    def _place_recalls(self, phases: int) -> None:
        for p, t in self.timing.items():
            bit = 1 << (p - 1)
            if phases & bit:
                if t.recall != "none":
                    self.veh_calls |= bit
                if t.ped_recall:
                    self.ped_calls |= bit

    def _ring_showing_green(self, p: int) -> _Ring | None:
        ring = self.rings[phase_ring(p)]
        return ring if ring.interval == GREEN and ring.phase == p else None

    # -- output ----------------------------------------------------------------------------------

    def _compute_maps(self) -> dict[str, int]:
        maps = dict.fromkeys(MAPS, 0)
        for p, t in self.timing.items():
            ring = self.rings[phase_ring(p)]
            bit = 1 << (p - 1)
            shown = ring.interval if ring.phase == p else IDLE
            key = {GREEN: "greens", YELLOW: "yellows"}.get(shown, "reds")
            maps[key] |= bit
            if t.ped:
                ped = ring.ped if shown == GREEN else None
                maps[{WALK: "walks", CLEAR: "ped_clears"}.get(ped or "", "dont_walks")] |= bit
        maps["veh_calls"], maps["ped_calls"], maps["preempt"] = self.veh_calls, self.ped_calls, self.preempts
        return maps

    def _publish(self) -> None:
        events, self._events = sorted(self._events), []
        greens = {p for code, p in events if code == BEGIN_GREEN}
        if self.on_event is not None:
            for code, param in events:
                extra: dict[str, Any] = {}
                if code == END_RED_CLEAR and not any(q == param or _conflict(param, q) for q in greens):
                    extra["rest_in_red"] = True
                self.on_event(self.now, code, param, extra)
        maps = self._compute_maps()
        if maps != self._maps:
            self._maps = maps
            if self.on_maps is not None:
                self.on_maps(self.now, dict(maps))


class SignalControllerEmulator(ModbusDevice):
    """The controller on a clock, its bitmaps served per the profile, its changes logged as ground
    truth (kinds "event", "maps", "input"). Inputs take an exact t_us (default now); a read
    advances the machine to the read's instant, and a background task logs changes as they fall
    due. The device server starts and stops that task."""

    def __init__(
        self,
        plan: SignalPlan | Mapping[str, Any],
        *,
        unit: int = 1,
        profile: str | Path | Mapping[str, Any] = "nema-phase-status",
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        source: str = "signal",
        turnaround_s: float | None = None,
    ) -> None:
        super().__init__(profile=profile, unit=unit, clock=clock, truth=truth, source=source,
                         turnaround_s=turnaround_s)
        self._names: dict[str, str] = {}
        for entry in self.entries:
            name = "preempt" if entry.get("role") == "preempt_bitmap" else entry["name"]
            if name not in MAPS or entry.get("type", "u16") != "u16":
                raise ProfileLayoutError(self.name, f"registers.{entry['name']}",
                                         f"is not a u16 bitmap this controller has ({', '.join(MAPS)})")
            self._names[entry["name"]] = name
        self.controller = DualRingController(plan, start_us=self.clock.now_us(), on_event=self._event,
                                             on_maps=self._maps, on_input=self._input)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.truth.record(self.source, "start", t_us=self.controller.now, mode=self.controller.plan.mode,
                          phases=sorted(self.controller.timing), maps=self.controller.maps())

    # inputs (the traffic playback calls detector(); a scenario calls the others)
    def detector(self, phase: int, on: bool, t_us: int | None = None) -> None:
        self.controller.detector(phase, on, self._at(t_us))
        self._wake.set()

    def ped_button(self, phase: int, t_us: int | None = None) -> None:
        self.controller.ped_button(phase, self._at(t_us))
        self._wake.set()

    def preempt(self, number: int, on: bool, t_us: int | None = None) -> None:
        self.controller.preempt(number, on, self._at(t_us))
        self._wake.set()

    def _at(self, t_us: int | None) -> int:
        return self.clock.now_us() if t_us is None else t_us

    def advance(self) -> dict[str, int]:
        """Bring the machine to now; its bitmaps."""
        self.controller.advance_to(self.clock.now_us())
        return self.controller.maps()

    def value_of(self, entry: Mapping[str, Any], channel: int, now_us: int) -> float:
        self.controller.advance_to(now_us)
        return self.controller.maps()[self._names[entry["name"]]]

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.source} controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self.advance()
            due = self.controller.next_change_us()
            waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())}
            if due is not None:
                waits.add(asyncio.ensure_future(self.clock.sleep_until(due)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _event(self, t_us: int, code: int, param: int, extra: dict[str, Any]) -> None:
        self.truth.record(self.source, "event", t_us=t_us, code=code, param=param, **extra)

    def _maps(self, t_us: int, maps: dict[str, int]) -> None:
        self.truth.record(self.source, "maps", t_us=t_us, **maps)

    def _input(self, t_us: int, kind: str, fields: dict[str, Any]) -> None:
        self.truth.record(self.source, "input", t_us=t_us, input=kind, **fields)
