"""The PMS5003 and SDS011 drivers under both runtimes, against the emulated sensors on loopback TCP.

Each test starts a firmware process (CPython with the host HAL, or the MicroPython VM) that runs a
driver behind a small shell: the shell reports the stream table, every DATA message the outbox
seals, and answers "cmd" / "state" requests over its own loopback connection. The harness side
serves the sensor (hil/emulators), the HAL's control channel (SET pin changes reach the emulator
from there) and the shell, and compares what the node published with the emulator's ground truth.

NodeHarness and its helpers are shared with tests/firmware/test_loop_presence.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hil.emulators import UartDeviceServer
from hil.emulators.pms5003_emulator import Pms5003Emulator
from hil.emulators.sds011_emulator import Sds011Emulator
from hil.firmware_process import REPO_ROOT, RUNTIMES, firmware_command
from protocols import pms5003, sds011
from protocols.batch_codes import FAULT_CHECKSUM, FAULT_TIMEOUT, FAULT_WARMING_UP
from protocols.pms5003 import Pms5003Reading
from protocols.ticks import TICKS_PERIOD, ticks_diff

MASK = TICKS_PERIOD - 1
WAIT_S = 30.0  # a generous bound for a condition; a passing test never gets near it

# --- the node side: a shell around the drivers under test -------------------------------------

SHELL = r'''
import asyncio
import json
from firmware import hal_host as hal
from firmware.clock import GatewayClock
from firmware.node_context import NodeContext
from firmware.outbox import Outbox
from firmware.streams import StreamTable


async def _send(conn, tag, obj):
    await conn.write((tag + " " + json.dumps(obj) + "\n").encode())


async def _pump(node, conn):
    while True:
        await asyncio.sleep(0.02)
        msg = node.outbox.take(hal.ticks_ms())
        if msg is not None:
            await _send(conn, "D", msg)


async def _command(conn, rid, driver, op, args):
    try:
        ok, message = await driver.command(op, args)
        result = [ok, message]
    except Exception as exc:
        result = [False, "raised " + repr(exc)]
    await _send(conn, "R", [rid, result])


async def shell(cfg, make_drivers, before_start=None):
    hal.configure(cfg["host"])
    await hal.start()
    # Roomy: a replay can emit a burst of events at once (a real link client seals when full).
    node = NodeContext(hal, cfg, StreamTable(), Outbox(512, 512), GatewayClock(hal.ticks_ms))
    conn = await hal._Connection(cfg["host"]["shell"]).open()
    drivers = make_drivers(node)
    await _send(conn, "S", [node.streams.entries(), node.config_errors])
    if before_start is not None:
        await before_start()
    for key in drivers:
        asyncio.create_task(drivers[key].run())
    asyncio.create_task(_pump(node, conn))
    buf = b""
    while True:
        buf += await conn.read(512)
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split(" ", 3)
            if parts[0] == "quit":
                msg = node.outbox.take(hal.ticks_ms())
                if msg is not None:
                    await _send(conn, "D", msg)
                await _send(conn, "Q", 0)
                return
            if parts[0] == "cmd":
                op_args = json.loads(parts[3])
                asyncio.create_task(_command(conn, int(parts[1]), drivers[parts[2]], op_args[0],
                                             op_args[1]))
            elif parts[0] == "state":
                # Everything published so far reaches the harness before this answer does.
                msg = node.outbox.take(hal.ticks_ms())
                if msg is not None:
                    await _send(conn, "D", msg)
                state = {}
                for key in drivers:
                    state[key] = {"counters": drivers[key].counters,
                                  "last_fault": drivers[key].last_fault}
                await _send(conn, "R", [int(parts[1]), {"tick": hal.ticks_ms(), "drivers": state,
                                                         "dropped": node.outbox.dropped}])
'''

ONE_DRIVER = '''
def make_drivers(node):
    dev = node.config["devices"][0]
    return {dev["id"]: Driver(dev, node.config["profiles"][dev["profile"]], node)}
'''


# --- the harness side ------------------------------------------------------------------------

@dataclass
class Sample:
    tick: int
    value: Any
    fault: int
    detail: int


@dataclass
class NodeHarness:
    """A firmware process running `source` (which defines make_drivers) behind SHELL."""

    runtime: str
    build_dir: Path
    config: dict[str, Any]
    source: str
    before_start: str | None = None  # name of a coroutine function in `source`
    on_output: Callable[[int, int], None] | None = None  # SET pins and other outputs
    streams: dict[int, str] = field(default_factory=dict)
    config_errors: list[Any] = field(default_factory=list)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    events: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._next_rid = 1
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._shell_w: asyncio.StreamWriter | None = None
        self._control_w: asyncio.StreamWriter | None = None
        self._shell_ready = asyncio.Event()
        self._quit = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout = bytearray()
        self.stderr = bytearray()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        shell_srv = await asyncio.start_server(self._on_shell, "127.0.0.1", 0)
        control_srv = await asyncio.start_server(self._on_control, "127.0.0.1", 0)
        self._servers += [shell_srv, control_srv]
        host = self.config.setdefault("host", {})
        host["shell"] = "127.0.0.1:%d" % shell_srv.sockets[0].getsockname()[1]
        host["control"] = "127.0.0.1:%d" % control_srv.sockets[0].getsockname()[1]
        call = "shell(json.loads(%s), make_drivers%s)" % (
            json.dumps(json.dumps(self.config)),
            ", " + self.before_start if self.before_start else "")
        argv, env, cwd = firmware_command(self.runtime, SHELL + self.source, call,
                                          build_dir=self.build_dir)
        self.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        self._tasks.append(asyncio.create_task(self._drain(self.proc.stdout, self.stdout)))
        self._tasks.append(asyncio.create_task(self._drain(self.proc.stderr, self.stderr)))
        await self.wait_for(self._shell_ready.is_set, "the node's shell to connect")

    async def close(self) -> None:
        try:
            if self._shell_w is not None and self.proc is not None and self.proc.returncode is None:
                self._shell_w.write(b"quit\n")
                await self._shell_w.drain()
                try:
                    await asyncio.wait_for(self.proc.wait(), 10)
                except asyncio.TimeoutError:
                    pass
        except ConnectionError:
            pass
        finally:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            for writer in (self._shell_w, self._control_w):
                if writer is not None:
                    writer.close()
            for srv in self._servers:
                srv.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> NodeHarness:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def diagnostics(self) -> str:
        return "node stderr: %s\nnode stdout: %s" % (
            self.stderr.decode(errors="replace")[-3000:], self.stdout.decode(errors="replace")[-1500:])

    # -- waiting -----------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Wait until predicate() holds, re-checking on every message from the node."""
        async def loop() -> None:
            while not predicate():
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError("the node exited (%s) while waiting for %s\n%s"
                                         % (self.proc.returncode, what, self.diagnostics()))
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass

        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("timed out waiting for %s\n%s" % (what, self.diagnostics())) from None

    def _kick(self) -> None:
        self._changed.set()

    async def _drain(self, stream: asyncio.StreamReader | None, into: bytearray) -> None:
        assert stream is not None
        while True:
            chunk = await stream.read(4096)
            if not chunk:
                self._kick()
                return
            into.extend(chunk)

    # -- the control channel: output pins in, edges out --------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._control_w = writer
        self._kick()
        while True:
            line = await reader.readline()
            if not line:
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"O" and self.on_output is not None:
                self.on_output(int(parts[1]), int(parts[2]))
                self._kick()

    async def send_control(self, text: str) -> None:
        await self.wait_for(lambda: self._control_w is not None, "the node's control channel")
        assert self._control_w is not None
        self._control_w.write(text.encode())
        await self._control_w.drain()

    # -- the shell ---------------------------------------------------------------------------

    async def _on_shell(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._shell_w = writer
        while True:
            line = await reader.readline()
            if not line:
                self._kick()
                return
            tag, _, body = line.decode().partition(" ")
            obj = json.loads(body)
            if tag == "S":
                self.streams = {entry[0]: entry[1] for entry in obj[0]}
                self.config_errors = obj[1]
                self._shell_ready.set()
            elif tag == "D":
                self._take(obj)
            elif tag == "R":
                fut = self._replies.pop(obj[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(obj[1])
            elif tag == "Q":
                self._quit.set()
            self._kick()

    def _take(self, msg: dict[str, Any]) -> None:
        t0 = msg["t0"]
        faults: dict[int, tuple[int, int]] = {}
        f = msg.get("f", [])
        for i in range(0, len(f), 3):
            faults[f[i]] = (f[i + 1], f[i + 2])
        m = msg["m"]
        for k in range(0, len(m), 3):
            sid, dt, value = m[k], m[k + 1], m[k + 2]
            fault, detail = faults.get(k // 3, (0, 0))
            self.samples.setdefault(self.streams[sid], []).append(
                Sample((t0 + dt) & MASK, value, fault, detail))
        e = msg.get("e", [])
        for k in range(0, len(e), 3):
            self.events.append(((t0 + e[k]) & MASK, e[k + 1], e[k + 2]))

    async def _request(self, line: str, rid: int) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        assert self._shell_w is not None
        self._shell_w.write(line.encode())
        await self._shell_w.drain()
        await self.wait_for(fut.done, line.strip())
        return fut.result()

    def _rid(self) -> int:
        self._next_rid += 1
        return self._next_rid

    async def command(self, device: str, op: str, args: Any = None) -> tuple[bool, str]:
        rid = self._rid()
        ok, message = await self._request("cmd %d %s %s\n" % (rid, device, json.dumps([op, args])), rid)
        return ok, message

    async def state(self) -> dict[str, Any]:
        """The drivers' counters and last faults, the node's tick and the outbox's drop count;
        every sample published before the request has arrived when this returns."""
        rid = self._rid()
        return await self._request("state %d\n" % rid, rid)

    async def counters(self, device: str) -> dict[str, int]:
        return (await self.state())["drivers"][device]["counters"]

    async def wait_node_ms(self, ms: int) -> None:
        """Wait until the node's own clock has advanced `ms` (for checks that something did NOT
        happen within a horizon the driver defines, e.g. its silence timeout)."""
        start = (await self.state())["tick"]
        while ticks_diff((await self.state())["tick"], start) < ms:
            await asyncio.sleep(0.05)

    # -- views -------------------------------------------------------------------------------

    def stream(self, name: str) -> list[Sample]:
        return self.samples.get(name, [])

    def values(self, name: str) -> list[Any]:
        return [s.value for s in self.stream(name) if not s.fault]

    def faults(self, name: str, code: int) -> list[Sample]:
        return [s for s in self.stream(name) if s.fault == code]


def load_profile(name: str, **overrides: Any) -> dict[str, Any]:
    profile = json.loads((REPO_ROOT / "profiles" / f"{name}.json").read_text())
    profile.update(overrides)
    return profile


def is_slice(part: Sequence[Any], whole: Sequence[Any]) -> int | None:
    """The index at which `part` occurs contiguously in `whole`, or None."""
    n = len(part)
    for i in range(len(whole) - n + 1):
        if list(whole[i:i + n]) == list(part):
            return i
    return None


# --- the sensors -----------------------------------------------------------------------------

def _pms_series() -> list[Pms5003Reading]:
    # REFERENCE.md §2's two vectors, then a series whose consecutive values all differ, so a
    # dropped, repeated or foreign frame shows as a mismatch.
    series = [Pms5003Reading(5, 13, 22, 5, 13, 22, 765, 252, 29, 15, 6, 6),
              Pms5003Reading(12, 18, 21, 12, 18, 21, 2130, 620, 110, 12, 3, 1)]
    for i in range(40):
        pm1, pm25, pm10 = 3 + i, 40 + (7 * i) % 97, 300 + (11 * i) % 501
        series.append(Pms5003Reading(pm1 + 1, pm25 + 2, pm10 + 3, pm1, pm25, pm10,
                                     1000 + i, 300 + i, 50, 10, 2, 1))
    return series


def _sds_series() -> list[tuple[int, int]]:
    # REFERENCE.md §3's vectors (123.6 / 261.8 and 12.3 / 25.7), then tenths that all differ.
    return [(1236, 2618), (123, 257)] + [(1 + (37 * i) % 4999, 7 + (53 * i) % 9991) for i in range(40)]


@dataclass(frozen=True)
class Sensor:
    name: str
    polled_mode: str
    driver: str
    expected: dict[str, Callable[[Any], Any]]  # stream leaf -> the value a reading must give
    emulator: Callable[..., UartDeviceServer]
    to_polled: Callable[[dict[str, Any]], bool]  # a logged command that switches to polled mode
    poll_command: int
    is_wake: Callable[[dict[str, Any]], bool]  # a logged command that wakes the sensor

    def make(self, **kwargs: Any) -> UartDeviceServer:
        return self.emulator(**kwargs)


PMS5003 = Sensor(
    "pms5003", "passive", "from firmware.drivers.pms5003_driver import Pms5003Driver as Driver",
    {"pm1_0": lambda r: r.pm1_0_atm, "pm2_5": lambda r: r.pm2_5_atm, "pm10": lambda r: r.pm10_atm},
    lambda **kw: Pms5003Emulator(_pms_series(), **kw),
    lambda c: c["command"] == pms5003.CMD_MODE and c["value"] == pms5003.MODE_PASSIVE,
    pms5003.CMD_READ,
    lambda c: c["command"] == pms5003.CMD_SLEEP and c["value"] == 1,
)
SDS011 = Sensor(
    "sds011", "query", "from firmware.drivers.sds011_driver import Sds011Driver as Driver",
    # The sensor's tenths, exactly: published as tenths / 10 (dec 1).
    {"pm2_5": lambda r: r.pm2_5_tenths / 10, "pm10": lambda r: r.pm10_tenths / 10},
    lambda **kw: Sds011Emulator(_sds_series(), **kw),
    lambda c: c["command"] == sds011.REPORTING_MODE and c["is_set"] and c["value"] == sds011.MODE_QUERY,
    sds011.QUERY_DATA,
    lambda c: c["command"] == sds011.SLEEP_WORK and c["is_set"] and c["value"] == sds011.STATE_WORK,
)
SENSORS = (PMS5003, SDS011)


def node_config(sensor: Sensor, address: str, device: dict[str, Any], **profile: Any) -> dict[str, Any]:
    dev = {"id": "pm", "profile": sensor.name, "bus": "pm-uart"}
    dev.update(device)
    return {
        "node": "test-node", "type": "esp32", "interval_s": 30, "link": {"transport": "tcp"},
        "buses": {"pm-uart": {"id": "pm-uart", "uart": 1, "tx": 17, "rx": 16, "baud": 9600,
                              "framing": "8N1"}},
        "devices": [dev],
        "profiles": {sensor.name: load_profile(sensor.name, **profile)},
        "host": {"uarts": {"pm-uart": address}},
    }


def harness(runtime: str, build_dir: Path, sensor: Sensor, cfg: dict[str, Any],
            emu: UartDeviceServer) -> NodeHarness:
    set_pin = getattr(emu, "set_pin", None)
    return NodeHarness(runtime, build_dir, cfg, sensor.driver + "\n" + ONE_DRIVER,
                       on_output=(lambda pin, level: set_pin(level)) if set_pin else None)


def check_published_exactly(node: NodeHarness, sensor: Sensor, emu: Any, start: int = 0) -> int:
    """Every stream's numbers are the emulator's good frames from index `start` on, in order,
    with nothing foreign in between; returns how many."""
    sent = emu.sent_readings()
    counts = set()
    for leaf, expect in sensor.expected.items():
        got = node.values("pm/" + leaf)
        want = [expect(r) for r in sent[start:start + len(got)]]
        assert got == want, f"{leaf}: published {got} but the sensor sent {want}"
        for s in node.stream("pm/" + leaf):
            assert (s.value is None) == bool(s.fault), f"{leaf}: a faulted sample carries a value: {s}"
        counts.add(len(got))
    assert len(counts) == 1, f"streams published different numbers of readings: {counts}"
    return counts.pop()


def all_values_at_least(node: NodeHarness, sensor: Sensor, n: int) -> Callable[[], bool]:
    return lambda: all(len(node.values("pm/" + leaf)) >= n for leaf in sensor.expected)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mpy-cross build of protocols/ and firmware/ for the module's MicroPython runs."""
    return tmp_path_factory.mktemp("mpy-build")


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sensor", SENSORS, ids=lambda s: s.name)
async def test_active_values_garbled_frames_and_silence(sensor: Sensor, runtime: str, build_dir: Path) -> None:
    async with sensor.make(period_s=0.04) as emu:
        cfg = node_config(sensor, emu.address, {"mode": "active", "period_ms": 200},
                          warmup_s=0, silence_timeout_s=0.4)
        async with harness(runtime, build_dir, sensor, cfg, emu) as node:
            await node.wait_for(all_values_at_least(node, sensor, 6), "six readings")
            for kind in ("bad_checksum", "truncated", "garbage"):
                emu.inject(kind)
            await emu.wait_until(lambda: emu.pending_injections == 0)
            good = len(emu.sent_readings()) + 3
            await node.wait_for(all_values_at_least(node, sensor, good), "readings past the faults")

            emu.go_silent()
            timeouts = lambda: all(len(node.faults("pm/" + leaf, FAULT_TIMEOUT)) >= 3
                                   for leaf in sensor.expected)
            await node.wait_for(timeouts, "three timeout faults per stream")
            emu.resume()
            resumed = len(emu.sent_readings()) + 4
            await node.wait_for(all_values_at_least(node, sensor, resumed), "readings after silence")
            counters = await node.counters("pm")

    assert check_published_exactly(node, sensor, emu) >= resumed
    for kind in ("bad_checksum", "truncated", "garbage"):
        assert len(emu.entries(kind)) == 1
    assert counters["bad_checksum"] >= 1 and counters["garbage_bytes"] > 0, counters
    assert counters["frames"] >= resumed
    for leaf in sensor.expected:
        assert node.faults("pm/" + leaf, FAULT_CHECKSUM), f"{leaf}: no checksum fault sample"
        # Timeout faults come once per expected period (200 ms), not once per tick.
        ticks = [s.tick for s in node.faults("pm/" + leaf, FAULT_TIMEOUT)]
        assert all(ticks_diff(b, a) >= 200 for a, b in zip(ticks, ticks[1:])), ticks
    assert counters["timeouts"] == len(node.faults("pm/" + next(iter(sensor.expected)), FAULT_TIMEOUT))
    assert not node.faults("pm/" + next(iter(sensor.expected)), FAULT_WARMING_UP)
    assert not node.config_errors
    # The first timeout re-sent wake (a silent sensor may have lost power).
    kinds = [e.kind for e in emu.log]
    silence = emu.log[kinds.index("silent"):kinds.index("resume")]
    assert any(e.kind == "command" and sensor.is_wake(e.info) for e in silence)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sensor", SENSORS, ids=lambda s: s.name)
async def test_polled_mode_exact_values(sensor: Sensor, runtime: str, build_dir: Path) -> None:
    # The sensor powers up in active mode, as a real one does; the driver switches it and polls.
    async with sensor.make(period_s=0.04, mode="active") as emu:
        cfg = node_config(sensor, emu.address, {"mode": sensor.polled_mode, "poll_ms": 60},
                          warmup_s=0, silence_timeout_s=2)
        async with harness(runtime, build_dir, sensor, cfg, emu) as node:
            await node.wait_for(all_values_at_least(node, sensor, 10), "ten readings")
            counters = await node.counters("pm")

    assert emu.mode == sensor.polled_mode
    check_published_exactly(node, sensor, emu)
    log = emu.log
    switch = next(i for i, e in enumerate(log) if e.kind == "command" and sensor.to_polled(e.info))
    polled = [i for i in range(switch + 1, len(log)) if log[i].kind == "frame"]
    assert len(polled) >= 5
    for i in polled:  # after the switch, every frame answers a poll
        assert log[i - 1].kind == "command" and log[i - 1].info["command"] == sensor.poll_command, log[i - 1]
    assert counters["timeouts"] == 0 and counters["bad_checksum"] == 0, counters


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sensor", SENSORS, ids=lambda s: s.name)
async def test_warmup_gating(sensor: Sensor, runtime: str, build_dir: Path) -> None:
    async with sensor.make(period_s=0.04) as emu:
        cfg = node_config(sensor, emu.address, {"mode": "active"}, warmup_s=0.5, silence_timeout_s=2)
        async with harness(runtime, build_dir, sensor, cfg, emu) as node:
            await node.wait_for(all_values_at_least(node, sensor, 5), "readings after warm-up")
            counters = await node.counters("pm")

    dropped = counters["warmup_dropped"]
    assert dropped >= 1
    for leaf in sensor.expected:
        faults = [s.fault for s in node.stream("pm/" + leaf)]
        # Warm-up faults first, one per reading, then numbers only.
        assert faults[:dropped] == [FAULT_WARMING_UP] * dropped, faults
        assert not any(faults[dropped:]), faults
    check_published_exactly(node, sensor, emu, start=dropped)


SLEEP_CASES = [(PMS5003, "pin"), (PMS5003, "command"), (SDS011, "command")]


def _leading(samples: list[Sample], code: int) -> int:
    n = 0
    while n < len(samples) and samples[n].fault == code:
        n += 1
    return n


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sensor,via", SLEEP_CASES, ids=lambda x: getattr(x, "name", x))
async def test_sleep_wake_and_mode_commands(sensor: Sensor, via: str, runtime: str, build_dir: Path) -> None:
    device: dict[str, Any] = {"mode": "active", "period_ms": 100, "poll_ms": 100}
    if via == "pin":
        device["set_pin"] = 27
    first = "pm/" + next(iter(sensor.expected))
    async with sensor.make(period_s=0.04) as emu:
        cfg = node_config(sensor, emu.address, device, warmup_s=0.3, silence_timeout_s=0.3)
        async with harness(runtime, build_dir, sensor, cfg, emu) as node:
            await node.wait_for(all_values_at_least(node, sensor, 3), "readings after warm-up")

            ok, message = await node.command("pm", "sleep")
            assert ok, message
            await emu.wait_until(lambda: not emu.awake)
            await node.state()  # flushes what was published before the sleep
            slept_at = len(emu.sent_readings())
            if via == "pin":
                assert [e.info["level"] for e in emu.entries("pin")] == [1, 0]
            else:
                assert not emu.entries("pin")
            before = len(node.stream(first))
            # Asleep on purpose: past the silence timeout, nothing is published, not even faults.
            await node.wait_node_ms(700)
            assert len(node.stream(first)) == before
            asleep_counters = await node.counters("pm")

            ok, message = await node.command("pm", "wake")
            assert ok, message
            await emu.wait_until(lambda: emu.awake)
            woke_values = len(node.values(first))
            await node.wait_for(lambda: len(node.values(first)) >= woke_values + 3, "readings after wake")

            ok, message = await node.command("pm", "mode", {"mode": sensor.polled_mode})
            assert ok, message
            assert emu.mode == sensor.polled_mode
            polled_from = len(node.values(first))
            await node.wait_for(lambda: len(node.values(first)) >= polled_from + 3,
                                "readings in polled mode")

            bad = await node.command("pm", "mode", "turbo")
            unknown = await node.command("pm", "selfdestruct")
            counters = await node.counters("pm")

    assert asleep_counters["timeouts"] == counters["timeouts"] == 0, counters
    assert not bad[0] and "turbo" in bad[1] and "pm" in bad[1]
    assert not unknown[0] and "selfdestruct" in unknown[1]
    sent = emu.sent_readings()
    for leaf, expect in sensor.expected.items():
        samples = node.stream("pm/" + leaf)
        pre, post = samples[:before], samples[before:]
        # Before the sleep: warm-up faults for the first frames, then every later frame in order.
        k0 = _leading(pre, FAULT_WARMING_UP)
        assert k0 >= 1 and all(s.fault == 0 for s in pre[k0:]), pre
        assert [s.value for s in pre[k0:]] == [expect(r) for r in sent[k0:len(pre)]]
        # After the wake: warm-up faults again, then a run of the frames sent after the wake (one
        # in flight while the wake was confirmed may be dropped).
        k1 = _leading(post, FAULT_WARMING_UP)
        assert k1 >= 1 and all(s.fault == 0 for s in post[k1:]), post
        index = is_slice([s.value for s in post[k1:]], [expect(r) for r in sent[slept_at:]])
        assert index is not None and index >= k1, f"{leaf}: {post} is not a run of the frames after wake"
    assert counters["warmup_dropped"] >= 2
