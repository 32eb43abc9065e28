"""The decoded junction stream as a timeline: what each ring showed when, when each detector was
occupied, and the air-quality series. The live view (hil/demo_view.py) reads the latest state;
the report picture (hil/timeline_svg.py) draws the history.

Phase intervals come from the Indiana events the nodes publish (REFERENCE.md §6): green from
"phase begin green" (1) to "begin yellow" (8), yellow to "end yellow" (9), red clearance from
"begin red clearance" (10) to "end red clearance" (11). A NEMA ring shows one phase at a time:
ring 1 is phases 1-4, ring 2 phases 5-8. Detector occupancy runs from "detector on" (82) to
"detector off" (81), per detector channel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hil.junction_stream import Reading
from protocols.quality_codes import (
    EVENT_DETECTOR_OFF,
    EVENT_DETECTOR_ON,
    EVENT_PHASE_BEGIN_GREEN,
    EVENT_PHASE_BEGIN_RED_CLEARANCE,
    EVENT_PHASE_BEGIN_YELLOW,
    EVENT_PHASE_END_RED_CLEARANCE,
    EVENT_PHASE_END_YELLOW,
)

__all__ = ["Span", "air_series", "detector_spans", "phase_spans", "ring_of", "ring_states"]

_STARTS = {EVENT_PHASE_BEGIN_GREEN: "green", EVENT_PHASE_BEGIN_YELLOW: "yellow",
           EVENT_PHASE_BEGIN_RED_CLEARANCE: "red_clear"}
_ENDS = {EVENT_PHASE_BEGIN_YELLOW: "green", EVENT_PHASE_END_YELLOW: "yellow",
         EVENT_PHASE_END_RED_CLEARANCE: "red_clear"}


@dataclass
class Span:
    """`row` (e.g. "ring 1", "det 3") showed `state` from `start` to `end` (UTC ms; None: still)."""

    row: str
    label: str
    state: str
    start: int
    end: int | None = None


def ring_of(phase: int) -> int:
    return 1 if phase <= 4 else 2


def phase_spans(readings: Iterable[Reading]) -> list[Span]:
    """Green, yellow and red-clearance spans per ring, in time order."""
    events = sorted((r for r in readings if r.kind == "e" and r.code in (*_STARTS, *_ENDS)),
                    key=lambda r: (r.t, r.code))
    open_spans: dict[tuple[int, str], Span] = {}
    out: list[Span] = []
    for e in events:
        assert e.code is not None and e.param is not None
        ending = _ENDS.get(e.code)
        if ending is not None:
            span = open_spans.pop((e.param, ending), None)
            if span is not None:
                span.end = e.t
        starting = _STARTS.get(e.code)
        if starting is not None:
            span = Span(f"ring {ring_of(e.param)}", str(e.param), starting, e.t)
            open_spans[(e.param, starting)] = span
            out.append(span)
    return out


def detector_spans(readings: Iterable[Reading]) -> list[Span]:
    """Occupied spans per detector channel."""
    events = sorted((r for r in readings if r.kind == "e" and r.code in (EVENT_DETECTOR_ON, EVENT_DETECTOR_OFF)),
                    key=lambda r: r.t)
    open_spans: dict[tuple[str, int], Span] = {}
    out: list[Span] = []
    for e in events:
        assert e.param is not None
        key = (e.node, e.param)
        if e.code == EVENT_DETECTOR_ON:
            span = Span(f"det {e.param}", str(e.param), "on", e.t)
            open_spans[key] = span
            out.append(span)
        else:
            span = open_spans.pop(key, None)
            if span is not None:
                span.end = e.t
    return out


def ring_states(readings: Iterable[Reading]) -> dict[int, Span]:
    """The latest span of each ring (a span that has ended means the ring rests in red)."""
    latest: dict[int, Span] = {}
    for span in phase_spans(readings):
        ring = int(span.row.split()[1])
        current = latest.get(ring)
        if current is None or span.start >= current.start:
            latest[ring] = span
    return latest


def air_series(readings: Sequence[Reading], suffixes: Sequence[str] = ("pm2_5", "co2_ppm")
               ) -> dict[str, list[tuple[int, float]]]:
    """(t, value) per "<node>/<stream>" whose quantity is one of `suffixes`, in time order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in readings:
        if r.kind != "m" or r.value is None or r.stream is None:
            continue
        if r.stream.rsplit("/", 1)[-1] in suffixes:
            out.setdefault(f"{r.node}/{r.stream}", []).append((r.t, float(r.value)))
    for points in out.values():
        points.sort()
    return out
