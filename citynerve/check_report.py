"""What `citynerve boards check` found: problems as data, rendered as one line each or as JSON.

A problem line reads `FILE:LINE: WHERE, KEY: what is wrong — how to fix it`, where WHERE is
"board cab-pico", "gateway", "site", "profile pms5003" or "top level". A warning is the same line
after "warning: "; warnings alone leave the file clean.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

ERROR = "error"
WARNING = "warning"

# Exit codes of `boards check`.
EXIT_CLEAN = 0
EXIT_PROBLEMS = 1
EXIT_UNREADABLE = 2


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong at `file`:`line` (1-based; 0 when no line applies)."""

    file: str
    line: int
    where: str
    key: str
    what: str
    fix: str
    severity: str = ERROR
    board: str | None = None

    def text(self) -> str:
        head = f"{self.file}:{self.line}: " + ("warning: " if self.severity == WARNING else "")
        place = f"{self.where}, {self.key}" if self.key else self.where
        return f"{head}{place}: {self.what} — {self.fix}"


@dataclass(frozen=True, kw_only=True)
class Unreadable:
    """The file could not be read or parsed at all (`line`/`column` 0 when not known)."""

    file: str
    line: int
    column: int
    what: str
    fix: str

    def text(self) -> str:
        place = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{place}: {self.what} — {self.fix}"


@dataclass(kw_only=True)
class Report:
    """Everything one check found; `unreadable` set means nothing else could be checked."""

    file: str
    boards: int = 0
    devices: int = 0
    problems: list[Problem] = field(default_factory=list)
    unreadable: Unreadable | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def exit_code(self) -> int:
        if self.unreadable is not None:
            return EXIT_UNREADABLE
        return EXIT_PROBLEMS if self.errors else EXIT_CLEAN

    def summary(self) -> str:
        if self.unreadable is not None:
            return f"{self.file}: cannot be checked"
        counts = (f"{self.boards} board{'s' * (self.boards != 1)}, "
                  f"{self.devices} device{'s' * (self.devices != 1)}")
        found = []
        if self.errors:
            found.append(f"{len(self.errors)} problem{'s' * (len(self.errors) != 1)}")
        if self.warnings:
            found.append(f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}")
        return f"{self.file}: {counts}, {', '.join(found) if found else 'no problems'}"

    def lines(self) -> list[str]:
        """The problem lines, then the summary."""
        if self.unreadable is not None:
            return [self.unreadable.text()]
        return [p.text() for p in self.problems] + [self.summary()]

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "ok": self.exit_code == EXIT_CLEAN,
            "exit_code": self.exit_code,
            "boards": self.boards,
            "devices": self.devices,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [dict(asdict(p), message=p.text()) for p in self.problems],
            "unreadable": (None if self.unreadable is None
                           else dict(asdict(self.unreadable), message=self.unreadable.text())),
        }

    def json_text(self) -> str:
        return json.dumps(self.as_json(), indent=2, ensure_ascii=False)
