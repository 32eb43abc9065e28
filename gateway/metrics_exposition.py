"""The Prometheus text exposition format, version 0.0.4, written by hand (no client library needed).

    page = Exposition()
    page.gauge("citynerve_spool_pending_frames", "Frames spooled, not yet in a batch.", 12)
    page.counter("citynerve_link_frames_total", "Frames received.", 340, node="cab-pico")
    text = page.render()          # served as CONTENT_TYPE

Format (https://prometheus.io/docs/instrumenting/exposition_formats/, "Text-based format"): UTF-8
lines ending in "\\n"; per metric family one "# HELP name text" and one "# TYPE name type" line,
then all of its samples together, `name{label="value",...} value`. In HELP text a backslash and a
newline are escaped (\\\\, \\n); in label values also the double quote (\\"). Values are Go floats:
"NaN", "+Inf", "-Inf" are spelled that way. A family's samples must not repeat a label set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Exposition", "ExpositionError", "format_value"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TYPES = ("counter", "gauge", "untyped")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class ExpositionError(ValueError):
    """A metric or label that the format cannot carry; `name` is the metric, `reason` says why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"metric {name}: {reason}")


def format_value(value: float) -> str:
    """A sample value as the format spells it (ints exactly, floats shortest round-trip)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class _Family:
    name: str
    type: str
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


class Exposition:
    """Metric families in the order first added; render() writes the page."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def __len__(self) -> int:
        """How many samples the page holds."""
        return sum(len(f.samples) for f in self._families.values())

    def add(self, name: str, type_: str, help_: str, value: float | None,
            **labels: object) -> None:
        """One sample. None values are left out (unknown is not zero); label values are turned
        into text (None becomes ""). A second sample with the same labels replaces the first."""
        family = self._families.get(name)
        if family is None:
            if not _NAME.match(name):
                raise ExpositionError(name, "is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
            if type_ not in TYPES:
                raise ExpositionError(name, f"type {type_!r} is not one of {', '.join(TYPES)}")
            family = self._families[name] = _Family(name, type_, help_)
        elif family.type != type_:
            raise ExpositionError(name, f"was declared a {family.type}, now a {type_}")
        if value is None:
            return
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            raise ExpositionError(name, f"value {value!r} is not a number")
        key = []
        for label, raw in sorted(labels.items()):
            if not _LABEL.match(label) or label.startswith("__"):
                raise ExpositionError(name, f"label name {label!r} is not valid")
            key.append((label, "" if raw is None else str(raw)))
        family.samples[tuple(key)] = value

    def counter(self, name: str, help_: str, value: float | None, **labels: object) -> None:
        self.add(name, "counter", help_, value, **labels)

    def gauge(self, name: str, help_: str, value: float | None, **labels: object) -> None:
        self.add(name, "gauge", help_, value, **labels)

    def untyped(self, name: str, help_: str, value: float | None, **labels: object) -> None:
        self.add(name, "untyped", help_, value, **labels)

    def render(self) -> str:
        """The page. Families without a sample still get their HELP and TYPE lines, so a scraper
        learns what exists before it first happens (no evictions yet, say)."""
        out: list[str] = []
        for family in self._families.values():
            out.append(f"# HELP {family.name} {_escape_help(family.help)}")
            out.append(f"# TYPE {family.name} {family.type}")
            for key, value in family.samples.items():
                if key:
                    labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in key)
                    out.append(f"{family.name}{{{labels}}} {format_value(value)}")
                else:
                    out.append(f"{family.name} {format_value(value)}")
        return "\n".join(out) + "\n" if out else ""
