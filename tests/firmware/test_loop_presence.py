"""The loop presence driver under both runtimes: synthetic traffic (firmware/traffic_sim.py) replayed
as pin edges over the host HAL's control channel, checked interval by interval against the truth of
the vehicles whose edges fell in it; detector events; stuck and chattering loops as faults.

Edges carry their own timestamps, so minutes of traffic are replayed in seconds; the intervals
close on a virtual clock that the harness advances with edges on a clock pin of the same control
channel (so every loop edge is queued before the clock passes it). The driver takes that clock as
its `timebase`; the real one differs only in where ticks come from.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from firmware.presence_filter import CHATTER, STUCK_ON
from firmware.traffic_sim import LaneSpec, TrafficRun
from hil.firmware_process import RUNTIMES
from protocols.batch_codes import EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON, FAULT_SENSOR, FAULT_STUCK
from protocols.ticks import TICKS_PERIOD
from tests.firmware.test_pm_drivers import NodeHarness, build_dir, load_profile  # noqa: F401

MASK = TICKS_PERIOD - 1
CLOCK_PIN = 99
INTERVAL_S = 10
INTERVAL_US = INTERVAL_S * 1_000_000
# Virtual time starts half an interval before the traffic, which starts on a boundary; the run
# crosses the ticks_us wrap (2**30 us = 1073.7 s) on the way.
T0_US = 1_000_000_000
CLOSE_AFTER_US = 100_000  # past a boundary by more than the driver's lag (50 ms) + debounce (20 ms)
MPH_PER_FT_PER_US = 3_600_000_000 / 5280

LOOP_SOURCE = r'''
from firmware.drivers.loop_presence import LoopPresenceDriver
from firmware.edge_queue import EdgeQueue
from protocols.ticks import ticks_diff

_MASK = (1 << 30) - 1


class VirtualTimebase:
    """Virtual time: the latest timestamp the harness sent on the clock pin, unwrapped."""

    def __init__(self, pin):
        self._q = EdgeQueue(64)
        self._flag = hal.Flag()
        hal.InputPins([pin], self._q, self._flag)
        self._raw = None
        self._abs = 0
        self._waiters = []

    def _update(self):
        while len(self._q):
            t = self._q.pop()[2]
            if self._raw is None:
                self._abs = t
            else:
                self._abs += ticks_diff(t, self._raw)
            self._raw = t

    def ticks_us(self):
        self._update()
        return self._abs & _MASK

    def ticks_ms(self):
        self._update()
        return (self._abs // 1000) & _MASK

    async def sleep(self, seconds):
        self._update()
        target = self._abs + int(seconds * 1000000)
        while self._abs < target:
            ev = asyncio.Event()
            self._waiters.append(ev)
            await ev.wait()

    async def ready(self):
        while self._raw is None:
            await self._flag.wait()
            self._update()
        asyncio.create_task(self._pump())

    async def _pump(self):
        while True:
            await self._flag.wait()
            self._update()
            waiters = self._waiters
            self._waiters = []
            for ev in waiters:
                ev.set()


TIMEBASE = []


def make_drivers(node):
    tb = VirtualTimebase(node.config["host"]["clock_pin"])
    TIMEBASE.append(tb)
    drivers = {}
    for dev in node.config["devices"]:
        drivers[dev["id"]] = LoopPresenceDriver(dev, node.config["profiles"][dev["profile"]], node, tb)
    return drivers


async def clock_ready():
    await TIMEBASE[0].ready()
'''


def loop_config(devices: list[dict[str, Any]], **profile: Any) -> dict[str, Any]:
    for dev in devices:
        dev.setdefault("profile", "loop-presence")
    return {
        "node": "cab-test", "type": "rp2040", "interval_s": INTERVAL_S, "link": {"transport": "uart"},
        "buses": {}, "devices": devices,
        "profiles": {"loop-presence": load_profile("loop-presence", **profile)},
        "host": {"clock_pin": CLOCK_PIN},
    }


def tick_ms(abs_us: int) -> int:
    return (abs_us // 1000) & MASK


async def replay(node: NodeHarness, edges: list[tuple[int, int, int]], devices: list[str],
                 intervals: int) -> None:
    """Send (abs_us, pin, pin level) edges with the clock, one interval at a time, waiting for each
    interval's samples; then the rest, with the clock far enough on to confirm every edge."""
    edges = sorted(edges)
    await node.send_control("E %d 1 %d\n" % (CLOCK_PIN, (T0_US - INTERVAL_US // 2) & MASK))
    await node.state()  # the drivers run (and listen to their pins) once the clock has started
    i = 0
    for k in range(1, intervals + 1):
        boundary = T0_US + k * INTERVAL_US
        clock = boundary + CLOSE_AFTER_US
        lines = []
        while i < len(edges) and edges[i][0] < clock:
            t, pin, level = edges[i]
            lines.append("E %d %d %d\n" % (pin, level, t & MASK))
            i += 1
        lines.append("E %d 1 %d\n" % (CLOCK_PIN, clock & MASK))
        await node.send_control("".join(lines))
        at = tick_ms(boundary)
        await node.wait_for(
            lambda: all(any(s.tick == at for s in node.stream(d + "/volume")) for d in devices),
            "interval %d of %s" % (k, devices))
    lines = ["E %d %d %d\n" % (pin, level, t & MASK) for t, pin, level in edges[i:]]
    last = edges[-1][0] if edges else T0_US
    lines.append("E %d 1 %d\n" % (CLOCK_PIN, (max(last, T0_US + intervals * INTERVAL_US) + 1_000_000) & MASK))
    await node.send_control("".join(lines))


def samples_at(node: NodeHarness, name: str, abs_us: int) -> list[Any]:
    return [s for s in node.stream(name) if s.tick == tick_ms(abs_us)]


def one_value(node: NodeHarness, name: str, abs_us: int) -> Any:
    got = samples_at(node, name, abs_us)
    if not got:
        return None
    assert len(got) == 1 and got[0].fault == 0, got
    return got[0].value


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def mean_s(us: list[int]) -> float | None:
    return sum(us) / len(us) / 1e6 if us else None


def close(got: Any, want: Any, tol: float) -> bool:
    if want is None or got is None:
        return got is want
    return abs(got - want) <= tol * max(1.0, abs(want))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_synthetic_traffic_exact_measures_and_events(runtime: str, build_dir: Path) -> None:
    intervals = 18  # three minutes
    specs = [LaneSpec(flow_vph=1200, speed_mph=(30, 65), spacing_ft=20, glitch_per_mille=150),
             LaneSpec(flow_vph=900, glitch_per_mille=150)]
    run = TrafficRun(specs, seed=20261128, duration_us=intervals * INTERVAL_US, t0_us=0,
                     debounce_us=20_000)
    pins = [10, 11, 12]  # run channels: lane 0 loop A, lane 0 loop B, lane 1 loop A
    detectors = [1, 2, 3]
    edges = [(T0_US + t, pins[ch], 0 if level else 1) for t, ch, level in run.raw]  # active low
    devices = [{"id": "nb", "pins": [10, 11], "detector": [1, 2], "trap_spacing_ft": 20,
                "loop_length_ft": 6},
               {"id": "sb", "pins": [12], "detector": [3], "loop_length_ft": 6}]
    cfg = loop_config(devices)
    expected_events = []
    for lane, chans in ((0, (0, 1)), (1, (2,))):
        for v in run.lanes[lane]:
            pairs = [(v.a_on, v.a_off)] + ([(v.b_on, v.b_off)] if len(chans) == 2 else [])
            for ch, (on, off) in zip(chans, pairs):
                expected_events.append((tick_ms(T0_US + on), EVENT_DETECTOR_ON, detectors[ch]))
                expected_events.append((tick_ms(T0_US + off), EVENT_DETECTOR_OFF, detectors[ch]))

    async with NodeHarness(runtime, build_dir, cfg, LOOP_SOURCE, before_start="clock_ready") as node:
        await replay(node, edges, ["nb", "sb"], intervals)
        await node.wait_for(lambda: len(node.events) >= len(expected_events), "every detector event")
        state = await node.state()

    assert not node.config_errors
    assert Counter(node.events) == Counter(expected_events)
    nb_truth = run.truth(0, INTERVAL_US, intervals)
    sb_truth = run.truth(1, INTERVAL_US, intervals)
    assert sum(r["volume"] for r in nb_truth) > 40 and sum(r["volume"] for r in sb_truth) > 30
    for k in range(intervals):
        end = T0_US + (k + 1) * INTERVAL_US
        for dev, row in (("nb", nb_truth[k]), ("sb", sb_truth[k])):
            where = f"{dev} interval {k}"
            want = {"volume": row["volume"], "flow": row["volume"] * 360.0,
                    "occupancy": row["on_us"] * 100 / INTERVAL_US,
                    "headway": mean_s(row["headways_us"]), "gap": mean_s(row["gaps_us"])}
            assert one_value(node, dev + "/volume", end) == row["volume"], where
            for name, value in want.items():
                assert close(one_value(node, f"{dev}/{name}", end), value, 1e-9), (where, name)
        # Trap lane: the mean speed and length of the vehicles that left loop B in the interval.
        row = nb_truth[k]
        assert close(one_value(node, "nb/speed", end), mean(row["speeds_mph"]), 1e-4), k
        assert close(one_value(node, "nb/length", end), mean(row["lengths_ft"]), 1e-3), k
        # Single loop: the estimate v = N g / on-time with g = 22 ft (the profile's g_factor_ft).
        row = sb_truth[k]
        want = row["volume"] * 22 * MPH_PER_FT_PER_US / row["on_us"] if row["on_us"] else None
        assert close(one_value(node, "sb/speed", end), want, 1e-9), k
        assert not samples_at(node, "sb/length", end)
    # The first, partial interval (before T0) is not published, and nothing is faulted.
    for name in ("nb/volume", "nb/occupancy", "sb/volume", "sb/occupancy"):
        assert all(s.fault == 0 for s in node.stream(name)), name
    assert len(node.stream("nb/volume")) == intervals
    assert state["dropped"] == 0
    nb = state["drivers"]["nb"]["counters"]
    sb = state["drivers"]["sb"]["counters"]
    assert nb["bounces"] == run.glitches[0] + run.glitches[1] and sb["bounces"] == run.glitches[2]
    assert nb["vehicles"] == len(run.lanes[0]) and sb["vehicles"] == len(run.lanes[1])
    for c in (nb, sb):
        assert c["out_of_order"] == c["overflows"] == c["late_edges"] == c["stuck_on"] == c["chatter"] == 0, c
    assert nb["unmatched_a"] == nb["unmatched_b"] == 0, nb


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_stuck_and_chattering_loops_are_faults_not_traffic(runtime: str, build_dir: Path) -> None:
    intervals = 10
    s = 1_000_000
    st_pin, ch_pin = 12, 14

    def pulse(pin: int, on: float, off: float) -> list[tuple[int, int, int]]:
        return [(T0_US + int(on * s), pin, 0), (T0_US + int(off * s), pin, 1)]

    edges = pulse(st_pin, 2.0, 2.3) + pulse(st_pin, 5.0, 5.4)
    edges += pulse(st_pin, 12.0, 42.0)  # stuck on for 30 s (the fault is raised at 17 s)
    edges += pulse(st_pin, 52.0, 52.3) + pulse(st_pin, 55.0, 55.5)
    # 130 transitions 50 ms apart from 11 s: more than 120 a minute, raised at the 121st (17 s),
    # cleared when the trailing minute holds at most 60 (74.45 s).
    edges += [(T0_US + 11 * s + i * 50_000, ch_pin, i % 2) for i in range(130)]
    edges += pulse(ch_pin, 82.0, 82.5)
    # The replay delivers an interval's edges at once: 130 of them outgrow the default edge ring.
    devices = [{"id": "st", "pins": [st_pin], "detector": [5]},
               {"id": "ch", "pins": [ch_pin], "detector": [6], "queue": 256}]
    cfg = loop_config(devices, stuck_on_s=5)

    async with NodeHarness(runtime, build_dir, cfg, LOOP_SOURCE, before_start="clock_ready") as node:
        await replay(node, edges, ["st", "ch"], intervals)
        await node.wait_for(lambda: sum(1 for e in node.events if e[2] == 6 and e[0] >= tick_ms(T0_US + 80 * s)) == 2,
                            "the chattering loop's detector events after it recovered")
        state = await node.state()

    def interval(k: int) -> int:
        return T0_US + (k + 1) * INTERVAL_US

    # Stuck loop: intervals 1..4 (12 s .. 42 s, and the one it clears in) are faults, not traffic.
    assert one_value(node, "st/volume", interval(0)) == 2
    assert close(one_value(node, "st/occupancy", interval(0)), 7.0, 1e-9)
    for k in range(1, 5):
        for name in ("volume", "occupancy"):
            got = samples_at(node, "st/" + name, interval(k))
            assert [(g.value, g.fault, g.detail) for g in got] == [(None, FAULT_STUCK, STUCK_ON)], (k, got)
        for name in ("flow", "speed", "headway", "gap"):
            assert not samples_at(node, "st/" + name, interval(k)), (k, name)
    assert one_value(node, "st/volume", interval(5)) == 2
    assert close(one_value(node, "st/occupancy", interval(5)), 8.0, 1e-9)
    assert one_value(node, "st/volume", interval(6)) == 0
    st_events = sorted((t, code) for t, code, param in node.events if param == 5)
    assert st_events == [(tick_ms(T0_US + int(x * s)), c) for x, c in (
        (2.0, 82), (2.3, 81), (5.0, 82), (5.4, 81), (12.0, 82), (52.0, 82), (52.3, 81), (55.0, 82), (55.5, 81))]

    # Chattering loop: intervals 1..7 (17 s .. 74.45 s) are sensor faults; 8 counts the vehicle.
    assert one_value(node, "ch/volume", interval(0)) == 0
    for k in range(1, 8):
        for name in ("volume", "occupancy"):
            got = samples_at(node, "ch/" + name, interval(k))
            assert len(got) == 1 and got[0].fault == FAULT_SENSOR and got[0].detail & CHATTER, (k, got)
        assert not samples_at(node, "ch/flow", interval(k))
    assert one_value(node, "ch/volume", interval(8)) == 1
    assert close(one_value(node, "ch/occupancy", interval(8)), 5.0, 1e-9)
    ch_events = [(t, code) for t, code, param in node.events if param == 6]
    raised, cleared = tick_ms(T0_US + 17 * s), tick_ms(T0_US + 80 * s)
    assert not [e for e in ch_events if raised <= e[0] < cleared]

    assert state["dropped"] == 0
    st = state["drivers"]["st"]
    ch = state["drivers"]["ch"]
    assert st["counters"]["stuck_on"] == 1 and st["counters"]["faulted_intervals"] == 4
    assert ch["counters"]["chatter"] == 1 and ch["counters"]["faulted_intervals"] == 7
    assert st["counters"]["overflows"] == ch["counters"]["overflows"] == 0
    assert "stuck_on" in st["last_fault"] and "st" in st["last_fault"]


class _ManualTimebase:
    """In-process virtual time for the CPython-only test below."""

    def __init__(self, abs_us: int) -> None:
        import asyncio

        self.abs_us = abs_us
        self._moved = asyncio.Event()

    def ticks_us(self) -> int:
        return self.abs_us & MASK

    def ticks_ms(self) -> int:
        return (self.abs_us // 1000) & MASK

    async def sleep(self, seconds: float) -> None:
        target = self.abs_us + int(seconds * 1_000_000)
        while self.abs_us < target:
            self._moved.clear()
            await self._moved.wait()

    def advance_to(self, abs_us: int) -> None:
        self.abs_us = abs_us
        self._moved.set()


async def test_quiet_loop_keeps_closing_intervals_across_the_ticks_wrap() -> None:
    """CPython only (the in-process HAL): twenty quiet minutes, longer than a ticks_diff can span
    (2**29 us) and across the ticks_us wrap, then one vehicle; every interval still closes."""
    import asyncio

    from firmware import hal_host
    from firmware.clock import GatewayClock
    from firmware.drivers.loop_presence import LoopPresenceDriver
    from firmware.node_context import NodeContext
    from firmware.outbox import Outbox
    from firmware.streams import StreamTable

    start = T0_US - INTERVAL_US // 2
    tb = _ManualTimebase(start)
    node = NodeContext(hal_host, {"interval_s": INTERVAL_S}, StreamTable(), Outbox(4096, 64),
                       GatewayClock(hal_host.ticks_ms))
    driver = LoopPresenceDriver({"id": "q", "pins": [77]}, load_profile("loop-presence"), node, tb)
    task = asyncio.create_task(driver.run())
    try:
        for _ in range(5):
            await asyncio.sleep(0)  # the driver starts at `start`
        intervals = 125
        for k in range(1, intervals + 1):
            tb.advance_to(T0_US + k * INTERVAL_US + CLOSE_AFTER_US)
            if k == intervals - 2:  # a 0.5 s presence in the next interval (the next-to-last)
                queue, flag, index = hal_host._pins[77]
                queue.push(index, 0, (T0_US + k * INTERVAL_US + 2_500_000) & MASK)
                queue.push(index, 1, (T0_US + k * INTERVAL_US + 3_000_000) & MASK)
                flag.set()
            for _ in range(20):
                await asyncio.sleep(0)
            assert driver.counters["intervals"] == k, (k, driver.counters)
    finally:
        task.cancel()
        hal_host._pins.pop(77, None)
    sid = node.streams.id_of("q/volume")
    m = node.outbox.take(0)["m"]
    volumes = [m[i + 2] for i in range(0, len(m), 3) if m[i] == sid]
    assert volumes == [0] * (intervals - 2) + [1, 0]
    assert driver.counters["stuck_off"] == 0 and driver.counters["out_of_order"] == 0


async def test_an_edge_leaves_once_confirmed_not_at_the_next_tick() -> None:
    """CPython only: a detector event goes out debounce + lag after its edge (the driver wakes for
    it), not at the next 100 ms tick; a bounce shorter than the debounce sends nothing."""
    import asyncio

    from firmware import hal_host
    from firmware.clock import GatewayClock
    from firmware.drivers.loop_presence import LAG_US, LoopPresenceDriver
    from firmware.node_context import NodeContext
    from firmware.outbox import Outbox
    from firmware.streams import StreamTable

    debounce_us = 20_000
    start = T0_US
    tb = _ManualTimebase(start)
    node = NodeContext(hal_host, {"interval_s": INTERVAL_S}, StreamTable(), Outbox(4096, 64),
                       GatewayClock(hal_host.ticks_ms))
    driver = LoopPresenceDriver({"id": "w", "pins": [78], "detector": [5]},
                                load_profile("loop-presence", debounce_ms=debounce_us // 1000),
                                node, tb)
    task = asyncio.create_task(driver.run())

    async def at(abs_us: int) -> list[tuple[int, int, int]]:
        """Move the clock to abs_us; the (abs ms, code, channel) events sent so far."""
        tb.advance_to(abs_us)
        for _ in range(20):
            await asyncio.sleep(0)
        e = node.outbox._e
        t0 = node.outbox._t0
        return [((t0 + e[i]) & MASK, e[i + 1], e[i + 2]) for i in range(0, len(e), 3)]

    try:
        await at(start)  # the driver starts; the ticker wakes it at start + k * 100 ms
        queue, flag, index = hal_host._pins[78]
        # A bounce: on and back off within the debounce, just after a tick.
        edge = start + 105_000
        queue.push(index, 0, edge & MASK)
        queue.push(index, 1, (edge + 5_000) & MASK)
        flag.set()
        assert await at(edge + 5_000) == []
        assert await at(start + 300_000) == []
        # A real edge just after a tick: confirmed debounce + lag later, well before the next tick.
        edge = start + 305_000
        queue.push(index, 0, edge & MASK)
        flag.set()
        await at(edge)
        due = edge + debounce_us + LAG_US
        assert due + 2_000 < start + 400_000
        assert await at(due - 1_000) == []
        assert await at(due + 2_000) == [(tick_ms(edge), EVENT_DETECTOR_ON, 5)]
        assert driver.counters["bounces"] == 1 and driver.counters["edges"] == 1
    finally:
        task.cancel()
        hal_host._pins.pop(78, None)
