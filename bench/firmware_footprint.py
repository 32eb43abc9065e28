"""Firmware footprint: compiled .mpy size per demo board and peak MicroPython heap while running.

    .venv/bin/python bench/firmware_footprint.py [--seconds 40] [--board cab-pico ...]

Size: the .mpy files `citynerve flash` would put on each demo board (the import closure of the
application, its drivers and the `machine` HAL; citynerve/firmware_bundle.py), compiled by the
real mpy-cross. Baseline in the same run: every .py of protocols/ and firmware/ compiled, i.e. what
a board would carry without the per-board bundle. Target: <= 64 KB per board.

Heap: each demo board runs the real firmware (firmware/app.py) on the MicroPython WebAssembly VM
with its devices emulated (signal controller and loops with live traffic for cab-pico; PMS5003 and
SenseAir S8 for air-esp32; SDS011 for air-pico) and a node-link peer acknowledging everything. The
node samples its live heap (gc.mem_alloc() right after a collection, every 100 ms) and reports the
peak in HEALTH. Target: <= 32 KB. The VM's own baseline — the live heap of an idle VM that has
imported nothing — is measured in the same run and reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from hil.micropython_vm import run_micropython  # noqa: E402
from hil.node_runner import NodeRunner  # noqa: E402
from protocols.link_frame import HEALTH  # noqa: E402

SIZE_TARGET = 64 * 1024
HEAP_TARGET = 32 * 1024


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


async def heap_peak(board: str, seconds: float, workdir: Path) -> tuple[int, int]:
    config = board_config(load_inventory(), board, load_profiles())
    config["heap_watch_ms"] = 100
    config["link"] = dict(config["link"], health_s=2)
    for device in config["devices"]:
        device.setdefault("warmup_s", 0)
    async with devices_for(board, config) as host, LinkPeer() as peer:
        playback = host.pop("_playback", None)
        host["link"] = peer.address
        async with NodeRunner(config=config, host=host, runtime="micropython", workdir=workdir):
            if playback is not None:
                await playback.wait_connected(board)
                playback.start()
            await asyncio.sleep(seconds)  # a benchmark runs for a fixed time; the node reports as it goes
        reports = [r.message for r in peer.of_type(HEALTH) if r.message]
        readings = len(peer.readings())
    peaks = [r.get("heap_peak", -1) for r in reports]
    return max(peaks, default=-1), readings


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
        print("heap columns: peak = live heap peak while running; code = live heap after importing the "
              "board's modules in a fresh VM; working = peak - code (what the targets' 32 KB is for)")
        print(f"{'board':<10} {'files':>5} {'.mpy KB':>8} {'vs all':>7} {'size':>5} "
              f"{'peak KB':>8} {'code KB':>8} {'working KB':>10} {'heap':>5} {'readings':>8}")
        for board in ids:
            config = board_config(inventory, board, profiles)
            size, count = bundle_size(config, Path(tmp) / board)
            code = vm_live_heap(board_modules(config, backend="host"), Path(tmp) / "all")
            peak, readings = await heap_peak(board, args.seconds, Path(tmp) / f"{board}-run")
            working = peak - code
            print(f"{board:<10} {count:>5} {size / 1024:>8.1f} {size / everything:>7.0%} "
                  f"{'ok' if size <= SIZE_TARGET else 'OVER':>5} {peak / 1024:>8.1f} {code / 1024:>8.1f} "
                  f"{working / 1024:>10.1f} {'ok' if 0 <= working <= HEAP_TARGET else 'OVER':>5} {readings:>8}")


if __name__ == "__main__":
    asyncio.run(main())
