"""Fixtures for the emulated junction: `broker` (mosquitto, which the outage scenarios need) and
`junction_run`, which runs a scenario end to end in the test's folder and checks that every
process it started (nodes, gateway, broker) is gone afterwards, pass or fail."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from hil.broker import mosquitto_executable
from hil.junction import Junction, RunResult
from hil.scenario import Scenario

RunJunction = Callable[[Scenario], Awaitable[RunResult]]


def live_children() -> set[int]:
    """Processes whose parent is this one and that have not exited (zombies do not count)."""
    me = str(os.getpid())
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[1] == me and fields[0] != "Z":
            out.add(int(entry.name))
    return out


@pytest.fixture
def broker() -> str:
    """mosquitto's path; the test is skipped where it is not installed."""
    path = mosquitto_executable()
    if path is None:
        pytest.skip("mosquitto not installed (the broker-outage scenarios need its persistence)")
    return path


@pytest.fixture
async def junction_run(tmp_path: Path) -> AsyncIterator[RunJunction]:
    """run(scenario) -> RunResult: the whole junction up, the scenario run and accounted, and
    everything shut down; afterwards no node, gateway or broker process may be left."""
    before = live_children()

    async def run(scenario: Scenario) -> RunResult:
        async with Junction(scenario, workdir=tmp_path / scenario.name) as junction:
            assert live_children() - before, "the junction runs its nodes and gateway as processes"
            return await junction.run()

    yield run
    left = live_children() - before
    assert not left, f"processes left running after the junction closed: {sorted(left)}"
