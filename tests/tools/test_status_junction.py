"""`citynerve status` against the running demo junction (hil/junction.py: the real firmware on the
three boards, emulated devices on timed wires, `citynerve gateway run`, mosquitto), with one
Modbus unit on the cabinet bus that never answers: the per-device health the nodes' HEALTH carries
(timeouts, CRC errors, exceptions, last fault) and the last good values from the measurement
batches, in `--once`, in the live view redrawn with changing data (as a pipe with --redraws, and
in a pseudo-terminal), and a Ctrl-C that ends the live view cleanly.

The junction runs once for the module, in a thread with its own event loop, so the tests below
are plain subprocess tests; every process it started is gone afterwards.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hil.broker import mosquitto_executable
from hil.junction import Junction
from hil.scenario import FaultSpec, load_scenario
from tests.hil.conftest import live_children

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")]

REPO = Path(__file__).resolve().parents[2]
CITYNERVE = [sys.executable, "-c", "from citynerve.cli import main; main()"]
DEAD = "aux2"  # hil/junction_config.dead_unit_id for the fault below: unit 2 on cab-pico's rs485
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


@dataclass
class RunningJunction:
    url: str
    workdir: Path


@pytest.fixture(scope="module")
def junction(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJunction]:
    """The demo junction (all boards on CPython, for speed) with a dead Modbus unit, running."""
    scenario = load_scenario("demo").with_runtimes({"air-pico": "cpython"})
    scenario = replace(scenario, broker="mosquitto", duration_s=3600, faults=(
        FaultSpec(kind="dead_unit", at_s=0, board="cab-pico", bus="rs485", address=2,
                  profile="generic-modbus-sensor", poll_ms=1000),))
    workdir = tmp_path_factory.mktemp("junction")
    before = live_children()
    up: dict[str, object] = {}
    ready, stop = threading.Event(), threading.Event()

    async def serve() -> None:
        try:
            async with Junction(scenario, workdir=workdir) as running:
                up["url"] = running.url
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.1)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            up["error"] = error
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="junction", daemon=True)
    thread.start()
    assert ready.wait(90), "the junction did not come up within 90 s"
    if "error" in up:
        raise AssertionError(f"the junction did not start: {up['error']}")
    try:
        yield RunningJunction(str(up["url"]), workdir)
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the junction did not shut down"
        left = live_children() - before
        assert not left, f"processes left running after the junction closed: {sorted(left)}"


def status(junction: RunningJunction, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CITYNERVE, "status", "--broker", junction.url, *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "250"})


def device_line(lines: list[str], device: str) -> str:
    return next(line for line in lines if line.startswith(f"  device {device}: "))


def test_once_shows_each_devices_counters_last_fault_and_last_good_value(junction: RunningJunction) -> None:
    # --once exits as soon as status, gateway health, every link and every node's HEALTH are in;
    # measurements are not waited for, so ask again until a snapshot has heard a batch from the
    # air boards and from the cabinet's dead unit (a fault sample) too.
    deadline = time.monotonic() + 60
    while True:
        done = status(junction, "--once", "--wait", "20")
        lines = done.stdout.splitlines()
        heard = [l for l in lines if l.startswith(("  device pm1: ok", "  device pm2: ok"))]
        # A cabinet HEALTH too big for its ring slot comes without device counters (the firmware's
        # choice): wait for one that fits, as the live view would.
        dead_counted = re.search(rf"  device {DEAD}: FAULT .*; timeouts \d+", done.stdout)
        if (len(heard) == 2 and "last good -" not in " ".join(heard) and dead_counted) or time.monotonic() > deadline:
            break
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr  # every board linked, the gateway online

    dead = device_line(lines, DEAD)
    counts = re.search(r"; timeouts (\d+), CRC errors 0, exceptions 0(;|$)", dead)
    assert counts is not None and int(counts.group(1)) >= 1, dead
    assert re.match(rf"  device {DEAD}: FAULT (timeout|unavailable) since 20\d\d-", dead), dead
    assert "; last good -;" in dead, "a unit that never answered has no good value"
    assert f"; last fault: {DEAD}: unit 2 " in dead, dead

    ctrl = device_line(lines, "ctrl")
    # The controller answers (on a loaded machine a poll may still time out now and then); its
    # only measurement is a sparse poll status, so it may not have sent one in the window.
    assert re.match(r"  device ctrl: (ok|-); .*; timeouts \d+, CRC errors \d+, exceptions 0(;|$)", ctrl), ctrl
    for device, quantity, unit in (("pm1", "pm2_5", "ug/m3"), ("pm2", "pm2_5", "ug/m3"), ("co2", "co2_ppm", "ppm")):
        line = device_line(lines, device)
        assert re.search(rf"; last good .*\b{quantity} \d+(\.\d+)? {re.escape(unit)}\b.* at 20\d\d-", line), line
    pm = device_line(lines, "pm2")
    assert "timeouts 0, CRC errors 0" in pm and "exceptions" not in pm, "a PM sensor has no Modbus exceptions"
    lane = device_line(lines, "nb-lane1")
    assert "timeouts" not in lane, "a presence input counts no timeouts"
    cab = next(l for l in lines if l.startswith("board cab-pico: "))
    assert cab.startswith("board cab-pico: connected, boot "), cab


def _dead_unit_timeouts(snapshot: str) -> int | None:
    found = re.search(rf"  device {DEAD}: [^\n]*; timeouts (\d+),", snapshot)
    return None if found is None else int(found.group(1))


def _last_good(snapshot: str, device: str) -> str | None:
    found = re.search(rf"  device {device}: ok; last good ([^;]+);", snapshot)
    return None if found is None else found.group(1)


def test_the_live_view_redraws_with_changed_data(junction: RunningJunction) -> None:
    done = status(junction, "--redraws", "30", timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    snapshots = done.stdout.split("\n--- ")
    assert len(snapshots) == 30 and snapshots[0].startswith("--- "), \
        "one snapshot per redraw when the output is not a terminal"
    assert all(re.match(r"(--- )?20\d\d-\d\d-\d\dT[\d:.]+Z\ngateway jn-main-1st at demo-city: ", s) for s in snapshots)
    values = [v for v in (_last_good(s, "pm1") for s in snapshots) if v is not None]
    assert len(set(values)) >= 2, f"new readings reach the view from redraw to redraw: {values}"
    counts = [c for c in map(_dead_unit_timeouts, snapshots) if c is not None]
    assert counts == sorted(counts), f"the dead unit's timeouts never go back: {counts}"
    assert any(f"  device {DEAD}: FAULT " in s for s in snapshots), "the dead unit is shown faulted"


def _read_pty(master: int, until: float, buffer: bytearray) -> None:
    while time.monotonic() < until:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            buffer += chunk
            return


def test_the_live_view_in_a_terminal_redraws_in_place_and_ctrl_c_ends_it(junction: RunningJunction) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 400, 0, 0))  # wide: no cell wraps
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([*CITYNERVE, "status", "--broker", junction.url], stdin=slave, stdout=slave,
                            stderr=slave, cwd=REPO, env={**env, "TERM": "xterm-256color"}, close_fds=True)
    os.close(slave)
    out = bytearray()
    try:
        deadline = time.monotonic() + 60
        seen: list[int] = []
        while time.monotonic() < deadline:
            _read_pty(master, deadline, out)
            text = ANSI.sub(b"", bytes(out)).decode(errors="replace")
            seen = _table_cells(text, "air-esp32", "pm1", 4)
            if len(set(seen)) >= 2 and any(_table_cells(text, "cab-pico", DEAD, 5)):
                break
        assert len(set(seen)) >= 2, f"the devices table did not change: {seen}\n{text[-3000:]}"
        timeouts = [t for t in _table_cells(text, "cab-pico", DEAD, 5) if t]  # "" before its HEALTH
        assert timeouts and all(t.isdigit() and int(t) >= 1 for t in timeouts), timeouts
        assert b"\x1b[" in out, "on a terminal the view is drawn with cursor control, in place"
        assert "boards" in text and "devices" in text and "last good" in text
        proc.send_signal(signal.SIGINT)
        end = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < end:
            _read_pty(master, end, out)
        code = proc.wait(5)
        while True:  # what it printed on the way out
            before = len(out)
            _read_pty(master, time.monotonic() + 0.3, out)
            if len(out) == before:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = ANSI.sub(b"", bytes(out)).decode(errors="replace")
    assert code in (0, 130), (code, text[-2000:])
    assert "Traceback" not in text and "Aborted" not in text, text[-3000:]


def _table_cells(text: str, board: str, device: str, column: int) -> list[str]:
    """One cell of a device's row (1 board, 2 device, 3 state, 4 last good, 5 timeouts, ...) in
    every devices table drawn so far, in order."""
    out = []
    for line in text.split("\n"):
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 8 and cells[1] == board and cells[2] == device:
            out.append(cells[column])
    return out
