"""The gateway's durable spool: node frames in, sealed batches out, deleted only on PUBACK.

Flow. A link task stores each node DATA/HEALTH frame with add_frame (or many with add_frames, one
transaction) and acknowledges it to the node only after that returned True: the commit is on disk
(WAL, synchronous=FULL). False means a duplicate of a frame already stored or already delivered:
acknowledge it too, it is counted and dropped. The batcher reads pending frames (not yet in a batch,
oldest first) with pending_frames, encodes them, and calls seal_batch, which stores the encoded
batch byte for byte and assigns the frames to it in one transaction. The publisher sends the batch
and calls acknowledge on PUBACK, which deletes the batch and its frames together. After a restart
unacked_batches returns every sealed, unacknowledged batch in seal order, byte-identical, for the
publisher to resend first: a consumer sees duplicates only as whole batches with the same batch id.

Granularity. Frames are stored whole and opaque (one row per frame, not per reading) so that the
100 000 readings/s target costs one row per node frame.

Duplicates. Each (node, boot_id) has a compact record of the seqs accepted (spool_seen.py: a floor
plus a 4096-seq window) kept in its own table, written in the same transaction as the frames, so a
resent frame is recognised after its original was published and deleted, and after a restart. Seqs
must grow within a boot (never wrap). A node keeps the records of its 4 most recent boots
(spool_seen.MAX_BOOTS_PER_NODE); older ones are forgotten once none of their frames is left here.

Batch ids. (gateway_boot, seq): next_gateway_boot() (call once at startup) persists and returns a
new boot id, one more than the last (or `at_least`, to seed it from a clock so ids stay unique if
the spool file is ever replaced); next_batch_id() numbers batches from 0 within that boot, in
memory. A batch id that is handed out but never sealed, or a batch that is evicted, leaves a gap.

Size bound and eviction. max_bytes bounds the payload bytes held: every frame's payload (pending
or batched) plus every encoded batch. When a write would exceed it, the *oldest data goes first*,
whichever form it is in: the oldest pending frames, or the oldest sealed batch as a whole (with its
frames) when that batch's first frame is older than every pending frame. Keeping the newest data
matters more to a live city brain than keeping a backlog; and evicting "pending frames before any
batch" would, during a broker outage (when the backlog is almost all sealed batches), throw away
the freshest seconds again and again while keeping hours-old batches. A batch is evicted only
whole, because its bytes are a promise to the consumer. Evictions are counted per (node, kind), in
frames and bytes (an evicted batch counts its frames there, plus evicted_batches and its encoded
bytes), persisted with the eviction itself and reported by stats(). A batch evicted while in flight
may still be delivered: its later acknowledge() returns False. A frame larger than the whole budget
is refused (FrameTooLargeError); so is a batch whose frames plus encoding exceed it (BatchError).

Counters. Duplicate counts are kept in memory and written with the next write transaction (or at
close), so a flood of resends costs no fsyncs; a kill -9 may lose the last few duplicate counts,
never data or eviction counts.

Threads. A Spool and its connection belong to the thread that created it; the asyncio gateway uses
AsyncSpool (spool_async.py), which runs one on a dedicated worker thread. Every sqlite3 error leaves
as a SpoolError subclass naming the file (spool_errors.py); a failed call rolls back whole.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

from gateway import spool_schema
from gateway.spool_errors import (
    BatchError,
    FrameTooLargeError,
    SpoolError,
    translate,
)
from gateway.spool_evict import Delta, evict_oldest
from gateway.spool_seen import Key, SeenRecords, Window, is_seen, mark
from gateway.spool_types import (
    BatchId,
    Frame,
    LossCount,
    NewFrame,
    SealedBatch,
    SpoolStats,
)

__all__ = ["Spool"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_FRAME_COLUMNS = "id, node, boot_id, seq, kind, received_ms, payload"
_INSERT_FRAME = (
    "INSERT INTO frames(node, boot_id, seq, kind, received_ms, payload) VALUES (?, ?, ?, ?, ?, ?)"
)
_ADD_DUPLICATES = (
    "INSERT INTO losses(node, kind, duplicate_frames) VALUES (?, ?, ?) "
    "ON CONFLICT(node, kind) DO UPDATE SET "
    "duplicate_frames = duplicate_frames + excluded.duplicate_frames"
)


def _guarded(method: Callable[Concatenate[Spool, _P], _R]) -> Callable[Concatenate[Spool, _P], _R]:
    """Turn sqlite3 errors into SpoolErrors naming the file; refuse a closed spool."""

    def wrapper(self: Spool, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._conn is None:
            raise SpoolError(self.path, "is closed")
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise translate(self.path, error) from error

    functools.update_wrapper(wrapper, method)
    return wrapper


class Spool:
    """A spool file opened for this thread. Use as a context manager, or call close()."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int, busy_timeout_s: float = 5.0
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None
        try:
            conn = spool_schema.connect(self.path, busy_timeout_s=busy_timeout_s)
        except sqlite3.Error as error:
            raise translate(self.path, error) from error
        self._conn = conn
        self._gateway_boot: int | None = None
        self._batch_seq = 0
        self._dirty_duplicates: Counter[tuple[str, str]] = Counter()
        try:
            self._load()
        except sqlite3.Error as error:
            self.close()
            raise translate(self.path, error) from error

    def _load(self) -> None:
        conn = self._db
        self._seen = SeenRecords(conn)
        # Running totals, so that the budget check and stats() cost no query.
        pending = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM frames WHERE batch IS NULL"
        ).fetchone()
        self._pending_frames: int = pending[0]
        self._pending_bytes: int = pending[1]
        batches = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(sum(frame_count), 0), "
            "coalesce(sum(frame_bytes), 0) FROM batches"
        ).fetchone()
        self._batches: int = batches[0]
        self._batch_bytes: int = batches[1]
        self._batched_frames: int = batches[2]
        self._batched_bytes: int = batches[3]

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpoolError(self.path, "is closed")
        return self._conn

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Write the pending duplicate counts and close the file. Safe to call twice."""
        conn = self._conn
        if conn is None:
            return
        try:
            if self._dirty_duplicates:
                with self._transaction():
                    pass
        except sqlite3.Error as error:
            raise translate(self.path, error) from error
        finally:
            self._conn = None
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            if self._dirty_duplicates:
                conn.executemany(
                    _ADD_DUPLICATES,
                    [(node, kind, n) for (node, kind), n in self._dirty_duplicates.items()],
                )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself after some errors (a full disk, I/O): only if still open.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        self._dirty_duplicates.clear()

    # -- gateway boot and batch ids --------------------------------------------------------------

    @_guarded
    def next_gateway_boot(self, *, at_least: int = 0) -> int:
        """Persist and return a new gateway boot id (last + 1, or `at_least` if that is larger)."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'gateway_boot'").fetchone()
            boot = max((row[0] if row else 0) + 1, at_least)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('gateway_boot', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (boot,),
            )
        self._gateway_boot = boot
        self._batch_seq = 0
        return boot

    @property
    def gateway_boot(self) -> int | None:
        """This run's gateway boot id, once next_gateway_boot() has been called."""
        return self._gateway_boot

    def next_batch_id(self) -> BatchId:
        """The next batch id of this boot: (gateway_boot, 0), (gateway_boot, 1), ..."""
        if self._gateway_boot is None:
            raise SpoolError(self.path, "has no gateway boot yet; call next_gateway_boot() first")
        batch_id = BatchId(self._gateway_boot, self._batch_seq)
        self._batch_seq += 1
        return batch_id

    # -- frames in ---------------------------------------------------------------------------------

    def add_frame(
        self, node: str, boot_id: int, seq: int, kind: str, payload: bytes, received_ms: int
    ) -> bool:
        """Store one frame durably; True once committed, False for a duplicate (ack it anyway)."""
        return self.add_frames([NewFrame(node, boot_id, seq, kind, payload, received_ms)])[0]

    @_guarded
    def add_frames(self, frames: Iterable[NewFrame]) -> list[bool]:
        """Store frames in one transaction; per frame True (committed) or False (duplicate).

        Raises FrameTooLargeError (and stores nothing) if any frame exceeds max_bytes on its own.
        """
        results: list[bool] = []
        rows: list[tuple[str, int, int, str, int, bytes]] = []
        windows: dict[Key, Window] = {}  # staged; the cache changes only after the commit
        last_ms: dict[Key, int] = {}
        duplicates: Counter[tuple[str, str]] = Counter()
        for node, boot_id, seq, kind, payload, received_ms in frames:
            if len(payload) > self.max_bytes:
                raise FrameTooLargeError(
                    self.path, node=node, seq=seq, size=len(payload), max_bytes=self.max_bytes
                )
            if seq < 0:
                raise ValueError(f"frame seq must be >= 0, got {seq} from node {node!r}")
            key = (node, boot_id)
            window = windows.get(key)
            if window is None:
                window = self._seen.get(key)
            if is_seen(window, seq):
                duplicates[(node, kind)] += 1
                results.append(False)
                continue
            windows[key] = mark(window, seq)
            last_ms[key] = max(received_ms, last_ms.get(key, received_ms))
            rows.append((node, boot_id, seq, kind, received_ms, payload))
            results.append(True)
        self._dirty_duplicates.update(duplicates)
        if not rows:
            return results
        delta = Delta()
        with self._transaction() as conn:
            self._insert(conn, rows, delta)
            forgotten = self._seen.write(conn, windows, last_ms)
        self._apply(delta)
        self._seen.commit(windows, last_ms, forgotten)
        return results

    def _insert(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[str, int, int, str, int, bytes]],
        delta: Delta,
    ) -> None:
        # In chunks of at most max_bytes, so a call bigger than the budget evicts its own oldest
        # frames exactly as separate calls would.
        start = 0
        while start < len(rows):
            end, size = start, 0
            while end < len(rows) and size + len(rows[end][5]) <= self.max_bytes:
                size += len(rows[end][5])
                end += 1
            need = self._used + delta.used + size - self.max_bytes
            if need > 0:
                evict_oldest(conn, need, delta)
            conn.executemany(_INSERT_FRAME, rows[start:end])
            delta.pending_frames += end - start
            delta.pending_bytes += size
            start = end

    # -- totals ------------------------------------------------------------------------------------

    @property
    def _used(self) -> int:
        return self._pending_bytes + self._batched_bytes + self._batch_bytes

    def _apply(self, delta: Delta) -> None:
        self._pending_frames += delta.pending_frames
        self._pending_bytes += delta.pending_bytes
        self._batched_frames += delta.batched_frames
        self._batched_bytes += delta.batched_bytes
        self._batches += delta.batches
        self._batch_bytes += delta.batch_bytes

    # -- batches -----------------------------------------------------------------------------------

    @_guarded
    def pending_frames(
        self, *, node: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[Frame]:
        """Frames not yet in a batch, oldest first, optionally of one node and/or kind."""
        where: list[str] = ["batch IS NULL"]
        args: list[object] = []
        if node is not None:
            where.append("node = ?")
            args.append(node)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {_FRAME_COLUMNS} FROM frames WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Frame(*row) for row in self._db.execute(sql, args)]

    @_guarded
    def seal_batch(
        self,
        frame_ids: Iterable[int],
        *,
        batch_id: tuple[int, int],
        topic: str,
        payload: bytes,
        sealed_ms: int | None = None,
    ) -> SealedBatch:
        """Store the encoded batch and assign the (pending) frames to it, atomically.

        Raises BatchError, sealing nothing, when a frame is no longer pending (evicted or already
        batched: re-read pending_frames and encode again), the batch id is in use, or the batch
        would not fit the budget.
        """
        ids = list(frame_ids)
        bid = BatchId(*batch_id)
        if not ids:
            raise BatchError(self.path, f"batch {bid} has no frames", batch_id=bid)
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise BatchError(
                self.path, f"batch {bid} lists frames twice", batch_id=bid, frame_ids=repeated
            )
        sealed = int(time.time() * 1000) if sealed_ms is None else sealed_ms
        delta = Delta()
        with self._transaction() as conn:
            try:
                row = conn.execute(
                    "INSERT INTO batches(gateway_boot, seq, topic, payload, first_frame, "
                    "frame_count, frame_bytes, sealed_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (bid.gateway_boot, bid.seq, topic, payload, min(ids), len(ids), sealed),
                ).lastrowid
                assert row is not None  # set by the INSERT just made
            except sqlite3.IntegrityError:
                raise BatchError(
                    self.path, f"batch id {bid} is already sealed and unacknowledged", batch_id=bid
                ) from None
            updated = conn.executemany(
                "UPDATE frames SET batch = ? WHERE id = ? AND batch IS NULL",
                [(row, frame_id) for frame_id in ids],
            ).rowcount
            if updated != len(ids):
                taken = {
                    r[0] for r in conn.execute("SELECT id FROM frames WHERE batch = ?", (row,))
                }
                stale = sorted(set(ids) - taken)
                raise BatchError(
                    self.path,
                    f"batch {bid}: {len(stale)} of its frames are no longer pending (evicted or "
                    f"already batched); read pending_frames again and re-encode",
                    batch_id=bid,
                    frame_ids=stale,
                )
            frame_bytes = conn.execute(
                "SELECT sum(length(payload)) FROM frames WHERE batch = ?", (row,)
            ).fetchone()[0]
            if frame_bytes + len(payload) > self.max_bytes:
                raise BatchError(
                    self.path,
                    f"batch {bid} holds {frame_bytes + len(payload)} bytes (frames and encoding), "
                    f"more than the whole budget of {self.max_bytes}; seal smaller batches",
                    batch_id=bid,
                )
            conn.execute("UPDATE batches SET frame_bytes = ? WHERE id = ?", (frame_bytes, row))
            delta.pending_frames -= len(ids)
            delta.pending_bytes -= frame_bytes
            delta.batched_frames += len(ids)
            delta.batched_bytes += frame_bytes
            delta.batches += 1
            delta.batch_bytes += len(payload)
            need = self._used + delta.used - self.max_bytes
            if need > 0:
                evict_oldest(conn, need, delta, keep_batch=row)
        self._apply(delta)
        return SealedBatch(bid, topic, payload, len(ids), sealed)

    @_guarded
    def unacked_batches(self, *, limit: int | None = None) -> list[SealedBatch]:
        """Sealed, unacknowledged batches in seal order, payloads byte for byte as sealed."""
        sql = (
            "SELECT gateway_boot, seq, topic, payload, frame_count, sealed_ms FROM batches "
            "ORDER BY id"
        )
        args: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            args = (limit,)
        return [
            SealedBatch(BatchId(boot, seq), topic, payload, count, sealed)
            for boot, seq, topic, payload, count, sealed in self._db.execute(sql, args)
        ]

    @_guarded
    def batch_frames(self, batch_id: tuple[int, int]) -> list[Frame]:
        """The frames a sealed, unacknowledged batch carries, oldest first (empty if none)."""
        sql = (
            f"SELECT {', '.join('f.' + c for c in _FRAME_COLUMNS.split(', '))} FROM frames f "
            "JOIN batches b ON f.batch = b.id WHERE b.gateway_boot = ? AND b.seq = ? ORDER BY f.id"
        )
        return [Frame(*row) for row in self._db.execute(sql, tuple(batch_id))]

    @_guarded
    def acknowledge(self, batch_id: tuple[int, int]) -> bool:
        """On PUBACK: delete the batch and its frames; False if it is not here (evicted, acked)."""
        conn = self._db
        found = conn.execute(
            "SELECT id, frame_count, frame_bytes, length(payload) FROM batches "
            "WHERE gateway_boot = ? AND seq = ?",
            tuple(batch_id),
        ).fetchone()
        if found is None:
            return False
        row, frame_count, frame_bytes, size = found
        with self._transaction():
            conn.execute("DELETE FROM frames WHERE batch = ?", (row,))
            conn.execute("DELETE FROM batches WHERE id = ?", (row,))
        self._apply(
            Delta(
                batched_frames=-frame_count,
                batched_bytes=-frame_bytes,
                batches=-1,
                batch_bytes=-size,
            )
        )
        return True

    # -- reporting ---------------------------------------------------------------------------------

    def seen_through(self, node: str, boot_id: int) -> int:
        """The highest seq s of (node, boot_id) such that every seq <= s is stored or delivered
        (-1 if none): what a cumulative ACK to the node may carry."""
        return self._seen.get((node, boot_id))[0]

    @_guarded
    def stats(self, *, now_ms: int | None = None) -> SpoolStats:
        """Counts, bytes, the oldest frame's age and the cumulative loss counters."""
        conn = self._db
        now = int(time.time() * 1000) if now_ms is None else now_ms
        oldest_row = conn.execute("SELECT received_ms FROM frames ORDER BY id LIMIT 1").fetchone()
        oldest = None if oldest_row is None else int(oldest_row[0])
        evicted: dict[tuple[str, str], LossCount] = {}
        duplicates: Counter[tuple[str, str]] = Counter(self._dirty_duplicates)
        for node, kind, frames, nbytes, dups in conn.execute(
            "SELECT node, kind, evicted_frames, evicted_bytes, duplicate_frames FROM losses"
        ):
            if frames:
                evicted[(node, kind)] = LossCount(frames, nbytes)
            if dups:
                duplicates[(node, kind)] += dups
        meta = dict(
            conn.execute(
                "SELECT key, value FROM meta "
                "WHERE key IN ('evicted_batches', 'evicted_batch_bytes')"
            ).fetchall()
        )
        return SpoolStats(
            path=str(self.path),
            max_bytes=self.max_bytes,
            used_bytes=self._used,
            pending_frames=self._pending_frames,
            pending_bytes=self._pending_bytes,
            batched_frames=self._batched_frames,
            batched_bytes=self._batched_bytes,
            unacked_batches=self._batches,
            unacked_batch_bytes=self._batch_bytes,
            oldest_received_ms=oldest,
            oldest_age_ms=None if oldest is None else max(0, now - oldest),
            gateway_boot=self._gateway_boot,
            evicted=evicted,
            evicted_batches=meta.get("evicted_batches", 0),
            evicted_batch_bytes=meta.get("evicted_batch_bytes", 0),
            duplicates=dict(duplicates),
        )
