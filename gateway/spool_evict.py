"""The spool's size bound: which data goes when a write would exceed max_bytes, and its accounting.

Policy (the reasons are in spool.py's docstring): the oldest data goes first, in whichever form it
is held. "Oldest" is arrival order (frame row id): the oldest pending frames go in id order until
one is newer than the first frame of the oldest sealed batch; then that batch goes whole, with its
frames. Every eviction is counted in the same transaction that makes it: per (node, kind) in the
losses table (frames and payload bytes, including the frames of evicted batches), and evicted
batches with their encoded bytes in meta.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass

_CHUNK = 256  # pending frames looked at per query

_ADD_EVICTED = (
    "INSERT INTO losses(node, kind, evicted_frames, evicted_bytes) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(node, kind) DO UPDATE SET "
    "evicted_frames = evicted_frames + excluded.evicted_frames, "
    "evicted_bytes = evicted_bytes + excluded.evicted_bytes"
)
_ADD_META = (
    "INSERT INTO meta(key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value"
)


@dataclass
class Delta:
    """Changes a transaction makes to the spool's in-memory totals, applied once it committed."""

    pending_frames: int = 0
    pending_bytes: int = 0
    batched_frames: int = 0
    batched_bytes: int = 0
    batches: int = 0
    batch_bytes: int = 0

    @property
    def used(self) -> int:
        """Change of the payload bytes held."""
        return self.pending_bytes + self.batched_bytes + self.batch_bytes


def evict_oldest(
    conn: sqlite3.Connection, need: int, delta: Delta, *, keep_batch: int = -1
) -> None:
    """Delete the oldest data, inside the caller's transaction, until `need` payload bytes are
    freed or nothing is left; the batch with row id `keep_batch` (being sealed) is never taken."""
    lost: Counter[tuple[str, str]] = Counter()
    lost_bytes: Counter[tuple[str, str]] = Counter()
    batches = batch_bytes = 0
    while need > 0:
        batch = conn.execute(
            "SELECT id, first_frame, length(payload), frame_count, frame_bytes FROM batches "
            "WHERE id != ? ORDER BY id LIMIT 1",
            (keep_batch,),
        ).fetchone()
        if batch is None:
            rows = conn.execute(
                "SELECT id, node, kind, length(payload) FROM frames "
                "WHERE batch IS NULL ORDER BY id LIMIT ?",
                (_CHUNK,),
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT id, node, kind, length(payload) FROM frames "
                "WHERE batch IS NULL AND id < ? ORDER BY id LIMIT ?",
                (batch[1], _CHUNK),
            ).fetchall()
        if rows:
            last = count = freed = 0
            for frame_id, node, kind, size in rows:
                lost[(node, kind)] += 1
                lost_bytes[(node, kind)] += size
                count += 1
                freed += size
                last = frame_id
                if freed >= need:
                    break
            # The rows taken are exactly the pending frames with id <= last.
            conn.execute("DELETE FROM frames WHERE batch IS NULL AND id <= ?", (last,))
            delta.pending_frames -= count
            delta.pending_bytes -= freed
            need -= freed
        elif batch is not None:
            batch_row, _, size, frame_count, frame_bytes = batch
            for node, kind, count, nbytes in conn.execute(
                "SELECT node, kind, count(*), sum(length(payload)) FROM frames "
                "WHERE batch = ? GROUP BY node, kind",
                (batch_row,),
            ):
                lost[(node, kind)] += count
                lost_bytes[(node, kind)] += nbytes
            conn.execute("DELETE FROM frames WHERE batch = ?", (batch_row,))
            conn.execute("DELETE FROM batches WHERE id = ?", (batch_row,))
            delta.batched_frames -= frame_count
            delta.batched_bytes -= frame_bytes
            delta.batches -= 1
            delta.batch_bytes -= size
            batches += 1
            batch_bytes += size
            need -= size + frame_bytes
        else:
            break
    conn.executemany(
        _ADD_EVICTED,
        [(node, kind, n, lost_bytes[(node, kind)]) for (node, kind), n in lost.items()],
    )
    if batches:
        conn.executemany(
            _ADD_META, [("evicted_batches", batches), ("evicted_batch_bytes", batch_bytes)]
        )
