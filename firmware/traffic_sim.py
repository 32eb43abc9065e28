"""A small deterministic synthetic traffic generator: vehicles crossing loops, with ground truth.

Used by the checks (under CPython and MicroPython alike) and by emulators. Everything is integer:
lengths in thousandths of a foot, speeds in thousandths of a mph, times in microseconds, and the
PRNG is our own xorshift32 (MicroPython's random differs from CPython's), so a seed gives the same
vehicles, edges and truth on both runtimes. Times inside a run are offsets from its start; wrap()
turns one into a ticks_us value (wrapping at 2**30, like ticks_us on a board).

Per lane: arrivals are the previous vehicle's on-time plus a gap (a minimum plus a uniform draw
sized for the demanded flow, so vehicles never overlap on a loop), speeds are uniform in a range,
lengths come from weighted classes. Loop B (if any) sees each vehicle spacing_ft later at the same
speed. Optional glitches (raw edges that revert within debounce) test the PresenceFilter.
"""

from protocols.ticks import TICKS_PERIOD

_MASK = TICKS_PERIOD - 1


class XorShift32:
    """Marsaglia's xorshift32 (13, 17, 5): tiny, portable, good enough for synthetic traffic."""

    def __init__(self, seed):
        self.state = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def between(self, lo, hi):
        """An int in [lo, hi] (modulo bias is far below anything a check looks at)."""
        if hi <= lo:
            return lo
        return lo + self.next() % (hi - lo + 1)


def milli(x):
    """Feet or mph to thousandths, exactly for ints and to the nearest for floats."""
    if isinstance(x, int):
        return x * 1000
    return int(x * 1000 + 0.5)


def travel_us(distance_mft, speed_mmph):
    """Time to cover distance_mft (1/1000 ft) at speed_mmph (1/1000 mph), rounded to the us.

    ft/s = mph * 5280 / 3600 = mph * 22 / 15, so t_us = d_ft * 15e6 / (22 * v_mph).
    """
    num = distance_mft * 15000000
    den = 22 * speed_mmph
    return (2 * num + den) // (2 * den)


def on_time_us(vehicle_ft, loop_ft, speed_mph):
    """Presence time of a vehicle over a loop: (vehicle + loop length) / speed (REFERENCE.md §5)."""
    return travel_us(milli(vehicle_ft) + milli(loop_ft), milli(speed_mph))


class LaneSpec:
    """Demand and geometry of one simulated lane (spacing_ft None: a single loop)."""

    def __init__(self, flow_vph=900, speed_mph=(45, 70), length_classes=((85, 14, 19), (15, 28, 60)),
                 spacing_ft=None, loop_ft=6, min_gap_us=600000, glitch_per_mille=0):
        self.flow_vph = flow_vph
        self.speed_mph = speed_mph
        self.length_classes = length_classes    # (weight, min ft, max ft)
        self.spacing_ft = spacing_ft
        self.loop_ft = loop_ft
        self.min_gap_us = min_gap_us
        self.glitch_per_mille = glitch_per_mille


class Vehicle:
    """One vehicle's exact edges (offsets in us; b_* None without a trap) and true speed/length."""

    __slots__ = ("a_on", "a_off", "b_on", "b_off", "speed_mmph", "length_mft")

    def __init__(self, a_on, a_off, b_on, b_off, speed_mmph, length_mft):
        self.a_on = a_on
        self.a_off = a_off
        self.b_on = b_on
        self.b_off = b_off
        self.speed_mmph = speed_mmph
        self.length_mft = length_mft


def _draw_length(rng, classes):
    total = 0
    for c in classes:
        total += c[0]
    pick = rng.between(0, total - 1)
    for weight, lo, hi in classes:
        if pick < weight:
            return rng.between(milli(lo), milli(hi))
        pick -= weight
    return milli(classes[-1][1])


def simulate_lane(spec, rng, duration_us):
    """Vehicles whose leading edge at A falls in [0, duration_us), in arrival order."""
    loop = milli(spec.loop_ft)
    spacing = None if spec.spacing_ft is None else milli(spec.spacing_ft)
    smin, smax = milli(spec.speed_mph[0]), milli(spec.speed_mph[1])
    # Size the uniform gap so the mean headway is about 3600 s / flow.
    mean_len = 0
    weights = 0
    for weight, lo, hi in spec.length_classes:
        mean_len += weight * (milli(lo) + milli(hi)) // 2
        weights += weight
    mean_on = travel_us(mean_len // weights + loop, (smin + smax) // 2)
    slack = 3600000000 // spec.flow_vph - mean_on - spec.min_gap_us
    if slack < 0:
        slack = 0
    vehicles = []
    t = rng.between(0, 2 * slack) + spec.min_gap_us // 2
    prev = None
    while t < duration_us:
        speed = rng.between(smin, smax)
        length = _draw_length(rng, spec.length_classes)
        on = travel_us(length + loop, speed)
        if spacing is not None:
            trap = travel_us(spacing, speed)
            # A faster vehicle catches up between the loops: keep it min_gap behind at B too.
            if prev is not None and t + trap < prev.b_off + spec.min_gap_us:
                t = prev.b_off + spec.min_gap_us - trap
                if t >= duration_us:
                    break
            v = Vehicle(t, t + on, t + trap, t + trap + on, speed, length)
        else:
            v = Vehicle(t, t + on, None, None, speed, length)
        vehicles.append(v)
        prev = v
        t = t + on + spec.min_gap_us + rng.between(0, 2 * slack)
    return vehicles


def _edges_with_glitches(pairs, rng, per_mille, debounce_us):
    """Raw (offset, level) edges for presence pairs (on, off), plus glitches; returns (edges, n).

    A glitch is a raw pulse shorter than debounce_us placed at least debounce_us after an edge (so
    it cannot swallow that edge) and well clear of the next one: inside a presence (a dropout) or
    in the gap after it (a spurious pulse).
    """
    edges = []
    glitches = 0
    for i in range(len(pairs)):
        on, off = pairs[i]
        edges.append((on, 1))
        inside = per_mille and rng.between(0, 999) < per_mille
        outside = per_mille and rng.between(0, 999) < per_mille
        width = rng.between(500, debounce_us - 500) if per_mille else 0
        if inside:
            at = on + debounce_us + rng.between(1000, 20000)
            if at + width + 1000 < off:
                edges.append((at, 0))
                edges.append((at + width, 1))
                glitches += 1
        edges.append((off, 0))
        if outside:
            at = off + debounce_us + rng.between(1000, 20000)
            nxt = pairs[i + 1][0] if i + 1 < len(pairs) else at + width + 2 * debounce_us + 1
            if at + width + debounce_us + 1000 < nxt:
                edges.append((at, 1))
                edges.append((at + width, 0))
                glitches += 1
    return edges, glitches


class TrafficRun:
    """A simulated stretch of road: lanes of vehicles, the raw edges at every loop, the truth."""

    def __init__(self, specs, seed, duration_us, t0_us=0, debounce_us=20000):
        self.specs = specs
        self.duration_us = duration_us
        self.t0_us = t0_us & _MASK
        rng = XorShift32(seed)
        self.lanes = []
        self.channels = []          # channel index -> (lane index, loop 0 = A / 1 = B)
        self.glitches = []          # per channel
        events = []                 # (offset, channel, level)
        for li in range(len(specs)):
            spec = specs[li]
            vehicles = simulate_lane(spec, rng, duration_us)
            self.lanes.append(vehicles)
            loops = [[(v.a_on, v.a_off) for v in vehicles]]
            if spec.spacing_ft is not None:
                loops.append([(v.b_on, v.b_off) for v in vehicles])
            for loop in range(len(loops)):
                ch = len(self.channels)
                self.channels.append((li, loop))
                edges, n = _edges_with_glitches(loops[loop], rng, spec.glitch_per_mille,
                                                debounce_us)
                self.glitches.append(n)
                for t, level in edges:
                    events.append((t, ch, level))
        events.sort()
        self.raw = events

    def wrap(self, offset_us):
        """The ticks_us value of a run offset."""
        return (self.t0_us + offset_us) & _MASK

    def truth(self, lane, interval_us, count, max_headway_us=1 << 28):
        """Exact per-interval truth for `lane` over `count` intervals from the run's start.

        Rows: volume, on_us (A on-time inside the interval, split at boundaries), speeds_mph and
        lengths_ft (trap lanes: vehicles leaving B in the interval), headways_us and gaps_us
        (attributed to the later leading edge), following LaneMeasures' attribution rules.
        """
        rows = []
        for _ in range(count):
            rows.append({"volume": 0, "on_us": 0, "speeds_mph": [], "lengths_ft": [],
                         "headways_us": [], "gaps_us": []})
        end = interval_us * count
        prev = None
        for v in self.lanes[lane]:
            if v.a_on < end:
                row = rows[v.a_on // interval_us]
                row["volume"] += 1
                if prev is not None and v.a_on - prev.a_on <= max_headway_us:
                    row["headways_us"].append(v.a_on - prev.a_on)
                    row["gaps_us"].append(v.a_on - prev.a_off)
            k = v.a_on // interval_us
            while k < count and k * interval_us < v.a_off:
                lo = max(v.a_on, k * interval_us)
                hi = min(v.a_off, (k + 1) * interval_us)
                rows[k]["on_us"] += hi - lo
                k += 1
            if v.b_off is not None and v.b_off < end:
                row = rows[v.b_off // interval_us]
                row["speeds_mph"].append(v.speed_mmph / 1000)
                row["lengths_ft"].append(v.length_mft / 1000)
            prev = v
        return rows
