"""Lane interval measures against the traffic that was played (the hil.emulators.traffic
interval_truth attribution, recomputed from the vehicle records of the ground truth).

A node publishes, per loop device and interval [b - I, b), its measures stamped at the boundary
b (UTC, aligned to multiples of I on the gateway clock; the first, partial interval of a boot is
not published). For each published interval: volume must equal the vehicles arriving on loop A
in the window, occupancy the share of the window loop A was occupied (0.01 % resolution), speed
(a trap's) the mean of the vehicles leaving loop B in it. The node's boundary reaches UTC through
the gateway's tick mapping, whose error the detector events of the same node boot measure (their
decoded time minus the edge's true time): boundaries are moved back by the median error nearby,
vehicles within AMBIGUITY_US of a boundary may still fall either side, and the tolerances widen
by what they could change. A boundary missing between
two published ones of the same node boot is a lost interval. A mismatch in an interval during
which the harness's event loop stalled is counted apart ("stalled"): its loop edges may have
reached the node late.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hil.accounting_truth import STALL_MARGIN_US, RunTruth
from hil.junction_stream import Reading

__all__ = ["check_intervals"]

AMBIGUITY_US = 25_000
ERROR_SPAN_MS = 15_000
ERROR_SAMPLES = 5
SPEED_TOLERANCE_MPH = 0.15  # dec 1 rounding plus the simulator's integer-us edge times
# The firmware issue's accuracy bound (occupancy within 0.1 percentage points of ground truth): a
# fault scenario's wire delays move interval boundaries by a few ms, which dec 2 rounding alone
# (0.005) would call corruption.
OCCUPANCY_TOLERANCE_PCT = 0.1


def check_intervals(truth: RunTruth, readings: Sequence[Reading],
                    clock_errors: Mapping[tuple[str, int], Sequence[tuple[int, int]]] | None = None,
                    ) -> dict[str, Any]:
    """{"published", "lost", "corrupted", "checked", "unchecked", "problems"} for the lane
    readings given (readings of the same boundary of one node boot and loop device together)."""
    offset_us = truth.utc_ms(truth.t0_us) * 1000 - truth.t0_us
    lane_of = {v: k for k, v in truth.lanes.items()}
    vehicles: dict[int, list[dict[str, Any]]] = {}
    for r in truth.records:
        if r.source == "traffic" and r.kind == "vehicle":
            vehicles.setdefault(int(r["lane"]), []).append(r.fields)
    published: dict[tuple[str, int, str], dict[int, dict[str, Reading]]] = {}
    for r in readings:
        device, _, measure = (r.stream or "").partition("/")
        published.setdefault((r.node, r.node_boot, device), {}).setdefault(r.t, {})[measure] = r
    out: dict[str, Any] = {"published": 0, "lost": 0, "corrupted": 0, "checked": 0, "unchecked": 0,
                           "stalled": 0, "problems": []}
    for (node, boot, device), by_t in published.items():
        info = truth.boards[node]
        errors = sorted((clock_errors or {}).get((node, boot), ()))
        interval_ms = info.interval_s * 1000
        lane = lane_of.get((node, device))
        stamps = sorted(by_t)
        for a, b in zip(stamps, stamps[1:]):
            missing = round((b - a) / interval_ms) - 1
            if missing > 0:
                out["lost"] += missing
                out["problems"].append(f"lost {missing} interval(s) of {node}/{device} between {a} and {b}")
        for before, t in zip([None, *stamps], stamps):
            if t * 1000 - offset_us > truth.end_us:
                continue
            out["published"] += 1
            measures = by_t[t]
            # An interval starts at the boundary that closed the one before; the first one
            # published by a boot starts at a boundary we never saw (a step of the node's clock
            # may have stretched it), so only its being there is checked.
            if lane is None or "volume" not in measures or before is None or t - before > 1.5 * interval_ms:
                out["unchecked"] += 1
                continue
            lo = (before - _error_near(errors, before)) * 1000 - offset_us
            hi = (t - _error_near(errors, t)) * 1000 - offset_us
            problem = _compare(vehicles.get(lane, []), lo, hi, measures,
                               trap=len(info.pins.get(device, ())) == 2)
            out["checked"] += 1
            if problem and truth.stalled(lo - STALL_MARGIN_US, hi):
                out["stalled"] += 1  # edges the harness played late: its fault, not the node's
                out["problems"].append(f"interval {node}/{device} ending {t} (harness stalled): {problem}")
            elif problem:
                out["corrupted"] += 1
                out["problems"].append(f"interval {node}/{device} ending {t}: {problem}")
    return out


def _error_near(errors: Sequence[tuple[int, int]], t: int) -> int:
    """The median mapping error (ms) of the ERROR_SAMPLES detector events nearest t (within
    ERROR_SPAN_MS), else 0: the gateway's estimate can step (a restart, a better round trip), so
    only the events around the boundary say what it was there."""
    near = sorted((abs(when - t), e) for when, e in errors if abs(when - t) <= ERROR_SPAN_MS)[:ERROR_SAMPLES]
    values = sorted(e for _, e in near)
    return values[len(values) // 2] if values else 0


def _compare(vehicles: list[dict[str, Any]], lo: int, hi: int, measures: dict[str, Reading], *,
             trap: bool) -> str | None:
    span = hi - lo
    volume = on_us = 0
    near = ambiguous_on = 0
    speeds: list[float] = []
    ambiguous_speed = False
    for v in vehicles:
        a_on, a_off = int(v["t_on_a_us"]), int(v["t_off_a_us"])
        if lo <= a_on < hi:
            volume += 1
        if any(abs(a_on - edge) <= AMBIGUITY_US for edge in (lo, hi)):
            near += 1
        on_us += max(0, min(a_off, hi) - max(a_on, lo))
        for edge in (lo, hi):  # loop A's on-time within the ambiguity around a boundary
            ambiguous_on += max(0, min(a_off, edge + AMBIGUITY_US) - max(a_on, edge - AMBIGUITY_US))
        b_off = v.get("t_off_b_us")
        if trap and b_off is not None:
            if lo <= int(b_off) < hi:
                speeds.append(float(v["speed_mph"]))
            if any(abs(int(b_off) - edge) <= AMBIGUITY_US for edge in (lo, hi)):
                ambiguous_speed = True
    got = measures["volume"]
    if got.value is None:
        return f"volume is a fault ({got.fault})"
    if abs(got.value - volume) > near:
        return f"volume {got.value}, {volume} vehicles arrived"
    occupancy = measures.get("occupancy")
    if occupancy is not None and occupancy.value is not None:
        want = 100 * on_us / span
        if abs(occupancy.value - want) > OCCUPANCY_TOLERANCE_PCT + 100 * ambiguous_on / span:
            return f"occupancy {occupancy.value} %, the loop was occupied {want:.3f} %"
    speed = measures.get("speed")
    if trap and speed is not None and speed.value is not None and speeds and not ambiguous_speed and not near:
        want = sum(speeds) / len(speeds)
        if abs(speed.value - want) > SPEED_TOLERANCE_MPH:
            return f"speed {speed.value} mph, the vehicles averaged {want:.2f} mph"
    return None
