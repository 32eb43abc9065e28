"""Where each key of a JSON document is: json.loads gives values, not line numbers.

`json_locations(text)` maps every member and element path of a valid JSON document to its
1-based line: ("registers", 3, "type") is the line of the fourth register's "type" key, and
("registers", 3) the line its object starts on. Lookups fall back to the enclosing path.
"""

from __future__ import annotations

import json
import re

from citynerve.toml_locations import Locations, Path

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
# json.loads also accepts NaN and Infinity (Python's extension), so the scan must too.
_SCALAR_RE = re.compile(r"-?(?:[0-9][0-9eE.+-]*|Infinity)|NaN|true|false|null")
_WS = " \t\r\n"


class _Scan:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Path, int] = {}

    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1

    def string(self) -> str:
        m = _STRING_RE.match(self.text, self.pos)
        if m is None:
            raise ValueError(f"expected a string at offset {self.pos}")
        self.pos = m.end()
        return str(json.loads(m.group(0)))

    def value(self, path: Path) -> None:
        self.skip_ws()
        self.lines.setdefault(path, self.line())
        ch = self.text[self.pos]
        if ch == "{":
            self.pos += 1
            self.skip_ws()
            if self.text[self.pos] == "}":
                self.pos += 1
                return
            while True:
                self.skip_ws()
                key_line = self.line()
                key = self.string()
                self.lines[path + (key,)] = key_line
                self.skip_ws()
                self.pos += 1  # ':'
                self.value(path + (key,))
                self.skip_ws()
                ch = self.text[self.pos]
                self.pos += 1
                if ch == "}":
                    return
        elif ch == "[":
            self.pos += 1
            self.skip_ws()
            if self.text[self.pos] == "]":
                self.pos += 1
                return
            index = 0
            while True:
                self.value(path + (index,))
                index += 1
                self.skip_ws()
                ch = self.text[self.pos]
                self.pos += 1
                if ch == "]":
                    return
        elif ch == '"':
            self.string()
        else:
            m = _SCALAR_RE.match(self.text, self.pos)
            if m is None:
                raise ValueError(f"unexpected {ch!r} at offset {self.pos}")
            self.pos = m.end()


def json_locations(text: str) -> Locations:
    """Every path of `text` (valid JSON, as json.loads accepted it) and its line."""
    scan = _Scan(text)
    scan.value(())
    return Locations(scan.lines)
