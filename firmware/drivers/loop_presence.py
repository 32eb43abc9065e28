"""Loop detector presence outputs on node input pins: one lane, one loop (pins [A]) or a speed trap
(pins [A, B]) (REFERENCE.md §5).

Edges go IRQ -> EdgeQueue -> this driver's task -> one PresenceFilter per loop (debounce, stuck
and chatter diagnostics) -> LaneMeasures. The task emits a detector on/off event (Indiana codes
82/81, parameter = the loop's detector channel) for every clean edge, and at every interval
boundary aligned to gateway time (node.clock.ms_to_boundary) the interval's measures as samples
on "<device id>/<stream>": volume, flow, occupancy, speed, headway, gap, length, as the profile's
streams list them. A measure that is undefined (no vehicles: no speed) is not sent that interval.
A fault that voids traffic is never published as traffic: an interval touched by a stuck-on or
chattering loop A gets fault samples on volume and occupancy (FAULT_STUCK for stuck-on,
FAULT_SENSOR for chatter, detail = the fault bits of loop A | loop B << 4) and nothing else; such a
fault on loop B alone turns only speed and length into fault samples.

Timing. An edge is final only once the line has held for the debounce time, so the task polls
the filters at now - LAG_US (edges that reach the queue later than that after their own timestamp
are counted out of order: on a board the IRQ is microseconds, in the harness the control channel
is milliseconds; a HAL may set EDGE_LAG_US). While an edge is pending the task wakes the moment
it can be confirmed, so a detector event leaves debounce + lag after its edge instead of at the
next tick (every TICK_S one ticker task of the node steps every loop driver, for faults and
intervals; a driver's own task wakes only for edges). It hands the lane, in time order
across both loops, everything stamped before that poll time minus debounce. An interval
[b0, b1) closes once that point has passed b1. The first, partial interval after start is not
published. If the gateway clock is learnt (or steps) mid-run the next boundary moves; a stub
shorter than half an interval joins the next one. Intervals are 1..MAX_INTERVAL_S s (ticks_us
spans).

Device keys: pins, detector (channel per pin; without it no events), trap_spacing_ft (default 20),
loop_length_ft (default 6), interval_s (default: the board's interval_s, else 30), queue (edge ring
slots, default 64). Profile: active_level, debounce_ms, stuck_on_s, stuck_off_s, chatter_per_min,
g_factor_ft, streams.

`timebase` (optional): where time comes from, an object with ticks_us(), ticks_ms() and
async sleep(seconds); the default is the HAL's clock. A test hands a virtual clock in, so edges
stamped minutes apart can be replayed in a second and intervals still close exactly.
"""

import asyncio

from firmware.edge_queue import EdgeQueue
from firmware.presence_filter import (
    STUCK_ON,
    SUPPRESSING,
    PresenceFault,
    PresenceFilter,
    fault_name,
)
from firmware.traffic_measures import LOOP_A, LaneMeasures
from protocols.quality_codes import (
    EVENT_DETECTOR_OFF,
    EVENT_DETECTOR_ON,
    FAULT_SENSOR,
    FAULT_STUCK,
)
from protocols.ticks import ticks_add, ticks_diff

TICK_S = 0.1  # how often the ticker steps each driver with no edge pending (faults, intervals)
# Interval boundaries and on-times are ticks_us values, comparable only within 2**29 us (8.9 min);
# an interval (1.5 of them when a clock step joins a stub) must stay inside that.
MAX_INTERVAL_S = 300
LAG_US = 50000  # how late an edge may reach the queue after its own timestamp (see above)

# Stream name -> IntervalMeasures attribute (a profile stream may name another with "field").
_MEASURES = {
    "volume": "volume", "flow": "flow_vph", "occupancy": "occupancy_pct",
    "speed": "speed_mph", "headway": "mean_headway_s", "gap": "mean_gap_s",
    "length": "mean_length_ft",
}
# Measures a trap's loop B feeds (on a single loop, speed is the estimate from loop A).
_TRAP_ONLY = ("speed_mph", "mean_length_ft")


def _us(seconds):
    return None if seconds is None else int(seconds * 1000000)


class HalTimebase:
    """The node's own clock (one for every loop driver on the node: see _hal_timebase)."""

    def __init__(self, hal):
        self.ticks_us = hal.ticks_us
        self.ticks_ms = hal.ticks_ms
        self.sleep = asyncio.sleep  # itself, not a coroutine around it: one frame less a sleep


def _hal_timebase(node):
    """The HalTimebase of the node's loop drivers (one, so they share one ticker)."""
    tb = getattr(node, "_loop_timebase", None)
    if tb is None:
        tb = node._loop_timebase = HalTimebase(node.hal)
    return tb


def _join_ticker(node, tb, driver):
    """Step `driver` now and then every TICK_S of `tb` time, from the one ticker task of the
    node's loop drivers on `tb`. The ticker steps each driver itself rather than waking its task:
    a task and its frames are ~1 KB of heap, and each wake of a task costs ~0.25 KB of allocation
    on the VM (and a task switch on a board), 10 times a second per lane."""
    tickers = getattr(node, "_loop_tickers", None)
    if tickers is None:
        tickers = node._loop_tickers = []
    for entry in tickers:
        if entry[0] is tb:
            if driver not in entry[1]:  # a restarted run() joins once
                entry[1].append(driver)
            driver._tick()
            return
    drivers = [driver]
    tickers.append([tb, drivers])
    asyncio.create_task(_ticker(tb, drivers))


async def _ticker(tb, drivers):
    # Step the drivers first, then every TICK_S: with a virtual timebase (time that jumps), a
    # sleep that starts after a jump still sees that jump through the step it just made.
    while True:
        for driver in drivers:
            driver._tick()
        await tb.sleep(TICK_S)


class LoopPresenceDriver:
    def __init__(self, device_cfg, profile, node, timebase=None):
        self.node = node
        self.id = device_cfg["id"]
        self._pins = list(device_cfg["pins"])
        n = len(self._pins)
        self._tb = timebase if timebase is not None else _hal_timebase(node)
        self._active = profile.get("active_level", 0)
        self._debounce = int(profile.get("debounce_ms", 20) * 1000)
        self._lag = getattr(node.hal, "EDGE_LAG_US", LAG_US)
        stuck_on = _us(profile.get("stuck_on_s"))
        stuck_off = _us(profile.get("stuck_off_s"))
        chatter = profile.get("chatter_per_min")
        self._filters = []
        for _ in range(n):
            self._filters.append(PresenceFilter(self._debounce, stuck_on, stuck_off, chatter))
        self._held = [[] for _ in range(n)]  # filter output waiting for the lane, per loop
        self._seen = [0] * n  # per loop: the newest time its filter was fed or polled at
        self._out = []  # reused output list of the filters
        detector = device_cfg.get("detector")
        if isinstance(detector, int):
            detector = [detector]
        if detector is not None and len(detector) < n:
            node.config_error("devices.%s.detector" % self.id,
                              "lists %d channels for %d pins; events are off" % (len(detector), n))
            detector = None
        self._detector = detector
        self._trap = n == 2
        self._spacing = device_cfg.get("trap_spacing_ft", 20) if self._trap else None
        self._loop_ft = device_cfg.get("loop_length_ft", 6)
        self._g_ft = profile.get("g_factor_ft", 22)
        interval = device_cfg.get("interval_s", node.config.get("interval_s", 30))
        if not 1 <= interval <= MAX_INTERVAL_S:
            node.config_error("devices.%s.interval_s" % self.id,
                              "loop measures need an interval of 1..%d s; using 30" % MAX_INTERVAL_S)
            interval = 30
        self._interval_ms = int(interval * 1000)
        self._queue = EdgeQueue(int(device_cfg.get("queue", 64)))
        self._flag = node.hal.Flag()
        self._outputs = []  # (sid, IntervalMeasures attribute)
        for s in profile.get("streams", []):
            attr = s.get("field", _MEASURES.get(s["name"]))
            if attr is None:
                node.config_error("profiles.%s.streams.%s" % (profile.get("profile"), s["name"]),
                                  "is not a loop measure (%s)" % ", ".join(_MEASURES))
                continue
            if attr == "mean_length_ft" and not self._trap:
                continue  # no vehicle length without a trap
            sid = node.streams.add(self.id + "/" + s["name"], s.get("unit", ""),
                                   s.get("kind", "gauge"), s.get("dec"))
            self._outputs.append((sid, attr))
        # The driver's own counts; `counters` (HEALTH) adds its filters' and its lane's.
        self._intervals = self._faulted_intervals = self._driver_errors = 0
        self.last_fault = None
        self._lane = None
        self._b_ms = 0  # the boundary that closes the current interval, in ms and us ticks
        self._b_us = 0
        self._publish = False  # the first, partial interval is not published

    # -- tasks -------------------------------------------------------------------------------

    async def run(self):
        tb = self._tb
        now_us = tb.ticks_us()
        now_ms = tb.ticks_ms()
        for ch in range(len(self._filters)):
            self._filters[ch].start(now_us, 0)
            self._seen[ch] = now_us
        self._lane = LaneMeasures(now_us, spacing_ft=self._spacing, loop_length_ft=self._loop_ft,
                                  g_ft=self._g_ft)
        d = self.node.clock.ms_to_boundary(self._interval_ms, now_ms)
        if d < self._interval_ms // 2:
            d += self._interval_ms
        self._b_ms = ticks_add(now_ms, d)
        self._b_us = ticks_add(now_us, d * 1000)
        self.node.hal.InputPins(self._pins, self._queue, self._flag)
        _join_ticker(self.node, tb, self)
        # Woken by an edge (the IRQ's flag), or by the ticker when its step left an edge pending.
        while True:
            await self._flag.wait()
            while True:
                wait_ms = self._safe_step()
                if not wait_ms:
                    break
                # An edge is pending: step again as soon as it can be confirmed. (Edges queued
                # meanwhile are stamped later: none can be confirmed sooner.)
                await tb.sleep(wait_ms / 1000)

    def _tick(self):
        """The ticker's step (fault timing, intervals); an edge left pending hands over to the
        driver's task, which steps again when it can be confirmed."""
        if self._safe_step():
            self._flag.set()

    def _safe_step(self):
        try:
            return self._step()
        except Exception as exc:  # a bug must not stop the lane for good
            self._driver_errors += 1
            self.last_fault = "%s: processing edges failed (%r)." % (self.id, exc)
            return 0

    def _step(self):
        """Take the queued edges and poll the filters; returns the ms until a pending edge can be
        confirmed (0 when none is pending)."""
        tb = self._tb
        now_us = tb.ticks_us()
        now_ms = tb.ticks_ms()
        filters = self._filters
        out = self._out
        q = self._queue
        active = self._active
        while True:
            e = q.pop()
            if e is None:
                break
            ch = e[0]
            if ch >= len(filters):
                continue
            t = e[2]
            filters[ch].feed(1 if e[1] == active else 0, t, out)
            if ticks_diff(t, self._seen[ch]) > 0:
                self._seen[ch] = t
            if out:
                self._take(ch, out, now_us, now_ms)
        poll = ticks_add(now_us, -self._lag)
        safe = None
        for ch in range(len(filters)):
            # A filter is judged up to the later of the poll and its newest edge (an edge stamped
            # after the poll time was fed already; polling behind it would be out of order).
            if ticks_diff(poll, self._seen[ch]) >= 0:
                filters[ch].poll(poll, out)
                self._seen[ch] = poll
                if out:
                    self._take(ch, out, now_us, now_ms)
            eff = ticks_add(self._seen[ch], -self._debounce)
            if safe is None or ticks_diff(eff, safe) < 0:
                safe = eff
        # Hand the lane what is final, closing every boundary it has passed.
        while True:
            if ticks_diff(safe, self._b_us) < 0:
                self._deliver(safe)
                break
            self._deliver(self._b_us)
            self._close()
        wait = 0
        for f in filters:
            at = f.confirm_at()
            if at is not None:
                # Whole ms, rounded up, so the wake is never early.
                ms = ticks_diff(at, poll) // 1000 + 1
                if ms < 1:
                    ms = 1
                if not wait or ms < wait:
                    wait = ms
        return wait

    # -- filter output -----------------------------------------------------------------------

    def _take(self, ch, out, now_us, now_ms):
        held = self._held[ch]
        det = self._detector
        for item in out:
            if isinstance(item, PresenceFault):
                self._fault(ch, item)
            elif det is not None:
                # ticks_us -> ticks_ms through the pair read together (exact when now_us is a
                # whole ms, within 1 ms otherwise): floor, so an event never lands in the future.
                d = ticks_diff(now_us, item[1])
                self.node.event(EVENT_DETECTOR_ON if item[0] else EVENT_DETECTOR_OFF, det[ch],
                                ticks_add(now_ms, (-d) // 1000))
            held.append(item)
        del out[:]

    def _fault(self, ch, f):
        loop = "A" if ch == LOOP_A else "B"
        state = "raised" if f.active else "cleared"
        self.last_fault = "%s: loop %s %s fault %s." % (self.id, loop, fault_name(f.kind), state)

    def _deliver(self, limit):
        """Apply held items stamped before `limit` to the lane, merged in time order (A first)."""
        held = self._held
        lane = self._lane
        while True:
            best = -1
            best_t = 0
            for ch in range(len(held)):
                if held[ch]:
                    item = held[ch][0]
                    t = item.t_us if isinstance(item, PresenceFault) else item[1]
                    if ticks_diff(t, limit) < 0 and (best < 0 or ticks_diff(t, best_t) < 0):
                        best = ch
                        best_t = t
            if best < 0:
                return
            lane.apply(best, held[best].pop(0))

    # -- intervals ---------------------------------------------------------------------------

    def _close(self):
        m = self._lane.close_interval(self._b_us)
        b_ms = self._b_ms
        d = self.node.clock.ms_to_boundary(self._interval_ms, b_ms)
        if d < self._interval_ms // 2:
            d += self._interval_ms  # the gateway clock stepped: no stub intervals
        self._b_ms = ticks_add(b_ms, d)
        self._b_us = ticks_add(self._b_us, d * 1000)
        if m is None:
            return
        if self._publish:
            self._emit(m, b_ms)
        self._publish = True

    def _emit(self, m, tick_ms):
        node = self.node
        self._intervals += 1
        detail = m.faults_a | (m.faults_b << 4)
        if not m.valid:
            self._faulted_intervals += 1
            code = FAULT_STUCK if m.faults_a & STUCK_ON else FAULT_SENSOR
            for attr in ("volume", "occupancy_pct"):
                sid = self._sid_of(attr)
                if sid is not None:
                    node.sample(sid, None, code, detail, tick_ms)
            return
        for sid, attr in self._outputs:
            v = getattr(m, attr)
            if v is not None:
                node.sample(sid, v, 0, 0, tick_ms)
        if self._trap and m.faults_b & SUPPRESSING:
            code = FAULT_STUCK if m.faults_b & STUCK_ON else FAULT_SENSOR
            for attr in _TRAP_ONLY:
                sid = self._sid_of(attr)
                if sid is not None:
                    node.sample(sid, None, code, detail, tick_ms)

    def _sid_of(self, attr):
        """The stream of IntervalMeasures attribute `attr` (the last one declared), or None: a scan
        of the few outputs, once an interval, rather than a dict kept beside them."""
        found = None
        for sid, name in self._outputs:
            if name == attr:
                found = sid
        return found

    @property
    def counters(self):
        """The counters HEALTH reports: the driver's own, its filters' summed, its edge queue's
        overflows and its lane's. Built when read (every health_s), not kept in a dict of 16
        that every step rewrote."""
        raw = edges = bounces = ooo = stuck_on = stuck_off = chatter = 0
        for f in self._filters:
            fc = f.counters
            raw += fc["raw_edges"]
            edges += fc["edges"]
            bounces += fc["bounces"]
            ooo += fc["out_of_order"]
            stuck_on += fc["stuck_on"]
            stuck_off += fc["stuck_off"]
            chatter += fc["chatter"]
        lane = self._lane.counters if self._lane is not None else {}
        return {"intervals": self._intervals, "faulted_intervals": self._faulted_intervals,
                "vehicles": lane.get("vehicles", 0), "raw_edges": raw, "edges": edges,
                "bounces": bounces, "out_of_order": ooo, "overflows": self._queue.overflows,
                "stuck_on": stuck_on, "stuck_off": stuck_off, "chatter": chatter,
                "late_edges": lane.get("late_edges", 0), "unmatched_a": lane.get("unmatched_a", 0),
                "unmatched_b": lane.get("unmatched_b", 0), "driver_errors": self._driver_errors}
