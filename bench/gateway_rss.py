"""Gateway footprint: resident memory with 16 nodes at demo rates, and CPU when idle.

    .venv/bin/python bench/gateway_rss.py [--nodes 16] [--load-s 45] [--idle-s 30]

The gateway runs as systemd would run it: `citynerve gateway run --config boards.toml` in its own
process, with a local mosquitto (hil/broker.py) and a boards.toml of 16 TCP boards on one port.
16 nodes (bench/link_feed.py TcpNode) connect over loopback and replay the demo junction's
streams in real time (bench/demo_stream.py; the roles cab-pico, air-esp32 and air-pico in turn,
each node with its own seed), framed as the firmware frames them (firmware/link_client.py
defaults): measurements at least every 1 s, events 20 ms after the first one waiting, HEALTH every
10 s. Then the nodes stop sending (links stay open, the broker stays connected) for the idle part.

Read from /proc/<pid> of the gateway process only: VmRSS sampled every second (its largest value
under load is the figure; VmHWM, the kernel's own peak, is shown beside it), the private memory
(smaps_rollup Private_*), and CPU (utime + stime) over the last part of the load and over the
idle part. Beside them, in the same run: the RSS of a bare interpreter that only imports the
gateway's modules, so the gateway's own growth is visible.

Targets (DESIGN.md): RSS <= 60 MB with 16 nodes; idle CPU <= 1 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from demo_stream import T0_MS, NodeStream, demo_junction  # noqa: E402
from link_feed import TcpNode, data_frame, health_frame, host_tick, stream_table  # noqa: E402

from hil.broker import Mosquitto, free_port  # noqa: E402
from protocols.ticks import TICKS_PERIOD  # noqa: E402

RSS_TARGET_MB = 60.0
IDLE_CPU_TARGET = 1.0  # percent of one core
FLUSH_MS, EVENT_FLUSH_MS, HEALTH_MS = 1000, 20, 10_000  # firmware/link_client.py defaults
ROLES = ("cab-pico", "air-esp32", "air-pico")
CLK_TCK = os.sysconf("SC_CLK_TCK")
_prctl: Any = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: an interrupted bench leaves no gateway behind


# -- /proc ------------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def private_kb(pid: int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))


# -- the nodes ----------------------------------------------------------------------------------------


def schedule(stream: NodeStream, seconds: float) -> list[tuple[int, list[Any], list[Any], bool]]:
    """(send offset ms, measurements [(stream, t ms, value)], events [(t ms, code, param)],
    health) in send order, as the firmware's link client would send them."""
    t0 = T0_MS
    timeline = [((r.t_ms - t0), "m", r) for r in stream.measurements]
    timeline += [((e[0] - t0), "e", e) for e in stream.events]
    timeline.sort(key=lambda item: item[0])
    end = int(seconds * 1000)
    out: list[tuple[int, list[Any], list[Any], bool]] = []
    m: list[Any] = []
    e: list[Any] = []
    next_flush = FLUSH_MS
    event_due: int | None = None
    health_at = HEALTH_MS
    i = 0
    now = 0
    while now < end:
        while i < len(timeline) and timeline[i][0] <= now:
            at, kind, item = timeline[i]
            if kind == "m":
                m.append((item.stream, at, item.value))
            else:
                e.append((at, item[1], item[2]))
                event_due = event_due if event_due is not None else at + EVENT_FLUSH_MS
            i += 1
        if (m or e) and (now >= next_flush or (event_due is not None and now >= event_due)):
            out.append((now, m, e, False))
            m, e, event_due = [], [], None
            next_flush = now + FLUSH_MS
        if now >= health_at:
            out.append((now, [], [], True))
            health_at += HEALTH_MS
        now += 5
    return out


async def play(node: TcpNode, stream: NodeStream, plan: list[tuple[int, list[Any], list[Any], bool]],
               start: float, counters: dict[str, int]) -> None:
    """Send each frame at its time; the node's ticks are the host's monotonic ms."""
    sid = {entry[1]: entry[0] for entry in node.table}
    tick0 = host_tick()
    seq = 2
    for offset, m, e, health in plan:
        delay = start + offset / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tick = (tick0 + offset) & (TICKS_PERIOD - 1)
        if health:
            await node.write(health_frame(seq, tick, offset))
        else:
            first = min([x[1] for x in m] + [x[0] for x in e])
            base = (tick0 + first) & (TICKS_PERIOD - 1)
            await node.write(data_frame(
                seq, tick, base, [(sid[s], t - first, v) for s, t, v in m],
                [(t - first, c, p) for t, c, p in e]))
            counters["readings"] += len(m) + len(e)
        counters["frames"] += 1
        seq += 1
    await node.wait_acked(seq - 1, timeout=30)  # the gateway spooled everything it was sent


# -- the run ----------------------------------------------------------------------------------------


def write_boards(path: Path, *, broker: str, spool: Path, port: int, nodes: list[str]) -> Path:
    lines = ["[site]", 'id = "bench-site"', "", "[gateway]", 'id = "bench-gw"',
             f'broker = "{broker}"', f'spool = "{spool}"', "health_interval_s = 30",
             "mqtt_reconnect_min_s = 0.05", "mqtt_reconnect_max_s = 0.3"]
    for node in nodes:
        lines += ["", "[[board]]", f'id = "{node}"',
                  f'link = {{ transport = "tcp", gateway_port = {port} }}']
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_import_rss_kb() -> int:
    """RSS of an interpreter that imports what `citynerve gateway run` imports, and nothing runs."""
    code = ("import citynerve.cli, gateway.service, gateway.metrics, pathlib, sys; "
            "print(next(l.split()[1] for l in pathlib.Path('/proc/self/status').read_text()"
            ".splitlines() if l.startswith('VmRSS:')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    return int(out.stdout.strip())


async def wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}:\n{path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not log {needle!r} within {timeout:g} s")
        await asyncio.sleep(0.1)


async def run(nodes: int, load_s: float, idle_s: float) -> dict[str, Any]:
    names = [f"node-{i + 1:02d}" for i in range(nodes)]
    with tempfile.TemporaryDirectory(prefix="citynerve-rss-") as tmp, Mosquitto() as broker:
        port = free_port()
        config = write_boards(Path(tmp) / "boards.toml", broker=broker.url,
                              spool=Path(tmp) / "spool.sqlite", port=port, nodes=names)
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from citynerve.cli import main; main()", "gateway", "run",
                 "--config", str(config), "--log-format", "json"],
                stdout=out, stderr=out, cwd=REPO, preexec_fn=_die_with_parent)
        try:
            await wait_log(log, "gateway running", proc)
            await wait_log(log, "connected as", proc)
            started_kb = status_kb(proc.pid, "VmRSS")
            streams = []
            for i, name in enumerate(names):
                demo = demo_junction(seconds=int(load_s) + 30, seed=100 + i)
                role = demo.nodes[ROLES[i % len(ROLES)]]
                streams.append(role)
            counters = {"readings": 0, "frames": 0}
            async with _nodes(names, streams, port) as tcp_nodes:
                start = time.monotonic() + 0.5
                players = [asyncio.create_task(play(n, s, schedule(s, load_s), start, counters))
                           for n, s in zip(tcp_nodes, streams)]
                samples: list[int] = []
                cpu_from = load_s / 3  # the last two thirds of the load: past start-up effects
                cpu_mark: tuple[float, int] | None = None
                while not all(p.done() for p in players):
                    await asyncio.sleep(1.0)
                    samples.append(status_kb(proc.pid, "VmRSS"))
                    if cpu_mark is None and time.monotonic() - start >= cpu_from:
                        cpu_mark = (time.monotonic(), cpu_ticks(proc.pid))
                for p in players:
                    p.result()  # a node that failed fails the run
                assert cpu_mark is not None
                load_cpu = (cpu_ticks(proc.pid) - cpu_mark[1]) / CLK_TCK / (time.monotonic() - cpu_mark[0])
                load_private = private_kb(proc.pid)
                await asyncio.sleep(12)  # the last measurement batches (10 s interval) go out
                idle_mark = (time.monotonic(), cpu_ticks(proc.pid))
                while time.monotonic() - idle_mark[0] < idle_s:
                    await asyncio.sleep(1.0)
                    samples.append(status_kb(proc.pid, "VmRSS"))
                idle_cpu = (cpu_ticks(proc.pid) - idle_mark[1]) / CLK_TCK / (time.monotonic() - idle_mark[0])
                hwm = status_kb(proc.pid, "VmHWM")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors = [l for l in log.read_text(errors="replace").splitlines()
                  if '"level":"error"' in l or '"level":"critical"' in l]
        return {"nodes": nodes, "readings": counters["readings"], "frames": counters["frames"],
                "load_s": load_s, "idle_s": idle_s, "started_kb": started_kb,
                "max_kb": max(samples), "hwm_kb": hwm, "private_kb": load_private,
                "load_cpu": load_cpu * 100, "idle_cpu": idle_cpu * 100, "exit": code,
                "errors": errors[:5], "bare_kb": bare_import_rss_kb()}


class _nodes:
    """Connect every node (HELLO acknowledged) before any starts playing; close them all."""

    def __init__(self, names: list[str], streams: list[NodeStream], port: int) -> None:
        self.nodes = [TcpNode(n, stream_table(s.streams), "127.0.0.1", port,
                              boot=random.randrange(1 << 32)) for n, s in zip(names, streams)]

    async def __aenter__(self) -> list[TcpNode]:
        entered: list[TcpNode] = []
        try:
            for node in self.nodes:
                await node.__aenter__()
                entered.append(node)
        except BaseException:
            for node in entered:
                await node.__aexit__(None, None, None)
            raise
        return self.nodes

    async def __aexit__(self, *exc: object) -> None:
        for node in self.nodes:
            await node.__aexit__(None, None, None)


def report(r: dict[str, Any]) -> list[str]:
    mb = lambda kb: kb / 1024  # noqa: E731
    rate = r["readings"] / r["load_s"]
    ok = lambda good: "meets" if good else "MISSES"  # noqa: E731
    return [
        f"{r['nodes']} nodes over TCP at demo rates for {r['load_s']:g} s: {r['readings']} readings "
        f"in {r['frames']} frames ({rate:.0f} readings/s), then {r['idle_s']:g} s idle",
        "",
        f"{'':44} {'MB':>7}",
        f"{'bare interpreter importing the gateway':44} {mb(r['bare_kb']):7.1f}",
        f"{'gateway running, no node yet':44} {mb(r['started_kb']):7.1f}",
        f"{'gateway, 16 nodes: largest VmRSS sampled':44} {mb(r['max_kb']):7.1f}",
        f"{'gateway: VmHWM (kernel peak)':44} {mb(r['hwm_kb']):7.1f}",
        f"{'gateway under load: private (smaps_rollup)':44} {mb(r['private_kb']):7.1f}",
        "",
        f"CPU under load: {r['load_cpu']:.2f} % of one core; idle: {r['idle_cpu']:.2f} %",
        f"RSS {mb(max(r['max_kb'], r['hwm_kb'])):.1f} MB ({ok(max(r['max_kb'], r['hwm_kb']) <= RSS_TARGET_MB * 1024)} "
        f"<= {RSS_TARGET_MB:g} MB); idle CPU {r['idle_cpu']:.2f} % "
        f"({ok(r['idle_cpu'] <= IDLE_CPU_TARGET)} <= {IDLE_CPU_TARGET:g} %)",
        f"gateway exit status after SIGTERM: {r['exit']}; error log lines: {len(r['errors'])}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--load-s", type=float, default=45.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.nodes, args.load_s, args.idle_s))
    print("\n".join(report(result)))
    if result["errors"]:
        print("\n".join(result["errors"]))
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "errors"}))


if __name__ == "__main__":
    main()
