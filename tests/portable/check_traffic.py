"""Vector checks for firmware/presence_filter.py, traffic_measures.py and traffic_sim.py.

Portable: these run under CPython and the MicroPython VM. Times in the vectors are offsets (us) from
the case's "t0" tick, which sits just below the 2**30 wrap so every script crosses it.
"""

from firmware.presence_filter import CHATTER, STUCK_OFF, STUCK_ON, PresenceFault, PresenceFilter
from firmware.traffic_measures import LOOP_A, LOOP_B, LaneMeasures
from firmware.traffic_sim import LaneSpec, TrafficRun, milli, on_time_us, travel_us
from protocols.ticks import TICKS_PERIOD, ticks_add, ticks_diff
from vectorlib import expect_close, expect_equal

_KINDS = {"stuck_on": STUCK_ON, "stuck_off": STUCK_OFF, "chatter": CHATTER}
_LOOPS = {"A": LOOP_A, "B": LOOP_B}


def _tick(case, offset):
    return ticks_add(case["t0"], offset)


def _lane(case, start):
    cfg = case.get("lane", {})
    return LaneMeasures(start, spacing_ft=cfg.get("spacing_ft"),
                        loop_length_ft=cfg.get("loop_length_ft", 6.0), g_ft=cfg.get("g_ft", 22.0),
                        keep_records=True)


def _expect_fields(actual, expected, tol, what):
    for name in sorted(expected):
        want = expected[name]
        got = getattr(actual, name)
        label = "%s %s" % (what, name)
        if want is None or got is None or isinstance(want, (bool, str)):
            expect_equal(got, want, label)
        elif isinstance(want, float):
            expect_close(got, want, tol * max(1.0, abs(want)), label)
        else:
            expect_equal(got, want, label)


# -- presence filter --------------------------------------------------------------------------

def _item_json(item):
    """An output item as the vectors write it, but with its time as a tick."""
    if isinstance(item, PresenceFault):
        for name in _KINDS:
            if _KINDS[name] == item.kind:
                return ["fault", name, item.active, item.t_us]
    return ["edge", item[0], item[1]]


def check_filter_script(case):
    cfg = case["filter"]
    f = PresenceFilter(cfg["debounce_us"], cfg.get("stuck_on_us"), cfg.get("stuck_off_us"),
                       cfg.get("chatter_per_min"))
    if "start" in case:
        f.start(_tick(case, case["start"][0]), case["start"][1])
    out = []
    for op in case["ops"]:
        if op[0] == "raw":
            f.feed(op[1], _tick(case, op[2]), out)
        elif op[0] == "poll":
            f.poll(_tick(case, op[1]), out)
        else:                               # ["polls", first, step, last]
            t = op[1]
            while t <= op[3]:
                f.poll(_tick(case, t), out)
                t += op[2]
    # Offsets may exceed what ticks_diff spans, so compare ticks, not offsets.
    expected = []
    for e in case["expect"]:
        expected.append(e[:-1] + [_tick(case, e[-1])])
    expect_equal([_item_json(i) for i in out], expected, "filter output")
    for name in case.get("counters", {}):
        expect_equal(f.counters[name], case["counters"][name], "counter " + name)


# -- lane measures ----------------------------------------------------------------------------

def check_lane_script(case):
    lane = _lane(case, _tick(case, 0))
    results = []
    for op in case["ops"]:
        if op[0] == "edge":
            lane.edge(_LOOPS[op[1]], op[2], _tick(case, op[3]))
        elif op[0] == "fault":
            lane.fault(_LOOPS[op[1]], _KINDS[op[2]], op[3], _tick(case, op[4]))
        else:
            results.append(lane.close_interval(_tick(case, op[1])))
    expected = case["expect"]
    expect_equal(len(results), len(expected), "number of intervals")
    for i in range(len(expected)):
        if expected[i] is None:
            expect_equal(results[i], None, "interval %d" % i)
        else:
            _expect_fields(results[i], expected[i], case.get("tol", 1e-6), "interval %d" % i)
    for name in case.get("counters", {}):
        expect_equal(lane.counters[name], case["counters"][name], "counter " + name)


def check_periodic(case):
    """n identical vehicles, one every period_us, into one interval (the §5 worked numbers)."""
    start = _tick(case, 0)
    lane = _lane(case, start)
    t = case["first_us"]
    dt = case.get("trap_dt_us")
    for _ in range(case["n"]):
        lane.edge(LOOP_A, 1, _tick(case, t))
        if dt is not None:
            lane.edge(LOOP_B, 1, _tick(case, t + dt))
        lane.edge(LOOP_A, 0, _tick(case, t + case["on_us"]))
        if dt is not None:
            lane.edge(LOOP_B, 0, _tick(case, t + dt + case["on_us"]))
        t += case["period_us"]
    m = lane.close_interval(_tick(case, case["interval_us"]))
    _expect_fields(m, case["expect"], case.get("tol", 1e-6), "interval")


def check_sim_numbers(case):
    expect_equal(on_time_us(case["vehicle_ft"], case["loop_ft"], case["speed_mph"]),
                 case["on_us"], "on-time")
    dt = travel_us(milli(case["spacing_ft"]), milli(case["speed_mph"]))
    expect_equal(dt, case["trap_dt_us"], "trap dt")
    expect_close(dt / 1e6, case["trap_dt_s"], 0.00005, "trap dt in s (REFERENCE.md rounds to 0.1 ms)")


# -- the synthetic hour -----------------------------------------------------------------------

def _deliver(lane, channels, held, boundary):
    """Hand `lane` the held items of its loops stamped before `boundary`, merged in time order
    (A first on a tie); the rest stay held."""
    ready = []
    for ch, loop in channels:
        keep = []
        for item in held[ch]:
            t = item.t_us if isinstance(item, PresenceFault) else item[1]
            d = ticks_diff(t, boundary)
            if d < 0:
                ready.append((d, loop, len(ready), item))
            else:
                keep.append(item)
        held[ch] = keep
    ready.sort(key=lambda r: (r[0], r[1], r[2]))
    for r in ready:
        lane.apply(r[1], r[3])


def run_synthetic(case):
    """Raw edges -> one PresenceFilter per loop -> LaneMeasures per lane, closing aligned intervals.

    Returns (run, results per lane, filters, lanes). This is the protocol a node follows: at each
    boundary b it polls every filter at b + debounce, hands each lane what is stamped before b (both
    loops merged in time order), closes the interval at b, and keeps the rest for the next one.
    """
    debounce = case["debounce_us"]
    specs = []
    for cfg in case["lanes"]:
        specs.append(LaneSpec(flow_vph=cfg["flow_vph"], speed_mph=cfg["speed_mph"],
                              spacing_ft=cfg.get("spacing_ft"), loop_ft=cfg.get("loop_ft", 6),
                              glitch_per_mille=cfg.get("glitch_per_mille", 0)))
    interval = case["interval_us"]
    count = case["intervals"]
    run = TrafficRun(specs, case["seed"], interval * count, case["t0"], debounce)
    filters = []
    held = []
    for _ in run.channels:
        f = PresenceFilter(debounce, case["stuck_on_us"], case["stuck_off_us"],
                           case["chatter_per_min"])
        f.start(run.wrap(0), 0)
        filters.append(f)
        held.append([])
    lanes = []
    for spec in specs:
        lanes.append(LaneMeasures(run.wrap(0), spacing_ft=spec.spacing_ft,
                                  loop_length_ft=spec.loop_ft, g_ft=case.get("g_ft", 22.0)))
    results = [[] for _ in specs]
    lane_channels = [[] for _ in specs]
    for ch in range(len(run.channels)):
        li, loop = run.channels[ch]
        lane_channels[li].append((ch, loop))

    def close(k):
        boundary = run.wrap(k * interval)
        polled = run.wrap(k * interval + debounce)
        for ch in range(len(filters)):
            filters[ch].poll(polled, held[ch])
        for li in range(len(lanes)):
            _deliver(lanes[li], lane_channels[li], held, boundary)
        for li in range(len(lanes)):
            results[li].append(lanes[li].close_interval(boundary))

    k = 1
    for offset, ch, level in run.raw:
        while k <= count and k * interval + debounce <= offset:
            close(k)
            k += 1
        filters[ch].feed(level, run.wrap(offset), held[ch])
    while k <= count:
        close(k)
        k += 1
    return run, results, filters, lanes


def _mean(values):
    return sum(values) / len(values)


def _check_space_mean_speed(vehicles, results, spec):
    """Over the hour, v = q g / occupancy with g the true mean effective length (vehicle + loop)
    estimates the space-mean (harmonic mean) speed: a check of the estimator, not just the sums.
    It is a statistical relation (length and speed drawn independently), so it needs a big sample."""
    n = 0
    on = 0
    for r in results:
        n += r.volume
        on += r.on_time_us
    if n < 500:
        return
    counted = vehicles[:n]
    g = 0.0
    inverse = 0.0
    for v in counted:
        g += v.length_mft / 1000 + spec.loop_ft
        inverse += 1000.0 / v.speed_mmph
    g /= n
    estimate = n * g * 3600e6 / 5280 / on
    harmonic = n / inverse
    expect_close(estimate, harmonic, 0.02 * harmonic, "single-loop estimate vs space-mean speed")


def check_synthetic_hour(case):
    interval = case["interval_us"]
    count = case["intervals"]
    if case["t0"] + interval * count < TICKS_PERIOD:
        raise AssertionError("the case must cross a tick wrap")
    run, results, filters, lanes = run_synthetic(case)
    total = 0
    for li in range(len(lanes)):
        truth = run.truth(li, interval, count)
        trap = lanes[li].trap
        for k in range(count):
            r = results[li][k]
            tr = truth[k]
            what = "lane %d interval %d" % (li, k)
            expect_equal(r.valid, True, what + " valid")
            expect_equal(r.volume, tr["volume"], what + " volume")
            expect_close(r.occupancy_pct, tr["on_us"] * 100.0 / interval, 0.1, what + " occupancy")
            if tr["headways_us"]:
                expect_close(r.mean_headway_s, _mean(tr["headways_us"]) / 1e6, 1e-6, what + " headway")
                expect_close(r.mean_gap_s, _mean(tr["gaps_us"]) / 1e6, 1e-6, what + " gap")
            else:
                expect_equal(r.mean_headway_s, None, what + " headway")
            if trap:
                if tr["speeds_mph"]:
                    want = _mean(tr["speeds_mph"])
                    expect_close(r.speed_mph, want, 0.01 * want, what + " trap speed")
                    expect_equal(r.speed_count, len(tr["speeds_mph"]), what + " speed count")
                    expect_close(r.mean_length_ft, _mean(tr["lengths_ft"]), 0.05, what + " length")
                else:
                    expect_equal(r.speed_mph, None, what + " trap speed")
            elif r.volume:
                want = r.volume * case.get("g_ft", 22.0) * 3600e6 / 5280 / r.on_time_us
                expect_close(r.speed_mph, want, 1e-9 * want, what + " single-loop estimate")
            else:
                expect_equal(r.speed_mph, None, what + " single-loop estimate")
            total += r.volume
        if not trap:
            _check_space_mean_speed(run.lanes[li], results[li], run.specs[li])
        expect_equal(lanes[li].counters["unmatched_a"], 0, "lane %d unmatched A" % li)
        expect_equal(lanes[li].counters["unmatched_b"], 0, "lane %d unmatched B" % li)
    if total < case["min_vehicles"]:
        raise AssertionError("only %d vehicles: the hour is too quiet to mean much" % total)
    for ch in range(len(filters)):
        c = filters[ch].counters
        expect_equal(c["bounces"], run.glitches[ch], "channel %d bounces" % ch)
        expect_equal(c["stuck_on"] + c["stuck_off"] + c["chatter"], 0, "channel %d faults" % ch)
    if sum(run.glitches) < case.get("min_glitches", 0):
        raise AssertionError("too few glitches to exercise debounce")


CHECKS = {
    "filter_script": check_filter_script,
    "lane_script": check_lane_script,
    "periodic": check_periodic,
    "sim_numbers": check_sim_numbers,
    "synthetic_hour": check_synthetic_hour,
}
