"""The board's record of what `citynerve flash` put on it: /citynerve_files.json.

    {"format": 1, "board": "air-pico", "pending": false,
     "files": {"main.py": "<sha256 hex>", "lib/firmware/app.mpy": "...", ...}}

Only files listed here are ever removed by flash, and only when the board still holds them as
flash wrote them (same SHA-256): a file citynerve did not put there (the user's own notes, a
hand-edited script) is never listed, and a listed file edited on the board since is kept and
reported. A board flashed before the manifest existed has none: nothing is removed that time,
and from then on the manifest tracks the files.

Order, so that an interruption at any point leaves a bootable board or a board whose next flash
finishes the job (citynerve/flash.py):
  1. new files are written under temporary names (the old firmware is whole);
  2. the manifest is rewritten "pending" with the old files and the new ones (so whatever happens
     next, every file flash owns is listed);
  3. the new files are moved into place in one step, and verified;
  4. stale files (listed before, not in the new bundle, unchanged) are removed, then empty folders
     they leave;
  5. the manifest is rewritten with exactly the new bundle.
An interruption before 5 leaves the stale files listed: the next flash removes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MANIFEST = "citynerve_files.json"
FORMAT = 1


@dataclass
class Manifest:
    board: str
    files: dict[str, str] = field(default_factory=dict)  # path (from the root, no "/") -> sha256 hex
    pending: bool = False

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, "board": self.board, "pending": self.pending,
                "files": dict(sorted(self.files.items()))}
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes | None) -> Manifest | None:
        """The manifest in `raw`, or None when there is none or it is not one (then nothing on
        the board is taken as flash's own: nothing is removed)."""
        if not raw:
            return None
        try:
            body: Any = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("files"), dict):
            return None
        files = {str(k): str(v) for k, v in body["files"].items()
                 if isinstance(k, str) and isinstance(v, str) and _safe(k)}
        return cls(str(body.get("board") or ""), files, bool(body.get("pending")))


def _safe(path: str) -> bool:
    """A path flash may remove: relative, no "..", not the manifest itself."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and ".." not in parts and "" not in parts and path != MANIFEST


@dataclass
class StalePlan:
    remove: list[str]  # listed, not in the new bundle, unchanged on the board
    kept: list[str]  # listed, not in the new bundle, but changed on the board (or unreadable)
    known: bool  # the board had a manifest


def stale_files(old: Manifest | None, bundle: list[str], on_board: Mapping[str, str | None]) -> StalePlan:
    """Which files an older bundle left that this one does not have, and which of them may go."""
    if old is None:
        return StalePlan([], [], False)
    remove, kept = [], []
    new = set(bundle)
    for path, digest in sorted(old.files.items()):
        if path in new:
            continue
        now = on_board.get(path)
        if now is None:
            continue  # already gone
        (remove if now == digest else kept).append(path)
    return StalePlan(remove, kept, True)


def folders_of(paths: list[str]) -> list[str]:
    """The folders holding `paths`, deepest first (to try removing once emptied)."""
    found = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    return sorted(found, key=lambda d: (-d.count("/"), d))
