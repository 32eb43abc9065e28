"""Debounce and fault detection for one loop-detector presence channel (REFERENCE.md §5).

Sans-IO: the driver hands over raw edges (level, t_us) from its IRQ queue, in time order, and calls
poll(t_us) now and then (about once a second); both return, in time order, clean edges (level, t_us)
and PresenceFault items. Times are ticks_us values, compared only through ticks_diff (they wrap at
2**30 us, ~17.9 min), so feed or poll a channel at least every ~7 minutes.

Debounce: a raw edge becomes a clean edge only once the level has held for debounce_us; an edge
that reverts sooner is dropped with its revert, and counted ("bounces"). A clean edge keeps its raw
timestamp, so on-times stay exact; the price is that output lags the input by debounce_us. Hence
after poll(t) every clean edge stamped at or before t - debounce_us has been handed out.

Faults (the NEMA TS 2 detector diagnostics, thresholds configurable, None disables one):
- stuck_on: presence held longer than stuck_on_us ("max presence"); clears at the next off edge.
- stuck_off: no actuation (clean on edge) for stuck_off_us while off ("no activity": a dead loop,
  or simply no traffic); clears at the next on edge, which is then a real actuation.
- chatter: more than chatter_per_min raw transitions within any 60 s ("erratic output"); clears
  once the trailing 60 s hold at most half that many. Raw transitions are counted, bounces included,
  because a line that bounces a lot is unhealthy even when debounce hides it.
A fault is raised at the exact moment its condition became true (not at the poll that noticed it).

Output contract, which is what keeps a faulted channel from being counted as vehicles: clean edges
alternate on/off and the first one handed out is an on edge. While stuck_on or chatter is active no
edge is handed out; raising either abandons any actuation in progress (the consumer drops it), and
after the fault clears, edges resume with the next on edge (the tail of an actuation that began
during the fault is swallowed). stuck_off suppresses nothing: there is nothing to suppress.
"""

from protocols.ticks import ticks_add, ticks_diff

# Fault kinds are bits so a consumer can keep the set of active faults in one int.
STUCK_ON = 1
STUCK_OFF = 2
CHATTER = 4
_NAMES = {STUCK_ON: "stuck_on", STUCK_OFF: "stuck_off", CHATTER: "chatter"}
_RING_START = 16  # first size of the chatter ring (it doubles up to chatter_per_min + 1)
# Faults during which actuations are not vehicles.
SUPPRESSING = STUCK_ON | CHATTER

_CHATTER_WINDOW_US = 60000000  # "per minute"
# Long thresholds (stuck-off is often tens of minutes) exceed what one ticks_diff can span (2**29),
# so elapsed time is counted in laps of this many us; 2**26 leaves ~7 min between updates.
_LAP_US = 1 << 26


def fault_name(kind):
    return _NAMES.get(kind, "unknown")


class PresenceFault:
    """Fault `kind` (STUCK_ON, STUCK_OFF, CHATTER) raised (active=True) or cleared at t_us."""

    __slots__ = ("kind", "active", "t_us")

    def __init__(self, kind, active, t_us):
        self.kind = kind
        self.active = active
        self.t_us = t_us

    def __eq__(self, other):
        return (isinstance(other, PresenceFault) and self.kind == other.kind
                and self.active == other.active and self.t_us == other.t_us)

    def __repr__(self):
        return "PresenceFault(%s, %s, %d)" % (fault_name(self.kind), self.active, self.t_us)


class _Timer:
    """Time elapsed since `start`, beyond one ticks_diff span: whole laps plus a remainder."""

    __slots__ = ("start", "_ref", "_laps")

    def __init__(self):
        self.restart(0)

    def restart(self, t):
        self.start = t
        self._ref = t
        self._laps = 0

    def reached(self, t, threshold):
        """True once at least threshold = (laps, rem) has elapsed at t (t never goes backwards)."""
        d = ticks_diff(t, self._ref)
        while d >= _LAP_US:
            self._ref = ticks_add(self._ref, _LAP_US)
            self._laps += 1
            d -= _LAP_US
        laps, rem = threshold
        return self._laps > laps or (self._laps == laps and d >= rem)


def _split(threshold_us):
    if threshold_us is None or threshold_us <= 0:
        return None
    return (threshold_us // _LAP_US, threshold_us % _LAP_US)


class PresenceFilter:
    """One channel: raw edges in, clean edges and PresenceFault items out (see the module doc)."""

    def __init__(self, debounce_us, stuck_on_us, stuck_off_us, chatter_per_min):
        self.debounce_us = debounce_us
        self.stuck_on_us = stuck_on_us
        self.stuck_off_us = stuck_off_us
        self._stuck_on = _split(stuck_on_us)
        self._stuck_off = _split(stuck_off_us)
        # Raw transition times of the last 60 s (at most chatter_per_min + 1, oldest at _ring_i):
        # chatter is when it holds _ring_cap of them. Entries are dropped as they age past 60 s,
        # long before ticks_diff could alias them. The list starts small and doubles (to at most
        # _ring_cap) only when a minute's transitions need it: a loop at 900 veh/h makes ~30 a
        # minute, so the 121 slots of the default 120/min limit would mostly be empty (0.5 KB
        # per loop on a 32-bit board).
        self._ring_cap = chatter_per_min + 1 if chatter_per_min else 0
        self._ring = [0] * min(_RING_START, self._ring_cap) if chatter_per_min else None
        self._ring_i = 0
        self._ring_n = 0
        self.counters = {
            "raw_edges": 0, "duplicates": 0, "out_of_order": 0, "bounces": 0, "edges": 0,
            "suppressed": 0, "stuck_on": 0, "stuck_off": 0, "chatter": 0,
        }
        self.level = 0          # clean (debounced) level
        self.faults = 0         # active fault bits
        self._raw = 0           # last raw level seen
        self._pend = None       # time of the unconfirmed raw edge (its level is 1 - level)
        self._out = 0           # level of the last edge handed out
        self._last = None       # newest time fed or polled; None until started
        self._on_timer = _Timer()
        self._quiet_timer = _Timer()

    def start(self, t_us, level=0):
        """Begin at t_us with the line at `level` (otherwise the first feed/poll starts it)."""
        self.level = self._raw = 1 if level else 0
        self._pend = None
        self._last = t_us
        self._on_timer.restart(t_us)
        self._quiet_timer.restart(t_us)

    def feed(self, level, t_us, out=None):
        """One raw edge from the IRQ queue; returns `out` (a new list if None) with new items."""
        if out is None:
            out = []
        level = 1 if level else 0
        c = self.counters
        c["raw_edges"] += 1
        if self._last is None:
            self.start(t_us, 1 - level)
        elif ticks_diff(t_us, self._last) < 0:
            c["out_of_order"] += 1
            return out
        self._last = t_us
        self._advance(t_us, out)
        if level == self._raw:
            c["duplicates"] += 1
            return out
        self._raw = level
        if self._pend is not None:
            # Back to the clean level before debounce_us: the pending edge was a bounce. The level
            # never changed, so timed faults held back for it are judged up to now.
            self._pend = None
            c["bounces"] += 1
            self._timed(t_us, out)
        else:
            self._pend = t_us
        if self._ring is not None:
            self._note_transition(t_us, out)
        return out

    def poll(self, t_us, out=None):
        """Confirm what has held for debounce_us and raise/clear timed faults up to t_us."""
        if out is None:
            out = []
        if self._last is None:
            self.start(t_us, 0)
        elif ticks_diff(t_us, self._last) < 0:
            self.counters["out_of_order"] += 1
            return out
        self._last = t_us
        self._advance(t_us, out)
        return out

    def confirm_at(self):
        """The time (ticks_us) a poll at or after which confirms the pending raw edge if the line
        holds, or None when no edge is pending."""
        return None if self._pend is None else ticks_add(self._pend, self.debounce_us)

    # -- internals ---------------------------------------------------------------------------

    def _advance(self, t, out):
        pend = self._pend
        if pend is not None and ticks_diff(t, pend) >= self.debounce_us:
            self._timed(pend, out)
            self._pend = None
            self._confirm(pend, out)
        # Timed faults are judged only up to an unconfirmed edge, which may still change the level:
        # that keeps every item handed out in time order.
        self._timed(t if self._pend is None else self._pend, out)

    def _timed(self, t, out):
        raise_kind = 0
        raise_t = 0
        if self.level:
            if (self._stuck_on is not None and not self.faults & STUCK_ON
                    and self._on_timer.reached(t, self._stuck_on)):
                raise_kind = STUCK_ON
                raise_t = ticks_add(self._on_timer.start, self.stuck_on_us)
        elif (self._stuck_off is not None and not self.faults & STUCK_OFF
              and self._quiet_timer.reached(t, self._stuck_off)):
            raise_kind = STUCK_OFF
            raise_t = ticks_add(self._quiet_timer.start, self.stuck_off_us)
        clear_t = None
        if self.faults & CHATTER:
            clear_t = self._chatter_clear_time()
            if ticks_diff(t, clear_t) < 0:
                clear_t = None
        if clear_t is not None and (not raise_kind or ticks_diff(clear_t, raise_t) <= 0):
            self._clear(CHATTER, clear_t, out)
            clear_t = None
        if raise_kind:
            self._raise(raise_kind, raise_t, out)
        if clear_t is not None:
            self._clear(CHATTER, clear_t, out)
        if self._ring is not None:
            self._prune(t)

    def _confirm(self, t, out):
        level = 1 - self.level
        self.level = level
        if level:
            self._on_timer.restart(t)
            if self.faults & STUCK_OFF:
                self._clear(STUCK_OFF, t, out)
        else:
            self._quiet_timer.restart(t)
            if self.faults & STUCK_ON:
                self._clear(STUCK_ON, t, out)
        if self.faults & SUPPRESSING or level == self._out:
            self.counters["suppressed"] += 1
            return
        self._out = level
        self.counters["edges"] += 1
        out.append((level, t))

    def _prune(self, t):
        ring = self._ring
        while self._ring_n and ticks_diff(t, ring[self._ring_i]) >= _CHATTER_WINDOW_US:
            self._ring_i = (self._ring_i + 1) % len(ring)
            self._ring_n -= 1

    def _note_transition(self, t, out):
        self._prune(t)
        ring = self._ring
        size = len(ring)
        n = self._ring_n
        if n == size and size < self._ring_cap:  # grow: oldest first, at index 0
            i = self._ring_i
            grown = [ring[(i + k) % size] for k in range(n)]
            grown.extend([0] * (min(2 * size, self._ring_cap) - n))
            self._ring = ring = grown
            self._ring_i = 0
            size = len(ring)
        if n == size:                # only while chatter is already raised
            self._ring_i = (self._ring_i + 1) % size
            self._ring_n -= 1
        ring[(self._ring_i + self._ring_n) % size] = t
        self._ring_n += 1
        if not self.faults & CHATTER and self._ring_n == self._ring_cap:
            self._raise(CHATTER, t, out)

    def _chatter_clear_time(self):
        # Hysteresis: clear once the trailing minute holds at most half the limit, i.e. when the
        # (limit // 2 + 1)-th newest transition is a full minute old. (Pruning never removes that
        # one before this has been judged, so the fallback is only defensive.)
        ring = self._ring
        size = len(ring)
        keep = (self._ring_cap - 1) // 2 + 1
        if self._ring_n < keep:
            return self._last
        return ticks_add(ring[(self._ring_i + self._ring_n - keep) % size], _CHATTER_WINDOW_US)

    def _raise(self, kind, t, out):
        self.faults |= kind
        self.counters[_NAMES[kind]] += 1
        if kind & SUPPRESSING:
            self._out = 0  # the consumer drops the actuation in progress
        out.append(PresenceFault(kind, True, t))

    def _clear(self, kind, t, out):
        self.faults &= ~kind
        out.append(PresenceFault(kind, False, t))
