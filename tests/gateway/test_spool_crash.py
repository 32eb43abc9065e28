"""kill -9 mid-stream: a child process drives a spool flat out and is killed at random moments,
again and again on the same file; after each kill every frame it reported committed is there (or
was acknowledged), nothing is corrupted, and the unacknowledged batches are byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.spool import Spool
from tests.gateway.spool_crash_child import batch_payload, payload_for

BIG = 1 << 30

CHILD = Path(__file__).with_name("spool_crash_child.py")
Key = tuple[str, int, int]


@dataclass
class ChildLog:
    """What the crash child reported, across all its runs."""

    committed: set[Key] = field(default_factory=set)
    seal_intent: dict[tuple[int, int], tuple[str, list[Key]]] = field(default_factory=dict)
    seal_order: list[tuple[int, int]] = field(default_factory=list)
    sealed: set[tuple[int, int]] = field(default_factory=set)
    ack_intent: set[tuple[int, int]] = field(default_factory=set)
    acked: set[tuple[int, int]] = field(default_factory=set)
    resent: list[tuple[Key, int]] = field(default_factory=list)
    frames_this_run: int = 0

    def feed(self, line: str) -> None:
        tag, *rest = line.split()
        if tag == "F":
            self.committed.add((rest[0], int(rest[1]), int(rest[2])))
            self.frames_this_run += 1
        elif tag == "s":
            bid = (int(rest[0]), int(rest[1]))
            keys = [(n, int(b), int(s)) for n, b, s in (k.split(":") for k in rest[3].split(","))]
            self.seal_intent[bid] = (rest[2], keys)
            self.seal_order.append(bid)
        elif tag == "S":
            self.sealed.add((int(rest[0]), int(rest[1])))
        elif tag == "a":
            self.ack_intent.add((int(rest[0]), int(rest[1])))
        elif tag == "A":
            self.acked.add((int(rest[0]), int(rest[1])))
            assert rest[2] == "1", f"acknowledge of a batch the child sealed returned False: {line}"
        elif tag == "D":
            self.resent.append(((rest[0], int(rest[1]), int(rest[2])), int(rest[3])))
        else:
            assert tag == "B", line


def _run_child_and_kill(
    spool_path: Path,
    run: int,
    seed: int,
    log: ChildLog,
    resend: Mapping[str, object],
    kill_after: int,
    stderr_path: Path,
) -> None:
    log.frames_this_run = 0
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(spool_path), str(run), str(seed), json.dumps(resend)],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert proc.stdout is not None
    buffer = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 60
            killed = False
            while True:
                if not killed and log.frames_this_run >= kill_after:
                    proc.send_signal(signal.SIGKILL)  # a random moment of a busy write loop
                    killed = True
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"crash child run {run} produced no progress in time"
                if not selector.select(timeout=remaining):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    log.feed(line.decode())
            # Everything printed before the kill was read; a cut last line (no newline) is ignored.
            assert killed, f"crash child exited by itself: {stderr_path.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def _verify(spool_path: Path, log: ChildLog) -> None:
    with Spool(spool_path, max_bytes=BIG) as spool:
        batches = spool.unacked_batches()
        present: dict[Key, bytes] = {}
        for f in spool.pending_frames():
            assert (f.node, f.boot_id, f.seq) not in present
            present[(f.node, f.boot_id, f.seq)] = f.payload
        seal_position = {bid: n for n, bid in enumerate(log.seal_order)}
        for batch in batches:
            bid = (batch.batch_id.gateway_boot, batch.batch_id.seq)
            assert bid in log.seal_intent, f"batch {bid} in the spool was never sealed"
            digest, keys = log.seal_intent[bid]
            assert hashlib.sha256(batch.payload).hexdigest() == digest, f"batch {bid} corrupted"
            assert batch.payload == batch_payload(bid[0], bid[1], keys)
            assert bid not in log.acked, f"batch {bid} was acknowledged but is back"
            frames = spool.batch_frames(batch.batch_id)
            assert [(f.node, f.boot_id, f.seq) for f in frames] == keys
            for f in frames:
                assert (f.node, f.boot_id, f.seq) not in present
                present[(f.node, f.boot_id, f.seq)] = f.payload
        order = [seal_position[(b.batch_id.gateway_boot, b.batch_id.seq)] for b in batches]
        assert order == sorted(order), "unacked batches are not in seal order"
        for key, payload in present.items():
            assert payload == payload_for(*key), f"frame {key} corrupted"
        in_db = {(b.batch_id.gateway_boot, b.batch_id.seq) for b in batches}
        for bid in log.sealed - log.ack_intent:
            assert bid in in_db, f"sealed batch {bid} vanished without an acknowledge"
        delivered = {key for bid in log.ack_intent - in_db for key in log.seal_intent[bid][1]}
        lost = sorted(log.committed - present.keys() - delivered)
        assert not lost, f"committed frames lost: {lost[:10]}"
        for key, result in log.resent:
            assert result == 0, f"resent frame {key} was stored twice"
        stats = spool.stats()
        assert stats.pending_frames == len(present) - sum(b.frame_count for b in batches)
        assert stats.unacked_batches == len(batches)
        assert stats.evicted_frames == 0


def test_kill_9_mid_stream_loses_and_corrupts_nothing(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"crash test seed {seed}")
    rng = random.Random(seed)
    spool_path = tmp_path / "spool.db"
    log = ChildLog()
    for run in range(1, 6):
        next_seq = {
            node: max((s for n, b, s in log.committed if n == node), default=-1) + 1
            for node in ("n1", "n2")
        }
        candidates = sorted(k for k in log.committed if k[0] != "n3" or k[1] == run - 1)
        known = rng.sample(candidates, min(12, len(candidates)))
        resend = {"next": next_seq, "known": known}
        _run_child_and_kill(
            spool_path,
            run,
            rng.randrange(1 << 32),
            log,
            resend,
            rng.randint(20, 300),
            tmp_path / "child.err",
        )
        wal = Path(f"{spool_path}-wal")
        assert wal.exists() and wal.stat().st_size > 0, (
            "expected a hot WAL left by the killed writer"
        )
        _verify(spool_path, log)
    assert log.acked and log.sealed and len(log.committed) >= 100
