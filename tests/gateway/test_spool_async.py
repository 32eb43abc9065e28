"""AsyncSpool: every SQLite call on its own worker thread, concurrent adds group-committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.spool_async import AsyncSpool
from gateway.spool_errors import FrameTooLargeError, SpoolError, SpoolFullError
from gateway.spool_types import NewFrame

BIG = 1 << 30


def frame(node: str, seq: int) -> NewFrame:
    return NewFrame(node, 1, seq, "m", b"f%d" % seq, seq)


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


async def test_async_spool_group_commits_concurrent_adds(spool_path: Path) -> None:
    async with AsyncSpool(spool_path, max_bytes=BIG) as spool:
        boot = await spool.next_gateway_boot()
        results = await asyncio.gather(
            *(spool.add_frame(f"n{i % 4}", 1, i // 4, "m", b"p%d" % i, i) for i in range(200)),
            spool.add_frame("n0", 1, 0, "m", b"dup", 0),
        )
        assert results.count(True) == 200 and results.count(False) == 1
        assert await spool.add_frames([frame("n9", 0), frame("n9", 0)]) == [True, False]
        pending = await spool.pending_frames(node="n1")
        batch = await spool.seal_batch(
            [f.id for f in pending], batch_id=await spool.next_batch_id(), topic="t", payload=b"B"
        )
        assert batch.batch_id == (boot, 0)
        assert [b.batch_id for b in await spool.unacked_batches()] == [(boot, 0)]
        assert len(await spool.batch_frames(batch.batch_id)) == 50
        assert await spool.acknowledge(batch.batch_id) is True
        assert await spool.seen_through("n1", 1) == 49
        stats = await spool.stats()
        assert stats.pending_frames == 151 and stats.duplicate_frames == 2
    async with AsyncSpool(spool_path, max_bytes=10) as small:
        with pytest.raises(FrameTooLargeError):
            await small.add_frame("n1", 1, 99, "m", b"x" * 11, 0)
        assert (await small.stats()).duplicate_frames == 2
    with pytest.raises(SpoolError, match="not open"):
        await small.stats()


async def test_async_spool_gives_a_failed_round_its_error_and_goes_on(spool_path: Path) -> None:
    async with AsyncSpool(spool_path, max_bytes=BIG) as spool:
        await spool.add_frame("n1", 1, 0, "m", b"x", 0)

        def limit_pages(pages: int | None) -> None:  # on the spool's own thread and connection
            db = spool._sync._db
            if pages is None:
                pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages}")

        await spool._run(limit_pages, None)
        results = await asyncio.gather(
            *(spool.add_frame("n1", 1, seq, "m", b"y" * 5_000, 0) for seq in range(1, 4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, SpoolFullError) for r in results)
        await spool._run(limit_pages, 1 << 30)
        assert await spool.add_frame("n1", 1, 1, "m", b"y" * 5_000, 0) is True
        assert [f.seq for f in await spool.pending_frames()] == [0, 1]


async def test_async_spool_keeps_the_event_loop_free_while_sqlite_waits(spool_path: Path) -> None:
    async with AsyncSpool(spool_path, max_bytes=BIG, busy_timeout_s=30) as spool:
        blocker = sqlite3.connect(spool_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the spool's next write waits on SQLite's lock
            add = asyncio.create_task(spool.add_frame("n1", 1, 0, "m", b"x", 0))
            ticks = 0
            for _ in range(20):  # the loop keeps running other work meanwhile
                await asyncio.sleep(0.005)
                ticks += 1
            assert ticks == 20 and not add.done()
            blocker.execute("ROLLBACK")
            assert await asyncio.wait_for(add, timeout=30) is True
        finally:
            blocker.close()
