"""The `citynerve` command as a user runs it: a real process, its real output."""

from __future__ import annotations

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


def test_demo_runs_the_protocol_stack_and_says_what_is_missing() -> None:
    proc = run("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "PM1.0 5, PM2.5 13, PM10 22" in out  # REFERENCE.md §2 vector, decoded
    assert "PM2.5 123.6, PM10 261.8" in out  # §3
    assert "CO₂ 400 ppm" in out  # §4
    assert '"stream": "pm2/pm2_5", "unit": "ug/m3", "value": 123.6' in out  # cnb1 round trip
    assert "not built yet" in out
