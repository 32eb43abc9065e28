"""Indiana high-resolution events from polled signal-controller phase bitmaps (REFERENCE.md §6).

Sans-IO: update(bitmaps, t_us) compares one poll of the NTCIP 1202 phase status maps with the
previous good one and returns the events (t_us, code, param) for what changed, in order of time,
then code, then parameter (the order ATSPM tools sort a log in). `bitmaps` is a dict with int maps
"greens", "yellows", "reds", "walks", "ped_clears", "dont_walks" (bit k = phase k + 1: group 1 in
bits 0-7, group 2 shifted by 8, ...) and optionally "preempts" (bit k = preempt input k + 1) and
"detectors" (bit k = detector channel k + 1); an absent or None optional map is simply not tracked
this time. Times are ticks_us values compared only through ticks_diff.

Choices, documented because a log reader depends on them:
- The first good poll only establishes state and emits nothing: we did not see those intervals
  begin, and a "begin" stamped at the first poll would misstate when they began (an ATSPM
  green-time chart would show a short green that never happened). The same holds for an optional
  map the first time it appears.
- A failed poll (None, a missing map, a negative or non-int value) emits nothing and leaves the
  state as it was, so the next good poll is compared with the last good one (counted).
- Red clearance (10) begins when a phase's yellow ends with the phase red. It ends (11) when a
  phase conflicting with it begins green (NEMA dual ring, see phases_conflict: a compatible phase
  in the other ring starting green ends nothing), when the phase itself leaves red, or after
  max_red_clear_us, the fallback for red rest. update() never emits for an unchanged poll, so the
  timed end is stamped at its exact time and emitted with the next change; call poll(t_us) to
  have it emitted as soon as it is due. If yellow ends and a conflicting green begins within one
  poll, 10 and 11 are both emitted at that poll: every 10 has its 11.
- Codes 9 and 10 are emitted for a yellow that ends even if its start was before the first poll.
"""

from protocols.ticks import ticks_add, ticks_diff
from protocols.quality_codes import EVENT_DETECTOR_OFF as DETECTOR_OFF
from protocols.quality_codes import EVENT_DETECTOR_ON as DETECTOR_ON
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

_MAPS = ("greens", "yellows", "reds", "walks", "ped_clears", "dont_walks")

# NEMA 8-phase dual ring (REFERENCE.md §6): ring 1 = 1 2 | 3 4, ring 2 = 5 6 | 7 8.
_RING_PHASES = 8


def phases_conflict(p, q):
    """True if phases p and q (1-based) may not show green together in a NEMA dual ring.

    Compatible pairs are {1,2}x{5,6} and {3,4}x{7,8}; phases in one ring conflict, as do phases on
    opposite sides of the barrier. A phase outside 1-8 has no known partner, so it conflicts with
    every other phase.
    """
    if p == q:
        return False
    if not (1 <= p <= _RING_PHASES and 1 <= q <= _RING_PHASES):
        return True
    if (p - 1) // 4 == (q - 1) // 4:             # same ring
        return True
    return ((p - 1) % 4) // 2 != ((q - 1) % 4) // 2  # opposite sides of the barrier


def conflicting_greens(greens, yellows=0):
    """The first conflicting pair (p, q), p < q, among phases showing green or yellow, or None.

    Yellow counts as it does for a conflict monitor: the phase is still being served.
    """
    shown = greens | yellows
    p = 1
    while shown:
        if shown & 1:
            rest = shown >> 1
            q = p + 1
            while rest:
                if rest & 1 and phases_conflict(p, q):
                    return (p, q)
                rest >>= 1
                q += 1
        shown >>= 1
        p += 1
    return None


def _append_bits(out, t, code, bits):
    param = 1
    while bits:
        if bits & 1:
            out.append((t, code, param))
        bits >>= 1
        param += 1


class PhaseEventDetector:
    """Phase bitmaps in, Indiana hi-res events out (see the module doc for the choices made)."""

    def __init__(self, phases=8, max_red_clear_us=6000000, detectors=64, preempts=10,
                 dual_ring=True):
        self.phases = phases
        # 6 s is above any usual all-red (1-2 s, REFERENCE.md §6; unverified): the timed end is only
        # a fallback for red rest, the conflicting green normally ends red clearance first.
        self.max_red_clear_us = max_red_clear_us
        self._mask = (1 << phases) - 1
        self._det_mask = (1 << detectors) - 1
        self._pre_mask = (1 << preempts) - 1
        self._conflicts = []
        for p in range(1, phases + 1):
            bits = 0
            for q in range(1, phases + 1):
                if q != p and (not dual_ring or phases_conflict(p, q)):
                    bits |= 1 << (q - 1)
            self._conflicts.append(bits)
        self._prev = None           # last good [greens, yellows, reds, walks, ped_clears, dont_walks]
        self._cur = [0] * 6         # the poll being read (swapped with _prev when it differs)
        self._det = None
        self._pre = None
        self._rc = 0                # phases in red clearance
        self._rc_start = [0] * phases
        self._rc_due = 0            # of those, the ones whose max red clearance has run out
        self.counters = {"updates": 0, "failed_polls": 0, "events": 0}

    def _read(self, bitmaps):
        # Into the spare list (self._cur), not a new one: a controller is polled every 40-100 ms
        # and most polls change nothing.
        if bitmaps is None:
            return None
        values = self._cur
        try:
            for i in range(6):
                v = bitmaps[_MAPS[i]]
                if not isinstance(v, int) or v < 0:
                    return None
                values[i] = v & self._mask
        except (KeyError, TypeError, IndexError):
            return None
        return values

    def _optional(self, bitmaps, name, mask):
        """The map (masked), None when absent, or -1 when present but unusable."""
        try:
            v = bitmaps[name]
        except (KeyError, TypeError, IndexError):
            return None
        if v is None:
            return None
        if not isinstance(v, int) or v < 0:
            return -1
        return v & mask

    def update(self, bitmaps, t_us, out=None):
        """One poll's maps at t_us; returns `out` (a new list if None) with the new events."""
        if out is None:
            out = []
        values = self._read(bitmaps)
        det = pre = None
        if values is not None:
            det = self._optional(bitmaps, "detectors", self._det_mask)
            pre = self._optional(bitmaps, "preempts", self._pre_mask)
        if values is None or det == -1 or pre == -1:
            self.counters["failed_polls"] += 1
            return out
        self.counters["updates"] += 1
        self._note_due(t_us)
        det0 = self._det
        pre0 = self._pre
        if det is not None:
            self._det = det
        if pre is not None:
            self._pre = pre
        if det is None or det0 is None:
            det = det0 = 0
        if pre is None or pre0 is None:
            pre = pre0 = 0
        prev = self._prev
        if prev is None:
            self._prev = values
            self._cur = [0] * 6
            return out
        if values == prev and det == det0 and pre == pre0:
            return out
        self._prev = values
        self._cur = prev  # reused for the next poll; prev is only read below
        start = len(out)
        due_at_t = self._flush_due(out, t_us)
        g, y, r, w, pc, dw = values
        g0, y0 = prev[0], prev[1]
        w0, pc0, dw0 = prev[3], prev[4], prev[5]
        begin_green = g & ~g0
        end_yellow = y0 & ~y
        red_only = r & ~g & ~y
        begin_rc = end_yellow & red_only
        end_rc = 0
        bits = self._rc | begin_rc
        p = 0
        while bits:
            if bits & 1:
                bit = 1 << p
                if not red_only & bit or begin_green & self._conflicts[p]:
                    end_rc |= bit
                elif begin_rc & bit:
                    self._rc_start[p] = t_us
            bits >>= 1
            p += 1
        self._rc = (self._rc | begin_rc) & ~end_rc
        _append_bits(out, t_us, BEGIN_GREEN, begin_green)
        _append_bits(out, t_us, BEGIN_YELLOW, y & ~y0)
        _append_bits(out, t_us, END_YELLOW, end_yellow)
        _append_bits(out, t_us, BEGIN_RED_CLEAR, begin_rc)
        _append_bits(out, t_us, END_RED_CLEAR, end_rc)
        _append_bits(out, t_us, PED_BEGIN_WALK, w & ~w0)
        _append_bits(out, t_us, PED_BEGIN_CLEAR, pc & ~pc0)
        _append_bits(out, t_us, PED_BEGIN_DONT_WALK, dw & ~dw0)
        _append_bits(out, t_us, DETECTOR_OFF, det0 & ~det)
        _append_bits(out, t_us, DETECTOR_ON, det & ~det0)
        _append_bits(out, t_us, PREEMPT_ON, pre & ~pre0)
        _append_bits(out, t_us, PREEMPT_OFF, pre0 & ~pre)
        if due_at_t:
            # A timed red clearance end that fell exactly on this poll: merge it in code order.
            mine = out[start:]
            mine.sort(key=lambda e: (ticks_diff(e[0], t_us), e[1], e[2]))
            out[start:] = mine
        self.counters["events"] += len(out) - start
        return out

    def poll(self, t_us, out=None):
        """Emit red clearance ends whose max_red_clear_us has run out by t_us (no poll needed)."""
        if out is None:
            out = []
        start = len(out)
        self._note_due(t_us)
        self._flush_due(out, t_us)
        self.counters["events"] += len(out) - start
        return out

    def _note_due(self, t):
        # Noted on every call, changed or not, so a long red rest cannot alias through ticks_diff.
        bits = self._rc & ~self._rc_due
        p = 0
        while bits:
            if bits & 1 and ticks_diff(t, self._rc_start[p]) >= self.max_red_clear_us:
                self._rc_due |= 1 << p
            bits >>= 1
            p += 1

    def _flush_due(self, out, t):
        """Emit the due red clearance ends, in time order; True if one is stamped exactly t."""
        due = self._rc_due
        if not due:
            return False
        ends = []
        p = 0
        while due:
            if due & 1:
                ends.append((ticks_add(self._rc_start[p], self.max_red_clear_us), p + 1))
            due >>= 1
            p += 1
        if len(ends) > 1:
            ref = ends[0][0]
            ends.sort(key=lambda e: (ticks_diff(e[0], ref), e[1]))
        at_t = False
        for when, phase in ends:
            out.append((when, END_RED_CLEAR, phase))
            at_t = at_t or when == t
        self._rc &= ~self._rc_due
        self._rc_due = 0
        return at_t
