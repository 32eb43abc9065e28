"""Fixtures and helpers for the gateway service tests: a real mosquitto (hil/broker.py), a scripted
node built from protocols/ only, an MQTT subscriber that decodes what the gateway publishes, and
the gateway itself, in-process (GatewayService) or as a `citynerve gateway run` child process.

ScriptedNode behaves like firmware/link_client.py on the wire: seqs from 1 per boot, a HELLO first
on every connection (after a lone 0x00) and repeated until acknowledged, DATA/RESULT frames kept
until a cumulative ACK covers them and resent oldest first when not acknowledged within
ack_timeout_s, all of them again after a reconnect, and "lo" on every message. It never gives a
frame up (an unbounded ring), so every reading it made must reach the subscriber. It records the
ground truth: each reading's true UTC (the host clock when it was "sampled"), value or fault.
`rehello_silence_s` makes it repeat its HELLO when nothing has been acknowledged for that long
while frames wait: what a node on a serial link needs to do after a gateway restart, since its
link never reconnects (see the report on firmware/link_client.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import serial_asyncio_fast

from hil.broker import Mosquitto, mosquitto_executable
from protocols.batch_cnb1 import decode_batch
from protocols.link_frame import (
    ACK,
    CMD,
    DATA,
    HEALTH,
    HELLO,
    RESULT,
    LinkFrameDecoder,
    LinkFrameError,
    encode_frame,
)
from protocols.link_messages import decode_message, encode_message
from protocols.ticks import TICKS_PERIOD, ticks_add

REPO_ROOT = Path(__file__).resolve().parents[2]
SITE = "test-site"
GATEWAY = "gw-test"

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def utc_ms() -> int:
    return time.time_ns() // 1_000_000


def needs_mosquitto() -> pytest.MarkDecorator:
    return pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto not installed")


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 15.0,
                     every: float = 0.02) -> Any:
    """Poll `predicate` until truthy (returned) or fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


# -- the scripted node ----------------------------------------------------------------------------


@dataclass
class Reading:
    seq: int
    stream: str | None  # None for an event
    value: float | int | None
    fault: int | None
    true_utc: int
    code: int | None = None
    param: int | None = None


class ScriptedNode:
    """A node that speaks the link with protocols/ only; see the module doc."""

    def __init__(self, node: str, streams: list[tuple[str, str, str, int | None]], *,
                 connect: Opener, ack_timeout_s: float = 0.4, hello_s: float = 0.3,
                 rehello_silence_s: float | None = None, tick_base: int | None = None,
                 boot: int | None = None) -> None:
        self.node = node
        self.table = [[sid, n, u, k, d] for sid, (n, u, k, d) in enumerate(streams)]
        self.sid = {entry[1]: entry[0] for entry in self.table}
        self.connect = connect
        self.ack_timeout_s = ack_timeout_s
        self.hello_s = hello_s
        self.rehello_silence_s = rehello_silence_s
        self.tick_base = random.randrange(TICKS_PERIOD) if tick_base is None else tick_base
        self.boot = random.randrange(1 << 32) if boot is None else boot
        self.next_seq = 1
        self.hello_seq: int | None = None
        self.hello_at = 0.0
        self.ring: dict[int, list[Any]] = {}  # seq -> [frame bytes, last send (monotonic) | None]
        self.frames: dict[int, bytes] = {}  # every frame ever made, for deliberate duplicates
        self.readings: dict[int, list[Reading]] = {}
        self.acked = 0
        self.acks: list[dict[str, int]] = []
        self.commands: list[dict[str, Any]] = []
        self.connections = 0
        self.last_ack = time.monotonic()
        self._writer: asyncio.StreamWriter | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> int:
        return (time.monotonic_ns() // 1_000_000 + self.tick_base) & (TICKS_PERIOD - 1)

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> ScriptedNode:
        self._task = asyncio.create_task(self._run(), name=f"node {self.node}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._drop()

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await self.connect()
            except (OSError, Exception):  # noqa: BLE001 - gateway not there (yet): retry
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            self._writer = writer
            for entry in self.ring.values():
                entry[1] = None  # a new connection resends everything unacknowledged
            tasks = [asyncio.create_task(self._read(reader)), asyncio.create_task(self._pump())]
            try:
                writer.write(b"\x00")
                self._send_hello()
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._drop()
            await asyncio.sleep(0.05)

    # -- sending ----------------------------------------------------------------------------------

    def _lo(self, seq: int) -> int:
        candidates = [seq, *self.ring]
        if self.hello_seq is not None:
            candidates.append(self.hello_seq)
        return min(candidates)

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _send_hello(self) -> None:
        if self.hello_seq is None:
            self.hello_seq = self._take_seq()
        seq = self.hello_seq
        message = {"node": self.node, "fw": "scripted-1", "cfg": "cfg0", "boot": self.boot,
                   "tick": self.tick(), "streams": self.table, "errors": [], "lo": self._lo(seq)}
        self.hello_at = time.monotonic()
        self._write(encode_frame(HELLO, seq, encode_message(HELLO, message)))

    def _write(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)

    def _push(self, frame_type: int, message: dict[str, Any]) -> int:
        seq = self._take_seq()
        message["lo"] = self._lo(seq)
        frame = encode_frame(frame_type, seq, encode_message(frame_type, message), 4096)
        self.ring[seq] = [frame, None]
        self.frames[seq] = frame
        self._wake.set()
        return seq

    def send_data(self, samples: list[tuple[str, float | int | None, int | None, int]] = (),
                  events: list[tuple[int, int, int]] = ()) -> int:
        """One DATA frame: samples (stream, value, fault code or None, age ms) and events
        (code, param, age ms); returns its seq. Ages are how long before now each was taken."""
        now_tick, now_utc = self.tick(), utc_ms()
        ages = [s[3] for s in samples] + [e[2] for e in events]
        oldest = max(ages) if ages else 0
        t0 = ticks_add(now_tick, -oldest)
        m: list[Any] = []
        f: list[Any] = []
        e: list[Any] = []
        truth: list[Reading] = []
        for i, (stream, value, fault, age) in enumerate(samples):
            m += [self.sid[stream], oldest - age, None if fault else value]
            if fault:
                f += [i, fault, 0]
            truth.append(Reading(0, stream, None if fault else value, fault, now_utc - age))
        for code, param, age in events:
            e += [oldest - age, code, param]
            truth.append(Reading(0, None, None, None, now_utc - age, code, param))
        message: dict[str, Any] = {"tick": now_tick, "t0": t0, "m": m}
        if f:
            message["f"] = f
        if e:
            message["e"] = e
        seq = self._push(DATA, message)
        for r in truth:
            r.seq = seq
        self.readings[seq] = truth
        return seq

    def send_health(self) -> int:
        return self._push(HEALTH, {"tick": self.tick(), "uptime_ms": 1234, "heap_free": 20000,
                                   "heap_min": 18000, "dev": {"pm1": {"frames": 3}},
                                   "loss": {"ring_overflow": 0}})

    def resend(self, seq: int) -> None:
        """Write an already sent frame again, as a retransmission would."""
        self._write(self.frames[seq])

    async def _pump(self) -> None:
        while True:
            now = time.monotonic()
            if self.hello_seq is not None and now - self.hello_at >= self.hello_s:
                self._send_hello()
            elif (self.rehello_silence_s is not None and self.ring
                  and now - self.last_ack >= self.rehello_silence_s
                  and now - self.hello_at >= self.rehello_silence_s):
                self._send_hello()
            for seq in sorted(self.ring):
                entry = self.ring.get(seq)
                if entry is not None and (entry[1] is None or now - entry[1] >= self.ack_timeout_s):
                    entry[1] = now
                    self._write(entry[0])
            if self._writer is not None:
                await self._writer.drain()
            self._wake.clear()
            try:
                async with asyncio.timeout(0.02):
                    await self._wake.wait()
            except TimeoutError:
                pass

    # -- receiving --------------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = LinkFrameDecoder()
        while data := await reader.read(4096):
            for item in decoder.feed(data):
                if isinstance(item, LinkFrameError):
                    continue
                if item.type == ACK:
                    self._on_ack(decode_message(ACK, item.payload))
                elif item.type == CMD:
                    command = decode_message(CMD, item.payload)
                    self.commands.append(command)
                    self._push(RESULT, {"id": command["id"], "ok": True,
                                        "msg": f"did {command['op']}",
                                        "data": {"args": command["args"]}})

    def _on_ack(self, message: dict[str, int]) -> None:
        self.acks.append(message)
        seq = message["seq"]
        assert seq < self.next_seq, f"ACK {seq} for a seq never sent (next {self.next_seq})"
        if seq > self.acked:
            self.acked = seq
            self.last_ack = time.monotonic()
        for s in [s for s in self.ring if s <= seq]:
            del self.ring[s]
        if self.hello_seq is not None and self.hello_seq <= seq:
            self.hello_seq = None

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def all_acked(self) -> bool:
        return not self.ring and self.hello_seq is None and self.acked == self.last_seq


def tcp_opener(host: str, port: int) -> Opener:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port)
    return connect


def serial_opener(path: str, baud: int = 115200) -> Opener:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await serial_asyncio_fast.open_serial_connection(url=path, baudrate=baud)
    return connect


# -- the subscriber -------------------------------------------------------------------------------


class Subscriber:
    """A paho client in its own thread with a persistent session (clean_session=0, QoS 1), so it
    gets what was published while a broker restart kept it away; keeps every message."""

    def __init__(self, url: str, topic_filter: str, *, client_id: str) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.host, self.port, self.topic_filter = host, int(port), topic_filter
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((message.topic, bytes(message.payload)))

    def __enter__(self) -> Subscriber:
        self.client.connect(self.host, self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.__exit__()
            raise AssertionError("the test subscriber got no SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def messages(self, suffix: str | None = None) -> list[tuple[str, bytes]]:
        with self._lock:
            out = list(self._messages)
        return out if suffix is None else [m for m in out if m[0].endswith(suffix)]


@dataclass
class Delivered:
    """What the subscriber decoded: per node, measurements and events, with their batch ids."""

    batches: dict[tuple[int, int], bytes]
    copies: int
    measurements: dict[str, list[tuple[tuple[int, int], dict[str, Any]]]]
    events: dict[str, list[tuple[tuple[int, int], dict[str, Any]]]]
    order: list[tuple[str, str]]  # (node, "m"|"e") of each batch in arrival order


def decode_delivered(messages: list[tuple[str, bytes]]) -> Delivered:
    """Decode every batch once (by batch id); a batch id seen twice must carry the same bytes."""
    batches: dict[tuple[int, int], bytes] = {}
    copies = 0
    out = Delivered(batches, 0, {}, {}, [])
    for topic, payload in messages:
        channel = topic.rsplit("/", 1)[1]
        if channel not in ("m", "e"):
            continue
        decoded = decode_batch(payload)
        bid = (decoded["gateway_boot"], decoded["seq"])
        if bid in batches:
            assert batches[bid] == payload, f"batch {bid} arrived twice with different bytes"
            copies += 1
            continue
        batches[bid] = payload
        node = decoded["node"]
        out.order.append((node, channel))
        for m in decoded["measurements"]:
            out.measurements.setdefault(node, []).append((bid, m))
        for e in decoded["events"]:
            out.events.setdefault(node, []).append((bid, e))
    out.copies = copies
    return out


def check_readings(node: ScriptedNode, delivered: Delivered, *, tolerance_ms: int,
                   through_seq: int | None = None) -> int:
    """Every reading of `node`'s frames up to `through_seq` (default: all) arrived exactly once,
    with its stream name, value or fault, and a UTC time within `tolerance_ms` of the truth.
    Returns how many readings were checked."""
    last = node.last_seq if through_seq is None else through_seq
    expected = [r for seq, rs in node.readings.items() if seq <= last for r in rs]
    got_m = delivered.measurements.get(node.node, [])
    got_e = delivered.events.get(node.node, [])
    by_value: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    faults: dict[str, list[dict[str, Any]]] = {}
    for _bid, m in got_m:
        if m["fault"] is None:
            by_value.setdefault((m["stream"], m["value"]), []).append(m)
        else:
            faults.setdefault(m["stream"], []).append(m)
    by_event: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for _bid, e in got_e:
        by_event.setdefault((e["code"], e["param"]), []).append(e)
    checked = 0
    want_faults: dict[str, list[Reading]] = {}
    for r in expected:
        if r.stream is None:
            found = by_event.get((r.code, r.param), [])  # type: ignore[arg-type]
            assert len(found) == 1, f"event {r} arrived {len(found)} times"
            assert abs(found[0]["t"] - r.true_utc) <= tolerance_ms, (r, found[0])
        elif r.fault is None:
            found = by_value.get((r.stream, r.value), [])
            assert len(found) == 1, f"reading {r} arrived {len(found)} times"
            assert abs(found[0]["t"] - r.true_utc) <= tolerance_ms, (r, found[0])
        else:
            want_faults.setdefault(r.stream, []).append(r)
            continue
        checked += 1
    for stream, wanted in want_faults.items():
        got = sorted(faults.get(stream, []), key=lambda m: m["t"])
        wanted.sort(key=lambda r: r.true_utc)
        assert len(got) == len(wanted), f"{stream}: {len(got)} faulted samples, want {len(wanted)}"
        for g, w in zip(got, wanted):
            assert g["value"] is None and g["fault"] is not None
            assert abs(g["t"] - w.true_utc) <= tolerance_ms, (w, g)
            checked += 1
    return checked


# -- boards.toml and the gateway ------------------------------------------------------------------


def write_boards(path: Path, *, broker: str, spool: Path, boards: list[dict[str, Any]],
                 **gateway: Any) -> Path:
    """A boards.toml for the test gateway; `boards` are {"id":..., "link": {...}} dicts."""
    settings = {"id": GATEWAY, "broker": broker, "spool": str(spool), "event_window_ms": 100,
                "measurement_interval_s": 0.5, "health_interval_s": 60,
                "mqtt_reconnect_min_s": 0.05, "mqtt_reconnect_max_s": 0.3, "keepalive_s": 5}
    settings.update(gateway)
    lines = ["[site]", f'id = "{SITE}"', "", "[gateway]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    for board in boards:
        link = ", ".join(f"{k} = {json.dumps(v)}" for k, v in board["link"].items())
        lines += ["", "[[board]]", f'id = "{board["id"]}"', f"link = {{ {link} }}"]
        for key, value in board.items():
            if key not in ("id", "link"):
                lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


_prctl: Any = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a killed test run leaves no gateway behind


class GatewayProcess:
    """`citynerve gateway run` as a child process, logging JSON lines to a file."""

    def __init__(self, config: Path, *, broker: str, spool: Path, log_path: Path) -> None:
        self.config, self.broker, self.spool, self.log_path = config, broker, spool, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._offset = self.log_path.stat().st_size
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from citynerve.cli import main; main()", "gateway", "run",
                 "--config", str(self.config), "--broker", self.broker, "--spool",
                 str(self.spool), "--log-format", "json"],
                stdout=log, stderr=log, cwd=REPO_ROOT, preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()

    def log_lines(self, *, this_start: bool = True) -> list[dict[str, Any]]:
        text = self.log_path.read_bytes()[self._offset if this_start else 0:].decode()
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"msg": line})
        return out

    async def wait_running(self, timeout: float = 20.0) -> None:
        def running() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}: "
                                     f"{self.log_path.read_text()[-3000:]}")
            return any(l.get("msg", "").startswith("gateway running") for l in self.log_lines())
        await wait_until(running, "the gateway to start", timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    if mosquitto_executable() is None:
        pytest.skip("mosquitto not installed")
    with Mosquitto(persistence=True) as broker:
        yield broker


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Subscriber]:
    with Subscriber(mosquitto.url, f"citynerve/v1/{SITE}/{GATEWAY}/#",
                    client_id=f"test-sub-{random.randrange(1 << 30)}") as sub:
        yield sub


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Callable[..., GatewayProcess]]:
    made: list[GatewayProcess] = []

    def make(config: Path, *, broker: str, spool: Path) -> GatewayProcess:
        process = GatewayProcess(config, broker=broker, spool=spool,
                                 log_path=tmp_path / f"gateway-{len(made)}.log")
        made.append(process)
        return process

    try:
        yield make
    finally:
        for process in made:
            process.kill()
