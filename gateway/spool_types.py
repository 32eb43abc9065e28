"""The values the spool takes and gives: frames in, frames and sealed batches out, and its stats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class NewFrame(NamedTuple):
    """A node DATA/HEALTH frame to store; `payload` is opaque to the spool."""

    node: str
    boot_id: int
    seq: int
    kind: str  # "m" measurements, "e" events, "h" health; free text
    payload: bytes
    received_ms: int  # gateway UTC ms when the frame arrived


class Frame(NamedTuple):
    """A stored frame; `id` grows with arrival order and is what seal_batch takes."""

    id: int
    node: str
    boot_id: int
    seq: int
    kind: str
    received_ms: int
    payload: bytes


class BatchId(NamedTuple):
    """A batch's identity on the wire: the gateway boot that sealed it and its seq in that boot."""

    gateway_boot: int
    seq: int


class SealedBatch(NamedTuple):
    """A sealed batch waiting for its PUBACK: `payload` is byte for byte what was sealed."""

    batch_id: BatchId
    topic: str
    payload: bytes
    frame_count: int
    sealed_ms: int


@dataclass(frozen=True)
class LossCount:
    """Frames and their payload bytes lost to one cause."""

    frames: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class SpoolStats:
    """A snapshot for the health topic. Counters (evicted*, duplicates) are cumulative over the
    spool file's life and survive restarts; "pending" frames are those not yet in a batch."""

    path: str
    max_bytes: int
    used_bytes: int  # payload bytes held: frames (pending and batched) + encoded batches
    pending_frames: int
    pending_bytes: int
    batched_frames: int
    batched_bytes: int
    unacked_batches: int
    unacked_batch_bytes: int
    oldest_received_ms: int | None  # the oldest frame still held (not yet acknowledged)
    oldest_age_ms: int | None
    gateway_boot: int | None
    evicted: Mapping[tuple[str, str], LossCount] = field(default_factory=dict)  # (node, kind)
    evicted_batches: int = 0
    evicted_batch_bytes: int = 0  # encoded batch bytes; their frames are also in `evicted`
    duplicates: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (node, kind)

    @property
    def evicted_frames(self) -> int:
        """All frames evicted, every node and kind."""
        return sum(loss.frames for loss in self.evicted.values())

    @property
    def duplicate_frames(self) -> int:
        """All duplicate frames dropped, every node and kind."""
        return sum(self.duplicates.values())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form; per-node counters nest as {node: {kind: {...}}}."""
        per_node: dict[str, dict[str, dict[str, int]]] = {}
        for (node, kind), loss in self.evicted.items():
            entry = per_node.setdefault(node, {}).setdefault(kind, {})
            entry["evicted_frames"] = loss.frames
            entry["evicted_bytes"] = loss.bytes
        for (node, kind), count in self.duplicates.items():
            per_node.setdefault(node, {}).setdefault(kind, {})["duplicate_frames"] = count
        return {
            "max_bytes": self.max_bytes,
            "used_bytes": self.used_bytes,
            "pending_frames": self.pending_frames,
            "pending_bytes": self.pending_bytes,
            "batched_frames": self.batched_frames,
            "batched_bytes": self.batched_bytes,
            "unacked_batches": self.unacked_batches,
            "unacked_batch_bytes": self.unacked_batch_bytes,
            "oldest_age_ms": self.oldest_age_ms,
            "evicted_frames": self.evicted_frames,
            "evicted_batches": self.evicted_batches,
            "evicted_batch_bytes": self.evicted_batch_bytes,
            "duplicate_frames": self.duplicate_frames,
            "nodes": per_node,
        }
