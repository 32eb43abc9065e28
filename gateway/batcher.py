"""The batcher: spooled frames into sealed, encoded batches, one topic each (DESIGN.md "Batcher").

When. The batcher keeps an index of what is pending per (node, kind), fed by `note()` as frames are
committed (and by `load_pending()` for frames a previous run left). A group is due:

    events        ("e")  event_window_ms after its oldest event happened (default 100 ms): the
                         window counts from the event's own UTC time, so it is at once for an
                         event already that old when its frame arrives; a backlog (events
                         _BACKLOG_MS or more old on arrival) waits the window from its arrival
    measurements  ("m")  measurement_interval_s after its oldest frame arrived (default 10 s),
                         or at once when it holds batch_max_readings readings
    health        ("h")  at once; each node HEALTH frame is its own JSON message

Events: "an event reaches the broker within event_window_ms of when it happened, batched as late
as that allows". The node's own pipeline (debounce, link, spool: some 50-90 ms from a loop edge)
is part of the window rather than added to it, as it was when the window began at the frame's
arrival; events that arrive together still share a batch. note() is told each frame's oldest
event time (StoredFrame.oldest_event_ms, from the node session that converted it), and the group
keeps the oldest of all (a node's drivers reach the gateway with different delays: a loop edge's
event some 75 ms after its edge, a phase event some 10 ms after its poll, so a later frame may hold
an older event). A frame noted without it (a seal being retried) has its event times read back
from the spool, for the first _READ_FRAMES frames of a group; beyond those an event waits at most
the window from its group's first arrival. A node clock ahead of the gateway's
cannot hold an event back: the window never starts later than the oldest frame's arrival. Events
a second or more old when they arrive are a backlog (resent after an outage; or a feed whose
ticks map far into the past, as bench/gateway_throughput.py's do): their latency is lost already,
and sealing them at once would cut a burst into a batch per frame (1.5 ms of gateway CPU each,
+24 % CPU per reading in that bench), so they batch by arrival as before.

A due group is sealed whole: every pending frame of that node and kind, split into batches per
node boot and of at most batch_max_readings readings (a frame is never split).

What. Measurements pass the stream's deadband and heartbeat (gateway/config.py StreamPolicy;
default off: everything is published): a reading whose change from the last published value of
its stream is within the deadband is left out, unless heartbeat_s has passed since that one; a
fault is always published. The batch is encoded as cnb1 (protocols/batch_cnb1.py; "deflate-dict"
(the default) or "zlib": that codec, or none when it does not shrink the batch; "zstd" when the
zstandard package is installed; "none") or
in JSON mode, and sealed with spool.seal_batch under the spool's next batch id, on topic
.../{node}/m, /e or /health. A batch whose readings were all left out is sealed and acknowledged at
once, never published (its batch id is a gap). Deadband state lives in memory: after a restart the
first reading of every stream is published.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.config import StreamPolicy
from gateway.node_session import StoredFrame, utc_now_ms
from gateway.readings import FrameReadings, Measurement, ReadingsError, unpack_readings
from gateway.spool_async import AsyncSpool
from gateway.spool_errors import BatchError, SpoolError
from gateway.spool_types import Frame, SealedBatch
from gateway.topics import GatewayTopics
from protocols.batch_cnb1 import (
    CODEC_AUTO,
    CODEC_AUTO_DICT,
    CODEC_NONE,
    CODEC_ZSTD,
    Batch,
    codec_available,
    encode_batch,
    encode_batch_json,
)

__all__ = ["Batcher", "BatcherCounters", "BatcherSettings", "DeadbandFilter"]

log = logging.getLogger("gateway.batcher")
_STREAM = operator.attrgetter("stream")

_SEAL_ATTEMPTS = 3
_READ_FRAMES = 8  # event times are read for this many frames of a group (see the module doc)
_RETRY_MS = 1000
_BACKLOG_MS = 1000  # events this old on arrival batch by arrival (see the module doc)


@dataclass(frozen=True, kw_only=True)
class BatcherSettings:
    event_window_ms: int = 100
    measurement_interval_s: float = 10.0
    max_readings: int = 10_000
    batch_format: str = "cnb1"  # or "json"
    codec: str = "deflate-dict"  # "deflate-dict", "zlib", "zstd" or "none"


@dataclass
class BatcherCounters:
    batches: int = 0
    measurement_batches: int = 0
    event_batches: int = 0
    health_batches: int = 0
    readings: int = 0
    events: int = 0
    filtered: int = 0  # readings left out by deadband
    unpublished_batches: int = 0  # sealed and acknowledged at once: nothing left to publish
    bad_records: int = 0  # spool records that are not readings (dropped)
    seal_retries: int = 0
    seal_failures: int = 0  # seals that failed for good this time (retried later)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DeadbandFilter:
    """Per-stream deadband and heartbeat. `keep` stages its decisions; `commit` makes them the
    state once the batch they went into is sealed (a seal that fails leaves the state alone)."""

    def __init__(self, policy: Callable[[str, str], StreamPolicy | None]) -> None:
        self._policy_of = policy
        self._policies: dict[tuple[str, str], StreamPolicy | None] = {}
        self._last: dict[tuple[str, str], tuple[float | None, int]] = {}
        self._staged: dict[tuple[str, str], tuple[float | None, int]] = {}
        self._inactive: dict[str, set[str]] = {}  # per node: streams with no active policy

    def keep(self, node: str, m: Measurement) -> bool:
        key = (node, m.stream)
        if key not in self._policies:
            self._policies[key] = self._policy_of(node, m.stream)
        policy = self._policies[key]
        if policy is None or not policy.active:
            return True
        last = self._staged.get(key) or self._last.get(key)
        keep = True
        if m.fault is None and last is not None and last[0] is not None:
            last_value, last_ms = last
            silent = (policy.heartbeat_s is not None
                      and m.utc_ms - last_ms >= policy.heartbeat_s * 1000)
            threshold = max(policy.deadband or 0.0,
                            abs(last_value) * (policy.deadband_pct or 0.0) / 100.0)
            keep = silent or abs(float(m.value) - last_value) > threshold  # type: ignore[arg-type]
        if keep:
            self._staged[key] = (None if m.value is None else float(m.value), m.utc_ms)
        return keep

    def passes_all(self, node: str, measurements: list[Measurement]) -> bool:
        """True when no stream of `measurements` has an active policy: keep() would keep each
        and change nothing, so the caller may skip it."""
        known = self._inactive.setdefault(node, set())
        for stream in set(map(_STREAM, measurements)) - known:
            key = (node, stream)
            if key not in self._policies:
                self._policies[key] = self._policy_of(node, stream)
            policy = self._policies[key]
            if policy is not None and policy.active:
                return False
            known.add(stream)
        return True

    def commit(self) -> None:
        self._last.update(self._staged)
        self._staged.clear()

    def discard(self) -> None:
        self._staged.clear()


@dataclass
class _Group:
    first_ms: int  # the oldest frame's arrival
    frames: int = 0
    readings: int = 0
    event_ms: int | None = None  # events: the oldest event's own time, once read
    unread: bool = False  # events: a frame noted whose event times are not read yet
    not_before: int = 0  # after a failed seal: no retry before this


@dataclass
class _Chunk:
    node: str
    node_boot: int
    frames: list[Frame] = field(default_factory=list)
    records: list[FrameReadings] = field(default_factory=list)
    readings: int = 0


class Batcher:
    """Seals pending spool frames into batches; see the module doc. `on_sealed` hears of every
    batch to publish (the service wakes its publisher with it)."""

    def __init__(
        self,
        spool: AsyncSpool,
        topics: GatewayTopics,
        *,
        settings: BatcherSettings | None = None,
        policy: Callable[[str, str], StreamPolicy | None] = lambda node, stream: None,
        on_sealed: Callable[[SealedBatch], None] | None = None,
    ) -> None:
        self.spool = spool
        self.topics = topics
        self.settings = settings or BatcherSettings()
        self.on_sealed = on_sealed
        self.counters = BatcherCounters()
        self.filter = DeadbandFilter(policy)
        self._groups: dict[tuple[str, str], _Group] = {}
        self._wake = asyncio.Event()
        self._codec: Any = {"deflate-dict": CODEC_AUTO_DICT, "zlib": CODEC_AUTO, "none": CODEC_NONE,
                            "zstd": CODEC_ZSTD}[
            self.settings.codec
        ]
        if self._codec == CODEC_ZSTD and not codec_available(CODEC_ZSTD):
            log.warning("batcher codec=zstd unavailable: the zstandard package is not installed; "
                        "using zlib (pip install zstandard to get zstd)")
            self._codec = CODEC_AUTO

    # -- the index ---------------------------------------------------------------------------------

    def note(self, stored: StoredFrame) -> None:
        """A frame was committed to the spool (NodeSession's on_stored)."""
        key = (stored.node, stored.kind)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(stored.received_ms)
        group.first_ms = min(group.first_ms, stored.received_ms)
        if stored.oldest_event_ms is not None:
            if group.event_ms is None or stored.oldest_event_ms < group.event_ms:
                group.event_ms = stored.oldest_event_ms
        else:
            group.unread = group.unread or (stored.kind == "e" and group.frames < _READ_FRAMES)
        group.frames += 1
        group.readings += stored.readings
        self._wake.set()

    async def _read_event_times(self) -> None:
        """Learn the oldest event time of every event group with newly noted frames."""
        for key, group in list(self._groups.items()):
            if not group.unread:
                continue
            group.unread = False
            try:
                frames = await self.spool.pending_frames(node=key[0], kind="e")
            except SpoolError:
                continue  # the arrival still bounds the window
            for frame in frames:
                try:
                    events = unpack_readings(frame.payload).events
                except ReadingsError:
                    continue  # counted when sealed
                for e in events:
                    if group.event_ms is None or e.utc_ms < group.event_ms:
                        group.event_ms = e.utc_ms

    async def load_pending(self) -> int:
        """Index the frames a previous run left pending; returns how many."""
        frames = await self.spool.pending_frames()
        for frame in frames:
            readings = 0
            oldest_event_ms = None
            if frame.kind in ("m", "e"):
                try:
                    record = unpack_readings(frame.payload)
                    readings = len(record.measurements) + len(record.events)
                    if record.events:
                        oldest_event_ms = min(event.utc_ms for event in record.events)
                except ReadingsError:
                    pass
            self.note(StoredFrame(frame.node, frame.kind, frame.received_ms, readings,
                                  oldest_event_ms))
        return len(frames)

    def _due_ms(self, kind: str, group: _Group) -> int:
        if kind == "e":
            start = group.first_ms
            if group.event_ms is not None and 0 < start - group.event_ms < _BACKLOG_MS:
                start = group.event_ms
            return max(start + self.settings.event_window_ms, group.not_before)
        if kind == "m":
            if group.readings >= self.settings.max_readings:
                return group.first_ms
            return group.first_ms + int(self.settings.measurement_interval_s * 1000)
        return group.first_ms

    def next_due_ms(self) -> int | None:
        """When the next group is due (UTC ms), or None when nothing is pending."""
        dues = [self._due_ms(kind, g) for (_, kind), g in self._groups.items()]
        return min(dues) if dues else None

    # -- sealing -----------------------------------------------------------------------------------

    async def flush_due(self, now_ms: int) -> list[SealedBatch]:
        """Seal every group due at `now_ms`."""
        await self._read_event_times()
        due = [key for key, g in self._groups.items() if self._due_ms(key[1], g) <= now_ms]
        return await self._flush(due, now_ms)

    async def flush_all(self, now_ms: int | None = None) -> list[SealedBatch]:
        """Seal everything pending now (at shutdown)."""
        return await self._flush(list(self._groups), utc_now_ms() if now_ms is None else now_ms)

    async def _flush(self, keys: Iterable[tuple[str, str]], now_ms: int) -> list[SealedBatch]:
        sealed: list[SealedBatch] = []
        for key in keys:
            group = self._groups.pop(key, None)
            node, kind = key
            try:
                for attempt in range(_SEAL_ATTEMPTS):
                    try:
                        sealed += await self._seal_group(node, kind, now_ms)
                        break
                    except BatchError:
                        # A frame was evicted between reading and sealing: read again.
                        self.filter.discard()
                        self.counters.seal_retries += 1
                        if attempt == _SEAL_ATTEMPTS - 1:
                            raise
            except SpoolError as error:
                self.filter.discard()
                self.counters.seal_failures += 1
                log.error("batcher seal failed node=%s kind=%s error=%s; trying again later",
                          node, kind, error)
                # Due again a while from now, not at once: no hot loop on a full disk.
                self.note(StoredFrame(node, kind, now_ms + _RETRY_MS,
                                      group.readings if group else 0))
                self._groups[key].not_before = now_ms + _RETRY_MS
        return sealed

    async def _seal_group(self, node: str, kind: str, now_ms: int) -> list[SealedBatch]:
        frames = await self.spool.pending_frames(node=node, kind=kind)
        if not frames:
            return []
        if kind == "h":
            out = []
            for frame in frames:
                out.append(await self._seal([frame], self.topics.node_health(node),
                                            frame.payload, now_ms, published=True))
                self.counters.health_batches += 1
            return out
        out = []
        for chunk in self._chunks(node, frames):
            out += await self._seal_chunk(chunk, kind, now_ms)
        return out

    def _chunks(self, node: str, frames: list[Frame]) -> list[_Chunk]:
        chunks: list[_Chunk] = []
        current: dict[int, _Chunk] = {}
        bad = _Chunk(node, -1)
        for frame in frames:
            try:
                record = unpack_readings(frame.payload)
            except ReadingsError as error:
                self.counters.bad_records += 1
                log.error("batcher dropped a spool record that is not readings node=%s "
                          "frame=%d error=%s", node, frame.id, error)
                bad.frames.append(frame)
                continue
            size = len(record.measurements) + len(record.events)
            chunk = current.get(record.node_boot)
            if chunk is None or (chunk.readings and
                                 chunk.readings + size > self.settings.max_readings):
                chunk = current[record.node_boot] = _Chunk(record.node, record.node_boot)
                chunks.append(chunk)
            chunk.frames.append(frame)
            chunk.records.append(record)
            chunk.readings += size
        if bad.frames:
            chunks.append(bad)
        return chunks

    async def _seal_chunk(self, chunk: _Chunk, kind: str, now_ms: int) -> list[SealedBatch]:
        topic = self.topics.for_kind(chunk.node, kind)
        batch = Batch(chunk.node, max(chunk.node_boot, 0))
        for record in chunk.records:
            measurements = record.measurements
            if not self.filter.passes_all(chunk.node, measurements):
                measurements = [m for m in measurements if self.filter.keep(chunk.node, m)]
                self.counters.filtered += len(record.measurements) - len(measurements)
            # One call a record: Batch.add_readings does add_stream + add_measurement and
            # add_event for each reading, in this order, and hands back what they refused.
            for reading, error in batch.add_readings(measurements, record.events):
                self.counters.bad_records += 1
                if isinstance(reading, Measurement):
                    log.error("batcher dropped a reading node=%s stream=%s error=%s",
                              chunk.node, reading.stream, error)
                else:
                    log.error("batcher dropped an event node=%s error=%s", chunk.node, error)
        empty = len(batch) == 0
        batch_id = await self.spool.next_batch_id()
        if self.settings.batch_format == "json":
            payload = encode_batch_json(batch, batch_id.gateway_boot, batch_id.seq)
        else:
            payload = encode_batch(batch, batch_id.gateway_boot, batch_id.seq, self._codec)
        sealed = await self._seal(chunk.frames, topic, payload, now_ms, published=not empty,
                                  batch_id=batch_id)
        self.filter.commit()
        if not empty:
            self.counters.readings += batch.measurement_count
            self.counters.events += len(batch.event_times)
            if kind == "e":
                self.counters.event_batches += 1
            else:
                self.counters.measurement_batches += 1
        return [sealed] if not empty else []

    async def _seal(self, frames: list[Frame], topic: str, payload: bytes, now_ms: int, *,
                    published: bool, batch_id: Any = None) -> SealedBatch:
        if batch_id is None:
            batch_id = await self.spool.next_batch_id()
        sealed = await self.spool.seal_batch([f.id for f in frames], batch_id=batch_id,
                                             topic=topic, payload=payload, sealed_ms=now_ms)
        self.counters.batches += 1
        if not published:
            # Nothing in it for a consumer (all left out by deadband, or unreadable records).
            await self.spool.acknowledge(sealed.batch_id)
            self.counters.unpublished_batches += 1
        elif self.on_sealed is not None:
            self.on_sealed(sealed)
        return sealed

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, *, clock: Callable[[], int] = utc_now_ms) -> None:
        """Seal groups as they fall due, for ever (cancel to stop; then call flush_all)."""
        while True:
            self._wake.clear()
            await self._read_event_times()
            now = clock()
            due = self.next_due_ms()
            if due is not None and due <= now:
                await self.flush_due(now)
                continue
            timeout = None if due is None else (due - now) / 1000
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
