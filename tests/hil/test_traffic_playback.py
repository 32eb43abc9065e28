"""hil.emulators.traffic: traffic_sim vehicles played to nodes' control connections (a real TCP
client stands in for the node's host HAL), to an actuated signal controller and to a Modbus loop
card; the edges arrive in order with their exact t_us and match traffic_sim's own ground truth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from firmware.traffic_sim import TrafficRun
from hil.emulators.ground_truth import GroundTruthLog, ManualClock, MonotonicClock
from hil.emulators.modbus_devices import LoopCard
from hil.emulators.signal_controller import SignalControllerEmulator
from hil.emulators.traffic import Lane, PlaybackError, TrafficPlayback

SEED = 4242


@dataclass
class FakeNode:
    """The control side of a node's host HAL: one TCP connection, "E pin level t_us" lines in."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    edges: list[tuple[int, int, int, int]] = field(default_factory=list)  # pin, level, t_us, got at
    task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, address: str, clock: MonotonicClock | ManualClock) -> FakeNode:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        node = cls(reader, writer)
        node.task = asyncio.create_task(node._read(clock))
        return node

    async def _read(self, clock: MonotonicClock | ManualClock) -> None:
        while line := await self.reader.readline():
            kind, pin, level, t_us = line.split()
            assert kind == b"E"
            self.edges.append((int(pin), int(level), int(t_us), clock.now_us()))

    async def wait_edges(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.edges) < n:
                await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.writer.close()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, ConnectionError):
                pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def truth(clock: ManualClock) -> GroundTruthLog:
    return GroundTruthLog(clock=clock)


LANES = [
    Lane(node="n1", pins=(4, 5), spacing_ft=20, flow_vph=1800, glitch_per_mille=100),
    Lane(node="n1", pins=(6,), flow_vph=900, active_level=1),
    Lane(node="n2", pins=(7,), flow_vph=600),
]


def expected_edges(run: TrafficRun, t0: int) -> dict[str, list[tuple[int, int, int]]]:
    """What each node must get, straight from traffic_sim: (pin, electrical level, t_us)."""
    out: dict[str, list[tuple[int, int, int]]] = {"n1": [], "n2": []}
    for offset, channel, level in run.raw:
        lane_i, loop = run.channels[channel]
        lane = LANES[lane_i]
        assert lane.node is not None
        out[lane.node].append((lane.pins[loop], lane.active_level if level else 1 - lane.active_level, t0 + offset))
    return out


@pytest.fixture
async def playback(clock: ManualClock, truth: GroundTruthLog) -> AsyncIterator[TrafficPlayback]:
    async with TrafficPlayback(LANES, seed=SEED, duration_s=120, clock=clock, truth=truth) as tp:
        yield tp


async def test_edges_reach_each_node_in_order_with_exact_times(playback: TrafficPlayback, clock: ManualClock,
                                                               truth: GroundTruthLog) -> None:
    n1 = await FakeNode.connect(playback.control_address("n1"), clock)
    n2 = await FakeNode.connect(playback.control_address("n2"), clock)
    try:
        await playback.wait_connected("n1")
        await playback.wait_connected("n2")
        t0 = playback.start()
        clock.set(t0 + 121_000_000)
        await playback.wait_done(timeout=10)
        run = TrafficRun([lane.spec() for lane in LANES], SEED, 120_000_000, debounce_us=20_000)
        want = expected_edges(run, t0)
        await n1.wait_edges(len(want["n1"]))
        await n2.wait_edges(len(want["n2"]))
        assert [e[:3] for e in n1.edges] == want["n1"] and [e[:3] for e in n2.edges] == want["n2"]
        assert len(want["n1"]) > 300 and len(want["n2"]) > 20
        assert sum(run.glitches) > 0  # the glitch edges were sent too: the node's debounce has work
        times = [t for _, _, t, _ in n1.edges]
        assert times == sorted(times)
    finally:
        await n1.close()
        await n2.close()
    vehicles = truth.records("traffic", "vehicle")
    assert len(vehicles) == sum(len(lane) for lane in run.lanes)
    for record in vehicles:
        v = run.lanes[record["lane"]][[x.a_on for x in run.lanes[record["lane"]]].index(record["t_on_a_us"] - t0)]
        assert record["t_off_a_us"] == t0 + v.a_off and record["on_a_us"] == v.a_off - v.a_on
        assert record["t_on_b_us"] == (None if v.b_on is None else t0 + v.b_on)
        assert record["speed_mph"] == v.speed_mmph / 1000 and record["length_ft"] == v.length_mft / 1000
        assert record["delivered"] and record.t_utc_ms == clock.utc_ms(record["t_on_a_us"])
    assert truth.records("traffic", "run")[0]["glitches"] == run.glitches


async def test_interval_truth_matches_traffic_sim(playback: TrafficPlayback) -> None:
    t0 = playback.start(t0_us=10_000_000)
    run = playback.run
    for lane in range(len(LANES)):
        rows = run.truth(lane, 10_000_000, 12)
        for k, row in enumerate(rows):
            got = playback.interval_truth(lane, t0 + k * 10_000_000, t0 + (k + 1) * 10_000_000)
            assert (got.volume, got.on_us) == (row["volume"], row["on_us"])
            assert got.occupancy_pct == pytest.approx(100 * row["on_us"] / 10_000_000)
            assert got.flow_vph == row["volume"] * 360
            if LANES[lane].loops == 2:
                assert got.speeds_mph == row["speeds_mph"]
    whole = playback.interval_truth(0, t0, t0 + 120_000_000)
    assert whole.volume == len(run.lanes[0]) and 45 <= whole.mean_speed_mph <= 70  # type: ignore[operator]
    with pytest.raises(PlaybackError):
        playback.interval_truth(0, t0, t0)


async def test_a_node_not_connected_loses_its_edges(playback: TrafficPlayback, clock: ManualClock,
                                                    truth: GroundTruthLog) -> None:
    n1 = await FakeNode.connect(playback.control_address("n1"), clock)
    try:
        await playback.wait_connected("n1")
        t0 = playback.start()
        clock.set(t0 + 121_000_000)
        await playback.wait_done(timeout=10)
    finally:
        await n1.close()
    by_node: dict[str, set[bool]] = {}
    for record in truth.records("traffic", "vehicle"):
        by_node.setdefault(record["node"], set()).add(record["delivered"])
    assert by_node == {"n1": {True}, "n2": {False}}
    assert not playback.connected("n2")


async def test_a_reconnecting_node_replaces_its_old_connection(playback: TrafficPlayback, clock: ManualClock) -> None:
    seen: list[tuple[str, str]] = []
    playback.on_output = lambda node, line: seen.append((node, line))
    old = await FakeNode.connect(playback.control_address("n2"), clock)
    new = None
    try:
        await playback.wait_connected("n2")
        new = await FakeNode.connect(playback.control_address("n2"), clock)
        async with asyncio.timeout(5):
            while not old.reader.at_eof():  # the old socket is closed by the playback
                await asyncio.sleep(0.005)
        new.writer.write(b"O 3 1\nR watchdog\n")
        async with asyncio.timeout(5):
            while len(seen) < 2:
                await asyncio.sleep(0.005)
        assert seen == [("n2", "O 3 1"), ("n2", "R watchdog")]
        assert playback.inject_edge("n2", 9, 0, 123)
        await new.wait_edges(1)
        assert new.edges[0][:3] == (9, 0, 123) and old.edges == []
    finally:
        await old.close()
        if new is not None:
            await new.close()


async def test_real_time_edges_arrive_before_their_time() -> None:
    clock = MonotonicClock()
    lanes = [Lane(node="n1", pins=(2, 3), flow_vph=3000, min_gap_s=0.3)]
    async with TrafficPlayback(lanes, seed=5, duration_s=1.5, clock=clock, lead_s=0.3) as tp:
        node = await FakeNode.connect(tp.control_address("n1"), clock)
        try:
            await tp.wait_connected("n1")
            tp.start(delay_s=0.4)
            await tp.wait_done(timeout=10)
            want = sum(1 for _ in tp.run.raw)
            await node.wait_edges(want)
        finally:
            await node.close()
    assert want >= 4
    # Sent lead_s early with its own time: every edge is in the node's hands before it happens.
    assert all(got_at < t_us for _, _, t_us, got_at in node.edges)


async def test_lanes_call_the_controller_and_drive_a_loop_card(clock: ManualClock, truth: GroundTruthLog) -> None:
    plan = {"mode": "actuated", "startup_s": 1,
            "defaults": {"yellow": 3, "red_clear": 1, "passage": 2, "ped": False},
            "phases": {"2": {"min_green": 10, "recall": "min"}, "4": {"min_green": 5, "max_green": 10},
                       "6": {"min_green": 10, "recall": "min"}, "8": {"min_green": 5}}}
    signal = SignalControllerEmulator(plan, clock=clock, truth=truth)
    card = LoopCard(clock=clock, truth=truth, turnaround_s=0)
    lanes = [Lane(phase=4, card=card, card_channels=(1, 2), flow_vph=400),
             Lane(node="n1", pins=(6,), card=card, card_channels=(3,), flow_vph=300)]
    async with TrafficPlayback(lanes, seed=11, duration_s=180, clock=clock, truth=truth,
                               controller=signal) as tp:
        t0 = tp.start()
        clock.set(t0 + 200_000_000)
        await tp.wait_done(timeout=10)
        signal.advance()
        card.advance()
    arrivals = [t0 + v.a_on for v in tp.run.lanes[0]]
    assert arrivals
    calls = [r for r in truth.records("signal", "input") if r["on"]]
    assert [r["t_us"] for r in calls] == arrivals  # each vehicle at loop A called phase 4, on time
    greens_4 = [r["t_us"] for r in truth.records("signal", "event") if r["code"] == 1 and r["param"] == 4]
    assert greens_4 and greens_4[0] > arrivals[0] and not [
        r for r in truth.records("signal", "event") if r["param"] == 8]
    assert card.counts[:3] == [len(tp.run.lanes[0]), len(tp.run.lanes[0]), len(tp.run.lanes[1])]
    on_edges = [r["t_us"] for r in truth.records("loop_card", "presence") if r["channel"] == 2 and r["on"]]
    assert on_edges == [t0 + v.b_on for v in tp.run.lanes[0]]  # loop B, spacing/speed later


def test_lane_errors_name_the_lane() -> None:
    with pytest.raises(PlaybackError) as err:
        TrafficPlayback([Lane(pins=(1,))], seed=1, duration_s=1)
    assert err.value.where == "lane 0"
    with pytest.raises(PlaybackError) as err:
        TrafficPlayback([Lane(node="n", pins=(1,)), Lane(phase=2)], seed=1, duration_s=1)
    assert err.value.where == "lane 1" and "controller" in err.value.reason
