"""Key-level checks shared by boards.toml and the profiles: unknown keys (with a did-you-mean),
missing required keys and wrong value types, each reported at its line as a Problem.

A `Scope` is one table of a document as the technician sees it: where it is (its key path, for
line numbers), how to name it ("board cab-pico", "device ctrl.") and the list problems go to.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citynerve.check_report import ERROR, WARNING, Problem
from citynerve.toml_locations import Locations, Path

Key = str | int | tuple[str | int, ...]


@dataclass
class Sink:
    """The problems found in one file, and where its keys are."""

    file: str
    locations: Locations
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Scope:
    """A table at `path` of `sink`'s file, named `where` in messages, its keys prefixed `prefix`."""

    sink: Sink
    path: Path
    where: str
    prefix: str = ""
    board: str | None = None

    def child(self, suffix: Key, prefix: str) -> Scope:
        return Scope(self.sink, self.path + _parts(suffix), self.where, prefix, self.board)

    def line(self, key: Key = ()) -> int:
        return self.sink.locations.line(self.path + _parts(key))

    def label(self, key: Key) -> str:
        parts = _parts(key)
        text = ".".join(str(p) for p in parts if not isinstance(p, int))
        return (self.prefix + text) if text else self.prefix.rstrip(".")

    def error(self, key: Key, what: str, fix: str, *, line: int | None = None) -> None:
        self._add(key, what, fix, ERROR, line)

    def warning(self, key: Key, what: str, fix: str, *, line: int | None = None) -> None:
        self._add(key, what, fix, WARNING, line)

    def _add(self, key: Key, what: str, fix: str, severity: str, line: int | None) -> None:
        self.sink.problems.append(Problem(
            file=self.sink.file, line=self.line(key) if line is None else line, where=self.where,
            key=self.label(key), what=what, fix=fix, severity=severity, board=self.board))


def _parts(key: Key) -> tuple[str | int, ...]:
    return key if isinstance(key, tuple) else (key,)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word`, if any is close enough to be a likely typo."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


# --- value kinds ----------------------------------------------------------------------------------

def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Kind:
    """A value type as a technician reads it: "a whole number", "a string in quotes"."""

    name: str
    test: Callable[[Any], bool]


INT = Kind("a whole number", is_int)
NUMBER = Kind("a number", is_number)
STR = Kind("a string in quotes", lambda v: isinstance(v, str))
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
TABLE = Kind("a table", lambda v: isinstance(v, dict))
TABLES = Kind("a list of tables ([[...]] sections)",
              lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v))
LIST = Kind("a list", lambda v: isinstance(v, list))
INT_LIST = Kind("a list of whole numbers", lambda v: isinstance(v, list) and all(map(is_int, v)))
INT_OR_INT_LIST = Kind("a whole number or a list of whole numbers",
                       lambda v: is_int(v) or INT_LIST.test(v))
STR_OR_INT = Kind("a string or a whole number", lambda v: isinstance(v, str) or is_int(v))


def describe(value: Any) -> str:
    """What a parsed TOML/JSON value is, in the technician's words."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, int):
        return f"{value} (a whole number)"
    if isinstance(value, float):
        return f"{value:g} (a decimal number)"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return f"{value} (a date/time)"


def _unquoted(text: str) -> int | float | None:
    """The number a quoted value meant ("19200" -> 19200), or None."""
    try:
        return int(text.strip())
    except ValueError:
        pass
    try:
        return float(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class KeySpec:
    """One allowed key: its kind, whether it is required, and an example line for fixes."""

    kind: Kind
    example: str
    required: bool = False


def check_table(scope: Scope, table: Mapping[str, Any], spec: Mapping[str, KeySpec],
                *, what: str) -> dict[str, Any]:
    """Report unknown, missing and mistyped keys of `table`; return the keys that have the right
    type. `what` names the table in fixes ("a bus", "the [gateway] section")."""
    good: dict[str, Any] = {}
    suggested: set[str] = set()
    for key, value in table.items():
        if key not in spec:
            guess = did_you_mean(key, spec)
            if guess is not None and guess not in table:
                suggested.add(guess)  # a misspelt required key is one problem, not two
                scope.error(key, "unknown key", f"did you mean {guess}?")
            else:
                scope.error(key, "unknown key",
                            f"remove it; {what} takes {', '.join(spec)}")
            continue
        kind = spec[key].kind
        if not kind.test(value):
            fix = f"write it as {spec[key].example}"
            if isinstance(value, str) and _unquoted(value) is not None and kind.test(_unquoted(value)):
                fix = f"write it without quotes: {key} = {value.strip()}"
            scope.error(key, f"{describe(value)} is not {kind.name}", fix)
            continue
        good[key] = value
    for key, key_spec in spec.items():
        if key_spec.required and key not in table and key not in suggested:
            scope.error(key, "missing", f"add {key_spec.example}", line=scope.line())
    return good
