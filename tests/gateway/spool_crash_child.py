"""A gateway stand-in for the kill -9 test: drives a spool as fast as it can until it is killed.

    python spool_crash_child.py SPOOL RUN SEED RESEND_JSON

It prints one line per durable step, flushed, so the parent knows a lower bound of what is on disk
at the moment it sends SIGKILL. Lines that announce an intent come *before* the call, confirmations
*after* it returns:

    B boot                          next_gateway_boot() returned `boot`
    D node nboot seq result         a resent frame the parent knows is stored; result must be 0
    F node nboot seq                add_frame/add_frames returned True for it: committed
    s boot bseq sha256 keys         about to seal batch (boot, bseq) with that payload and frames
    S boot bseq                     seal_batch returned
    a boot bseq                     about to acknowledge the batch
    A boot bseq result              acknowledge returned

keys is a comma-separated list of node:nboot:seq. Frame payloads are a function of (node, nboot,
seq) (payload_for), so the parent can check every stored byte.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.spool import Spool
from gateway.spool_types import BatchId, NewFrame

NODES = ("n1", "n2", "n3")
KINDS = ("m", "e", "h")
MAX_BYTES = 1 << 40  # no eviction: every committed frame must still be accounted for


def payload_for(node: str, nboot: int, seq: int) -> bytes:
    """The frame payload of (node, nboot, seq): 16..400 bytes, deterministic."""
    rng = random.Random(f"{node}/{nboot}/{seq}")
    return rng.randbytes(rng.randint(16, 400))


def batch_payload(boot: int, bseq: int, keys: list[tuple[str, int, int]]) -> bytes:
    """A stand-in for an encoded batch: its id and the digests of the frames it carries."""
    head = f"cnbT {boot} {bseq} {len(keys)}\n".encode()
    return head + b"".join(hashlib.sha256(payload_for(*key)).digest() for key in keys)


def node_boot(node: str, run: int) -> int:
    # n3 reboots on every run (a new boot id), the others keep one boot across gateway restarts.
    return run if node == "n3" else 7


def emit(*parts: object) -> None:
    """One line, flushed at once: the parent must see it before any later kill."""
    print(*parts, flush=True)


def main() -> None:
    path, run, seed, resend_json = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    resend = json.loads(resend_json)  # {"next": {node: next seq}, "known": [[node, nboot, seq]]}
    with Spool(path, max_bytes=MAX_BYTES) as spool:
        boot = spool.next_gateway_boot()
        emit("B", boot)
        # Replay what a previous run sealed but never saw acknowledged, in seal order.
        for batch in spool.unacked_batches():
            bid = batch.batch_id
            emit("a", bid.gateway_boot, bid.seq)
            emit("A", bid.gateway_boot, bid.seq, int(spool.acknowledge(bid)))
        for node, nboot, seq in resend["known"]:
            result = spool.add_frame(node, nboot, seq, "m", payload_for(node, nboot, seq), 0)
            emit("D", node, nboot, seq, int(result))
        next_seq = {node: (resend["next"].get(node, 0) if node != "n3" else 0) for node in NODES}
        sealed: list[BatchId] = []
        received_ms = 0
        while True:
            node = rng.choice(NODES)
            nboot = node_boot(node, run)
            group = []
            for _ in range(rng.choice((1, 1, 2, 5))):
                seq = next_seq[node]
                next_seq[node] += 1
                received_ms += 1
                payload = payload_for(node, nboot, seq)
                group.append(NewFrame(node, nboot, seq, rng.choice(KINDS), payload, received_ms))
            if len(group) == 1:
                results = [spool.add_frame(*group[0])]
            else:
                results = spool.add_frames(group)
            for frame, accepted in zip(group, results):
                if accepted:
                    emit("F", frame[0], frame[1], frame[2])
            if rng.random() < 0.15:
                pending = spool.pending_frames(limit=rng.randint(1, 12))
                if pending:
                    bid = spool.next_batch_id()
                    keys = [(f.node, f.boot_id, f.seq) for f in pending]
                    payload = batch_payload(bid.gateway_boot, bid.seq, keys)
                    keys_text = ",".join(f"{n}:{b}:{s}" for n, b, s in keys)
                    emit(
                        "s",
                        bid.gateway_boot,
                        bid.seq,
                        hashlib.sha256(payload).hexdigest(),
                        keys_text,
                    )
                    spool.seal_batch(
                        [f.id for f in pending],
                        batch_id=bid,
                        topic=f"t/{pending[0].node}",
                        payload=payload,
                    )
                    emit("S", bid.gateway_boot, bid.seq)
                    sealed.append(bid)
            if sealed and rng.random() < 0.08:
                bid = sealed.pop(0)
                emit("a", bid[0], bid[1])
                emit("A", bid[0], bid[1], int(spool.acknowledge(bid)))


if __name__ == "__main__":
    main()
