"""The dead-unit check of the accounting: a Modbus unit that never answers must not stall its bus
(DESIGN.md "per-device backoff so one dead unit never stalls the bus"; firmware/modbus_master.py:
once offline, a unit is tried once, without retries, per backoff window, which doubles)."""

from __future__ import annotations

import bisect
from typing import Any

from hil.accounting_truth import RunTruth

__all__ = ["modbus_check"]


def modbus_check(truth: RunTruth, *, board: str, controller: str = "signal", dead: str, poll_ms: int,
                 backoff_ms: int, offline_after: int = 3, retries: int = 1) -> dict[str, Any]:
    """The dead unit must not stall the bus: once it is offline it is tried at most once per
    backoff window (tries at least backoff_ms apart), and the controller's polls around a try
    are delayed by at most one try. Reads the controller's "served" and the dead unit's "silent"
    records (each request the dead unit ignored)."""
    polls = sorted(int(r["t_us"]) for r in truth.records
                   if r.source == controller and r.kind == "served" and r["t_us"] <= truth.end_us)
    tries = sorted(int(r["t_us"]) for r in truth.records
                   if r.source == dead and r.kind == "silent" and r["t_us"] <= truth.end_us)
    # Each boot of the node starts the unit's health afresh: its first offline_after requests
    # (with their retries) come before it is offline, and are not judged.
    settle = offline_after * (1 + retries)
    starts = sorted(int(r["t_us"]) for r in truth.records
                    if r.source == "harness" and r.kind == "node_start" and r.fields.get("board") == board)
    later: list[int] = []
    spacing: list[float] = []
    for i, start in enumerate(starts or [0]):
        stop = starts[i + 1] if i + 1 < len(starts) else None
        boot = [t for t in tries if t >= start and (stop is None or t < stop)][settle:]
        later += boot
        spacing += [(b - a) / 1000 for a, b in zip(boot, boot[1:])]
    worst_in_gap = 0
    max_gap = 0.0
    for a, b in zip(polls, polls[1:]):
        inside = bisect.bisect_left(later, b) - bisect.bisect_right(later, a)
        worst_in_gap = max(worst_in_gap, inside)
        if inside:
            max_gap = max(max_gap, (b - a) / 1000)
    violations = []
    if not later:
        violations.append(f"the dead unit {dead} was never tried after going offline: check the scenario")
    if spacing and min(spacing) < 0.9 * backoff_ms:
        violations.append(f"the dead unit {dead} was tried {min(spacing):.0f} ms apart, inside one "
                          f"{backoff_ms} ms backoff window")
    if worst_in_gap > 1:
        violations.append(f"{worst_in_gap} tries of the dead unit {dead} delayed one controller poll")
    gaps = [(b - a) / 1000 for a, b in zip(polls, polls[1:])]
    return {"controller_polls": len(polls), "dead_unit_tries": len(tries),
            "tries_after_offline": len(later),
            "min_try_spacing_ms": round(min(spacing)) if spacing else None,
            "max_poll_gap_with_try_ms": round(max_gap), "max_poll_gap_ms": round(max(gaps)) if gaps else None,
            "poll_ms": poll_ms, "violations": violations}
