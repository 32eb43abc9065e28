"""The batcher on a real spool file, driven by explicit times: when groups fall due, how they are
split, deadband and heartbeat, the encodings, health, and frames a previous run left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.batcher import Batcher, BatcherSettings
from gateway.config import StreamPolicy
from gateway.node_session import EVENT_BOOT_OFFSET, StoredFrame
from gateway.readings import Event, Measurement, pack_readings
from gateway.spool_async import AsyncSpool
from gateway.spool_types import SealedBatch
from gateway.topics import GatewayTopics
from protocols.batch_cnb1 import decode_batch

TOPICS = GatewayTopics("site", "gw")
T0 = 1_800_000_000_000


def m(stream: str, t: int, value: Any, fault: int | None = None, dec: int | None = 1
      ) -> Measurement:
    return Measurement(stream, "u", "gauge", dec, T0 + t, value, fault)


class Fixture:
    def __init__(self, spool: AsyncSpool) -> None:
        self.spool = spool
        self.seq = 0
        self.sealed: list[SealedBatch] = []
        # NodeSession tells the batcher each events frame's oldest event time; False exercises
        # the read-back from the spool that frames noted without it take.
        self.tell_event_time = True

    def batcher(self, **settings: Any) -> Batcher:
        policy = settings.pop("policy", lambda node, stream: None)
        return Batcher(self.spool, TOPICS, settings=BatcherSettings(**settings), policy=policy,
                       on_sealed=self.sealed.append)

    async def add(self, batcher: Batcher | None, *, node: str = "n", boot: int = 7,
                  measurements: list[Measurement] = (), events: list[Event] = (),
                  received: int = 0) -> None:
        """Spool one frame's records the way NodeSession does and tell the batcher."""
        self.seq += 1
        for kind, key, ms, es in (("m", boot, measurements, ()),
                                  ("e", EVENT_BOOT_OFFSET + boot, (), events)):
            if not ms and not es:
                continue
            assert await self.spool.add_frame(node, key, self.seq, kind,
                                              pack_readings(node, boot, ms, es), T0 + received)
            if batcher is not None:
                oldest = min(e.utc_ms for e in es) if es and self.tell_event_time else None
                batcher.note(StoredFrame(node, kind, T0 + received, len(ms) + len(es), oldest))


@pytest.fixture
async def fx(tmp_path: Path) -> AsyncIterator[Fixture]:
    async with AsyncSpool(tmp_path / "spool.sqlite", max_bytes=1 << 24) as spool:
        await spool.next_gateway_boot()
        yield Fixture(spool)


def values(batch: SealedBatch) -> list[tuple[str, int, Any, Any]]:
    return [(x["stream"], x["t"] - T0, x["value"], x["fault"])
            for x in decode_batch(batch.payload)["measurements"]]


async def test_events_wait_their_window_and_measurements_their_interval(fx: Fixture) -> None:
    b = fx.batcher(event_window_ms=100, measurement_interval_s=10)
    await fx.add(b, measurements=[m("a/x", 0, 1.5)], events=[Event(T0 + 3, 82, 4)])
    assert b.next_due_ms() == T0 + 100
    assert await b.flush_due(T0 + 99) == []
    (events,) = await b.flush_due(T0 + 100)
    assert events.topic == "citynerve/v1/site/gw/n/e"
    decoded = decode_batch(events.payload)
    assert decoded["events"] == [{"t": T0 + 3, "code": 82, "name": "detector_on", "param": 4}]
    assert decoded["measurements"] == [] and decoded["node_boot"] == 7
    assert b.next_due_ms() == T0 + 10_000
    assert await b.flush_due(T0 + 9_999) == []
    (measurements,) = await b.flush_due(T0 + 10_000)
    assert measurements.topic == "citynerve/v1/site/gw/n/m"
    assert values(measurements) == [("a/x", 0, 1.5, None)]
    assert b.next_due_ms() is None
    assert [s.batch_id for s in fx.sealed] == [events.batch_id, measurements.batch_id]
    assert await fx.spool.unacked_batches() == fx.sealed  # byte for byte, as sealed


async def test_a_full_group_goes_at_once_split_per_boot_and_size(fx: Fixture) -> None:
    b = fx.batcher(max_readings=5, measurement_interval_s=60)
    for i in range(3):
        await fx.add(b, measurements=[m("a/x", i, i), m("a/y", i, i)], received=i)
    await fx.add(b, boot=8, measurements=[m("a/x", 10, 99)], received=3)
    assert b.next_due_ms() == T0  # 7 readings >= 5: due now
    sealed = await b.flush_due(T0)
    assert [(decode_batch(s.payload)["node_boot"], len(values(s))) for s in sealed] == [
        (7, 4), (7, 2), (8, 1)]
    assert [s.batch_id.seq for s in sealed] == [0, 1, 2]
    assert await fx.spool.pending_frames() == []


async def test_deadband_and_heartbeat_leave_out_readings_but_never_faults(fx: Fixture) -> None:
    policies = {"a/x": StreamPolicy(deadband=1.0, heartbeat_s=60),
                "a/y": StreamPolicy(deadband_pct=10)}
    b = fx.batcher(policy=lambda node, stream: policies.get(stream))
    await fx.add(b, measurements=[
        m("a/x", 0, 10.0), m("a/x", 1, 10.5), m("a/x", 2, 11.2), m("a/x", 3, 11.3),
        m("a/x", 4, None, fault=1), m("a/x", 5, 11.4), m("a/x", 61_000, 11.5),
        m("a/x", 62_000, 11.6),
        m("a/y", 0, 100, dec=0), m("a/y", 1, 105, dec=0), m("a/y", 2, 111, dec=0),
        m("a/z", 0, 5.0), m("a/z", 1, 5.0)])
    (sealed,) = await b.flush_all()
    assert values(sealed) == [
        ("a/x", 0, 10.0, None), ("a/x", 2, 11.2, None), ("a/x", 4, None, "timeout"),
        ("a/x", 5, 11.4, None), ("a/x", 61_000, 11.5, None),
        ("a/y", 0, 100, None), ("a/y", 2, 111, None),
        ("a/z", 0, 5.0, None), ("a/z", 1, 5.0, None)]
    assert b.counters.filtered == 4
    # A batch whose every reading is inside the deadband is sealed and dropped, not published.
    await fx.add(b, measurements=[m("a/x", 62_001, 11.7), m("a/y", 3, 112, dec=0)])
    assert await b.flush_all() == []
    assert b.counters.unpublished_batches == 1
    assert await fx.spool.pending_frames() == [] and len(await fx.spool.unacked_batches()) == 1


@pytest.mark.parametrize(("settings", "codec"), [
    ({}, "deflate-dict"), ({"codec": "deflate-dict"}, "deflate-dict"), ({"codec": "zlib"}, "zlib"),
    ({"codec": "zstd"}, "zstd"), ({"codec": "none"}, "none"),
    ({"batch_format": "json"}, "json")])
async def test_encodings(fx: Fixture, settings: dict[str, str], codec: str) -> None:
    b = fx.batcher(**settings)
    await fx.add(b, measurements=[m("a/x", i, 20 + i % 3) for i in range(200)])
    (sealed,) = await b.flush_all()
    if codec == "json":
        decoded = json.loads(sealed.payload)
    else:
        decoded = decode_batch(sealed.payload)
    assert decoded["codec"] == codec
    assert [x["value"] for x in decoded["measurements"]] == [20 + i % 3 for i in range(200)]
    assert (decoded["gateway_boot"], decoded["seq"]) == tuple(sealed.batch_id)


async def test_a_lone_event_goes_uncompressed_when_zlib_would_grow_it(fx: Fixture) -> None:
    b = fx.batcher(codec="zlib")
    await fx.add(b, events=[Event(T0, 1, 2)])
    (sealed,) = await b.flush_all()
    assert decode_batch(sealed.payload)["codec"] == "none"


async def test_health_frames_go_out_one_each_as_stored(fx: Fixture) -> None:
    b = fx.batcher()
    for n in range(2):
        payload = json.dumps({"source": "node", "n": n}).encode()
        await fx.spool.add_frame("n", 7, 50 + n, "h", payload, T0)
        b.note(StoredFrame("n", "h", T0, 0))
    assert b.next_due_ms() == T0
    sealed = await b.flush_due(T0)
    assert [(s.topic, json.loads(s.payload)["n"]) for s in sealed] == [
        ("citynerve/v1/site/gw/n/health", 0), ("citynerve/v1/site/gw/n/health", 1)]


async def test_frames_a_previous_run_left_are_sealed_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    async with AsyncSpool(path, max_bytes=1 << 24) as spool:
        await Fixture(spool).add(None, measurements=[m("a/x", 0, 1.0)],
                                 events=[Event(T0, 82, 1)], received=5)
    async with AsyncSpool(path, max_bytes=1 << 24) as spool:
        await spool.next_gateway_boot()
        b = Fixture(spool).batcher(event_window_ms=100)
        assert await b.load_pending() == 2
        assert b.next_due_ms() == T0 + 100  # from the event's own time, read as it loads
        (events,) = await b.flush_due(T0 + 100)  # the event happened at T0
        assert events.topic.endswith("/e")
        (measurements,) = await b.flush_due(T0 + 10_005)
        assert measurements.topic.endswith("/m")


async def test_run_seals_groups_as_they_fall_due(fx: Fixture) -> None:
    b = fx.batcher(event_window_ms=1)
    task = asyncio.create_task(b.run(clock=lambda: T0 + 1_000))
    try:
        await fx.add(b, events=[Event(T0, 82, 1)])
        async with asyncio.timeout(10):
            while not fx.sealed:
                await asyncio.sleep(0.01)
        assert fx.sealed[0].topic.endswith("/e")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("told", [True, False], ids=["time-told", "time-read-back"])
async def test_the_event_window_counts_from_the_events_own_time(fx: Fixture, told: bool) -> None:
    fx.tell_event_time = told
    b = fx.batcher(event_window_ms=100)
    # Happened at T0, arrived 70 ms later (debounce, link, spool): due at T0 + 100, not T0 + 170.
    await fx.add(b, events=[Event(T0 + 40, 81, 1), Event(T0, 82, 1)], received=70)
    assert await b.flush_due(T0 + 99) == []
    assert b.next_due_ms() == T0 + 100
    # A later event arriving inside the window goes in the same batch.
    await fx.add(b, events=[Event(T0 + 90, 1, 2)], received=95)
    (sealed,) = await b.flush_due(T0 + 100)
    assert [e["t"] - T0 for e in decode_batch(sealed.payload)["events"]] == [0, 40, 90]
    # An older event in a later frame (a slower driver of the same node) brings the batch forward.
    await fx.add(b, events=[Event(T0 + 150, 1, 2)], received=160)
    assert await b.flush_due(T0 + 170) == [] and b.next_due_ms() == T0 + 250
    await fx.add(b, events=[Event(T0 + 120, 82, 1)], received=195)
    assert await b.flush_due(T0 + 219) == []
    assert b.next_due_ms() == T0 + 220
    (sealed,) = await b.flush_due(T0 + 220)
    assert [e["t"] - T0 for e in decode_batch(sealed.payload)["events"]] == [120, 150]
    # An event already older than the window when it arrives (a resend) goes at once.
    await fx.add(b, events=[Event(T0 + 300, 82, 3)], received=450)
    assert len(await b.flush_due(T0 + 450)) == 1
    # A node clock ahead of the gateway's cannot hold an event back: the arrival bounds it.
    await fx.add(b, events=[Event(T0 + 5_000, 82, 4)], received=500)
    assert await b.flush_due(T0 + 599) == []
    assert len(await b.flush_due(T0 + 600)) == 1
    # A backlog (events a second or more old on arrival) batches by arrival, as a burst.
    await fx.add(b, events=[Event(T0 + 600, 82, 5)], received=1_700)
    await fx.add(b, events=[Event(T0 + 610, 81, 5)], received=1_710)
    assert await b.flush_due(T0 + 1_799) == []
    (sealed,) = await b.flush_due(T0 + 1_800)
    assert len(decode_batch(sealed.payload)["events"]) == 2
    assert b.next_due_ms() is None


async def test_a_failed_seal_of_old_events_is_retried_later_not_at_once(
        fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.spool_errors import SpoolError

    b = fx.batcher(event_window_ms=100)
    seal = fx.spool.seal_batch
    failures = [SpoolError("spool.sqlite", "the disk is full")]

    async def failing_seal(*args: Any, **kwargs: Any) -> SealedBatch:
        if failures:
            raise failures.pop()
        return await seal(*args, **kwargs)

    monkeypatch.setattr(fx.spool, "seal_batch", failing_seal)
    await fx.add(b, events=[Event(T0, 82, 1)], received=500)
    assert await b.flush_due(T0 + 500) == []  # failed: its events are old, but no hot loop
    assert b.counters.seal_failures == 1
    assert await b.flush_due(T0 + 1_499) == []
    assert b.next_due_ms() >= T0 + 1_500  # a second on, at the earliest
    (sealed,) = await b.flush_due(b.next_due_ms())
    assert decode_batch(sealed.payload)["events"][0]["t"] == T0
