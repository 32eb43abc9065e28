"""Per-lane loop measures over an interval (REFERENCE.md §5): volume, flow, occupancy, headway, gap,
dual-loop trap speed and vehicle length, single-loop speed estimate.

Sans-IO and allocation-light: fed clean edges (and fault items) from firmware.presence_filter, one
lane at a time; accumulators are plain ints preallocated in the object, no per-vehicle lists unless
keep_records is set (for tests). Times are ticks_us values, compared only through ticks_diff.

Loop A is the counting loop (volume, occupancy, headway, gap all come from it); loop B, when there is
a trap, trails A by spacing_ft between leading edges. Interval rules:
- volume = vehicles whose leading edge at A fell in [start, end);
- occupancy = on-time at A inside the interval / T, a vehicle straddling a boundary is split;
- headway / gap are attributed to the interval of the later leading edge (the first vehicle after
  start, or after a fault, has none; headways longer than max_headway_us are not measured);
- trap speed and length are attributed to the interval in which the vehicle leaves loop B
  (A and B are paired there, when both on-times are known).
A measure that is undefined is None (no vehicles: no speed, no headway), never a pretend 0.

Feeding: edges of both loops in time order (merge the two filters' outputs by timestamp; each is
in order already). A and B are paired oldest-first, checked by on-times and implied vehicle
length; a B actuation with no plausible A is counted unmatched, never a speed (see _match).

Intervals align to gateway time: the caller calls close_interval(boundary) once every edge stamped
before the boundary has been fed, and feeds edges stamped at or after it only afterwards. With a
PresenceFilter in front, poll it at boundary + debounce_us and split its output at the boundary
(tests/portable/check_traffic.py run_synthetic does exactly this). An edge stamped before the
current interval's start is still taken (into this interval) and counted as late.

Allocation: per vehicle only transient objects (a float speed and length on trap lanes); the
result of close_interval is one new IntervalMeasures per interval.
"""

from firmware.presence_filter import PresenceFault, SUPPRESSING
from protocols.ticks import ticks_diff

LOOP_A = 0
LOOP_B = 1

_US_PER_HOUR = 3600000000
_FT_PER_MILE = 5280
# ft/us -> mph: D_ft / dt_us * this.
_MPH_PER_FT_PER_US = _US_PER_HOUR / _FT_PER_MILE


class IntervalMeasures:
    """One lane's measures over [start_us, end_us); None where a measure is undefined."""

    __slots__ = ("start_us", "end_us", "duration_us", "volume", "flow_vph", "on_time_us",
                 "occupancy_pct", "mean_headway_s", "mean_gap_s", "headway_count", "speed_mph",
                 "speed_source", "speed_count", "speed_est_mph", "mean_length_ft",
                 "unmatched_a", "unmatched_b", "late_edges", "faults_a", "faults_b", "valid")

    def as_dict(self):
        return dict((name, getattr(self, name)) for name in IntervalMeasures.__slots__)

    def __repr__(self):
        return "IntervalMeasures(%r)" % (self.as_dict(),)


class LaneMeasures:
    """One lane with loop A only (single-loop) or loops A and B (speed trap: spacing_ft given).

    g_ft is the effective vehicle length of the single-loop estimate (vehicle + detection zone;
    22 ft is the PeMS default). A trap reading must be plausible: speed within
    min/max_speed_mph, on-times at A and B within on_time_tolerance of each other, implied
    vehicle length within min/max_length_ft; a B actuation that pairs with no A actuation that
    way is "unmatched", never a speed (see _match).

    speed_mph is the trap mean (speed_source "trap") on a trap lane and the single-loop estimate
    v = q * g / occupancy (speed_source "estimate") on a single-loop lane; speed_est_mph carries
    the estimate on both.
    """

    def __init__(self, start_us, spacing_ft=None, loop_length_ft=6.0, g_ft=22.0,
                 min_speed_mph=3.0, max_speed_mph=150.0, min_length_ft=2.0, max_length_ft=120.0,
                 on_time_tolerance=0.3, max_headway_us=1 << 28, keep_records=False,
                 pending_slots=4):
        self.spacing_ft = spacing_ft
        self.loop_length_ft = loop_length_ft
        self.g_ft = g_ft
        self.max_headway_us = max_headway_us
        self.min_length_ft = min_length_ft
        self.max_length_ft = max_length_ft
        # How far the on-times of one vehicle at A and at B may differ (fraction of the longer):
        # loops differ in sensitivity and a vehicle changes speed a little over the trap.
        # (unverified default: configurable)
        self.on_time_tolerance = on_time_tolerance
        self.trap = spacing_ft is not None
        if self.trap:
            self._mph_k = spacing_ft * _MPH_PER_FT_PER_US  # mph = _mph_k / dt_us
            self._min_dt = int(self._mph_k / max_speed_mph)
            self._max_dt = int(self._mph_k / min_speed_mph) + 1
        # A actuations awaiting their B leading edge: a tiny ring (oldest at _pend_head) of
        # leading edges and on-times (-1 while the vehicle is still on A).
        self._pend = [0] * pending_slots
        self._pend_dur = [-1] * pending_slots
        self._pend_head = 0
        self._pend_n = 0
        self.records = [] if keep_records else None
        self.counters = {"vehicles": 0, "unmatched_a": 0, "unmatched_b": 0, "late_edges": 0,
                         "ignored_edges": 0, "bad_boundaries": 0}
        self._start = start_us
        self._faults_a = 0      # active fault bits per loop
        self._faults_b = 0
        self._a_on = False
        self._a_from = 0        # where the open actuation's on-time is counted from
        self._a_on_t = 0        # its leading edge
        self._lead = None       # previous leading edge at A (for headway)
        self._last_off = 0      # its trailing edge (for gap)
        self._b_on = False
        self._b_on_t = 0
        self._reset(start_us)

    def _reset(self, start_us):
        self._start = start_us
        self._volume = 0
        self._on_us = 0
        self._hw_sum = 0
        self._hw_n = 0
        self._gap_sum = 0
        self._gap_n = 0
        self._speed_sum = 0.0
        self._len_sum = 0.0
        self._speed_n = 0
        self._unmatched_a = 0
        self._unmatched_b = 0
        self._late = 0
        self._seen_a = self._faults_a   # faults active at any time in the interval
        self._seen_b = self._faults_b

    # -- input -------------------------------------------------------------------------------

    def apply(self, loop, item):
        """Route one PresenceFilter output item (edge tuple or PresenceFault) for `loop`."""
        if isinstance(item, PresenceFault):
            self.fault(loop, item.kind, item.active, item.t_us)
        else:
            self.edge(loop, item[0], item[1])

    def edge(self, loop, level, t_us):
        if loop == LOOP_A:
            self._edge_a(level, t_us)
        elif self.trap:
            self._edge_b(level, t_us)
        else:
            self.counters["ignored_edges"] += 1

    def fault(self, loop, kind, active, t_us):
        """A fault raised or cleared on `loop` (PresenceFilter's kinds and times).

        stuck_on and chatter drop the actuation in progress and void every interval they touch:
        on A the interval's measures are None and valid is False; on B only the trap speed and
        length are None. stuck_off voids nothing (no actuation was withheld) but is flagged in
        faults_a / faults_b, so a consumer can tell a quiet road from a suspect loop.
        """
        if loop == LOOP_A:
            if not active:
                self._faults_a &= ~kind
                return
            self._faults_a |= kind
            self._seen_a |= kind
            if kind & SUPPRESSING:
                self._a_on = False          # the actuation in progress is not a vehicle
                self._lead = None           # and no headway spans the fault
                self._pend_n = 0
        elif self.trap:
            if not active:
                self._faults_b &= ~kind
                return
            self._faults_b |= kind
            self._seen_b |= kind
            if kind & SUPPRESSING:
                self._b_on = False

    def _late_clamp(self, t):
        if ticks_diff(t, self._start) < 0:
            self._late += 1
            self.counters["late_edges"] += 1
            return self._start
        return t

    def _edge_a(self, level, t):
        if self._faults_a & SUPPRESSING:
            self.counters["ignored_edges"] += 1
            return
        tc = self._late_clamp(t)
        if level:
            if self._a_on:
                self.counters["ignored_edges"] += 1
                return
            self._a_on = True
            self._a_from = tc
            self._a_on_t = t
            self._volume += 1
            self.counters["vehicles"] += 1
            if self._lead is not None:
                h = ticks_diff(t, self._lead)
                if 0 < h <= self.max_headway_us:
                    self._hw_sum += h
                    self._hw_n += 1
                    g = ticks_diff(t, self._last_off)
                    if g >= 0:
                        self._gap_sum += g
                        self._gap_n += 1
            self._lead = t
            if self.trap:
                self._push_pending(t)
        else:
            if not self._a_on:
                self.counters["ignored_edges"] += 1
                return
            d = ticks_diff(tc, self._a_from)
            if d > 0:
                self._on_us += d
            self._a_on = False
            self._last_off = t
            if self._pend_n:
                newest = (self._pend_head + self._pend_n - 1) % len(self._pend)
                if self._pend[newest] == self._a_on_t:
                    self._pend_dur[newest] = ticks_diff(t, self._a_on_t)

    def _edge_b(self, level, t):
        if self._faults_b & SUPPRESSING:
            self.counters["ignored_edges"] += 1
            return
        if level:
            if self._b_on:
                self.counters["ignored_edges"] += 1
                return
            self._b_on = True
            self._b_on_t = t
            return
        if not self._b_on:
            self.counters["ignored_edges"] += 1
            return
        self._b_on = False
        on_b = ticks_diff(t, self._b_on_t)
        i = self._match(self._b_on_t, on_b)
        if i < 0:
            self._unmatched_b += 1
            self.counters["unmatched_b"] += 1
            return
        a = self._pend[i]
        dt = ticks_diff(self._b_on_t, a)
        speed = self._mph_k / dt
        length = self._length(self._pend_dur[i] + on_b, dt)
        self._speed_sum += speed
        self._len_sum += length
        self._speed_n += 1
        if self.records is not None:
            self.records.append((a, dt, speed, length))

    # -- A/B pairing -------------------------------------------------------------------------

    def _length(self, on_a_plus_b, dt):
        # length = v * on-time - loop length with v = D / dt (REFERENCE.md §5), on-time the mean
        # of the two loops' (they see the same vehicle at the same speed).
        return self.spacing_ft * on_a_plus_b / (2 * dt) - self.loop_length_ft

    def _push_pending(self, t):
        size = len(self._pend)
        if self._pend_n == size:            # ring full: the oldest will never be matched
            self._pend_head = (self._pend_head + 1) % size
            self._pend_n -= 1
            self._count_unmatched_a(1)
        i = (self._pend_head + self._pend_n) % size
        self._pend[i] = t
        self._pend_dur[i] = -1
        self._pend_n += 1

    def _count_unmatched_a(self, n):
        self._unmatched_a += n
        self.counters["unmatched_a"] += n

    def _expire_pending(self, t):
        # While B is on, only what is too old for the B actuation in progress can go.
        if self._b_on and ticks_diff(self._b_on_t, t) < 0:
            t = self._b_on_t
        size = len(self._pend)
        while self._pend_n and ticks_diff(t, self._pend[self._pend_head]) > self._max_dt:
            self._pend_head = (self._pend_head + 1) % size
            self._pend_n -= 1
            self._count_unmatched_a(1)

    def _match(self, b_on, on_b):
        """Slot of the pending A actuation the finished B actuation (b_on, on_b) belongs to, taken
        out of the ring, or -1 (an unmatched B, the ring untouched).

        Decided at B's trailing edge, when both on-times are known. Vehicles do not overtake
        between the loops, so candidates are tried oldest first (two short vehicles can both be
        between the loops in slow traffic). A candidate is the same vehicle only if its speed is
        in range, it has left A (it left A before B), the two on-times agree within
        on_time_tolerance, and the implied length is within min/max_length_ft. Candidates older
        than the one accepted are vehicles B never saw (lane changers, misses): unmatched A. This
        keeps one missed or stray detection from shifting every later pairing by one vehicle.
        """
        self._expire_pending(b_on)
        size = len(self._pend)
        for k in range(self._pend_n):
            i = (self._pend_head + k) % size
            dt = ticks_diff(b_on, self._pend[i])
            dur = self._pend_dur[i]
            if dt < self._min_dt or dur < 0:
                break                       # this one and every newer one came too late
            if abs(dur - on_b) > self.on_time_tolerance * max(dur, on_b):
                continue
            length = self._length(dur + on_b, dt)
            if not self.min_length_ft <= length <= self.max_length_ft:
                continue
            self._count_unmatched_a(k)
            self._pend_head = (i + 1) % size
            self._pend_n -= k + 1
            return i
        return -1

    # -- output ------------------------------------------------------------------------------

    def close_interval(self, t_us):
        """Close the interval ending at boundary t_us and return its IntervalMeasures.

        Returns None (counted as a bad boundary) when t_us is not after the interval's start;
        the interval then restarts at t_us.
        """
        duration = ticks_diff(t_us, self._start)
        if duration <= 0:
            self.counters["bad_boundaries"] += 1
            self._reset(t_us)
            return None
        if self._a_on:                      # split the straddling vehicle at the boundary
            d = ticks_diff(t_us, self._a_from)
            if d > 0:
                self._on_us += d
            self._a_from = t_us
        if self.trap:
            self._expire_pending(t_us)
        if self._lead is not None and ticks_diff(t_us, self._lead) > self.max_headway_us:
            self._lead = None               # before ticks_diff could alias it
        m = IntervalMeasures()
        m.start_us = self._start
        m.end_us = t_us
        m.duration_us = duration
        m.faults_a = self._seen_a
        m.faults_b = self._seen_b
        m.unmatched_a = self._unmatched_a
        m.unmatched_b = self._unmatched_b
        m.late_edges = self._late
        m.valid = not self._seen_a & SUPPRESSING
        self._fill(m, duration)
        self._reset(t_us)
        return m

    def _fill(self, m, duration):
        m.volume = m.flow_vph = m.on_time_us = m.occupancy_pct = None
        m.mean_headway_s = m.mean_gap_s = m.speed_mph = m.speed_source = None
        m.speed_est_mph = m.mean_length_ft = None
        m.headway_count = m.speed_count = 0
        if not m.valid:
            return
        n = self._volume
        on = self._on_us
        m.volume = n
        m.flow_vph = n * _US_PER_HOUR / duration
        m.on_time_us = on
        m.occupancy_pct = on * 100.0 / duration
        m.headway_count = self._hw_n
        if self._hw_n:
            m.mean_headway_s = self._hw_sum / self._hw_n / 1e6
        if self._gap_n:
            m.mean_gap_s = self._gap_sum / self._gap_n / 1e6
        if n and on:
            # v = q * g / occupancy; T cancels: N*3600/T * g / (on/T) = N * g * 3600 / on.
            m.speed_est_mph = n * self.g_ft * _MPH_PER_FT_PER_US / on
        if not self.trap:
            if m.speed_est_mph is not None:
                m.speed_mph = m.speed_est_mph
                m.speed_source = "estimate"
            return
        if self._speed_n and not self._seen_b & SUPPRESSING:
            m.speed_count = self._speed_n
            m.speed_mph = self._speed_sum / self._speed_n
            m.mean_length_ft = self._len_sum / self._speed_n
            m.speed_source = "trap"
