"""bench/modbus_rate.py: its physical limit against REFERENCE.md §1's worked figures and the
transaction split it reads from the wire's activity record (default run, no I/O); the bench
itself briefly under -m long (it asserts what was measured happened cleanly, never a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.wire import WireActivity
from protocols import modbus_rtu as rtu
from protocols.crc import crc16_modbus

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import modbus_rate  # noqa: E402

# REFERENCE.md §1: Read Holding Registers of 10 registers, zero turnaround.
REQUEST_10 = bytes.fromhex("01 03 00 00 00 0A C5 CD")
REPLY_10 = bytes.fromhex("01 03 14 00 01 00 02 00 03 00 04 00 05 00 06 00 07 00 08 00 09 00 0A 8F 16")


@pytest.mark.parametrize(("baud", "framing", "ms", "ms_digits", "per_s", "per_s_digits"), [
    (9600, "8E1", 45.8, 1, 21.8, 1),
    (19200, "8E1", 22.9, 1, 43.6, 1),
    (115200, "8E1", 6.65, 2, 150, 0),
    (9600, "8N1", None, 0, 24.0, 1),
    (19200, "8N1", None, 0, 48.0, 1),
    (115200, "8N1", None, 0, 157, 0),
])
def test_physical_limit_reproduces_the_reference_worked_examples(
        baud: int, framing: str, ms: float | None, ms_digits: int, per_s: float,
        per_s_digits: int) -> None:
    assert (len(REQUEST_10), len(REPLY_10)) == (8, 25)
    assert crc16_modbus(REQUEST_10) == crc16_modbus(REPLY_10) == 0
    limit = modbus_rate.physical_limit(len(REQUEST_10), len(REPLY_10), baud, framing)
    if ms is not None:
        assert round(limit.transaction_us / 1000, ms_digits) == ms
    assert round(limit.per_s, per_s_digits) == per_s
    # The same figure as the planner's (protocols.modbus_rtu.transaction_time_us).
    assert limit.transaction_us == pytest.approx(rtu.transaction_time_us(8, 25, baud, framing))


def test_the_limit_counts_the_turnaround_and_the_fixed_t35_above_19200() -> None:
    base = modbus_rate.physical_limit(8, 25, 9600, "8E1")
    slow = modbus_rate.physical_limit(8, 25, 9600, "8E1", turnaround_us=10_000)
    assert slow.transaction_us == pytest.approx(base.transaction_us + 10_000)
    assert modbus_rate.physical_limit(8, 9, 9600).t35_us == pytest.approx(3.5 * 11 / 9600 * 1e6)
    assert modbus_rate.physical_limit(8, 9, 38400).t35_us == 1750.0
    assert modbus_rate.physical_limit(8, 9, 115200).t35_us == 1750.0


def test_the_bench_transaction_is_two_holding_registers() -> None:
    adu = modbus_rate.request_adu()
    assert adu == rtu.read_holding_registers(1, 0, 2) and len(adu) == 8
    limit = modbus_rate.transaction_limit(19200)
    assert (limit.request_len, limit.reply_len) == (8, 9)  # 5 bytes + 2 registers
    # 17 characters of 11 bits at 19200 baud + 2 x 3.5 characters: 24 characters in all.
    assert limit.transaction_us == pytest.approx(24 * 11 / 19200 * 1e6)


def _transaction(t: float, *, late: float = 0.0) -> list[WireActivity]:
    """One made-up exchange starting at `t` (seconds): request 1 ms on the line, server 0.5 ms,
    reply 1 ms, each frame's end handed over `late` after it was due."""
    return [
        WireActivity(t, "a_to_b", "sent", 8, t),
        WireActivity(t + 0.0006, "a_to_b", "received", 5, t + 0.0006),
        WireActivity(t + 0.001 + late, "a_to_b", "received", 3, t + 0.001),
        WireActivity(t + 0.0015 + late, "b_to_a", "sent", 9, t + 0.0015 + late),
        WireActivity(t + 0.0025 + 2 * late, "b_to_a", "received", 9, t + 0.0025 + late),
    ]


def test_split_cuts_the_activity_record_into_transactions() -> None:
    record = [a for k in range(5) for a in _transaction(k * 0.004, late=0.0001)]
    got = modbus_rate.split(record, 0.0, 1.0)
    assert got is not None
    assert got.transactions == 4  # the last has no next request to close its period
    assert got.period == pytest.approx(4000)
    assert got.request == pytest.approx(1100)
    assert got.turnaround == pytest.approx(500)
    assert got.reply == pytest.approx(1100)
    assert got.gap == pytest.approx(4000 - 1100 - 500 - 1100)
    assert got.late == pytest.approx(100)
    # Only transactions inside the window count.
    window = modbus_rate.split(record, 0.003, 0.0125)
    assert window is not None and window.transactions == 2
    assert modbus_rate.split([], 0.0, 1.0) is None


@pytest.mark.long
def test_modbus_rate_bench_runs(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    out = subprocess.run(
        [sys.executable, str(BENCH / "modbus_rate.py"), "--seconds", "1", "--bauds", "19200,115200",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=600, check=True).stdout
    lines = out.splitlines()
    for label in ("physical limit (REFERENCE §1)", *modbus_rate.LABELS.values()):
        assert sum(line.startswith(label) for line in lines) == 2, out  # a row per baud
    assert "one wake in each firmware runtime" in out and "target >= 90%" in out
    rows = json.loads(out_json.read_text())["rows"]
    assert {(r["side"], r["baud"]) for r in rows} == {
        (s, b) for s in modbus_rate.SIDES for b in (19200, 115200)}
    for row in rows:
        # Every transaction answered; the peer served at least as many; the wire saw them.
        assert row["ok"] > 0 and row["errors"] == 0, row
        assert row["extra"]["served"] >= row["ok"], row
        assert row["split"] is not None and row["split"]["transactions"] > 0, row
