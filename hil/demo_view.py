"""The live, readable view of `citynerve demo`: what a consumer of the junction's MQTT stream sees,
decoded, refreshed a few times a second (rich Live) until Ctrl-C.

    signal      each ring's phase and interval (green / yellow / red clearance) and for how long
    detectors   occupied now or not, actuations so far, the last one
    lanes       the last interval's volume, flow, occupancy and speed per loop device
    air         the latest PM and CO2 readings, and how old they are
    nodes       per node: runtime, boots, the node's own HEALTH (uptime, heap, loss) and the
                gateway's view (connected, acknowledged through)

`DemoView.update()` takes in what arrived since the last call (the view keeps the newest state,
not the history), `render()` builds the screen, `summary()` a plain-text account for a terminal
that is not interactive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hil.junction import Junction
from hil.junction_stream import Reading, utc_ms
from hil.timeline import ring_of
from protocols.batch_codes import event_name
from protocols.quality_codes import (
    EVENT_DETECTOR_OFF,
    EVENT_DETECTOR_ON,
    EVENT_PHASE_BEGIN_GREEN,
    EVENT_PHASE_BEGIN_RED_CLEARANCE,
    EVENT_PHASE_BEGIN_YELLOW,
    EVENT_PHASE_END_RED_CLEARANCE,
)

__all__ = ["DemoView"]

_RING_STATE = {EVENT_PHASE_BEGIN_GREEN: ("GREEN", "bold white on green"),
               EVENT_PHASE_BEGIN_YELLOW: ("YELLOW", "bold black on yellow"),
               EVENT_PHASE_BEGIN_RED_CLEARANCE: ("RED CLEARANCE", "bold white on red"),
               EVENT_PHASE_END_RED_CLEARANCE: ("red", "red")}
_LANE_MEASURES = ("volume", "flow", "occupancy", "speed")
_AIR = ("pm1_0", "pm2_5", "pm10", "co2_ppm")


@dataclass
class _Detector:
    node: str
    channel: int
    on: bool = False
    actuations: int = 0
    last_on: int | None = None


@dataclass
class _DemoState:
    rings: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # ring -> (phase, code, t)
    detectors: dict[tuple[str, int], _Detector] = field(default_factory=dict)
    lanes: dict[tuple[str, str], dict[str, Reading]] = field(default_factory=dict)
    air: dict[tuple[str, str], Reading] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # node -> readings
    events: int = 0
    last_event: Reading | None = None


class DemoView:
    """The demo's screen, fed from a running Junction."""

    def __init__(self, junction: Junction) -> None:
        self.junction = junction
        self.state = _DemoState()
        self._seen = 0

    def update(self) -> None:
        """Take in the readings that arrived since the last call."""
        assert self.junction.recorder is not None
        readings = self.junction.recorder.readings()
        fresh, self._seen = readings[self._seen:], len(readings)
        # At one instant a red clearance ends and the next green begins: the green is the news.
        for r in sorted(fresh, key=lambda r: (r.t, r.code != EVENT_PHASE_END_RED_CLEARANCE)):
            self._take(r)

    def _take(self, r: Reading) -> None:
        s = self.state
        s.counts[r.node] = s.counts.get(r.node, 0) + 1
        if r.kind == "e":
            assert r.code is not None and r.param is not None
            s.events += 1
            s.last_event = r
            if r.code in _RING_STATE:
                ring = ring_of(r.param)
                current = s.rings.get(ring)
                if current is None or r.t >= current[2]:
                    s.rings[ring] = (r.param, r.code, r.t)
            elif r.code in (EVENT_DETECTOR_ON, EVENT_DETECTOR_OFF):
                det = s.detectors.setdefault((r.node, r.param), _Detector(r.node, r.param))
                det.on = r.code == EVENT_DETECTOR_ON
                if det.on:
                    det.actuations += 1
                    det.last_on = r.t
            return
        device, _, quantity = (r.stream or "").partition("/")
        if quantity in _LANE_MEASURES:
            lane = s.lanes.setdefault((r.node, device), {})
            if quantity not in lane or r.t >= lane[quantity].t:
                lane[quantity] = r
        elif quantity in _AIR:
            key = (r.node, r.stream or "")
            if key not in s.air or r.t >= s.air[key].t:
                s.air[key] = r

    # -- the screen ------------------------------------------------------------------------------

    def render(self) -> Group:
        now = utc_ms()
        status = self.junction.status()
        broker = status["broker"] or {"kind": "external", "url": self.junction.url, "running": True}
        gateway = status["gateway"] or {}
        head = Text.assemble(
            ("citynerve demo ", "bold"), (f"{self.junction.inventory['site'].get('junction', '')}  ", "cyan"),
            f"t = {status['t_s']:.0f} s   broker {broker['kind']} {broker['url']}   gateway ",
            ("running" if gateway.get("running") else "DOWN", "green" if gateway.get("running") else "red"),
            f" (starts {gateway.get('starts', 0)})   Ctrl-C to stop")
        return Group(head, self._signal(now), self._detectors(now), self._lanes(now), self._air(now),
                     self._nodes(now), Text("\n".join(status["events"][-3:]), style="dim"))

    def _signal(self, now: int) -> Panel:
        lines = []
        for ring in (1, 2):
            current = self.state.rings.get(ring)
            if current is None:
                lines.append(Text(f"ring {ring}: (no phase event yet)", style="dim"))
                continue
            phase, code, t = current
            label, style = _RING_STATE[code]
            text = Text(f"ring {ring}: ")
            if code == EVENT_PHASE_END_RED_CLEARANCE:
                text.append("all red", style="red")
                text.append(f"  (phase {phase} cleared {(now - t) / 1000:.1f} s ago)")
            else:
                text.append(f" phase {phase} {label} ", style=style)
                text.append(f"  for {(now - t) / 1000:.1f} s")
            lines.append(text)
        last = self.state.last_event
        if last is not None:
            lines.append(Text(f"last event: {event_name(last.code) or last.code} {last.param} "
                              f"({(now - last.t) / 1000:.1f} s ago); events so far {self.state.events}",
                              style="dim"))
        return Panel(Group(*lines), title="signal controller (Indiana hi-res events)", border_style="blue")

    def _detectors(self, now: int) -> Table:
        table = Table("detector", "node", "now", "actuations", "last on", title="detector actuations",
                      title_justify="left")
        for (_node, _ch), det in sorted(self.state.detectors.items()):
            table.add_row(str(det.channel), det.node, Text("● occupied", "bold green") if det.on else Text("○"),
                          str(det.actuations),
                          "-" if det.last_on is None else f"{(now - det.last_on) / 1000:.1f} s ago")
        return table

    def _lanes(self, now: int) -> Table:
        table = Table("lane", "interval end", *_LANE_MEASURES, title="lanes, per interval", title_justify="left")
        for (node, device), measures in sorted(self.state.lanes.items()):
            t = max(r.t for r in measures.values())
            cells = []
            for m in _LANE_MEASURES:
                r = measures.get(m)
                cells.append("-" if r is None else (r.fault or f"{r.value:g} {r.unit or ''}".strip()))
            table.add_row(f"{node}/{device}", time.strftime("%H:%M:%S", time.localtime(t / 1000)), *cells)
        return table

    def _air(self, now: int) -> Table:
        table = Table("stream", "value", "age", title="air quality", title_justify="left")
        for (node, stream), r in sorted(self.state.air.items()):
            value = f"{r.value:g} {r.unit}" if r.value is not None else f"fault: {r.fault}"
            table.add_row(f"{node}/{stream}", value, f"{(now - r.t) / 1000:.1f} s")
        return table

    def _nodes(self, now: int) -> Table:
        assert self.junction.recorder is not None
        table = Table("node", "runtime", "boots", "process", "uptime", "heap free", "ring lost", "resent",
                      "link", "acked through", "readings", title="nodes", title_justify="left")
        for board, status in self.junction.status()["nodes"].items():
            own: dict[str, Any] = self.junction.recorder.node_health(board, "node") or {}
            seen: dict[str, Any] = self.junction.recorder.node_health(board, "gateway") or {}
            loss = own.get("loss", {})
            connected = seen.get("connected")
            table.add_row(
                board, status["runtime"], str(status["boots"]),
                Text("running", "green") if status["running"] else Text("down", "red"),
                "-" if "uptime_ms" not in own else f"{own['uptime_ms'] / 1000:.0f} s",
                "-" if own.get("heap_free") in (None, -1) else str(own["heap_free"]),
                str(loss.get("ring_overflow", "-")), str(loss.get("resent", "-")),
                "-" if connected is None else ("up" if connected else "down"),
                str(seen.get("acked_through", "-")), str(self.state.counts.get(board, 0)))
        return table

    def summary(self) -> str:
        """A plain-text account of what was decoded, per node."""
        self.update()
        lines = ["decoded from the junction's MQTT stream:"]
        for board in self.junction.nodes:
            lines.append(f"  {board}: {self.state.counts.get(board, 0)} readings")
        for ring, (phase, code, _t) in sorted(self.state.rings.items()):
            lines.append(f"  ring {ring}: phase {phase} {_RING_STATE[code][0]}")
        for (node, ch), det in sorted(self.state.detectors.items()):
            lines.append(f"  detector {ch} ({node}): {det.actuations} actuations")
        for (node, device), measures in sorted(self.state.lanes.items()):
            values = ", ".join(f"{m} {r.value}" for m, r in sorted(measures.items()) if r.value is not None)
            lines.append(f"  lane {node}/{device}: {values}")
        for (node, stream), r in sorted(self.state.air.items()):
            lines.append(f"  {node}/{stream}: {r.value} {r.unit}" if r.value is not None
                         else f"  {node}/{stream}: fault {r.fault}")
        return "\n".join(lines)

    async def run_live(self, *, duration_s: float | None = None, refresh_per_s: float = 4.0) -> None:
        """Show the screen until `duration_s` has passed (None: until cancelled, e.g. Ctrl-C)."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        with Live(self.render(), refresh_per_second=refresh_per_s, screen=False) as live:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(1 / refresh_per_s)
                self.update()
                live.update(self.render())
