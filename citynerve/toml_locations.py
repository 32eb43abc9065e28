"""Where each key of a TOML document is: the line numbers tomllib does not give.

`toml_locations(text)` maps every key path to the 1-based line that defines it. A path is a tuple
of names and, for arrays of tables, the 0-based occurrence: the `address` of the third
`[[board.device]]` of the second `[[board]]` is ("board", 1, "device", 2, "address"). A table's own
path maps to its header line, so a missing key can be reported where the table starts.

The scan assumes text that tomllib has already accepted, so it only has to recognise headers and
`key =` at the start of a statement, and to skip values (strings, multi-line strings and arrays
that span lines) without mistaking their contents for keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

Path = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_SEGMENT = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_KEY = rf"{_SEGMENT}(?:\s*\.\s*{_SEGMENT})*"
_SEGMENT_RE = re.compile(_SEGMENT)
_ARRAY_HEADER_RE = re.compile(rf"\[\[\s*({_KEY})\s*\]\]")
_TABLE_HEADER_RE = re.compile(rf"\[\s*({_KEY})\s*\]")
_KEY_VALUE_RE = re.compile(rf"({_KEY})\s*=")


class Locations(Mapping[Path, int]):
    """Key path -> line. `line(path)` falls back to the nearest enclosing key that has a line (a
    key inside an inline table or an array is on its parent's line); 0 when none has one."""

    def __init__(self, lines: dict[Path, int]) -> None:
        self._lines = lines

    def __getitem__(self, path: Path) -> int:
        return self._lines[path]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._lines)

    def __len__(self) -> int:
        return len(self._lines)

    def line(self, path: Path) -> int:
        path = tuple(path)
        while True:
            if path in self._lines:
                return self._lines[path]
            if not path:
                return 0
            path = path[:-1]


def _unquote(segment: str) -> str:
    if segment.startswith('"'):
        try:
            return str(json.loads(segment))
        except ValueError:  # a TOML-only escape (\U0001F600 is fine in JSON too, \e is not)
            return segment[1:-1]
    if segment.startswith("'"):
        return segment[1:-1]
    return segment


def _split_key(key: str) -> list[str]:
    return [_unquote(m.group(0)) for m in _SEGMENT_RE.finditer(key)]


def _skip_value(text: str, pos: int, line: int) -> tuple[int, int]:
    """From just after `=`, the position and line where the statement ends (its newline)."""
    depth = 0
    n = len(text)
    while pos < n:
        ch = text[pos]
        if text.startswith('"""', pos) or text.startswith("'''", pos):
            quote = text[pos:pos + 3]
            pos += 3
            while pos < n and not text.startswith(quote, pos):
                if text[pos] == "\\" and quote == '"""':
                    pos += 1
                if pos < n and text[pos] == "\n":
                    line += 1
                pos += 1
            pos += 3
            # A closing delimiter may be followed by up to two more quotes that belong to the string.
            while pos < n and text[pos] == quote[0]:
                pos += 1
            continue
        if ch == '"' or ch == "'":
            pos += 1
            while pos < n and text[pos] != ch:
                if text[pos] == "\\" and ch == '"':
                    pos += 1
                pos += 1
            pos += 1
            continue
        if ch == "#":
            while pos < n and text[pos] != "\n":
                pos += 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "\n":
            if depth <= 0:
                return pos, line
            line += 1
        pos += 1
    return pos, line


def toml_locations(text: str) -> Locations:
    """Every key path of `text` (valid TOML) and the line it is defined on."""
    lines: dict[Path, int] = {(): 1}  # the document itself: a missing top-level key is "line 1"
    arrays: dict[Path, int] = {}  # array-of-tables path -> how many entries so far
    table: Path = ()
    pos, line, n = 0, 1, len(text)

    def resolve(parts: list[str]) -> Path:
        path: Path = ()
        for part in parts:
            path += (part,)
            if path in arrays:  # a name that is an array of tables means its latest entry
                path += (arrays[path] - 1,)
        return path

    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end
        stripped = text[pos:end].lstrip()
        indent = end - pos - len(stripped)
        if not stripped or stripped.startswith("#"):
            pos, line = end + 1, line + 1
            continue
        if m := _ARRAY_HEADER_RE.match(stripped):
            parts = _split_key(m.group(1))
            parent = resolve(parts[:-1]) + (parts[-1],)
            index = arrays.get(parent, 0)
            arrays[parent] = index + 1
            table = parent + (index,)
            lines.setdefault(parent, line)
            lines[table] = line
            pos, line = end + 1, line + 1
            continue
        if m := _TABLE_HEADER_RE.match(stripped):
            table = resolve(_split_key(m.group(1)))
            lines[table] = line
            pos, line = end + 1, line + 1
            continue
        if m := _KEY_VALUE_RE.match(stripped):
            parts = _split_key(m.group(1))
            for k in range(1, len(parts) + 1):  # a dotted key also defines its parent tables
                lines.setdefault(table + tuple(parts[:k]), line)
            lines[table + tuple(parts)] = line
            pos, line = _skip_value(text, pos + indent + m.end(), line)
            pos += 1
            line += 1
            continue
        pos, line = end + 1, line + 1  # not a statement tomllib accepted; nothing to record
    return Locations(lines)
