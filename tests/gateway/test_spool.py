"""The durable spool on real SQLite files: storing, duplicates, batches, replay, eviction, errors.
(The asyncio wrapper: test_spool_async.py; kill -9 mid-stream: test_spool_crash.py.)"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gateway.spool import Spool
from gateway.spool_errors import (
    BatchError,
    FrameTooLargeError,
    NotASpoolError,
    SpoolBusyError,
    SpoolError,
    SpoolFullError,
    SpoolVersionError,
)
from gateway.spool_seen import MAX_BOOTS_PER_NODE
from gateway.spool_types import BatchId, LossCount, NewFrame

BIG = 1 << 30


def frame(node: str, seq: int, *, boot: int = 1, kind: str = "m", size: int = 10) -> NewFrame:
    return NewFrame(node, boot, seq, kind, bytes([seq % 256]) * size, 1_000 + seq)


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


# -- frames in, duplicates -----------------------------------------------------------------------


def test_frames_are_stored_once_and_duplicates_counted(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.add_frame("n1", 1, 0, "m", b"abc", 1_000) is True
        assert spool.add_frame("n1", 1, 0, "m", b"abc", 1_001) is False
        assert spool.add_frames([frame("n1", 1), frame("n1", 1), frame("n2", 0, kind="e")]) == [
            True,
            False,
            True,
        ]
        pending = spool.pending_frames()
        assert [(f.node, f.seq, f.kind) for f in pending] == [
            ("n1", 0, "m"),
            ("n1", 1, "m"),
            ("n2", 0, "e"),
        ]
        assert pending[0].payload == b"abc" and pending[0].received_ms == 1_000
        stats = spool.stats(now_ms=2_000)
        assert stats.pending_frames == 3 and stats.pending_bytes == 3 + 10 + 10
        assert stats.duplicates == {("n1", "m"): 2}
        assert stats.oldest_received_ms == 1_000 and stats.oldest_age_ms == 1_000
        assert spool.seen_through("n1", 1) == 1 and spool.seen_through("n9", 1) == -1


def test_same_seq_in_another_boot_or_node_is_not_a_duplicate(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert (
            spool.add_frames([frame("n1", 5), frame("n1", 5, boot=2), frame("n2", 5)]) == [True] * 3
        )


def test_duplicates_are_recognised_after_delivery_and_after_reopening(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        spool.next_gateway_boot()
        spool.add_frames([frame("n1", seq) for seq in range(5)])
        ids = [f.id for f in spool.pending_frames()]
        batch = spool.seal_batch(ids, batch_id=spool.next_batch_id(), topic="t", payload=b"B")
        assert spool.acknowledge(batch.batch_id) is True
        assert spool.stats().used_bytes == 0
        assert spool.add_frame(*frame("n1", 3)) is False  # delivered and deleted, still known
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.add_frames([frame("n1", seq) for seq in range(7)]) == [False] * 5 + [True] * 2
        assert spool.stats().duplicates == {("n1", "m"): 6}
    with Spool(spool_path, max_bytes=BIG) as spool:  # the deferred duplicate counts were written
        assert spool.stats().duplicate_frames == 6


def test_old_boots_of_a_node_are_forgotten_only_when_their_frames_are_gone(
    spool_path: Path,
) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        spool.next_gateway_boot()
        assert spool.add_frame(*frame("n1", 0, boot=100))  # stays pending: its record must stay
        for boot in range(1, MAX_BOOTS_PER_NODE + 3):
            assert spool.add_frame(*frame("n1", 0, boot=boot))
            for f in spool.pending_frames():
                if f.boot_id == boot:
                    batch = spool.seal_batch(
                        [f.id], batch_id=spool.next_batch_id(), topic="t", payload=b"x"
                    )
                    spool.acknowledge(batch.batch_id)
        newest = MAX_BOOTS_PER_NODE + 2
        assert spool.seen_through("n1", 1) == -1  # forgotten
        assert spool.seen_through("n1", 100) == 0  # kept: its frame is still here
        assert spool.seen_through("n1", newest) == 0
        assert spool.add_frame(*frame("n1", 0, boot=100)) is False
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.seen_through("n1", 1) == -1 and spool.seen_through("n1", newest) == 0


def test_bad_arguments_are_refused(spool_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(spool_path, max_bytes=0)
    with Spool(spool_path, max_bytes=BIG) as spool:
        with pytest.raises(ValueError, match="seq"):
            spool.add_frame("n1", 1, -1, "m", b"x", 0)
        with pytest.raises(SpoolError, match="next_gateway_boot"):
            spool.next_batch_id()
    with pytest.raises(SpoolError, match="closed") as caught:
        spool.pending_frames()
    assert caught.value.path == str(spool_path)


# -- batches -------------------------------------------------------------------------------------


def test_batches_replay_in_seal_order_byte_for_byte_after_reopening(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.next_gateway_boot() == 1
        spool.add_frames([frame("n1", seq, kind="em"[seq % 2]) for seq in range(9)])
        sealed = []
        for n in range(3):
            batch_frames = spool.pending_frames(limit=3)
            payload = os.urandom(50 + n)
            sealed.append(
                spool.seal_batch(
                    [f.id for f in batch_frames],
                    batch_id=spool.next_batch_id(),
                    topic=f"t/{n}",
                    payload=payload,
                )
            )
        assert [b.batch_id for b in sealed] == [(1, 0), (1, 1), (1, 2)]
        assert spool.pending_frames() == []
        assert spool.acknowledge(sealed[1].batch_id) is True
        assert spool.acknowledge(sealed[1].batch_id) is False
        stats = spool.stats()
        assert (stats.unacked_batches, stats.batched_frames) == (2, 6)
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.next_gateway_boot() == 2
        assert spool.next_batch_id() == BatchId(2, 0)  # batch seqs restart per gateway boot
        replay = spool.unacked_batches()
        assert [(b.batch_id, b.topic, b.payload, b.frame_count) for b in replay] == [
            (b.batch_id, b.topic, b.payload, b.frame_count) for b in (sealed[0], sealed[2])
        ]
        assert spool.unacked_batches(limit=1) == replay[:1]
        assert [f.seq for f in spool.batch_frames(sealed[2].batch_id)] == [6, 7, 8]
        assert spool.batch_frames(sealed[1].batch_id) == []
        for batch in replay:
            assert spool.acknowledge(batch.batch_id)
        stats = spool.stats()
        assert (
            stats.used_bytes,
            stats.unacked_batches,
            stats.batched_frames,
            stats.oldest_received_ms,
        ) == (
            0,
            0,
            0,
            None,
        )


def test_gateway_boot_ids_grow_and_can_be_seeded(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.gateway_boot is None
        assert spool.next_gateway_boot() == 1
        assert spool.next_gateway_boot(at_least=1_700_000_000) == 1_700_000_000
    with Spool(spool_path, max_bytes=BIG) as spool:
        assert spool.next_gateway_boot(at_least=5) == 1_700_000_001
        assert spool.gateway_boot == 1_700_000_001


def test_pending_frames_filter_by_node_and_kind(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        spool.add_frames(
            [frame("n1", 0), frame("n2", 0, kind="e"), frame("n1", 1, kind="e"), frame("n1", 2)]
        )
        assert [(f.node, f.seq) for f in spool.pending_frames(node="n1")] == [
            ("n1", 0),
            ("n1", 1),
            ("n1", 2),
        ]
        assert [(f.node, f.seq) for f in spool.pending_frames(kind="e")] == [("n2", 0), ("n1", 1)]
        assert [(f.node, f.seq) for f in spool.pending_frames(node="n1", kind="m", limit=1)] == [
            ("n1", 0)
        ]


def test_seal_refuses_frames_that_are_not_pending_and_seals_nothing(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        spool.next_gateway_boot()
        spool.add_frames([frame("n1", seq) for seq in range(3)])
        ids = [f.id for f in spool.pending_frames()]
        spool.seal_batch(ids[:2], batch_id=(1, 0), topic="t", payload=b"first")
        with pytest.raises(BatchError, match="no longer pending") as caught:
            spool.seal_batch([ids[1], ids[2], 999], batch_id=(1, 1), topic="t", payload=b"second")
        assert caught.value.frame_ids == (ids[1], 999) and caught.value.batch_id == (1, 1)
        with pytest.raises(BatchError, match="already sealed"):
            spool.seal_batch([ids[2]], batch_id=(1, 0), topic="t", payload=b"again")
        with pytest.raises(BatchError, match="twice"):
            spool.seal_batch([ids[2], ids[2]], batch_id=(1, 2), topic="t", payload=b"x")
        with pytest.raises(BatchError, match="no frames"):
            spool.seal_batch([], batch_id=(1, 3), topic="t", payload=b"x")
        assert [b.payload for b in spool.unacked_batches()] == [b"first"]
        assert [f.id for f in spool.pending_frames()] == [ids[2]]
        stats = spool.stats()
        assert (stats.pending_frames, stats.batched_frames, stats.unacked_batches) == (1, 2, 1)


# -- the size bound ------------------------------------------------------------------------------


def test_the_oldest_pending_frames_are_evicted_and_counted(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        spool.add_frames([frame("n1", seq, kind="m") for seq in range(5)])
        spool.add_frames([frame("n2", seq, kind="e") for seq in range(5)])
        assert spool.add_frame(*frame("n3", 0, size=25)) is True
        assert [(f.node, f.seq) for f in spool.pending_frames()][:2] == [("n1", 3), ("n1", 4)]
        stats = spool.stats()
        assert stats.used_bytes == 95 and stats.evicted == {("n1", "m"): LossCount(3, 30)}
        # An evicted frame was acknowledged to its node: a resend of it is still a duplicate.
        assert spool.add_frame(*frame("n1", 0)) is False
    with Spool(spool_path, max_bytes=100) as spool:
        assert spool.stats().evicted == {("n1", "m"): LossCount(3, 30)}
        assert spool.stats().evicted_frames == 3


def test_a_whole_older_batch_goes_before_newer_pending_frames(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        spool.next_gateway_boot()
        spool.add_frames([frame("n1", seq, kind="mmh"[seq % 3]) for seq in range(4)])  # 40 bytes
        old = spool.seal_batch(
            [f.id for f in spool.pending_frames()],
            batch_id=spool.next_batch_id(),
            topic="t",
            payload=b"B" * 20,
        )
        spool.add_frames([frame("n2", seq) for seq in range(4)])  # 60 + 40 = 100: full
        spool.add_frame(*frame("n2", 4, size=5))
        assert spool.unacked_batches() == []
        assert len(spool.pending_frames()) == 5
        stats = spool.stats()
        assert stats.evicted == {("n1", "m"): LossCount(3, 30), ("n1", "h"): LossCount(1, 10)}
        assert (stats.evicted_batches, stats.evicted_batch_bytes, stats.used_bytes) == (1, 20, 45)
        assert spool.acknowledge(old.batch_id) is False  # a PUBACK arriving after the eviction
        assert stats.as_dict()["nodes"] == {
            "n1": {
                "m": {"evicted_frames": 3, "evicted_bytes": 30},
                "h": {"evicted_frames": 1, "evicted_bytes": 10},
            }
        }


def test_pending_frames_older_than_every_batch_go_first(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        spool.next_gateway_boot()
        spool.add_frames([frame("n1", 0), frame("n2", 0), frame("n2", 1)])
        n2 = [f.id for f in spool.pending_frames(node="n2")]
        spool.seal_batch(
            n2, batch_id=spool.next_batch_id(), topic="t", payload=b"B" * 10
        )  # 50 bytes
        spool.add_frames([frame("n3", seq) for seq in range(7)])  # 110 bytes: 10 must go
        assert spool.stats().evicted == {("n1", "m"): LossCount(1, 10)}  # older than the batch
        assert len(spool.unacked_batches()) == 1
        spool.add_frame(*frame("n3", 7))  # now the batch is the oldest data
        stats = spool.stats()
        assert stats.evicted == {("n1", "m"): LossCount(1, 10), ("n2", "m"): LossCount(2, 20)}
        assert (stats.evicted_batches, stats.unacked_batches, stats.used_bytes) == (1, 0, 80)
        assert [f.node for f in spool.pending_frames()] == ["n3"] * 8


def test_sealing_evicts_older_data_to_fit_but_never_itself(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        spool.next_gateway_boot()
        spool.add_frames([frame("n1", seq) for seq in range(10)])  # full
        newest = [f.id for f in spool.pending_frames()][-3:]
        batch = spool.seal_batch(
            newest, batch_id=spool.next_batch_id(), topic="t", payload=b"B" * 15
        )
        assert spool.unacked_batches()[0].payload == batch.payload
        stats = spool.stats()
        assert stats.used_bytes <= 100 and stats.evicted == {("n1", "m"): LossCount(2, 20)}
        with pytest.raises(BatchError, match="budget"):
            spool.seal_batch(
                [f.id for f in spool.pending_frames()],
                batch_id=spool.next_batch_id(),
                topic="t",
                payload=b"B" * 60,
            )
        assert len(spool.unacked_batches()) == 1 and len(spool.pending_frames()) == 5


def test_one_call_bigger_than_the_budget_keeps_its_newest_frames(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        assert spool.add_frames([frame("n1", seq) for seq in range(25)]) == [True] * 25
        assert [f.seq for f in spool.pending_frames()] == list(range(15, 25))
        assert spool.stats().evicted == {("n1", "m"): LossCount(15, 150)}


def test_a_frame_bigger_than_the_budget_is_refused_and_nothing_stored(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=100) as spool:
        with pytest.raises(FrameTooLargeError, match="budget") as caught:
            spool.add_frames([frame("n1", 0), frame("n1", 1, size=101)])
        assert (caught.value.node, caught.value.seq, caught.value.size) == ("n1", 1, 101)
        assert str(spool_path) in str(caught.value)
        assert spool.pending_frames() == []
        assert spool.add_frame(*frame("n1", 0)) is True  # not marked seen by the failed call


# -- errors --------------------------------------------------------------------------------------


def test_a_full_disk_stores_nothing_and_says_so(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        spool.add_frame(*frame("n1", 0))
        pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
        # SQLite's page limit fails a write exactly as a full disk does (SQLITE_FULL).
        spool._db.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(SpoolFullError, match="disk is full") as caught:
            spool.add_frames([frame("n1", 1, size=20_000), frame("n1", 2)])
        assert caught.value.path == str(spool_path)
        assert [f.seq for f in spool.pending_frames()] == [0]
        assert spool.stats().pending_frames == 1
        spool._db.execute("PRAGMA max_page_count=1073741823")
        assert spool.add_frames([frame("n1", 1, size=20_000), frame("n1", 2)]) == [True, True]


def test_files_that_are_not_spools_are_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(
        b"not a database at all, just some text that is long enough to have a header\n" * 20
    )
    with pytest.raises(NotASpoolError) as caught:
        Spool(text, max_bytes=BIG)
    assert str(text) in str(caught.value)

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t(x)")
    conn.close()
    before = other.read_bytes()
    with pytest.raises(NotASpoolError, match="another application"):
        Spool(other, max_bytes=BIG)
    assert other.read_bytes() == before  # not switched to WAL, not written


def test_a_spool_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="directory exists") as caught:
        Spool(tmp_path / "nowhere" / "spool.db", max_bytes=BIG)
    assert "nowhere" in caught.value.path


def test_a_spool_from_a_newer_version_is_refused(spool_path: Path) -> None:
    Spool(spool_path, max_bytes=BIG).close()
    conn = sqlite3.connect(spool_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(SpoolVersionError, match="newer citynerve") as caught:
        Spool(spool_path, max_bytes=BIG)
    assert (caught.value.found, caught.value.supported) == (99, 1)


def test_a_spool_locked_by_another_process_says_so(spool_path: Path) -> None:
    with Spool(spool_path, max_bytes=BIG, busy_timeout_s=0.05) as spool:
        other = sqlite3.connect(spool_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(SpoolBusyError, match="another process"):
                spool.add_frame(*frame("n1", 0))
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert spool.add_frame(*frame("n1", 0)) is True
