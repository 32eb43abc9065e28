"""The spool's error hierarchy: each error names the spool file and says what to do, in a sentence.

SpoolError                 anything the spool cannot do; `path` is the file, `reason` the sentence
  NotASpoolError           the file exists but is not a citynerve spool (or not SQLite at all)
  SpoolVersionError        the spool was written by a newer citynerve (`found`, `supported`)
  SpoolFullError           the disk (or SQLite's page limit) is full: nothing of the call was stored
  SpoolBusyError           another process holds the spool's write lock past the busy timeout
  FrameTooLargeError       one frame is bigger than the whole byte budget (`node`, `seq`, `size`)
  BatchError               seal_batch was given frames that are gone or already batched, a batch id
                           already in use, or a batch bigger than the budget (`batch_id`,
                           `frame_ids`)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence


class SpoolError(Exception):
    """The spool at `path` could not do what was asked; `reason` is one sentence saying why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"spool {self.path}: {reason}")


class NotASpoolError(SpoolError):
    """The file is not a citynerve spool; it is left untouched."""


class SpoolVersionError(SpoolError):
    """The spool's schema version (`found`) is newer than this code understands (`supported`)."""

    def __init__(self, path: str | os.PathLike[str], *, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            path,
            f"schema version {found} was written by a newer citynerve (this one reads up to "
            f"{supported}); upgrade citynerve or move the file aside",
        )


class SpoolFullError(SpoolError):
    """The disk is full; the call's transaction was rolled back, so nothing of it was stored."""


class SpoolBusyError(SpoolError):
    """Another process kept the spool locked for longer than the busy timeout."""


class FrameTooLargeError(SpoolError):
    """A frame of `size` payload bytes cannot fit a spool of `max_bytes`, even empty."""

    def __init__(
        self, path: str | os.PathLike[str], *, node: str, seq: int, size: int, max_bytes: int
    ) -> None:
        self.node = node
        self.seq = seq
        self.size = size
        self.max_bytes = max_bytes
        super().__init__(
            path,
            f"frame {seq} from node {node!r} has {size} payload bytes, more than the whole "
            f"spool budget of {max_bytes} bytes; raise max_bytes or send smaller frames",
        )


class BatchError(SpoolError):
    """seal_batch refused batch `batch_id` and sealed nothing; `frame_ids` are those at fault."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        reason: str,
        *,
        batch_id: tuple[int, int],
        frame_ids: Sequence[int] = (),
    ) -> None:
        self.batch_id = batch_id
        self.frame_ids = tuple(frame_ids)
        super().__init__(path, reason)


def translate(path: str | os.PathLike[str], error: sqlite3.Error) -> SpoolError:
    """One SpoolError subclass for an sqlite3 error, naming the file and the way out."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    detail = str(error)
    if primary == sqlite3.SQLITE_FULL:
        return SpoolFullError(
            path, f"the disk is full ({detail}); nothing of this call was stored, free space"
        )
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return SpoolBusyError(
            path, f"locked by another process ({detail}); is a second gateway using this spool?"
        )
    if primary == sqlite3.SQLITE_NOTADB:
        return NotASpoolError(
            path, f"not a citynerve spool ({detail}); point the gateway elsewhere"
        )
    if primary == sqlite3.SQLITE_CANTOPEN:
        return SpoolError(
            path, f"cannot be opened ({detail}); check that its directory exists and is writable"
        )
    if primary == sqlite3.SQLITE_CORRUPT:
        return SpoolError(
            path, f"the file is corrupt ({detail}); move it aside to start a new spool"
        )
    return SpoolError(path, f"SQLite failed: {detail}")
