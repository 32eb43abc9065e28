"""firmware/phase_events.py under CPython: random bitmap sequences against an independent oracle,
a fixed-time NEMA dual-ring controller model whose event log must follow the phase cycle, the
"no events for an unchanged poll" rule, and conflicting_greens against a table from REFERENCE.md §6."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.phase_events import (
    BEGIN_GREEN,
    BEGIN_RED_CLEAR,
    BEGIN_YELLOW,
    END_RED_CLEAR,
    END_YELLOW,
    PED_BEGIN_CLEAR,
    PED_BEGIN_DONT_WALK,
    PED_BEGIN_WALK,
    PhaseEventDetector,
    conflicting_greens,
)
from protocols.ticks import TICKS_PERIOD, ticks_add, ticks_diff
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings

PROPERTY = settings(max_examples=200, deadline=None, database=None)
MAPS = ("greens", "yellows", "reds", "walks", "ped_clears", "dont_walks")
MASK = TICKS_PERIOD - 1

# REFERENCE.md §6, written out as a table rather than derived: the only compatible pairs.
COMPATIBLE = {frozenset(p) for p in itertools.product((1, 2), (5, 6))} | {
    frozenset(p) for p in itertools.product((3, 4), (7, 8))}


def bits_of(value: int) -> list[int]:
    return [k + 1 for k in range(value.bit_length()) if value >> k & 1]


# --- random polls ---------------------------------------------------------------------------------

byte = st.integers(0, 255)
good_poll = st.fixed_dictionaries(
    {name: byte for name in MAPS},
    optional={"preempts": st.none() | st.integers(0, 1023), "detectors": st.none() | byte},
)
bad_poll = st.one_of(
    st.none(),
    st.just({}),
    good_poll.map(lambda m: {**m, "reds": -3}),
    good_poll.map(lambda m: {k: v for k, v in m.items() if k != "walks"}),
    good_poll.map(lambda m: {**m, "detectors": "on"}),
    st.lists(byte),
    st.integers(),
)
polls = st.lists(st.tuples(st.one_of(good_poll, good_poll, good_poll, bad_poll),
                           st.integers(1, 3_000_000)), max_size=40)


def run(sequence, start: int, max_red_clear_us: int = 6_000_000) -> tuple[list, list]:
    """Feed (poll, dt) pairs; returns (events, [(t, poll) for the good polls])."""
    det = PhaseEventDetector(max_red_clear_us=max_red_clear_us)
    events: list = []
    good = []
    t = start
    for poll, dt in sequence:
        t = ticks_add(t, dt)
        before = len(events)
        det.update(poll, t, events)
        if isinstance(poll, dict) and all(isinstance(poll.get(k), int) and poll[k] >= 0
                                          for k in MAPS) and not isinstance(poll.get("detectors"), str):
            good.append((t, poll))
        else:
            assert len(events) == before, "a failed poll emitted events"
    return events, good


def oracle_simple_events(good: list) -> list[tuple[int, int, int]]:
    """The edge-triggered codes (all but 10 and 11), straight from consecutive good polls."""
    out = []
    det0 = pre0 = None
    for (_, a), (t, b) in zip(good, good[1:]):
        for name, code_on, code_off in (("greens", 1, None), ("yellows", 8, 9), ("walks", 21, None),
                                        ("ped_clears", 22, None), ("dont_walks", 23, None)):
            for p in bits_of(b[name] & ~a[name]):
                out.append((t, code_on, p))
            if code_off:
                for p in bits_of(a[name] & ~b[name]):
                    out.append((t, code_off, p))
        for key, on, off, state in (("detectors", 82, 81, "det"), ("preempts", 102, 104, "pre")):
            prev = det0 if state == "det" else pre0
            if prev is None and a.get(key) is not None:
                prev = a[key]
            cur = b.get(key)
            if cur is not None and prev is not None:
                out += [(t, on, p) for p in bits_of(cur & ~prev)]
                out += [(t, off, p) for p in bits_of(prev & ~cur)]
            if cur is not None or prev is not None:
                new = cur if cur is not None else prev
                if state == "det":
                    det0 = new
                else:
                    pre0 = new
    return sorted(out)


def _fuzz(sequence, start) -> None:
    events, good = run(sequence, start)
    # Time order (wrap-aware), and (code, param) order within one time.
    for e0, e1 in zip(events, events[1:]):
        d = ticks_diff(e1[0], e0[0])
        assert d > 0 or (d == 0 and (e0[1], e0[2]) < (e1[1], e1[2]))
    simple = sorted(e for e in events if e[1] not in (BEGIN_RED_CLEAR, END_RED_CLEAR))
    assert simple == oracle_simple_events(good)
    # Red clearance: per phase 10 and 11 alternate, each 10 with a 9 at the same time, each 11 at or
    # after its 10 and no later than max red clearance.
    open_rc: dict[int, int] = {}
    for t, code, p in events:
        if code == BEGIN_RED_CLEAR:
            assert p not in open_rc and (t, END_YELLOW, p) in events
            open_rc[p] = t
        elif code == END_RED_CLEAR:
            began = open_rc.pop(p)
            assert 0 <= ticks_diff(t, began) <= 6_000_000


@fuzz_settings(DEFAULT_EXAMPLES // 5)
@given(polls, st.integers(0, MASK))
def test_fuzz_random_polls_never_crash_and_match_the_oracle(sequence, start) -> None:
    _fuzz(sequence, start)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(polls, st.integers(0, MASK))
def test_fuzz_random_polls_long(sequence, start) -> None:
    _fuzz(sequence, start)


@PROPERTY
@given(polls, st.integers(0, MASK), st.data())
def test_failed_polls_change_nothing(sequence, start, data) -> None:
    """Dropping every failed poll from a sequence leaves the events exactly as they were."""
    events, _ = run(sequence, start)
    times = []
    t = start
    for _, dt in sequence:
        t = ticks_add(t, dt)
        times.append(t)
    det = PhaseEventDetector()
    again: list = []
    for (poll, _), t in zip(sequence, times):
        if isinstance(poll, dict) and all(isinstance(poll.get(k), int) and poll[k] >= 0
                                          for k in MAPS) and not isinstance(poll.get("detectors"), str):
            det.update(poll, t, again)
    assert again == events


@PROPERTY
@given(good_poll, st.lists(st.integers(1, 2**28), max_size=50), st.integers(0, MASK), polls)
def test_an_unchanged_poll_never_emits(poll, gaps, start, history) -> None:
    det = PhaseEventDetector()
    t = start
    for p, dt in history:               # any history first, red clearances running or not
        t = ticks_add(t, dt)
        det.update(p, t)
    t = ticks_add(t, 1)
    det.update(poll, t)
    for dt in gaps:                     # then the same poll again and again, over many wraps
        t = ticks_add(t, dt)
        assert det.update(dict(poll), t) == []


def test_conflicting_greens_matches_the_compatibility_table() -> None:
    for greens in range(256):
        for yellows in (0, 0x01, 0x22, 0x80):
            shown = bits_of(greens | yellows)
            pairs = [(p, q) for p, q in itertools.combinations(shown, 2)
                     if frozenset((p, q)) not in COMPATIBLE]
            assert conflicting_greens(greens, yellows) == (pairs[0] if pairs else None)


# --- a fixed-time NEMA dual-ring controller -----------------------------------------------------

def dual_ring_timeline(plan: dict, cycles: int) -> list[tuple[int, dict]]:
    """Intervals (start_us, state) of a fixed-time dual ring: per barrier side each ring runs its two
    phases (green, yellow, all-red), and both rings cross the barrier together (the shorter ring
    rests in red). Even phases carry a pedestrian walk then clearance inside their green."""
    changes: list[tuple[int, int, str, bool]] = []     # (t, phase, what, on)
    t = 0
    for _ in range(cycles):
        for side in ((1, 2, 5, 6), (3, 4, 7, 8)):
            ends = []
            for ring in (side[:2], side[2:]):
                tr = t
                for p in ring:
                    g, y, r = plan[p]
                    changes.append((tr, p, "G", True))
                    if p % 2 == 0:
                        walk, clear = plan["walk"], plan["ped_clear"]
                        changes += [(tr, p, "W", True), (tr + walk, p, "W", False),
                                    (tr + walk, p, "PC", True), (tr + walk + clear, p, "PC", False)]
                    changes += [(tr + g, p, "G", False), (tr + g, p, "Y", True),
                                (tr + g + y, p, "Y", False)]
                    tr += g + y + r
                ends.append(tr)
            t = max(ends)
    changes.sort(key=lambda c: c[0])
    state = {"G": set(), "Y": set(), "W": set(), "PC": set()}
    timeline = []
    for when, group in itertools.groupby(changes, key=lambda c: c[0]):
        for _, p, what, on in group:
            (state[what].add if on else state[what].discard)(p)
        timeline.append((when, {k: set(v) for k, v in state.items()}))
    return timeline


def bitmaps(state: dict) -> dict:
    def b(s: set) -> int:
        return sum(1 << (p - 1) for p in s)
    g, y = b(state["G"]), b(state["Y"])
    w, pc = b(state["W"]), b(state["PC"])
    return {"greens": g, "yellows": y, "reds": 0xFF & ~(g | y), "walks": w, "ped_clears": pc,
            "dont_walks": 0xAA & ~(w | pc)}


PHASE_CYCLE = (BEGIN_GREEN, BEGIN_YELLOW, END_YELLOW, BEGIN_RED_CLEAR, END_RED_CLEAR)
PED_CYCLE = (PED_BEGIN_WALK, PED_BEGIN_CLEAR, PED_BEGIN_DONT_WALK)

timing = st.fixed_dictionaries({
    **{p: st.tuples(st.integers(7_000_000, 30_000_000), st.integers(3_000_000, 5_000_000),
                    st.integers(0, 2_500_000)) for p in range(1, 9)},
    "walk": st.integers(1_000_000, 4_000_000), "ped_clear": st.integers(1_000_000, 3_000_000),
})


@PROPERTY
@given(timing, st.lists(st.integers(50_000, 1_000_000), min_size=1, max_size=8),
       st.integers(0, MASK), st.integers(0, 200_000_000))
def test_a_dual_ring_log_follows_the_phase_cycle(plan, poll_gaps, start, skip) -> None:
    """Every begin green is followed, for its phase, by yellow, end of yellow, red clearance and
    its end before the next green: the log is a run of the cycle 1 8 9 10 11, whatever the
    timing, the polling rate, the poll the detector starts at and the tick wrap."""
    timeline = dual_ring_timeline(plan, cycles=3)
    det = PhaseEventDetector(max_red_clear_us=6_000_000)
    events: list = []
    end = timeline[-1][0]
    t = skip % (end // 2)
    i = 0
    k = 0
    while t < end:
        while i + 1 < len(timeline) and timeline[i + 1][0] <= t:
            i += 1
        state = timeline[i][1]
        assert conflicting_greens(bitmaps(state)["greens"], bitmaps(state)["yellows"]) is None
        det.update(bitmaps(state), ticks_add(start, t), events)
        t += poll_gaps[k % len(poll_gaps)]
        k += 1
    greens = 0
    for phase in range(1, 9):
        for cycle, codes in ((PHASE_CYCLE, (1, 8, 9, 10, 11)), (PED_CYCLE, (21, 22, 23))):
            seq = [c for _, c, p in events if p == phase and c in codes]
            if not seq:
                continue
            at = cycle.index(seq[0])
            for c in seq[1:]:
                at = (at + 1) % len(cycle)
                assert c == cycle[at], f"phase {phase}: {seq}"
        greens += sum(1 for _, c, p in events if p == phase and c == BEGIN_GREEN)
    assert greens > 0
