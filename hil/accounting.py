"""Accounting: the decoded MQTT stream against the run's ground truth (DESIGN.md "Hardware-in-the-
loop": lost, duplicated, corrupted, late; each zero unless the scenario says what it expects).

    result = account(truth, recorder.readings(), recorder.stats, expect=scenario.expect)
    result.violations(scenario.expect)      # [] when the run is clean
    print(result.text())

Each decoded reading is matched to the truth item it reports (hil/accounting_truth.py): same
node, same event code and parameter or same stream, the same value for a sample, a decoded time
inside the item's window, and of those the nearest in time. Then:

- lost: an expected truth item nothing reported; `lost_explained` when a node reset took it
  (it was in RAM), and `faulted` when the stream reported a fault in its place (the quality
  system working: no number was invented) — explained when a wire fault, a node boot or reset, or
  a scheduled fault accounts for it;
- duplicated: a reading matching an item already matched, after whole re-sent batches (the same
  batch id with the same bytes, `explained_duplicates`) were set apart; a batch id carrying other
  bytes counts as corrupted;
- corrupted: a reading no truth item explains (a wrong value, a phantom event, a number from a
  dead unit, a lane interval whose volume, occupancy or speed differs from the traffic played),
  and undecodable batches (a detector reading that fits no edge while the harness's own loop
  stalled is set apart: the edge may have reached the node late, the harness's fault);
- late: a matched reading that reached the subscriber more than late_event_ms (events) or
  late_measurement_ms (samples, intervals) after its truth instant; `late_explained` when that
  reading was in flight during a fault's window (its start to its end plus recovery_s) or while
  its node's wires damaged bytes.

Latency is reported per kind as percentiles of (arrival at the subscriber - truth instant).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hil.accounting_intervals import check_intervals
from hil.accounting_truth import STALL_MARGIN_US, RunTruth, TruthItem, truth_items, up_windows
from hil.junction_stream import Reading, StreamStats
from hil.scenario import Expectations

__all__ = ["Accounting", "KindCounts", "account", "merge_modbus", "percentiles"]

EVENT_KINDS = ("detector", "phase")
FAULT_LOOKBACK_US = 3_000_000  # a wire fault this long before a fault sample explains it
BOOT_FAULT_US = 8_000_000  # fault samples this soon after a node (re)starts are its boot
MAX_PROBLEMS = 40
FAULT_STANDS_IN_MS = 1500  # a fault sample replaces a reading due about this close to it


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p90, p99 and max (nearest rank) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
    return {"count": len(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


@dataclass
class KindCounts:
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    lost_explained: int = 0
    faulted: int = 0
    duplicated: int = 0
    corrupted: int = 0
    late: int = 0
    late_explained: int = 0


@dataclass
class Accounting:
    """The outcome of one run's accounting; `violations(expect)` judges it."""

    kinds: dict[str, KindCounts] = field(default_factory=dict)
    batches: int = 0
    explained_duplicates: int = 0
    conflicting_batches: int = 0
    undecodable: int = 0
    faults_explained: int = 0
    faults_unexplained: int = 0
    unchecked: int = 0
    after_end: int = 0
    harness_stalled: int = 0  # readings that would count as corrupted but for a harness stall
    stalls: int = 0  # times the harness's event loop fell behind (and the longest, ms)
    longest_stall_ms: int = 0
    latency_ms: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    modbus: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(k, name) for k in self.kinds.values())

    @property
    def lost(self) -> int:
        return self.total("lost")

    @property
    def duplicated(self) -> int:
        return self.total("duplicated")

    @property
    def corrupted(self) -> int:
        return self.total("corrupted") + self.conflicting_batches + self.undecodable

    @property
    def late(self) -> int:
        return self.total("late")

    @property
    def pending(self) -> int:
        """Expected items not delivered nor faulted yet (what a drain waits for)."""
        return self.total("lost") + self.total("lost_explained")

    def violations(self, expect: Expectations) -> list[str]:
        """One sentence per expectation the run broke; [] when it met them all."""
        out = []
        for name, limit in (("lost", expect.lost), ("corrupted", expect.corrupted),
                            ("duplicated", expect.duplicated), ("late", expect.late)):
            got = getattr(self, name)
            if got > limit:
                out.append(f"{got} {name} (at most {limit} expected)")
        if expect.unexplained_faults is not None and self.faults_unexplained > expect.unexplained_faults:
            out.append(f"{self.faults_unexplained} unexplained fault samples "
                       f"(at most {expect.unexplained_faults} expected)")
        if self.modbus is not None and self.modbus.get("violations"):
            out += list(self.modbus["violations"])
        return out

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(lost=self.lost, duplicated=self.duplicated, corrupted=self.corrupted, late=self.late)
        return body

    def rows(self) -> list[list[str]]:
        """The accounting table: one row per kind, then the total."""
        names = ("expected", "delivered", "lost", "lost_explained", "faulted", "duplicated",
                 "corrupted", "late", "late_explained")
        rows = [["kind", *names]]
        for kind, counts in sorted(self.kinds.items()):
            rows.append([kind, *(str(getattr(counts, n)) for n in names)])
        rows.append(["total", *(str(self.total(n)) for n in names)])
        return rows

    def text(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.append(f"batches {self.batches}, whole batches re-sent (explained duplicates) "
                     f"{self.explained_duplicates}, conflicting batch ids {self.conflicting_batches}, "
                     f"undecodable {self.undecodable}")
        lines.append(f"fault samples: {self.faults_explained} explained, {self.faults_unexplained} unexplained; "
                     f"unchecked readings {self.unchecked}, after the end {self.after_end}, "
                     f"set apart for a harness stall {self.harness_stalled}")
        if self.stalls:
            lines.append(f"harness stalls: {self.stalls}, the longest {self.longest_stall_ms} ms")
        if self.intervals:
            lines.append("lane intervals: " + ", ".join(f"{k} {v}" for k, v in self.intervals.items()
                                                        if k != "problems"))
        for kind, p in sorted(self.latency_ms.items()):
            if p["count"]:
                lines.append(f"latency {kind} (ms, truth -> subscriber): p50 {p['p50']}, p90 {p['p90']}, "
                             f"p99 {p['p99']}, max {p['max']} over {p['count']}")
        if self.modbus is not None:
            lines.append("modbus: " + ", ".join(f"{k} {v}" for k, v in self.modbus.items() if k != "violations"))
        return "\n".join(lines)


def account(truth: RunTruth, readings: Sequence[Reading], stats: StreamStats, *,
            expect: Expectations, measurement_interval_s: float = 10.0) -> Accounting:
    """Compare the decoded `readings` (StreamRecorder.readings(), once per batch id) with `truth`."""
    result = Accounting(batches=stats.batches, explained_duplicates=stats.explained_duplicates,
                        conflicting_batches=stats.conflicting_batches, undecodable=stats.undecodable,
                        stalls=len(truth.stalls),
                        longest_stall_ms=max(((e - s) // 1000 for s, e in truth.stalls), default=0))
    items = truth_items(truth)
    late_m = expect.late_measurement_ms or int(measurement_interval_s * 1000) + 5000
    fault_windows = [(s, e + int(expect.recovery_s * 1e6)) for s, e, _ in truth.fault_windows]
    groups: dict[tuple[Any, ...], list[TruthItem]] = {}
    for item in items:
        groups.setdefault((item.node, *item.key), []).append(item)
        result.kinds.setdefault(item.kind, KindCounts())
    for group in groups.values():
        group.sort(key=lambda i: i.t_ms)
    times = {k: [i.t_ms for i in g] for k, g in groups.items()}
    damage = _damage(truth)
    explain = _LateExplainer(fault_windows, damage)
    offset_us = truth.utc_ms(truth.t0_us) * 1000 - truth.t0_us

    def stalled_at(t_ms: int) -> bool:
        t_us = t_ms * 1000 - offset_us
        return truth.stalled(t_us - STALL_MARGIN_US, t_us + STALL_MARGIN_US)
    latencies: dict[str, list[float]] = {}
    faults: list[Reading] = []
    dead = {(b, d) for b, info in truth.boards.items() for d in info.dead}
    lane_readings: list[Reading] = []
    end_ms = truth.utc_ms(truth.end_us)
    for r in sorted(readings, key=lambda r: r.t):
        device = (r.stream or "").split("/")[0]
        if r.kind == "m" and (r.node, device) in dead:
            if r.value is not None and r.t <= end_ms:
                _problem(result, f"dead unit {r.node}/{r.stream} published the number {r.value}")
                result.kinds.setdefault("dead", KindCounts()).corrupted += 1
            continue
        if r.kind == "m" and truth.boards.get(r.node) is not None and device in truth.boards[r.node].detectors:
            lane_readings.append(r)
            continue
        key = (r.node, "e", r.code, r.param) if r.kind == "e" else (r.node, "m", r.stream)
        group = groups.get(key)
        if group is None:
            result.unchecked += 1
            continue
        if r.kind == "m" and r.fault is not None:
            if r.t <= end_ms:
                faults.append(r)
            continue
        # Past the end the truth is still being written: a reading there may match, and is
        # never judged when it does not.
        _match(result, r, group, times[key], latencies, explain, expect.late_event_ms, late_m,
               stalled_at, judge=r.t <= end_ms)
    for item in items:
        counts = result.kinds[item.kind]
        if not item.expected:
            continue
        counts.expected += 1
        if item.matched:
            counts.delivered += 1
    _faults_and_losses(result, truth, items, faults, damage)
    result.latency_ms = {k: percentiles(v) for k, v in latencies.items()}
    # The gateway's tick -> UTC mapping of each node boot, as the detector events measure it
    # (decoded - true time of the same edge): the lane intervals are judged on that time base.
    clock_errors: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for item in items:
        if item.kind == "detector" and item.got_t is not None and item.got_boot is not None:
            clock_errors.setdefault((item.node, item.got_boot), []).append((item.got_t, item.got_t - item.t_ms))
    result.intervals = check_intervals(truth, lane_readings, clock_errors)
    lanes = result.kinds.setdefault("interval", KindCounts())
    lanes.expected = result.intervals["published"] + result.intervals["lost"]
    lanes.delivered = result.intervals["published"]
    lanes.lost = result.intervals["lost"]
    lanes.corrupted = result.intervals["corrupted"]
    for text in result.intervals.get("problems", []):
        _problem(result, text)
    return result


def _problem(result: Accounting, text: str) -> None:
    if len(result.problems) < MAX_PROBLEMS:
        result.problems.append(text)


class _LateExplainer:
    """Whether a late reading has a cause the scenario put there: a fault window (plus recovery)
    overlapping its time in flight, from its truth instant to its arrival, or line damage on its
    node's wires in that time (a frame that carried it was hit and resent)."""

    def __init__(self, windows: list[tuple[int, int]], damage: dict[str, list[int]]) -> None:
        self.windows = windows
        self.damage = damage

    def __call__(self, node: str, t_us: int, latency_ms: float) -> bool:
        arrived = t_us + latency_ms * 1000
        if any(s <= arrived and t_us <= e for s, e in self.windows):
            return True
        hits = self.damage.get(node, [])
        i = bisect.bisect_left(hits, t_us - 1_000_000)
        return i < len(hits) and hits[i] <= t_us + latency_ms * 1000


def _damage(truth: RunTruth) -> dict[str, list[int]]:
    """Board -> sorted monotonic us of every byte its wires damaged or lost."""
    damage: dict[str, list[int]] = {}
    for name, events in truth.wire_faults.items():
        board = name.split("/")[0]
        damage.setdefault(board, []).extend(
            int(e.t * 1e6) for e in events if e.kind not in ("settings", "port_open", "port_closed"))
    for times in damage.values():
        times.sort()
    return damage


def _match(result: Accounting, r: Reading, group: list[TruthItem], times: list[int],
           latencies: dict[str, list[float]], explain: _LateExplainer,
           late_event_ms: int, late_m: int, stalled: Callable[[int], bool], *,
           judge: bool = True) -> None:
    widest = max(i.window[1] for i in group), min(i.window[0] for i in group)
    lo = bisect.bisect_left(times, r.t - widest[0])
    hi = bisect.bisect_right(times, r.t - widest[1])
    candidates = [i for i in group[lo:hi] if i.window[0] <= r.t - i.t_ms <= i.window[1]]
    same = [i for i in candidates if i.value is None or _same(i.value, r.value)]
    kind = group[0].kind
    counts = result.kinds[kind]
    fresh = [i for i in same if not i.matched]
    if fresh:
        # The nearest in time: with a value that repeats (a PM series) or an event that comes
        # round again, the earliest candidate may be the previous one, which went missing.
        item = min(fresh, key=lambda i: abs(r.t - i.t_ms))
        item.matched = True
        item.got_t, item.got_boot = r.t, r.node_boot
        latency = r.recv_ms - item.t_ms
        latencies.setdefault(kind, []).append(latency)
        if item.expected and latency > (late_event_ms if kind in EVENT_KINDS else late_m):
            if explain(r.node, item.t_us, latency):
                counts.late_explained += 1
            else:
                counts.late += 1
                _problem(result, f"late {kind} {r.node} {item.key[1:]}: {latency} ms")
        return
    if not judge:
        result.after_end += 1
        return
    if same:
        counts.duplicated += 1
        _problem(result, f"duplicate {kind} {r.node} {item_key(r)} at {r.t}")
        return
    what = f"value {r.value} where the truth has {[i.value for i in candidates]}" if candidates else "no truth item"
    if kind == "detector" and stalled(r.t):
        result.harness_stalled += 1
        _problem(result, f"detector {r.node} {item_key(r)} at {r.t} during a harness stall: {what}")
        return
    counts.corrupted += 1
    _problem(result, f"corrupted {kind} {r.node} {item_key(r)} at {r.t}: {what}")


def item_key(r: Reading) -> str:
    return f"event {r.code}/{r.param}" if r.kind == "e" else str(r.stream)


def _same(a: float | int | tuple[float | int, ...], b: float | int | None) -> bool:
    if isinstance(a, tuple):
        return any(_same(x, b) for x in a)
    return b is not None and abs(float(a) - float(b)) <= 1e-6 + 1e-9 * abs(float(a))


def _faults_and_losses(result: Accounting, truth: RunTruth, items: list[TruthItem],
                       faults: list[Reading], damage: dict[str, list[int]]) -> None:
    """Classify fault samples (explained or not) and the expected items nothing delivered."""
    starts = {b: [s for s, _ in up_windows(truth.records, b)] for b in truth.boards}
    offset_us = truth.utc_ms(truth.t0_us) * 1000 - truth.t0_us
    used: list[tuple[str, int]] = []
    for f in faults:
        t_us = f.t * 1000 - offset_us
        hits = damage.get(f.node, [])
        i = bisect.bisect_right(hits, t_us + 200_000)
        wire = i > 0 and hits[i - 1] >= t_us - FAULT_LOOKBACK_US
        boot = any(s <= t_us <= s + BOOT_FAULT_US for s in starts.get(f.node, []))
        scheduled = any(s <= t_us <= e for s, e, _ in truth.fault_windows)
        if wire or boot or scheduled:
            result.faults_explained += 1
        else:
            result.faults_unexplained += 1
            _problem(result, f"unexplained fault sample {f.node} {f.stream} {f.fault} at {f.t}")
        used.append((f"{f.node}/{f.stream}", f.t))
    missing = [i for i in items if i.expected and not i.matched]
    # A fault sample stands in for one reading: the missing item of its stream nearest in time.
    faulted: set[int] = set()
    for stream, t in used:
        near = [(abs(i.t_ms - t), n) for n, i in enumerate(missing)
                if n not in faulted and i.key[0] == "m" and f"{i.node}/{i.key[1]}" == stream
                and abs(i.t_ms - t) <= FAULT_STANDS_IN_MS]
        if near:
            faulted.add(min(near)[1])
    for n, item in enumerate(missing):
        counts = result.kinds[item.kind]
        if n in faulted:
            counts.faulted += 1
        elif item.explained:
            counts.lost_explained += 1
        else:
            counts.lost += 1
            _problem(result, f"lost {item.kind} {item.node} {item.key[1:]} at t_us {item.t_us} "
                             f"(scenario t {(item.t_us - truth.t0_us) / 1e6:.3f} s)")



def merge_modbus(result: Accounting, check: Mapping[str, Any] | None) -> Accounting:
    result.modbus = dict(check) if check is not None else None
    return result
