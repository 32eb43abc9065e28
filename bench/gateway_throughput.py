"""Gateway throughput: CPU per reading, link frame in -> PUBACK, against a per-reading JSON publisher.

    .venv/bin/python bench/gateway_throughput.py [--readings 300000] [--json-readings 50000]

Every pipeline runs in its own process pinned to one core, against the same local mosquitto
(hil/broker.py), and is measured with getrusage(RUSAGE_SELF) of that process only (all its
threads: the spool's SQLite thread, paho's network thread); the node feeding it and the broker run
on the other core. Pre-encoded link frames (bench/link_feed.py) carry the demo junction's readings
(bench/demo_stream.py: its streams, values and event codes, cycled), 100 readings a frame, one ms
apart, over loopback TCP.

  gateway        the real service (gateway/service.py GatewayService from a boards.toml): TCP node
                 link, NodeSession (decode, tick -> UTC, duplicate check, ACK after the spool
                 commit), SQLite spool (WAL, synchronous=FULL), batcher (cnb1, deflate-dict; measurements
                 sealed at 10 000 readings or 0.2 s after the first, so the run's tail
                 does not wait out the 10 s default; events within 100 ms), publisher drain
                 (QoS 1, window 64) and the PUBACK acknowledged to the spool. Measured from the
                 node's HELLO being acknowledged until the spool holds no unacknowledged batch.
  JSON, link     the same frames over TCP, decoded with protocols/ (frame, message, tick -> UTC),
                 each reading json.dumps'ed (the JSON mode's reading plus "node") and published on
                 its own with paho-mqtt, QoS 1, 1000 in flight; no spool (it would only cost more).
                 Measured from HELLO until the last PUBACK.
  JSON, memory   the publisher alone: the readings already decoded in memory, json.dumps + paho
                 publish QoS 1 until the last PUBACK (the floor of any per-reading JSON gateway).

Reported: CPU us per reading, readings per CPU second (what one core sustains), wall-clock
readings/s of the pinned process, and the ratio of CPU per reading. Targets (DESIGN.md): the
gateway's CPU per reading <= 1/20 of the per-reading JSON publisher, and >= 100 000 readings/s
on one core. Ratios only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from demo_stream import demo_junction  # noqa: E402
from link_feed import TcpNode, data_frames, stream_table  # noqa: E402

READINGS_PER_FRAME = 100
CPU_RATIO_TARGET = 20.0
RATE_TARGET = 100_000
NODE = "bench-node"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds per thread of this process, by Python thread name (Linux /proc; {} elsewhere)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = names.get(int(tid), f"thread {tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


def cores() -> tuple[int | None, int | None]:
    """(core for the measured process, core for the feeder and the broker), when there are two."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) >= 2:
        return available[0], available[1]
    return None, None


# -- the frames -----------------------------------------------------------------------------------


def build(readings: int, workdir: Path) -> Path:
    """Frames carrying `readings` readings of the demo junction's mix; written to workdir."""
    demo = demo_junction(seconds=600)
    streams, mix = [], []
    for node in demo.nodes.values():
        for s in node.streams:
            streams.append((f"{node.node}/{s.name}", s.unit, s.kind, s.dec))
        timeline = [(r.t_ms, "m", f"{node.node}/{r.stream}", r.value) for r in node.measurements]
        timeline += [(t, "e", code, param) for t, code, param in node.events]
        mix += timeline
    mix.sort(key=lambda item: item[0])
    cycled = [mix[i % len(mix)][1:] for i in range(readings)]
    table = stream_table(streams)
    frames = data_frames(cycled, table, per_frame=READINGS_PER_FRAME, tick0=1_000_000)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "frames.bin").write_bytes(b"".join(f for _, f in frames))
    meta = {"table": table, "frames": len(frames), "last_seq": frames[-1][0],
            "readings": readings, "measurements": sum(1 for r in cycled if r[0] == "m"),
            "bytes": sum(len(f) for _, f in frames)}
    (workdir / "frames.json").write_text(json.dumps(meta))
    return workdir


def load(workdir: Path) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
    meta = json.loads((workdir / "frames.json").read_text())
    blob = (workdir / "frames.bin").read_bytes()
    parts = blob.split(b"\x00")[:-1]
    frames = [(2 + i, p + b"\x00") for i, p in enumerate(parts)]
    assert len(frames) == meta["frames"], "frames file does not match its metadata"
    return meta, frames


def prefix(workdir: Path, readings: int, out: Path) -> Path:
    """The first frames of `workdir` that carry `readings` readings, as a frames dir of its own."""
    meta, frames = load(workdir)
    count = -(-readings // READINGS_PER_FRAME)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frames.bin").write_bytes(b"".join(f for _, f in frames[:count]))
    keep = dict(meta, frames=count, last_seq=frames[count - 1][0],
                readings=min(readings, count * READINGS_PER_FRAME))
    keep.pop("measurements")
    (out / "frames.json").write_text(json.dumps(keep))
    return out


# -- child: the feeding node ----------------------------------------------------------------------


async def feed(workdir: Path, port: int) -> None:
    meta, frames = load(workdir)
    async with TcpNode(NODE, meta["table"], "127.0.0.1", port) as node:
        await node.send_all(frames)


# -- child: the gateway ---------------------------------------------------------------------------


def write_boards(path: Path, broker: str, spool: Path) -> Path:
    path.write_text(f"""[site]
id = "bench-site"

[gateway]
id = "bench-gw"
broker = "{broker}"
spool = "{spool}"
event_window_ms = 100
measurement_interval_s = 0.2
batch_max_readings = 10000
codec = "deflate-dict"  # the default
health_interval_s = 300
mqtt_reconnect_min_s = 0.05
mqtt_reconnect_max_s = 0.3

[[board]]
id = "{NODE}"
link = {{ transport = "tcp", gateway_port = 0 }}
""")
    return path


async def run_gateway(workdir: Path, broker: str) -> dict[str, Any]:
    import logging

    from gateway.config import load_gateway_config
    from gateway.service import GatewayService

    logging.basicConfig(level=logging.WARNING)
    meta = json.loads((workdir / "frames.json").read_text())
    config = load_gateway_config(write_boards(workdir / "boards.toml", broker,
                                              workdir / "spool.sqlite"))
    async with GatewayService(config, shutdown_grace_s=5.0) as service:
        assert service.links is not None and service.publisher is not None
        assert service.batcher is not None and service.spool is not None
        await service.publisher.wait_connected(30)
        port = next(iter(service.links.tcp_addresses.values()))[1]
        print(f"PORT {port}", flush=True)
        session = service.sessions[NODE]
        while session.boot is None:  # the node's HELLO, acknowledged
            await asyncio.sleep(0.005)
        cpu0, wall0, threads0 = cpu_s(), time.perf_counter(), thread_cpu_s()
        counters = service.batcher.counters
        while counters.readings + counters.events < meta["readings"]:
            await asyncio.sleep(0.01)
        while (await service.spool.stats()).unacked_batches:
            await asyncio.sleep(0.005)
        cpu1, wall1, threads1 = cpu_s(), time.perf_counter(), thread_cpu_s()
        stats = await service.spool.stats()
        result = {"readings": counters.readings + counters.events, "cpu_s": cpu1 - cpu0,
                  "wall_s": wall1 - wall0, "batches": counters.batches,
                  "measurement_batches": counters.measurement_batches,
                  "event_batches": counters.event_batches,
                  "published": service.publisher.stats().acked,
                  "spool_left": stats.pending_frames + stats.unacked_batches,
                  "threads": {name: round(cpu - threads0.get(name, 0.0), 2)
                              for name, cpu in threads1.items()}}
    return result


# -- child: the per-reading JSON publisher ---------------------------------------------------------


class JsonPublisher:
    """paho-mqtt, QoS 1, one message per reading; counts PUBACKs."""

    def __init__(self, broker: str, expected: int) -> None:
        import paho.mqtt.client as paho

        host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
        self.expected = expected
        self.acked = 0
        self.done = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-json",
                                  clean_session=True)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(host, int(port), keepalive=30)
        self.client.loop_start()
        if not connected.wait(30):
            raise SystemExit("the JSON publisher could not connect to the broker")

    def _on_publish(self, *args: Any) -> None:
        self.acked += 1
        if self.acked >= self.expected:
            self.done.set()

    def publish(self, topic: str, reading: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(reading, separators=(",", ":")), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _readings(table: list[list[Any]], message: dict[str, Any], utc_of_tick: Any) -> list[dict[str, Any]]:
    from protocols.batch_codes import event_name
    from protocols.link_data import data_events, data_samples
    from protocols.ticks import ticks_add

    out = []
    t0 = message["t0"]
    for sid, dt, value, fault, _detail in data_samples(message):
        _, name, unit, kind, _dec = table[sid]
        out.append({"stream": name, "unit": unit, "kind": kind,
                    "t": utc_of_tick(ticks_add(t0, dt)), "value": value, "fault": fault})
    for dt, code, param in data_events(message):
        out.append({"t": utc_of_tick(ticks_add(t0, dt)), "code": code, "name": event_name(code),
                    "param": param})
    return out


async def run_json_link(workdir: Path, broker: str) -> dict[str, Any]:
    from protocols.link_frame import ACK, DATA, HELLO, LinkFrameDecoder, LinkFrameError, encode_frame
    from protocols.link_messages import decode_message, encode_message
    from protocols.ticks import ticks_diff

    meta = json.loads((workdir / "frames.json").read_text())
    publisher = JsonPublisher(broker, meta["readings"])
    topic = f"citynerve/v1/bench-site/bench-json/{NODE}"
    started: dict[str, float] = {}
    finished = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = LinkFrameDecoder(4096)
        table: list[list[Any]] = []
        ack_seq = 0
        while data := await reader.read(4096):
            now_ms = time.time_ns() // 1_000_000
            for frame in decoder.feed(data):
                if isinstance(frame, LinkFrameError):
                    continue
                message = decode_message(frame.type, frame.payload)
                if frame.type == HELLO:
                    table = message["streams"]
                    started.setdefault("cpu", cpu_s())
                    started.setdefault("wall", time.perf_counter())
                elif frame.type == DATA:
                    tick = message["tick"]
                    for reading in _readings(table, message,
                                             lambda t: now_ms - ticks_diff(tick, t)):
                        reading["node"] = NODE
                        publisher.publish(topic, reading)
                ack_seq = frame.seq
            ack = encode_message(ACK, {"seq": ack_seq, "utc": now_ms, "tick": 0})
            writer.write(encode_frame(ACK, ack_seq, ack))
            await writer.drain()
        finished.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, publisher.done.wait)
    cpu1, wall1 = cpu_s(), time.perf_counter()
    server.close()
    publisher.close()
    return {"readings": publisher.acked, "cpu_s": cpu1 - started["cpu"],
            "wall_s": wall1 - started["wall"], "batches": publisher.acked,
            "published": publisher.acked}


def run_json_memory(workdir: Path, broker: str) -> dict[str, Any]:
    from protocols.link_frame import DATA, LinkFrameDecoder
    from protocols.link_messages import decode_message

    meta, frames = load(workdir)
    decoder = LinkFrameDecoder(4096)
    readings: list[dict[str, Any]] = []
    now_ms = time.time_ns() // 1_000_000
    for _, raw in frames:
        for frame in decoder.feed(raw):
            if frame.type == DATA:
                for reading in _readings(meta["table"], decode_message(DATA, frame.payload),
                                         lambda t: now_ms):
                    reading["node"] = NODE
                    readings.append(reading)
    publisher = JsonPublisher(broker, len(readings))
    topic = f"citynerve/v1/bench-site/bench-json/{NODE}"
    cpu0, wall0 = cpu_s(), time.perf_counter()
    for reading in readings:
        publisher.publish(topic, reading)
    publisher.done.wait()
    cpu1, wall1 = cpu_s(), time.perf_counter()
    publisher.close()
    return {"readings": publisher.acked, "cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0,
            "batches": publisher.acked, "published": publisher.acked}


def child(args: argparse.Namespace) -> None:
    pin(args.cpu)
    workdir = Path(args.workdir)
    if args.child == "feeder":
        asyncio.run(feed(workdir, args.port))
        return
    if args.child == "gateway" and args.profile:
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, run_gateway(workdir, args.broker))
        profiler.dump_stats(args.profile)
    elif args.child == "gateway":
        result = asyncio.run(run_gateway(workdir, args.broker))
    elif args.child == "json-link":
        result = asyncio.run(run_json_link(workdir, args.broker))
    else:
        result = run_json_memory(workdir, args.broker)
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent -----------------------------------------------------------------------------------


def _spawn(role: str, workdir: Path, *, cpu: int | None, broker: str = "", port: int = 0,
           profile: str | None = None) -> subprocess.Popen[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--workdir",
            str(workdir), "--broker", broker, "--port", str(port)]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    if profile:
        argv += ["--profile", profile]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)


def measure(role: str, workdir: Path, broker: str, profile: str | None = None) -> dict[str, Any]:
    """Run one pipeline child (and a feeder child when it reads link frames); its RESULT."""
    main_core, other_core = cores()
    proc = _spawn(role, workdir, cpu=main_core, broker=broker, profile=profile)
    feeder = None
    try:
        assert proc.stdout is not None
        result = None
        for line in proc.stdout:
            if line.startswith("PORT "):
                feeder = _spawn("feeder", workdir, cpu=other_core, port=int(line.split()[1]))
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
        if proc.wait(timeout=300) != 0 or result is None:
            raise SystemExit(f"the {role} run failed (exit {proc.returncode})")
        if feeder is not None and feeder.wait(timeout=60) != 0:
            raise SystemExit(f"the feeder of the {role} run failed (exit {feeder.returncode})")
        return result
    finally:
        for p in (proc, feeder):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def run(readings: int, json_readings: int, profile: str | None = None
        ) -> dict[str, dict[str, Any]]:
    from hil.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="citynerve-bench-") as tmp, Mosquitto() as broker:
        _, other_core = cores()
        if other_core is not None and broker.pid is not None:
            os.sched_setaffinity(broker.pid, {other_core})
        full = build(readings, Path(tmp) / "gateway")
        if profile:  # the gateway alone, under cProfile (its CPU figures then mean little)
            return {"gateway": measure("gateway", full, broker.url, profile)}
        small = prefix(full, json_readings, Path(tmp) / "json")
        return {
            "gateway": measure("gateway", full, broker.url, profile),
            "JSON per reading, link": measure("json-link", small, broker.url),
            "JSON per reading, memory": measure("json-memory", small, broker.url),
        }


def report(results: dict[str, dict[str, Any]]) -> list[str]:
    head = (f"{'pipeline':26} {'readings':>9} {'messages':>9} {'CPU s':>7} {'wall s':>7} "
            f"{'us CPU/reading':>14} {'readings/CPU-s':>14} {'readings/s wall':>15}")
    out = [head, "-" * len(head)]
    for name, r in results.items():
        per = r["cpu_s"] / r["readings"] * 1e6
        out.append(f"{name:26} {r['readings']:9} {r['batches']:9} {r['cpu_s']:7.2f} "
                   f"{r['wall_s']:7.2f} {per:14.2f} {r['readings'] / r['cpu_s']:14.0f} "
                   f"{r['readings'] / r['wall_s']:15.0f}")
    gw = results["gateway"]
    gw_per = gw["cpu_s"] / gw["readings"]
    out.append("")
    for name in ("JSON per reading, link", "JSON per reading, memory"):
        r = results[name]
        ratio = (r["cpu_s"] / r["readings"]) / gw_per
        out.append(f"CPU per reading, {name} / gateway: {ratio:.1f}x "
                   f"({'meets' if ratio >= CPU_RATIO_TARGET else 'MISSES'} >= {CPU_RATIO_TARGET:g}x)")
    if gw.get("threads"):
        split = ", ".join(f"{name} {cpu:.2f} s" for name, cpu in sorted(
            gw["threads"].items(), key=lambda item: -item[1]) if cpu > 0)
        out.append(f"gateway CPU by thread: {split}")
    rate = gw["readings"] / gw["cpu_s"]
    out.append(f"gateway readings per CPU second (one core): {rate:,.0f} "
               f"({'meets' if rate >= RATE_TARGET else 'MISSES'} >= {RATE_TARGET:,})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=300_000,
                        help="readings through the gateway (300000)")
    parser.add_argument("--json-readings", type=int, default=50_000,
                        help="readings through each JSON publisher (50000)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="run the gateway alone under cProfile, stats to FILE (pstats)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--broker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    results = run(args.readings, args.json_readings, args.profile)
    if args.profile:
        import pstats

        print(f"gateway under cProfile: {results['gateway']}")
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
        return
    main_core, _ = cores()
    print(f"{READINGS_PER_FRAME} readings a link frame; measured process pinned to core "
          f"{main_core}, feeder and mosquitto on the other; spool on {tempfile.gettempdir()}")
    print("\n".join(report(results)))


if __name__ == "__main__":
    main()
