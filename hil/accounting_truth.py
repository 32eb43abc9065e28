"""What should reach the subscriber, from the run's ground truth: every item an emulator really
produced, when (UTC ms), where it must show up (node, stream or event code and parameter) and
whether the junction could have observed it.

Observability. A node can only report what happened while it ran: a truth item counts as
expected when it falls inside one of its board's up windows (process start + `grace` to its
stop; the first boot is up by scenario time 0, which waits for every node to publish), and, for
signal-controller events, when the controller was read before and after it by the same boot of
the node (the first read of a boot only sets the state, phase_events.py).
A missing item within `reboot_window` before a node was reset is explained loss (a reset takes
what the node held in RAM), counted apart from unexplained loss; so is a loop edge played while
the harness's own event loop stalled (it may have reached the node late: the harness's fault).

Kinds and their match windows (decoded time minus truth time, ms):
- detector: Indiana 82/81 per loop edge of every vehicle played to a connected node, +-50 (the
  node stamps the edge's own time; the gateway's tick mapping adds a few ms);
- phase: the controller's interval changes, 0..+2000 (the node sees a change at its next good
  poll), 0..+8000 for a red clearance that ends resting in red (the node stamps 11 only when a
  conflicting green begins or max_red_clear_ms passes);
- pm: each stream of each good PM frame, -200..+1500 (stamped when parsed);
- co2: each S8 poll (requests within 500 ms of each other are one poll: retries, or a backlog a
  stall let pile up; any value served in it is the poll's), -1000..+1500 from its last request.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hil.emulators.ground_truth import TruthRecord
from hil.faults import FaultEvent
from protocols.quality_codes import EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON, EVENT_PHASE_END_RED_CLEARANCE

__all__ = ["BoardInfo", "RunTruth", "TruthItem", "truth_items", "up_windows"]

DETECTOR_WINDOW = (-50, 50)
PHASE_WINDOW = (-20, 2000)
REST_IN_RED_WINDOW = (-20, 8000)
PM_WINDOW = (-200, 1500)
CO2_WINDOW = (-1000, 1500)
CO2_RETRY_US = 500_000
STALL_MARGIN_US = 200_000  # an edge this close to a harness stall may have reached the node late


@dataclass(frozen=True)
class BoardInfo:
    """What the accounting needs of a board: its devices' profiles, loop lanes, interval."""

    board: str
    runtime: str
    profiles: Mapping[str, str]  # device id -> profile name
    detectors: Mapping[str, tuple[int, ...]]  # loop device id -> detector channels (A, B)
    pins: Mapping[str, tuple[int, ...]]  # loop device id -> pins
    interval_s: int
    dead: frozenset[str] = frozenset()  # device ids of dead units


@dataclass
class RunTruth:
    """The ground truth of one run, as the junction gathered it."""

    t0_us: int  # scenario time 0 (traffic start), host monotonic us
    end_us: int  # truth counts up to here
    utc_ms: Callable[[int], int]
    records: Sequence[TruthRecord]
    pm_frames: Sequence[Any]  # hil.junction_devices.PmFrame
    wire_faults: Mapping[str, Sequence[FaultEvent]]
    boards: Mapping[str, BoardInfo]
    lanes: Mapping[int, tuple[str, str]]  # traffic lane index -> (board, loop device id)
    fault_windows: Sequence[tuple[int, int, str]] = ()  # (start_us, end_us, kind)
    grace_us: Mapping[str, int] = field(default_factory=dict)  # board -> boot grace
    reboot_window_us: int = 3_000_000
    # When the harness's own event loop stalled (hil.junction's watch): loop edges it played then
    # may have reached the node late, so what the node made of them is the harness's doing.
    stalls: Sequence[tuple[int, int]] = ()

    def stalled(self, t0_us: int, t1_us: int) -> bool:
        """Whether the harness stalled at any time in [t0_us, t1_us]."""
        return any(s <= t1_us and t0_us <= e for s, e in self.stalls)


@dataclass
class TruthItem:
    kind: str  # detector, phase, pm, co2
    node: str
    key: tuple[Any, ...]  # ("e", code, param) or ("m", stream)
    t_us: int
    t_ms: int
    value: float | int | tuple[float | int, ...] | None  # a tuple: any of these values
    window: tuple[int, int]
    expected: bool
    explained: str | None = None  # why its loss would be explained
    matched: bool = False
    got_t: int | None = None  # the matching reading's time and node boot
    got_boot: int | None = None


def up_windows(records: Sequence[TruthRecord], board: str) -> list[tuple[int, int | None]]:
    """(start_us, stop_us or None) of each process of `board`, from the harness's records."""
    out: list[tuple[int, int | None]] = []
    for r in records:
        if r.source != "harness" or r.fields.get("board") != board:
            continue
        if r.kind == "node_start":
            out.append((int(r["t_us"]), None))
        elif r.kind == "node_stop" and out and out[-1][1] is None:
            out[-1] = (out[-1][0], int(r["t_us"]))
    return out


class _Observer:
    def __init__(self, truth: RunTruth) -> None:
        self.truth = truth
        self.windows = {b: up_windows(truth.records, b) for b in truth.boards}

    def judge(self, board: str, t_us: int, *, grace: bool = True) -> tuple[bool, str | None]:
        """(expected, explanation if it goes missing) for an item of `board` at t_us."""
        if t_us > self.truth.end_us:
            return False, None
        wait = self.truth.grace_us.get(board, 3_000_000) if grace else 0
        for i, (start, stop) in enumerate(self.windows.get(board, ())):
            # Scenario time 0 comes once every node has published: the first boot is up by then.
            up = min(start + wait, self.truth.t0_us) if i == 0 else start + wait
            if up <= t_us and (stop is None or t_us <= stop):
                if stop is not None and t_us >= stop - self.truth.reboot_window_us:
                    return True, "node reset"
                return True, None
        return False, None

    def boundaries(self, board: str) -> list[int]:
        return sorted(t for start, stop in self.windows.get(board, ())
                      for t in (start, stop) if t is not None)


def truth_items(truth: RunTruth) -> list[TruthItem]:
    """Every truth item of the run, expected or not (an unexpected item that still arrives is
    matched, not counted as corruption)."""
    obs = _Observer(truth)
    items: list[TruthItem] = []
    items += _detector_items(truth, obs)
    items += _phase_items(truth, obs)
    items += _pm_items(truth, obs)
    items += _co2_items(truth, obs)
    return items


def _item(truth: RunTruth, kind: str, node: str, key: tuple[Any, ...], t_us: int, value: Any,
          window: tuple[int, int], judged: tuple[bool, str | None]) -> TruthItem:
    return TruthItem(kind, node, key, t_us, truth.utc_ms(t_us), value, window, judged[0], judged[1])


def _detector_items(truth: RunTruth, obs: _Observer) -> list[TruthItem]:
    out = []
    for r in truth.records:
        if r.source != "traffic" or r.kind != "vehicle":
            continue
        board, device = truth.lanes.get(int(r["lane"]), (None, None))
        if board is None or device is None:
            continue
        channels = truth.boards[board].detectors.get(device, ())
        edges = [(0, r["t_on_a_us"], True), (0, r["t_off_a_us"], False)]
        if r.fields.get("t_on_b_us") is not None:
            edges += [(1, r["t_on_b_us"], True), (1, r["t_off_b_us"], False)]
        for loop, t_us, on in edges:
            if loop >= len(channels):
                continue
            judged = obs.judge(board, int(t_us)) if r["delivered"] else (False, None)
            if judged[0] and judged[1] is None and truth.stalled(int(t_us) - STALL_MARGIN_US,
                                                                  int(t_us) + STALL_MARGIN_US):
                judged = (True, "harness stall")
            code = EVENT_DETECTOR_ON if on else EVENT_DETECTOR_OFF
            out.append(_item(truth, "detector", board, ("e", code, channels[loop]), int(t_us), None,
                             DETECTOR_WINDOW, judged))
    return out


def _phase_items(truth: RunTruth, obs: _Observer) -> list[TruthItem]:
    boards = [b for b, info in truth.boards.items() if "nema-phase-status" in info.profiles.values()]
    if not boards:
        return []
    board = boards[0]
    reads = sorted(int(r["t_us"]) for r in truth.records if r.source == "signal" and r.kind == "served")
    cuts = obs.boundaries(board)
    out = []
    for r in truth.records:
        if r.source != "signal" or r.kind != "event":
            continue
        t_us = int(r["t_us"])
        i = bisect.bisect_right(reads, t_us)  # reads[i - 1] <= t_us < reads[i]
        expected, why = False, None
        if 0 < i < len(reads):
            before, after = reads[i - 1], reads[i]
            if after <= truth.end_us and not any(before < c <= after for c in cuts):
                expected, why = obs.judge(board, t_us, grace=False)
        rest = bool(r.fields.get("rest_in_red")) and int(r["code"]) == EVENT_PHASE_END_RED_CLEARANCE
        out.append(_item(truth, "phase", board, ("e", int(r["code"]), int(r["param"])), t_us, None,
                         REST_IN_RED_WINDOW if rest else PHASE_WINDOW, (expected, why)))
    return out


def _pm_items(truth: RunTruth, obs: _Observer) -> list[TruthItem]:
    out = []
    for frame in truth.pm_frames:
        judged = obs.judge(frame.board, frame.t_us)
        for name, value in frame.values.items():
            out.append(_item(truth, "pm", frame.board, ("m", f"{frame.device}/{name}"), frame.t_us,
                             value, PM_WINDOW, judged))
    return out


def _co2_items(truth: RunTruth, obs: _Observer) -> list[TruthItem]:
    out: list[TruthItem] = []
    for board, info in truth.boards.items():
        for device, profile in info.profiles.items():
            if profile != "senseair-s8":
                continue
            source = f"{board}/{device}"
            served = [r for r in truth.records if r.source == source and r.kind == "served"
                      and "co2_ppm" in r.fields.get("values", {})]
            polls: list[list[TruthRecord]] = []
            for r in served:  # a retry soon after a reply lost on the wire is the same poll
                if polls and int(r["t_us"]) - int(polls[-1][-1]["t_us"]) < CO2_RETRY_US:
                    polls[-1].append(r)
                else:
                    polls.append([r])
            for poll in polls:
                t_us = int(poll[-1]["t_us"])
                values = tuple(sorted({r["values"]["co2_ppm"] for r in poll}))
                out.append(_item(truth, "co2", board, ("m", f"{device}/co2_ppm"), t_us,
                                 values if len(values) > 1 else values[0], CO2_WINDOW,
                                 obs.judge(board, int(poll[0]["t_us"]))))
    return out
