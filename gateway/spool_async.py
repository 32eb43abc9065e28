"""The spool for the asyncio gateway: every SQLite call on one dedicated worker thread.

A commit with synchronous=FULL waits for the disk (milliseconds on an SD card), so no spool call may
run on the event loop. AsyncSpool owns a single-thread executor; the Spool and its sqlite3
connection are created on that thread and only ever used there, so calls are serialised in the
order they were made.

Group commit: add_frame calls from many link tasks are queued and written together, one transaction
(one fsync) per round: while one round is being committed, the next one collects. Each caller still
gets its own answer only once its frame is committed, and an error (a full disk) reaches every
caller of the round that failed, none of whose frames were stored.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

from gateway.spool import Spool
from gateway.spool_errors import FrameTooLargeError, SpoolError
from gateway.spool_types import BatchId, Frame, NewFrame, SealedBatch, SpoolStats

__all__ = ["AsyncSpool"]

_R = TypeVar("_R")


class AsyncSpool:
    """`async with AsyncSpool(path, max_bytes=...) as spool:` — the Spool API, awaitable."""

    def __init__(
        self, path: str | os.PathLike[str], *, max_bytes: int, busy_timeout_s: float = 5.0
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool max_bytes must be positive, got {max_bytes}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._spool: Spool | None = None
        self._queue: list[tuple[NewFrame, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citynerve-spool")
        try:
            self._spool = await self._run(
                Spool, self.path, max_bytes=self.max_bytes, busy_timeout_s=self._busy_timeout_s
            )
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish queued frames, close the file and stop the worker thread."""
        if self._executor is None:
            return
        try:
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
            if self._spool is not None:
                await self._run(self._spool.close)
        finally:
            self._spool = None
            executor, self._executor = self._executor, None
            # The worker is idle now, so this returns at once.
            executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., _R], *args: object, **kwargs: object) -> _R:
        if self._executor is None:
            raise SpoolError(self.path, "is not open; use `async with AsyncSpool(...)`")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @property
    def _sync(self) -> Spool:
        if self._spool is None:
            raise SpoolError(self.path, "is not open; use `async with AsyncSpool(...)`")
        return self._spool

    # -- frames in (group commit) ------------------------------------------------------------------

    async def add_frame(
        self, node: str, boot_id: int, seq: int, kind: str, payload: bytes, received_ms: int
    ) -> bool:
        """Store one frame durably: True once committed, False for a duplicate (ack it anyway)."""
        if self._spool is None:
            raise SpoolError(self.path, "is not open; use `async with AsyncSpool(...)`")
        if len(payload) > self.max_bytes:
            # Checked here so that one oversized frame cannot fail the other callers' round.
            raise FrameTooLargeError(
                self.path, node=node, seq=seq, size=len(payload), max_bytes=self.max_bytes
            )
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((NewFrame(node, boot_id, seq, kind, payload, received_ms), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="citynerve-spool-commit")
        return await future

    async def _flush(self) -> None:
        round_: list[tuple[NewFrame, asyncio.Future[bool]]] = []
        try:
            while self._queue:
                round_, self._queue = self._queue, []
                try:
                    results = await self._run(self._sync.add_frames, [f for f, _ in round_])
                except Exception as error:  # noqa: BLE001 - handed to the callers
                    # Every caller of the round gets the error: none of its frames was stored.
                    _fail(round_, error)
                    continue
                for (_, future), result in zip(round_, results):
                    if not future.done():
                        future.set_result(result)
        except BaseException as error:
            # Cancelled mid-round: the frames may or may not be stored; their callers are
            # cancelled (so they do not acknowledge), the node resends, duplicates are dropped.
            _fail(round_ + self._queue, error)
            self._queue = []
            raise
        finally:
            self._flusher = None

    async def add_frames(self, frames: Iterable[NewFrame]) -> list[bool]:
        """Store frames in one transaction; per frame True (committed) or False (duplicate)."""
        return await self._run(self._sync.add_frames, list(frames))

    # -- the rest of the Spool API -----------------------------------------------------------------

    async def next_gateway_boot(self, *, at_least: int = 0) -> int:
        """Persist and return a new gateway boot id."""
        return await self._run(self._sync.next_gateway_boot, at_least=at_least)

    async def next_batch_id(self) -> BatchId:
        """The next batch id of this boot."""
        return await self._run(self._sync.next_batch_id)

    async def pending_frames(
        self, *, node: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[Frame]:
        """Frames not yet in a batch, oldest first."""
        return await self._run(self._sync.pending_frames, node=node, kind=kind, limit=limit)

    async def seal_batch(
        self,
        frame_ids: Iterable[int],
        *,
        batch_id: tuple[int, int],
        topic: str,
        payload: bytes,
        sealed_ms: int | None = None,
    ) -> SealedBatch:
        """Store the encoded batch and assign the frames to it, atomically."""
        return await self._run(
            self._sync.seal_batch,
            list(frame_ids),
            batch_id=batch_id,
            topic=topic,
            payload=payload,
            sealed_ms=sealed_ms,
        )

    async def unacked_batches(self, *, limit: int | None = None) -> list[SealedBatch]:
        """Sealed, unacknowledged batches in seal order, byte for byte."""
        return await self._run(self._sync.unacked_batches, limit=limit)

    async def batch_frames(self, batch_id: tuple[int, int]) -> list[Frame]:
        """The frames a sealed, unacknowledged batch carries."""
        return await self._run(self._sync.batch_frames, batch_id)

    async def acknowledge(self, batch_id: tuple[int, int]) -> bool:
        """On PUBACK: delete the batch and its frames; False if it is not here."""
        return await self._run(self._sync.acknowledge, batch_id)

    async def seen_through(self, node: str, boot_id: int) -> int:
        """Highest seq with every seq up to it stored or delivered (-1 if none)."""
        return await self._run(self._sync.seen_through, node, boot_id)

    async def stats(self, *, now_ms: int | None = None) -> SpoolStats:
        """Counts, bytes, oldest age and cumulative loss counters."""
        return await self._run(self._sync.stats, now_ms=now_ms)


def _fail(waiting: list[tuple[NewFrame, asyncio.Future[bool]]], error: BaseException) -> None:
    for _, future in waiting:
        if future.done():
            continue
        if isinstance(error, Exception):
            future.set_exception(error)
        else:
            future.cancel()
