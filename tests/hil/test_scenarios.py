"""The scenarios end to end on the emulated demo junction: every board on the real firmware (both
runtimes), the gateway as `citynerve gateway run`, a real broker, and the accounting of the decoded
MQTT stream against the emulators' ground truth.

- demo: fault-free, under both runtime mixes (the cabinet node on the MicroPython VM and the air
  nodes on CPython, then the reverse): nothing lost, duplicated, corrupted or late, and every kind
  of reading (detector and phase events, PM, CO2, lane intervals) really checked.
- faults: a broker outage, kill -9 of the gateway during it, a node reset, bit errors on every
  wire and a dead Modbus unit: nothing lost or corrupted, duplicates only as whole re-sent
  batches, every late reading explained, the dead unit tried once per backoff window.
- faults_long (marked long): DESIGN.md's reliability target, a 60 s outage and two kills.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.report import write_report
from hil.scenario import FAULT_KINDS, ScenarioError, load_scenario
from protocols.batch_cnb1 import decode_batch
from tests.hil.conftest import RunJunction

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKED_KINDS = ("detector", "phase", "pm", "co2", "interval")


def test_the_scenario_files_load_and_a_bad_one_is_refused_with_its_key(tmp_path: Path) -> None:
    demo, faults, long = (load_scenario(n) for n in ("demo", "faults", "faults_long"))
    assert not demo.faults and demo.runtimes["air-pico"] == "micropython"
    assert {f.kind for f in faults.faults} == set(FAULT_KINDS)
    assert faults.faults_of("broker_down")[0].duration_s == 12
    assert long.faults_of("broker_down")[0].duration_s == 60 and len(long.faults_of("gateway_kill")) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('duration_s = 10\n[[fault]]\nkind = "meteor"\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)
    assert caught.value.key == "fault[0].kind" and "meteor" in str(caught.value)
    bad.write_text('duration_s = 10\n[[fault]]\nkind = "broker_down"\nat_s = 3\n')
    with pytest.raises(ScenarioError, match=r"fault\[0\]\.duration_s"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="runtimes.cab-pico"):
        demo.with_runtimes({"cab-pico": "java"})


async def test_the_demo_junction_with_its_cabinet_on_micropython_accounts_clean(
        junction_run: RunJunction, tmp_path: Path) -> None:
    scenario = load_scenario("demo").with_runtimes(
        {"cab-pico": "micropython", "air-esp32": "cpython", "air-pico": "cpython"})
    result = await junction_run(scenario)
    acc = result.accounting
    assert acc.violations(scenario.expect) == [], acc.text() + "\n" + "\n".join(acc.problems)
    for kind in CHECKED_KINDS:
        counts = acc.kinds[kind]
        assert counts.expected > 0 and counts.lost == counts.corrupted == counts.duplicated == 0, (kind, counts)
        # Every expected reading arrives: as its value, or, where the device really did not answer
        # in time (a CI machine under load can make an S8 poll time out), as a reported fault —
        # never a wrong number and never silently missing. Without faults only a stall of the
        # harness itself (a loaded machine) may excuse a loss.
        assert counts.delivered + counts.faulted == counts.expected or result.truth.stalls, (kind, counts)
        assert counts.faulted <= max(1, counts.expected // 10), (kind, counts)
    assert acc.intervals["checked"] > 0, acc.intervals
    assert acc.latency_ms["detector"]["count"] > 0
    assert acc.explained_duplicates == acc.conflicting_batches == acc.undecodable == 0
    # The published batches, once each (what bench/wire_size.py --live measures), hold every
    # decoded reading, in the gateway's default codec (3, deflate-dict) or 0 where that is smaller.
    assert len(result.payloads) == acc.batches and {k for _, k, _ in result.payloads} == {"m", "e"}
    assert sum(len(decode_batch(p)["measurements"]) + len(decode_batch(p)["events"])
               for _, _, p in result.payloads) == len(result.readings)
    assert {p[5] for _, _, p in result.payloads} <= {0, 3} and any(p[5] == 3 for _, _, p in result.payloads)
    paths = write_report(result, tmp_path / "report")
    assert "PASS" in paths["accounting"].read_text()
    svg = ET.parse(paths["picture"]).getroot()
    titles = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("ring 1 ") and t.endswith(" green") for t in titles), "phases drawn"
    assert any(t.startswith("det ") for t in titles), "detector actuations drawn"
    assert any("pm2_5" in t for t in titles) and any("co2_ppm" in t for t in titles), "air drawn"


def test_hil_run_with_the_air_nodes_on_micropython_passes_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-c", "from citynerve.cli import main; main()", "hil", "run", "demo",
         "--duration", "12", "--out", str(out), "--runtime", "cab-pico=cpython",
         "--runtime", "air-esp32=micropython", "--runtime", "air-pico=micropython"],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "accounting: demo" in proc.stdout and "nothing lost" in proc.stdout
    text = (out / "accounting.txt").read_text()
    assert text.splitlines()[1] == "PASS"
    assert (out / "timeline.svg").exists() and (out / "truth.jsonl").stat().st_size > 0
    report = (out / "accounting.json").read_text()
    assert '"air-esp32": "micropython"' in report and '"air-pico": "micropython"' in report


def test_hil_run_refuses_an_unknown_scenario_with_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "from citynerve.cli import main; main()", "hil", "run",
                           "no-such-scenario", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "no such scenario" in proc.stdout and "faults" in proc.stdout and "Traceback" not in proc.stderr


def _check_faults_run(result: object, scenario: object) -> None:
    from hil.junction import RunResult
    from hil.scenario import Scenario

    assert isinstance(result, RunResult) and isinstance(scenario, Scenario)
    acc = result.accounting
    assert acc.violations(scenario.expect) == [], acc.text() + "\n" + "\n".join(acc.problems)
    assert acc.lost == 0 and acc.corrupted == 0 and acc.duplicated == 0
    for kind in CHECKED_KINDS:
        assert acc.kinds[kind].expected > 0, kind
    # The faults really happened and really hurt: without them this would prove nothing.
    kinds = [k for _s, _e, k in result.truth.fault_windows]
    assert kinds.count("gateway_kill") == len(scenario.faults_of("gateway_kill"))
    assert "broker_down" in kinds and "node_reboot" in kinds
    flipped = sum(1 for events in result.truth.wire_faults.values() for e in events if e.kind == "bit_flip")
    assert flipped > 0, "the bit-error rate flipped bits on the wires"
    assert acc.total("late_explained") > 0, "the outage delayed readings, and the accounting says why"
    boots = {r.node_boot for r in result.readings if r.node == scenario.faults_of("node_reboot")[0].board}
    assert len(boots) == 2, "the reset node came back with a new boot id and was heard from"
    assert acc.modbus is not None and acc.modbus["tries_after_offline"] >= 2, acc.modbus
    assert acc.modbus["max_poll_gap_with_try_ms"] < 600, acc.modbus


async def test_faults_lose_nothing_and_explain_every_delay(junction_run: RunJunction, broker: str) -> None:
    scenario = load_scenario("faults")
    result = await junction_run(scenario)
    _check_faults_run(result, scenario)


@pytest.mark.long
async def test_the_reliability_target_sixty_second_outage_two_kills(junction_run: RunJunction,
                                                                     broker: str) -> None:
    scenario = load_scenario("faults_long")
    result = await junction_run(scenario)
    _check_faults_run(result, scenario)
