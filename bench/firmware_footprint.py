"""Firmware footprint: compiled .mpy size per demo board and MicroPython heap while running.

    .venv/bin/python bench/firmware_footprint.py [--seconds 40] [--board cab-pico ...]

Size: the .mpy files `citynerve flash` would put on each demo board (the import closure of the
application, its drivers and the `machine` HAL; citynerve/firmware_bundle.py), compiled by the
real mpy-cross with the flash options (citynerve/mpy_toolchain.py: no line-number tables).
Baseline in the same run: every .py of protocols/ and firmware/ compiled, i.e. what a board would
carry without the per-board bundle. Target: <= 64 KB per board.

Heap: each demo board runs the real firmware (firmware/app.py) on the MicroPython WebAssembly VM
with its devices emulated (signal controller and loops with live traffic for cab-pico; PMS5003 and
SenseAir S8 for air-esp32; SDS011 for air-pico) and a node-link peer acknowledging everything.
Columns, all from the same run:

- code: live heap of a fresh VM right after importing the board's modules (the VM's own ~5 KB,
  the bytecode loaded from the filesystem, module globals). Frozen into a firmware image, the
  bytecode would stay in flash; it is not what the 32 KB target is for.
- live: the node's peak live heap, gc.mem_alloc() right after a gc.collect(), every 100 ms
  (firmware/app.py watch_heap, reported in HEALTH as heap_peak). working = live - code.
- bridge: what the VM's JS host bridge itself holds (firmware/hal_host.py over hostbridge:
  pending reads, their Promise proxies, JS-side finalisation lag), a board has no such thing. It
  is measured as working is, on a VM that imports only the host HAL and does the same I/O as the
  node (the same connections, the same reads and writes per second, against an echo server).
  firmware = working - bridge: the heap the firmware itself needs between steps. Target: <= 32 KB.
- steady: firmware again, from the live heap the host HAL's probe samples (after a collection,
  every 100 ms) from 10 s after boot: the running node without the boot's transients (a module
  being loaded is live while it loads; frozen modules would not be). Both are real on a board
  that loads .mpy files: the boot peak is the one a heap must fit.
- seen: the largest gc.mem_alloc() without a collection (garbage included), sampled every 20 ms
  by the host HAL's heap probe, minus code. On a board the collector runs when the heap is full
  (or at gc.threshold), so this is not a board figure: it shows how much garbage accumulates
  between collections here (the VM collects every 16 KB allocated, the app every 100 ms).
- alloc: bytes allocated per second (the probe's sum of rises; a lower bound). A board that
  collects every N ms needs about live + alloc * N, plus fragmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citynerve.firmware_bundle import board_files, board_modules  # noqa: E402
from citynerve.inventory import REPO_ROOT, board_config, boards, load_inventory, load_profiles  # noqa: E402
from citynerve.mpy_toolchain import compile_file, compile_tree, mpy_size  # noqa: E402
from hil.emulators.modbus_devices import ModbusDeviceServer, SenseAirS8  # noqa: E402
from hil.emulators.pms5003_emulator import Pms5003Emulator  # noqa: E402
from hil.emulators.sds011_emulator import Sds011Emulator  # noqa: E402
from hil.emulators.signal_controller import SignalControllerEmulator, SignalPlan  # noqa: E402
from hil.emulators.traffic import Lane, TrafficPlayback  # noqa: E402
from hil.link_peer import LinkPeer  # noqa: E402
from hil.firmware_process import firmware_command  # noqa: E402
from hil.micropython_vm import run_micropython  # noqa: E402
from hil.node_runner import NodeRunner  # noqa: E402
from protocols.link_frame import HEALTH  # noqa: E402

SIZE_TARGET = 64 * 1024
HEAP_TARGET = 32 * 1024
PROBE_MS = 20
_PROBE_RE = re.compile(r"heap probe: seen_peak=(\d+) allocated=(\d+) ms=(\d+) reads=(\d+) writes=(\d+) "
                       r"steady_live=(-?\d+)")
SETTLE_S = 10


def bundle_size(config: dict, build: Path) -> tuple[int, int]:
    total = 0
    files = board_files(config)
    for source in files:
        out = build / source.relative_to(REPO_ROOT).with_suffix(".mpy")
        compile_file(source, out, source_name=str(source.relative_to(REPO_ROOT)))
        total += out.stat().st_size
    return total, len(files)


def vm_live_heap(modules: list[str], build: Path) -> int:
    """Live heap of a fresh VM after importing `modules` (nothing else): the VM's own baseline
    plus the loaded bytecode and module globals. A board that runs .mpy from its filesystem holds
    its code in the heap like this; frozen into the firmware image, the code would stay in flash."""
    files = [(mpy, "/lib/" + mpy.relative_to(build).as_posix()) for mpy in compile_tree(REPO_ROOT, build)]
    imports = "".join(f"    import {m}\n" for m in modules)
    code = ("import gc, asyncio\nasync def m():\n" + imports + "    await asyncio.sleep(0.01)\n"
            "    gc.collect()\n    print('ALLOC', gc.mem_alloc())\nawait m()\n")
    proc = run_micropython(code, files)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("ALLOC")), None)
    if line is None:
        raise RuntimeError(f"the VM did not report its heap: {proc.stderr[-500:]}")
    return int(line.split()[1])


@contextlib.asynccontextmanager
async def devices_for(board: str, config: dict):
    """Start the board's emulated devices; yields its host["uarts"]/["control"] additions."""
    async with contextlib.AsyncExitStack() as stack:
        host: dict = {"uarts": {}}
        if board == "cab-pico":
            controller = SignalControllerEmulator(SignalPlan.from_dict({"mode": "fixed"}), unit=1)
            server = await stack.enter_async_context(ModbusDeviceServer([controller], rtu_over_tcp=True))
            host["uarts"]["rs485"] = server.address
            lanes = [Lane(node=board, pins=tuple(d["pins"]), flow_vph=900)
                     for d in config["devices"] if d["profile"] == "loop-presence"]
            playback = await stack.enter_async_context(TrafficPlayback(lanes, seed=7, duration_s=3600))
            host["control"] = playback.control_address(board)
            host["_playback"] = playback
        elif board == "air-esp32":
            pms = await stack.enter_async_context(Pms5003Emulator([(5, 13, 22)] * 10, period_s=1.0))
            s8 = await stack.enter_async_context(
                ModbusDeviceServer([SenseAirS8(co2=415)], baud=9600, rtu_over_tcp=True))
            host["uarts"].update({"pms-uart": pms.address, "s8-uart": s8.address})
        elif board == "air-pico":
            sds = await stack.enter_async_context(Sds011Emulator([(123, 261), (130, 270)], period_s=1.0))
            host["uarts"]["sds-uart"] = sds.address
        yield host


class NodeRun:
    """What one board's run measured."""

    def __init__(self, live: int, probe: tuple[int, ...] | None, readings: int, connections: int) -> None:
        self.live = live  # peak live heap (HEALTH heap_peak)
        self.probe = probe  # (seen_peak, allocated, ms, reads, writes, steady_live): host HAL probe
        self.readings = readings
        self.connections = connections


async def heap_peak(board: str, seconds: float, workdir: Path) -> NodeRun:
    config = board_config(load_inventory(), board, load_profiles())
    config["heap_watch_ms"] = 100
    config["link"] = dict(config["link"], health_s=2)
    for device in config["devices"]:
        device.setdefault("warmup_s", 0)
    async with devices_for(board, config) as host, LinkPeer() as peer:
        playback = host.pop("_playback", None)
        host["link"] = peer.address
        host["heap_probe_ms"] = PROBE_MS
        host["heap_probe_settle_s"] = SETTLE_S
        connections = len(host["uarts"]) + 1 + bool(host.get("control"))
        runner = NodeRunner(config=config, host=host, runtime="micropython", workdir=workdir)
        async with runner:
            if playback is not None:
                await playback.wait_connected(board)
                playback.start()
            await asyncio.sleep(seconds)  # a benchmark runs for a fixed time; the node reports as it goes
        reports = [r.message for r in peer.of_type(HEALTH) if r.message]
        readings = len(peer.readings())
    probes = [m for m in (_PROBE_RE.search(line) for line in runner.lines) if m]
    probe = tuple(int(x) for x in probes[-1].groups()) if probes else None
    peaks = [r.get("heap_peak", -1) for r in reports]
    return NodeRun(max(peaks, default=-1), probe, readings, connections)


_BRIDGE_CODE = """
import gc, asyncio
from firmware import hal_host
async def _pump(address, period):
    conn = await hal_host._Connection(address).open()
    async def drain():
        while True:
            await conn.read(256)
    asyncio.create_task(drain())
    while True:
        await conn.write(b"\\x01\\x03\\x00\\x00\\x00\\x0a\\xc5\\xcd")
        await asyncio.sleep(period)
async def bridge(addresses, period, seconds, probe_ms):
    await asyncio.sleep(0.05)
    gc.collect()
    base = gc.mem_alloc()
    for address in addresses:
        asyncio.create_task(_pump(address, period))
    asyncio.create_task(hal_host._heap_probe(probe_ms, 1, 0))
    peak = base
    for _ in range(int(seconds * 10)):
        await asyncio.sleep(0.1)
        gc.collect()
        peak = max(peak, gc.mem_alloc())
    print("BRIDGE", base, peak)
"""


async def bridge_heap(connections: int, writes_per_s: float, seconds: float,
                      workdir: Path) -> tuple[int, float | None]:
    """Live heap the host bridge holds with `connections` open and `writes_per_s` writes (each
    echoed back, so as many reads) on the VM, the way heap_peak measures the node: peak after a
    collection every 100 ms, minus the heap before any connection was opened; and its allocation
    rate (bytes/s, from the same probe the node runs)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(256):
                writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    period = max(0.001, connections / max(writes_per_s, 0.1))
    addresses = ["127.0.0.1:%d" % port] * connections
    argv, env, cwd = firmware_command("micropython", _BRIDGE_CODE, f"bridge({addresses!r}, {period}, {seconds}, {PROBE_MS})",
                                      build_dir=workdir)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    server.close()
    await server.wait_closed()
    line = next((l for l in out.decode().splitlines() if l.startswith("BRIDGE")), None)
    if line is None:
        raise RuntimeError(f"the bridge baseline did not report: {out.decode()[-500:]}")
    base, peak = (int(x) for x in line.split()[1:])
    probes = [m for m in (_PROBE_RE.search(l) for l in out.decode().splitlines()) if m]
    alloc = None
    if probes:
        allocated, ms = int(probes[-1].group(2)), int(probes[-1].group(3))
        alloc = allocated * 1000 / max(ms, 1)
    return peak - base, alloc


def _kb(n: float) -> str:
    return f"{n / 1024:.1f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--board", action="append")
    args = parser.parse_args()
    inventory, profiles = load_inventory(), load_profiles()
    ids = args.board or [b["id"] for b in boards(inventory)]
    with tempfile.TemporaryDirectory() as tmp:
        everything = mpy_size(compile_tree(REPO_ROOT, Path(tmp) / "all"))
        idle = vm_live_heap([], Path(tmp) / "all")
        print(f"baselines: every .py of protocols/ and firmware/ compiled = {everything / 1024:.1f} KB; "
              f"idle VM live heap = {idle / 1024:.1f} KB")
        print("heap columns (KB; see the module doc): code = fresh VM after importing the board's modules; "
              "live = peak live heap while running; working = live - code; bridge = the JS host bridge's "
              "share, measured alone with the same I/O; firmware = working - bridge (the 32 KB target); "
              f"steady = the same from {SETTLE_S} s after boot (past module loading); "
              "seen = peak allocated without a collection - code; alloc/s = KB allocated per second by the node, "
              "bridge/s = by the bridge alone with the same I/O; io/s = the node's reads + writes per second")
        print(f"{'board':<10} {'files':>5} {'.mpy KB':>8} {'vs all':>7} {'size':>5} "
              f"{'code':>6} {'live':>6} {'working':>7} {'bridge':>6} {'firmware':>8} {'heap':>5} {'steady':>6} "
              f"{'seen':>6} {'alloc/s':>7} {'bridge/s':>7} {'io/s':>6} {'readings':>8}")
        for board in ids:
            config = board_config(inventory, board, profiles)
            size, count = bundle_size(config, Path(tmp) / board)
            code = vm_live_heap(board_modules(config, backend="host"), Path(tmp) / "all")
            run = await heap_peak(board, args.seconds, Path(tmp) / f"{board}-run")
            working = run.live - code
            seen = alloc = io = writes = steady = None
            if run.probe:
                seen_peak, allocated, ms, reads, writes_n, steady_live = run.probe
                seen = seen_peak - code
                steady = steady_live - code if steady_live >= 0 else None
                alloc = allocated * 1000 / max(ms, 1)
                io = (reads + writes_n) * 1000 / max(ms, 1)
                writes = writes_n * 1000 / max(ms, 1)
            bridge, bridge_alloc = await bridge_heap(run.connections, writes or 10, min(args.seconds, 20),
                                                     Path(tmp) / "all")
            firmware = working - bridge
            steady_fw = None if steady is None else steady - bridge
            print(f"{board:<10} {count:>5} {size / 1024:>8.1f} {size / everything:>7.0%} "
                  f"{'ok' if size <= SIZE_TARGET else 'OVER':>5} {_kb(code):>6} {_kb(run.live):>6} "
                  f"{_kb(working):>7} {_kb(bridge):>6} {_kb(firmware):>8} "
                  f"{'ok' if 0 <= firmware <= HEAP_TARGET else 'OVER':>5} "
                  f"{'-' if steady_fw is None else _kb(steady_fw):>6} "
                  f"{'-' if seen is None else _kb(seen):>6} {'-' if alloc is None else _kb(alloc):>7} "
                  f"{'-' if bridge_alloc is None else _kb(bridge_alloc):>7} "
                  f"{'-' if io is None else f'{io:.0f}':>6} {run.readings:>8}")


if __name__ == "__main__":
    asyncio.run(main())
