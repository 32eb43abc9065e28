"""The emulated demo junction end to end: the boards of a boards.toml running the real firmware
(CPython or the MicroPython VM, per board), their buses and links on timed virtual wires to the
emulated devices and to `citynerve gateway run`, a real broker, the traffic, the scenario's
faults, and a subscriber whose decoded stream the accounting compares with the ground truth.

    scenario = load_scenario("faults")
    async with Junction(scenario, workdir=tmp) as junction:   # everything up, traffic started
        result = await junction.run()                         # duration, faults, drain, accounting
    result.accounting.violations(scenario.expect)

Start order: ground truth and clock, broker, subscriber, emulated field (wires, bridges,
devices, traffic listeners), gateway, nodes; then, once every node has published something and
the loop pins' control connection is up, the traffic starts: scenario time 0 (`t0_us`). Faults
are scheduled from there. Stop order is the reverse; every process, wire and task is closed
even when starting fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from citynerve.inventory import load_inventory, load_profiles
from hil.accounting import Accounting, account, merge_modbus
from hil.accounting_modbus import modbus_check
from hil.accounting_truth import BoardInfo, RunTruth
from hil.broker import EmbeddedBroker, Mosquitto, mosquitto_executable
from hil.emulators.ground_truth import GroundTruthLog, MonotonicClock
from firmware.modbus_master import DEFAULT_BACKOFF_MS as MODBUS_BACKOFF_MS
from firmware.modbus_master import DEFAULT_OFFLINE_AFTER as MODBUS_OFFLINE_AFTER
from firmware.modbus_master import DEFAULT_RETRIES as MODBUS_RETRIES
from hil.firmware_process import build_micropython_files
from hil.junction_config import dead_unit_id, node_configs
from hil.junction_devices import JunctionDevices
from hil.junction_faults import run_fault
from hil.junction_gateway import GatewayRunner
from hil.junction_stream import Reading, StreamRecorder
from hil.node_runner import NodeRunner
from hil.scenario import Scenario, ScenarioError

__all__ = ["Junction", "JunctionError", "RunResult", "run_scenario"]

log = logging.getLogger(__name__)

BOOT_GRACE_S = {"cpython": 3.0, "micropython": 8.0}  # a node's drivers are up this long after start
READY_TIMEOUT_S = 60.0
DRAIN_POLL_S = 1.0
STALL_WATCH_S = 0.01
# Loop edges go out 20 ms ahead and the node waits 50 ms for late ones (TrafficPlayback lead_s,
# firmware/drivers/loop_presence.py LAG_US): a loop running this late may have delivered one late.
STALL_US = 50_000
MIN_DRAIN_S = 4.0


class JunctionError(Exception):
    """The junction could not be brought up or run: `stage` and a one-sentence `reason`."""

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"emulated junction, {stage}: {reason}")


@dataclass
class RunResult:
    scenario: Scenario
    accounting: Accounting
    truth: RunTruth
    t0_us: int
    drained_s: float
    events: list[str]  # what the harness did, in scenario time
    readings: list[Reading]  # the decoded stream, once per batch id
    workdir: Path
    payloads: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)  # (node, m|e, batch)

    @property
    def ok(self) -> bool:
        return not self.accounting.violations(self.scenario.expect)


class Junction:
    """See the module doc. `broker_url` uses a broker that is already running (no broker faults);
    `on_event(text)` hears what the harness does (for a progress line or the live view)."""

    def __init__(self, scenario: Scenario, *, workdir: Path, broker_url: str | None = None,
                 on_event: Callable[[str], None] | None = None, wait_for_nodes: bool = True) -> None:
        self.scenario = scenario
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.on_event = on_event
        self.wait_for_nodes = wait_for_nodes
        self.inventory = load_inventory(scenario.boards)
        self.profiles = load_profiles()
        self.configs = node_configs(self.inventory, self.profiles, scenario)
        for board in scenario.runtimes:
            if board not in self.configs:
                raise ScenarioError(scenario.path or scenario.name, f"runtimes.{board}",
                                    f"no board {board!r} in {scenario.boards}")
        if broker_url is not None and scenario.faults_of("broker_down"):
            raise ScenarioError(scenario.path or scenario.name, "fault",
                                "a broker outage needs the harness's own broker, not --broker")
        self.clock = MonotonicClock()
        self.truth = GroundTruthLog(clock=self.clock)  # in memory until started: then also a file
        self.broker: Mosquitto | EmbeddedBroker | None = None
        self.recorder: StreamRecorder | None = None
        self.devices: JunctionDevices | None = None
        self.gateway: GatewayRunner | None = None
        self.nodes: dict[str, NodeRunner] = {}
        self.t0_us: int | None = None
        self.events: list[str] = []
        self.fault_windows: list[tuple[int, int, str]] = []
        self.stalls: list[tuple[int, int]] = []  # when this process's event loop fell behind
        self._stack = contextlib.AsyncExitStack()
        self._fault_tasks: list[asyncio.Task[None]] = []
        self.gateway_lock = asyncio.Lock()  # a restart and another kill never overlap

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url
        assert self.broker is not None
        return self.broker.url

    async def _start(self) -> None:
        sc = self.scenario
        self.truth = GroundTruthLog(self.workdir / "truth.jsonl", clock=self.clock)
        self._stack.callback(self.truth.close)
        watch = asyncio.create_task(self._watch_stalls(), name="stall watch")
        self._stack.push_async_callback(_cancel, watch)
        if self.broker_url is None:
            kind = sc.broker
            if kind == "auto":
                kind = "mosquitto" if mosquitto_executable() is not None else "embedded"
            if kind == "mosquitto" and mosquitto_executable() is None:
                raise JunctionError("broker", "the scenario needs mosquitto, which is not installed "
                                              "(apt-get install mosquitto)")
            self.broker = Mosquitto(persistence=True) if kind == "mosquitto" else EmbeddedBroker()
            await self._stack.enter_async_context(self.broker)
            self.note(f"broker {self.broker.kind} at {self.broker.url}")
        site = str(self.inventory["site"]["id"])
        gateway_id = str(self.inventory["gateway"]["id"])
        self.recorder = StreamRecorder(self.url, site=site, gateway=gateway_id)
        try:
            await asyncio.to_thread(self.recorder.start)
        except (OSError, TimeoutError) as error:
            raise JunctionError("subscriber", f"cannot subscribe at {self.url} ({error})") from None
        self._stack.callback(self.recorder.stop)
        dead = [(f.board or "", dead_unit_id(f)) for f in sc.faults_of("dead_unit")]
        self.devices = await self._stack.enter_async_context(
            JunctionDevices(self.configs, scenario=sc, clock=self.clock, truth=self.truth, dead_units=dead))
        for fault in sc.faults_of("dead_unit"):
            if fault.at_s == 0:  # dead from the start
                self.devices.modbus_units[(fault.board or "", dead_unit_id(fault))].go_silent(
                    duration_s=fault.duration_s)
        self.gateway = GatewayRunner(inventory=self.inventory, links=self.devices.gateway_links,
                                     broker=self.url, workdir=self.workdir / "gateway",
                                     settings=dict(sc.gateway))
        await self._stack.enter_async_context(self.gateway)
        self.note(f"gateway running (pid {self.gateway.pid})")
        for board, config in self.configs.items():
            runtime = sc.runtime_of(board)
            runner = NodeRunner(config=config, host=self.devices.host_section(board), runtime=runtime,
                                workdir=self.workdir / "nodes" / board,
                                log_path=self.workdir / "nodes" / f"{board}.log")
            self.nodes[board] = runner
            self._stack.push_async_callback(self._stop_node, board)
            if runtime == "micropython":
                # mpy-cross takes seconds on a cold build folder; in the runner's own spawn it
                # would stall this event loop, and with it every wire and emulator.
                await asyncio.to_thread(build_micropython_files, runner.workdir)
            self.truth.record("harness", "node_start", board=board, runtime=runtime)
            await runner.start()
        self.note("nodes started: " + ", ".join(f"{b} ({r.runtime})" for b, r in self.nodes.items()))
        if self.wait_for_nodes:
            await self._wait_ready()
        assert self.devices.playback is not None
        for board in {lane.node for lane in self.devices.playback.lanes if lane.node}:
            await self.devices.playback.wait_connected(board, timeout=READY_TIMEOUT_S)
        self.t0_us = self.devices.playback.start()
        self.truth.record("harness", "t0", t_us=self.t0_us, scenario=sc.name)
        self.note("traffic started: scenario time 0")
        for fault in sc.faults:
            self._fault_tasks.append(asyncio.create_task(run_fault(self, fault), name=f"fault {fault.kind}"))

    async def _watch_stalls(self) -> None:
        """Note when this event loop runs late: the emulators keep time on it, so a stall delays
        what they send (a loop edge played late is the harness's fault, not the node's)."""
        period_us = round(STALL_WATCH_S * 1e6)
        while True:
            before = self.clock.now_us()
            await asyncio.sleep(STALL_WATCH_S)
            after = self.clock.now_us()
            if after - before - period_us > STALL_US:
                self.stalls.append((before + period_us, after))

    async def _wait_ready(self) -> None:
        assert self.recorder is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not set(self.nodes) <= self.recorder.nodes_seen():
            missing = sorted(set(self.nodes) - self.recorder.nodes_seen())
            for board in missing:
                runner = self.nodes[board]
                if not runner.running and runner.exit_codes:
                    raise JunctionError(f"node {board}", f"exited with {runner.exit_codes[-1]}; "
                                        f"see {runner.log_path}")
            if time.monotonic() > deadline:
                raise JunctionError("start", f"no data from {', '.join(missing)} within "
                                             f"{READY_TIMEOUT_S:g} s (logs in {self.workdir})")
            await asyncio.sleep(0.1)
        self.note("every node has published")

    async def _stop_node(self, board: str) -> None:
        runner = self.nodes[board]
        await runner.stop()
        self.truth.record("harness", "node_stop", board=board)

    async def aclose(self) -> None:
        for task in self._fault_tasks:
            task.cancel()
        await asyncio.gather(*self._fault_tasks, return_exceptions=True)
        self._fault_tasks.clear()
        await self._stack.aclose()

    # -- running a scenario ----------------------------------------------------------------------

    def now_s(self) -> float:
        """Scenario time now (0 before the traffic starts)."""
        return 0.0 if self.t0_us is None else (self.clock.now_us() - self.t0_us) / 1e6

    async def run(self, *, drain: bool = True) -> RunResult:
        """Run the scenario's duration (faults fire on their own), drain, and account."""
        assert self.t0_us is not None
        end_us = self.t0_us + round(self.scenario.duration_s * 1e6)
        await self.clock.sleep_until(end_us)
        await asyncio.gather(*self._fault_tasks)
        self.note("duration over: draining")
        started = time.monotonic()
        if drain:
            # Vehicles are logged once their last edge is out, a second or two after they
            # arrived: let the truth of the last moments be written before judging them.
            await asyncio.sleep(MIN_DRAIN_S)
        result = self.accounting()
        if drain:
            deadline = started + self.scenario.drain_s
            while (result.lost or result.intervals.get("lost")) and time.monotonic() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
                result = self.accounting()
        drained = time.monotonic() - started
        self.note(f"accounting done after {drained:.1f} s of drain")
        assert self.devices is not None
        for frame in self.devices.pm_frames():  # the PM sensors keep their own logs: file them too
            self.truth.record(f"{frame.board}/{frame.device}", "frame", t_us=frame.t_us, values=frame.values)
        assert self.recorder is not None
        readings = self.recorder.readings()
        with (self.workdir / "decoded.jsonl").open("w") as fh:  # what the subscriber decoded, kept
            for r in readings:
                fh.write(json.dumps(dataclasses.asdict(r), separators=(",", ":")) + "\n")
        return RunResult(self.scenario, result, self.run_truth(), self.t0_us, drained, list(self.events),
                         readings, self.workdir, self.recorder.payloads())

    def run_truth(self) -> RunTruth:
        assert self.devices is not None and self.t0_us is not None and self.devices.playback is not None
        infos = {}
        for board, config in self.configs.items():
            devices = config["devices"]
            infos[board] = BoardInfo(
                board=board, runtime=self.scenario.runtime_of(board),
                profiles={d["id"]: d["profile"] for d in devices},
                detectors={d["id"]: tuple(d.get("detector", ())) for d in devices if "pins" in d},
                pins={d["id"]: tuple(d["pins"]) for d in devices if "pins" in d},
                interval_s=int(config.get("interval_s", 30)),
                dead=frozenset(dead_unit_id(f) for f in self.scenario.faults_of("dead_unit") if f.board == board))
        lanes = {}
        for i, lane in enumerate(self.devices.playback.lanes):
            for board, info in infos.items():
                for device, pins in info.pins.items():
                    if board == lane.node and pins == tuple(lane.pins):
                        lanes[i] = (board, device)
        return RunTruth(
            t0_us=self.t0_us, end_us=self.t0_us + round(self.scenario.duration_s * 1e6),
            utc_ms=self.clock.utc_ms, records=self.truth.records(), pm_frames=self.devices.pm_frames(),
            wire_faults={k: list(v) for k, v in self.devices.wire_faults.items()}, boards=infos, lanes=lanes,
            fault_windows=list(self.fault_windows),
            grace_us={b: round(BOOT_GRACE_S[self.scenario.runtime_of(b)] * 1e6) for b in infos},
            reboot_window_us=round(self.scenario.expect.reboot_loss_window_s * 1e6),
            stalls=list(self.stalls))

    def accounting(self) -> Accounting:
        """The accounting of everything so far."""
        assert self.recorder is not None
        truth = self.run_truth()
        readings, stats = self.recorder.snapshot()
        interval = float(self.gateway.boards["gateway"].get("measurement_interval_s", 10)) if self.gateway else 10.0
        result = account(truth, readings, stats, expect=self.scenario.expect, measurement_interval_s=interval)
        checks = None
        for fault in self.scenario.faults_of("dead_unit"):
            board = fault.board or ""
            ctrl = next((d for d in self.configs[board]["devices"] if d.get("profile") == "nema-phase-status"
                         and d.get("bus") == fault.bus), None)
            unit = next(d for d in self.configs[board]["devices"] if d["id"] == dead_unit_id(fault))
            profile = self.profiles[fault.profile]

            def tuning(key: str, default: int) -> int:  # as firmware/drivers/modbus_sensor.py reads it
                return int(unit.get(key, profile.get(key, default)))
            if ctrl is not None:
                checks = modbus_check(truth, board=board, dead=f"{board}/{dead_unit_id(fault)}",
                                      poll_ms=int(ctrl.get("poll_ms", 100)),
                                      backoff_ms=tuning("backoff_ms", MODBUS_BACKOFF_MS),
                                      offline_after=tuning("offline_after", MODBUS_OFFLINE_AFTER),
                                      retries=tuning("retries", MODBUS_RETRIES))
        return merge_modbus(result, checks)

    def note(self, text: str) -> None:
        """Record what the harness did, in scenario time (the live view and the report show it)."""
        line = f"[t={self.now_s():7.2f} s] {text}"
        self.events.append(line)
        log.info("%s", line)
        if self.on_event is not None:
            self.on_event(line)

    # -- for the live view -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "t_s": self.now_s(),
            "broker": None if self.broker is None else {"kind": self.broker.kind, "url": self.broker.url,
                                                        "running": self.broker.running},
            "gateway": None if self.gateway is None else {"running": self.gateway.running,
                                                          "pid": self.gateway.pid,
                                                          "starts": len(self.gateway.starts)},
            "nodes": {b: r.status() for b, r in self.nodes.items()},
            "events": self.events[-8:],
        }


async def run_scenario(scenario: Scenario, *, workdir: Path, broker_url: str | None = None,
                       on_event: Callable[[str], None] | None = None) -> RunResult:
    """Bring the junction up, run the scenario, account, and shut everything down."""
    async with Junction(scenario, workdir=workdir, broker_url=broker_url, on_event=on_event) as junction:
        return await junction.run()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
