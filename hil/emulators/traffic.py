"""Real-time playback of synthetic traffic (firmware/traffic_sim.py) as loop detector pin edges to
nodes, detector calls to a signal controller and presence to a Modbus loop card.

    lanes = [Lane(node="n1", pins=(4, 5), flow_vph=1200, phase=2),
             Lane(node="n1", pins=(6,), flow_vph=300)]
    async with TrafficPlayback(lanes, seed=7, duration_s=600, truth=truth, controller=signal) as tp:
        host = {"control": tp.control_address("n1"), ...}   # the node's host HAL connects here
        await tp.wait_connected("n1")
        tp.start()
        await tp.wait_done()

Each node gets its own loopback listener at host["control"] (the pin control protocol of
firmware/hal_host.py has no node id, so the address is the identity); a node that reconnects
replaces its old connection. Every edge is written `lead_s` before its time as
"E <pin> <level> <t_us>\\n" with its exact host-monotonic t_us, which the node trusts, so its
timestamps are exact whatever the socket's delay. `level` is the electrical level: a vehicle over a
loop drives the pin to the lane's `active_level` (0 for the loop-presence profile's open-collector
outputs). Edges due while a node is not connected are lost, as on a board that is down, and the
vehicles they belonged to are logged with "delivered": false.

Ground truth (source "traffic"): one "run" record, then one "vehicle" record per vehicle, stamped
at its arrival on loop A, once its last edge is out: lane, t_on_a_us, t_off_a_us, t_on_b_us,
t_off_b_us, on_a_us, on_b_us, speed_mph, length_ft, delivered. `interval_truth()` gives a lane's
exact volume, occupancy and mean speed over any [t0, t1).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from firmware.traffic_sim import LaneSpec, TrafficRun, Vehicle
from hil.emulators.ground_truth import Clock, GroundTruthLog, MonotonicClock

__all__ = ["IntervalTruth", "Lane", "PlaybackError", "TrafficPlayback"]

SOURCE = "traffic"


class PlaybackError(Exception):
    """The playback cannot do what was asked: `where` (a lane, a node) and a one-sentence `reason`."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"traffic playback, {where}: {reason}")


class DetectorSink(Protocol):
    def detector(self, phase: int, on: bool, t_us: int | None = None) -> None: ...


class PresenceSink(Protocol):
    def schedule_presence(self, channel: int, on: bool, t_us: int | None = None) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Lane:
    """One lane's loops and demand. Loops: `pins` on `node` ((A,) or (A, B) for a speed trap
    `spacing_ft` apart, leading edge to leading edge), and/or `card_channels` on a Modbus loop
    `card`; `phase` makes loop A that controller phase's detector."""

    node: str | None = None
    pins: tuple[int, ...] = ()
    spacing_ft: float = 20.0
    loop_ft: float = 6.0
    flow_vph: int = 900
    speed_mph: tuple[float, float] = (45, 70)
    length_classes: tuple[tuple[int, float, float], ...] = ((85, 14, 19), (15, 28, 60))  # (weight, min ft, max ft)
    min_gap_s: float = 0.6
    glitch_per_mille: int = 0
    active_level: int = 0
    phase: int | None = None
    card: PresenceSink | None = None
    card_channels: tuple[int, ...] = ()

    @property
    def loops(self) -> int:
        return max(len(self.pins), len(self.card_channels), 1)

    def spec(self) -> LaneSpec:
        return LaneSpec(  # type: ignore[no-untyped-call]
                        flow_vph=self.flow_vph, speed_mph=tuple(self.speed_mph),
                        length_classes=tuple(self.length_classes),
                        spacing_ft=self.spacing_ft if self.loops == 2 else None,
                        loop_ft=self.loop_ft, min_gap_us=round(self.min_gap_s * 1e6),
                        glitch_per_mille=self.glitch_per_mille)


@dataclass(frozen=True)
class IntervalTruth:
    """A lane's exact measures over [t0, t1): volume by arrival at A, occupancy from A's on-time
    inside the window, speeds and lengths of trap vehicles leaving B in it (the attribution the
    node's LaneMeasures uses; a single loop's mean speed is that of the vehicles counted)."""

    volume: int
    flow_vph: float
    occupancy_pct: float
    on_us: int
    mean_speed_mph: float | None
    mean_length_ft: float | None
    speeds_mph: list[float] = field(default_factory=list)


class _NodeLink:
    """One node's control listener and current connection."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.server: asyncio.Server | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.connections = 0
        self.sent = 0
        self.lost = 0


class TrafficPlayback:
    """Plays a seeded TrafficRun in real time (on `clock`) to nodes, a controller and loop cards."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        *,
        seed: int,
        duration_s: float,
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        controller: DetectorSink | None = None,
        lead_s: float = 0.02,
        debounce_s: float = 0.02,
        host: str = "127.0.0.1",
        on_output: Callable[[str, str], None] | None = None,
    ) -> None:
        """`lead_s`: how long before its time an edge is sent; `debounce_s`: the node's debounce,
        which sizes traffic_sim's glitches; `on_output(node, line)` hears the node's "O ..." and
        "R ..." lines (output pins, resets)."""
        if not lanes:
            raise PlaybackError("lanes", "there is no lane to play")
        for i, lane in enumerate(lanes):
            if lane.pins and lane.node is None:
                raise PlaybackError(f"lane {i}", "has pins but no node to send them to")
            if len(lane.pins) > 2 or len(lane.card_channels) > 2:
                raise PlaybackError(f"lane {i}", "a lane has one loop or a two-loop trap")
            if lane.pins and lane.card_channels and len(lane.pins) != len(lane.card_channels):
                raise PlaybackError(f"lane {i}", "pins and card_channels must name the same loops")
            if lane.phase is not None and controller is None:
                raise PlaybackError(f"lane {i}", f"calls phase {lane.phase} but no controller was given")
            if lane.card_channels and lane.card is None:
                raise PlaybackError(f"lane {i}", "has card_channels but no card")
        self.lanes = list(lanes)
        self.seed = seed
        self.duration_us = round(duration_s * 1e6)
        self.clock: Clock = clock if clock is not None else (truth.clock if truth is not None else MonotonicClock())
        self.truth = truth if truth is not None else GroundTruthLog(clock=self.clock)
        self.controller = controller
        self.lead_us = round(lead_s * 1e6)
        self.host = host
        self.on_output = on_output
        self.run = TrafficRun([lane.spec() for lane in self.lanes], seed,  # type: ignore[no-untyped-call]
                              self.duration_us, debounce_us=round(debounce_s * 1e6))
        self.t0_us: int | None = None
        self.outputs: dict[str, list[tuple[int, str]]] = {}
        self._links = {lane.node: _NodeLink(lane.node) for lane in self.lanes if lane.node is not None}
        self._lost_edges: set[tuple[int, int, int]] = set()  # (channel, offset, level) not delivered
        self._task: asyncio.Task[None] | None = None
        self.vehicles_logged = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Listen for every node's control connection."""
        try:
            for link in self._links.values():
                link.server = await asyncio.start_server(
                    functools.partial(self._on_client, link), self.host, 0)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for link in self._links.values():
            if link.server is not None:
                link.server.close()
            if link.writer is not None:
                link.writer.close()
            if link.reader_task is not None:
                link.reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link.reader_task
            if link.server is not None:
                await link.server.wait_closed()
                link.server = None

    def control_address(self, node: str) -> str:
        """"host:port" for the node's host["control"]."""
        link = self._link(node)
        if link.server is None:
            raise PlaybackError(f"node {node}", "the playback is not open: use `async with`")
        host, port = link.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    def connected(self, node: str) -> bool:
        return self._link(node).writer is not None

    async def wait_connected(self, node: str, *, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._link(node).connected.wait()

    def start(self, *, t0_us: int | None = None, delay_s: float = 0.2) -> int:
        """Begin the run at `t0_us` (default `delay_s` from now, so the first edges are not late);
        returns t0_us."""
        if self._task is not None:
            raise PlaybackError("start", "the playback was already started")
        self.t0_us = self.clock.now_us() + round(delay_s * 1e6) if t0_us is None else t0_us
        self.truth.record(SOURCE, "run", t_us=self.t0_us, seed=self.seed, duration_us=self.duration_us,
                          lanes=[self._lane_info(i) for i in range(len(self.lanes))],
                          glitches=list(self.run.glitches))
        self._task = asyncio.create_task(self._play(), name="traffic playback")
        return self.t0_us

    async def wait_done(self, *, timeout: float | None = None) -> None:
        """Wait until every edge is out and every vehicle logged."""
        if self._task is None:
            raise PlaybackError("wait_done", "the playback was not started")
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._task)

    def inject_edge(self, node: str, pin: int, level: int, t_us: int | None = None) -> bool:
        """Send one extra edge to a node now (a scenario's own pin); False if it is not connected."""
        return self._send(self._link(node), pin, level, self.clock.now_us() if t_us is None else t_us)

    # -- truth -----------------------------------------------------------------------------------

    def vehicles(self, lane: int) -> list[Vehicle]:
        """The lane's vehicles (traffic_sim's, times as offsets from t0)."""
        vehicles: list[Vehicle] = self.run.lanes[lane]
        return vehicles

    def interval_truth(self, lane: int, t0_us: int, t1_us: int) -> IntervalTruth:
        """Exact measures of `lane` over the absolute host-monotonic window [t0_us, t1_us)."""
        if self.t0_us is None:
            raise PlaybackError("interval_truth", "the playback was not started, so it has no times")
        if t1_us <= t0_us:
            raise PlaybackError("interval_truth", f"the window [{t0_us}, {t1_us}) is empty")
        lo, hi = t0_us - self.t0_us, t1_us - self.t0_us
        trap = self.lanes[lane].loops == 2
        volume = on_us = 0
        speeds: list[float] = []
        lengths: list[float] = []
        for v in self.run.lanes[lane]:
            if lo <= v.a_on < hi:
                volume += 1
                if not trap:
                    speeds.append(v.speed_mmph / 1000)
            on_us += max(0, min(v.a_off, hi) - max(v.a_on, lo))
            if trap and v.b_off is not None and lo <= v.b_off < hi:
                speeds.append(v.speed_mmph / 1000)
                lengths.append(v.length_mft / 1000)
        span = hi - lo
        return IntervalTruth(
            volume=volume, flow_vph=volume * 3600e6 / span, occupancy_pct=100 * on_us / span,
            on_us=on_us, mean_speed_mph=sum(speeds) / len(speeds) if speeds else None,
            mean_length_ft=sum(lengths) / len(lengths) if lengths else None, speeds_mph=speeds)

    # -- playing ---------------------------------------------------------------------------------

    def _lane_info(self, i: int) -> dict[str, Any]:
        lane = self.lanes[i]
        return {"lane": i, "node": lane.node, "pins": list(lane.pins), "loops": lane.loops,
                "spacing_ft": lane.spacing_ft if lane.loops == 2 else None, "loop_ft": lane.loop_ft,
                "flow_vph": lane.flow_vph, "phase": lane.phase, "card_channels": list(lane.card_channels),
                "active_level": lane.active_level}

    def _schedule(self) -> list[tuple[int, int, int, Callable[[], None]]]:
        """(send time, order, seq, action) for every edge, device input and vehicle log: at one
        send time, node edges go first, then device inputs, then the vehicles they completed."""
        assert self.t0_us is not None
        t0, lead = self.t0_us, self.lead_us
        plan: list[tuple[int, int, int, Callable[[], None]]] = []
        for offset, channel, level in self.run.raw:
            li, loop = self.run.channels[channel]
            lane = self.lanes[li]
            if loop < len(lane.pins):
                assert lane.node is not None  # checked in __init__
                electrical = lane.active_level if level else 1 - lane.active_level
                act = functools.partial(self._edge, self._links[lane.node], lane.pins[loop], electrical,
                                        t0 + offset, (channel, offset, level))
                plan.append((t0 + offset - lead, 0, len(plan), act))
        for li, lane in enumerate(self.lanes):
            for v in self.run.lanes[li]:
                edges = [(0, v.a_on, True), (0, v.a_off, False)]
                if v.b_on is not None:
                    edges += [(1, v.b_on, True), (1, v.b_off, False)]
                for loop, offset, on in edges:
                    t = t0 + offset
                    if loop == 0 and lane.phase is not None and self.controller is not None:
                        act = functools.partial(self.controller.detector, lane.phase, on, t)
                        plan.append((t - lead, 1, len(plan), act))
                    if loop < len(lane.card_channels) and lane.card is not None:
                        act = functools.partial(lane.card.schedule_presence, lane.card_channels[loop], on, t)
                        plan.append((t - lead, 1, len(plan), act))
                last = max(v.a_off, v.b_off or 0)
                plan.append((t0 + last - lead, 2, len(plan), functools.partial(self._log_vehicle, li, v)))
        plan.sort(key=lambda item: item[:3])
        return plan

    async def _play(self) -> None:
        plan = self._schedule()
        i = 0
        while i < len(plan):
            await self.clock.sleep_until(plan[i][0])
            now = self.clock.now_us()
            while i < len(plan) and plan[i][0] <= now:
                plan[i][3]()
                i += 1
            for link in self._links.values():
                if link.writer is not None:
                    with contextlib.suppress(ConnectionError):
                        await link.writer.drain()

    def _edge(self, link: _NodeLink, pin: int, level: int, t_us: int, key: tuple[int, int, int]) -> None:
        if not self._send(link, pin, level, t_us):
            self._lost_edges.add(key)

    def _send(self, link: _NodeLink, pin: int, level: int, t_us: int) -> bool:
        if link.writer is None or link.writer.is_closing():
            link.lost += 1
            return False
        link.writer.write(b"E %d %d %d\n" % (pin, level, t_us))
        link.sent += 1
        return True

    def _log_vehicle(self, li: int, v: Vehicle) -> None:
        assert self.t0_us is not None
        t0 = self.t0_us
        lane = self.lanes[li]
        channels = [c for c, (l, _) in enumerate(self.run.channels) if l == li]
        keys = [(channels[0], v.a_on, 1), (channels[0], v.a_off, 0)]
        if v.b_on is not None and len(channels) > 1:
            keys += [(channels[1], v.b_on, 1), (channels[1], v.b_off, 0)]
        delivered = bool(lane.pins) and not any(k in self._lost_edges for k in keys)
        self.vehicles_logged += 1
        self.truth.record(
            SOURCE, "vehicle", t_us=t0 + v.a_on, lane=li, node=lane.node,
            t_on_a_us=t0 + v.a_on, t_off_a_us=t0 + v.a_off,
            t_on_b_us=None if v.b_on is None else t0 + v.b_on,
            t_off_b_us=None if v.b_off is None else t0 + v.b_off,
            on_a_us=v.a_off - v.a_on, on_b_us=None if v.b_on is None else v.b_off - v.b_on,
            speed_mph=v.speed_mmph / 1000, length_ft=v.length_mft / 1000, delivered=delivered)

    # -- control connections ---------------------------------------------------------------------

    def _link(self, node: str) -> _NodeLink:
        if node not in self._links:
            raise PlaybackError(f"node {node}", f"no lane sends to it (nodes: {sorted(self._links)})")
        return self._links[node]

    async def _on_client(self, link: _NodeLink, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        # A node that reconnects (a reboot) replaces its old connection, which is surely dead.
        if link.writer is not None:
            link.writer.close()
        if link.reader_task is not None and link.reader_task is not asyncio.current_task():
            link.reader_task.cancel()
        link.writer = writer
        link.reader_task = asyncio.current_task()
        link.connections += 1
        link.connected.set()
        try:
            while line := await reader.readline():
                text = line.decode("ascii", "replace").strip()
                self.outputs.setdefault(link.node, []).append((self.clock.now_us(), text))
                if self.on_output is not None:
                    self.on_output(link.node, text)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if link.writer is writer:
                link.writer = None
                link.connected.clear()
            writer.close()
