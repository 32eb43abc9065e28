"""The `citynerve` command as a user runs it: a real process, its real output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CITYNERVE = Path(sys.executable).parent / "citynerve"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CITYNERVE), *args], capture_output=True, text=True, timeout=60,
                          env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})


def test_version() -> None:
    proc = run("version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "0.1.0"


def test_demo_runs_the_emulated_junction_and_decodes_every_node() -> None:
    proc = run("demo", "--duration", "12", "--once-summary")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "air-pico on micropython" in out, "the demo runs a board on the MicroPython VM"
    counts = dict(re.findall(r"^  (cab-pico|air-esp32|air-pico): (\d+) readings$", out, re.MULTILINE))
    assert set(counts) == {"cab-pico", "air-esp32", "air-pico"}, out
    assert all(int(n) > 0 for n in counts.values()), counts
    assert re.search(r"^  ring 1: phase \d ", out, re.MULTILINE), "the signal controller's phases"
    assert re.search(r"^  detector [1-4] \(cab-pico\): [1-9]\d* actuations$", out, re.MULTILINE)
    assert re.search(r"^  air-esp32/co2/co2_ppm: \d+ ppm$", out, re.MULTILINE)
    assert re.search(r"^  air-pico/pm2/pm2_5: [\d.]+ ug/m3$", out, re.MULTILINE)
