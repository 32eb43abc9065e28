"""The report picture, as a hand-written SVG (matplotlib is not a dependency of citynerve): the
phase timeline of both rings, the detector actuations under it, and the air quality over the same
time axis, with the scenario's fault windows shaded. Built from the decoded stream, so it shows
what a consumer of the MQTT stream saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from hil.junction_stream import Reading
from hil.timeline import Span, air_series, detector_spans, phase_spans

__all__ = ["timeline_svg"]

WIDTH = 1200
LEFT = 120
RIGHT = 70
ROW = 26
COLORS = {"green": "#2e9d49", "yellow": "#f2c12e", "red_clear": "#d9534f", "on": "#2b5d9b"}
LINE_COLORS = ("#1b7f79", "#8e44ad", "#d35400", "#2c3e50")


def timeline_svg(readings: Sequence[Reading], *, start_ms: int, end_ms: int, title: str,
                 faults: Sequence[tuple[int, int, str]] = ()) -> str:
    """The picture for [start_ms, end_ms] (UTC); `faults` are (start_ms, end_ms, label)."""
    span_ms = max(1, end_ms - start_ms)
    plot = WIDTH - LEFT - RIGHT

    def x(t: int) -> float:
        return LEFT + max(0.0, min(1.0, (t - start_ms) / span_ms)) * plot

    phases = phase_spans(readings)
    detectors = detector_spans(readings)
    det_rows = sorted({s.row for s in detectors}, key=lambda r: int(r.split()[1]))
    rows = ["ring 1", "ring 2", *det_rows]
    top = 64
    air_top = top + ROW * len(rows) + 40
    air_h = 180
    height = air_top + air_h + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{escape(title)}</text>']
    for i, (f_start, f_end, label) in enumerate(sorted(faults)):
        x0, x1 = x(f_start), x(f_end)
        out.append(f'<rect x="{x0:.1f}" y="{top - 8}" width="{max(2.0, x1 - x0):.1f}" '
                   f'height="{height - top - 40}" fill="#999" opacity="0.18"/>')
        # Labels alternate between two lines: a kill inside an outage must not cover its label.
        out.append(f'<text x="{x0 + 2:.1f}" y="{top - 12 - 14 * (i % 2)}" fill="#555">{escape(label)}</text>')
    for i, row in enumerate(rows):
        y = top + i * ROW
        out.append(f'<text x="{LEFT - 8}" y="{y + ROW * 0.65:.1f}" text-anchor="end">{escape(row)}</text>')
        fill = "#f6dede" if row.startswith("ring") else "#f2f2f2"
        out.append(f'<rect x="{LEFT}" y="{y + 3}" width="{plot}" height="{ROW - 6}" fill="{fill}"/>')
    for s in [*phases, *detectors]:
        out.append(_bar(s, rows.index(s.row), top, x, end_ms))
    out += _air(readings, air_top, air_h, x, plot)
    for k in range(0, int(span_ms / 1000) + 1, _tick_step(span_ms)):
        tx = x(start_ms + k * 1000)
        out.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{air_top + air_h}" '
                   f'stroke="#ccc" stroke-width="0.5"/>')
        out.append(f'<text x="{tx:.1f}" y="{air_top + air_h + 16}" text-anchor="middle">{k} s</text>')
    legend = [("green", "green"), ("yellow", "yellow"), ("red clearance", "red_clear"),
              ("detector occupied", "on")]
    lx = LEFT
    for name, key in legend:
        out.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{COLORS[key]}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 12}">{name}</text>')
        lx += 30 + 7 * len(name)
    out.append("</svg>")
    return "\n".join(out)


def _tick_step(span_ms: int) -> int:
    seconds = span_ms / 1000
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300):
        if seconds / step <= 20:
            return step
    return 600


def _bar(s: Span, index: int, top: int, x: Callable[[int], float], end_ms: int) -> str:
    y = top + index * ROW
    x0, x1 = x(s.start), x(s.end if s.end is not None else end_ms)
    label = f'<title>{escape(s.row)} {escape(s.label)} {s.state}</title>'
    text = ""
    if s.row.startswith("ring") and s.state == "green" and x1 - x0 > 14:
        text = f'<text x="{x0 + 3:.1f}" y="{y + ROW * 0.65:.1f}" fill="white">{escape(s.label)}</text>'
    return (f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(1.0, x1 - x0):.1f}" height="{ROW - 8}" '
            f'fill="{COLORS.get(s.state, "#777")}">{label}</rect>{text}')


def _air(readings: Sequence[Reading], top: int, height: int, x: Callable[[int], float],
         plot: int) -> list[str]:
    series = air_series(readings)
    pm = {k: v for k, v in series.items() if k.endswith("pm2_5")}
    co2 = {k: v for k, v in series.items() if k.endswith("co2_ppm")}
    out = [f'<rect x="{LEFT}" y="{top}" width="{plot}" height="{height}" fill="none" stroke="#bbb"/>',
           f'<text x="{LEFT - 8}" y="{top + 12}" text-anchor="end">PM2.5 ug/m3</text>',
           f'<text x="{LEFT + plot + 8}" y="{top + 12}">CO2 ppm</text>']
    names: list[str] = []

    def lines(group: dict[str, list[tuple[int, float]]], side: str, colors: Sequence[str]) -> None:
        values = [v for points in group.values() for _, v in points]
        if not values:
            return
        lo, hi = min(values), max(values)
        if hi - lo < 1e-9:
            lo, hi = lo - 1, hi + 1
        ax = LEFT - 8 if side == "left" else LEFT + plot + 8
        anchor = "end" if side == "left" else "start"
        for value in (lo, hi):
            y = top + height - (value - lo) / (hi - lo) * (height - 24) - 4
            out.append(f'<text x="{ax}" y="{y:.1f}" text-anchor="{anchor}" fill="#555">{value:.0f}</text>')
        for (name, points), color in zip(sorted(group.items()), colors):
            coords = " ".join(f"{x(t):.1f},{top + height - (v - lo) / (hi - lo) * (height - 24) - 4:.1f}"
                              for t, v in points)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5">'
                       f'<title>{escape(name)}</title></polyline>')
            names.append(name)
            out.append(f'<text x="{LEFT + 6}" y="{top + 4 + 14 * len(names)}" fill="{color}">{escape(name)}</text>')

    lines(pm, "left", LINE_COLORS[:2])
    lines(co2, "right", LINE_COLORS[2:])
    return out
