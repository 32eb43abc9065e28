"""NodeSession on a real spool file: HELLO and DATA in, UTC readings spooled, the cumulative ACK out.
Arrival times are given explicitly, so the tick mapping is checked to the millisecond."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.node_session import EVENT_BOOT_OFFSET, NodeSession, StoredFrame, TickClock
from gateway.readings import Event, Measurement, unpack_readings
from gateway.spool_async import AsyncSpool
from protocols.link_frame import DATA, HEALTH, HELLO, RESULT, LinkFrame
from protocols.link_messages import encode_message
from protocols.ticks import TICKS_PERIOD, ticks_add

NODE = "air"
BOOT = 0xCAFE01
STREAMS = [[0, "pm1/pm2_5", "ug/m3", "gauge", 1], [1, "pm1/pm10", "ug/m3", "gauge", 0]]
UTC0 = 1_800_000_000_000  # arrival time of the first frame
TICK0 = 5_000


def hello(seq: int, tick: int, *, boot: int = BOOT, lo: int | None = 1,
          streams: list[list[Any]] = STREAMS, node: str = NODE) -> LinkFrame:
    # lo: every node message carries it; it is how the gateway learns seqs start at 1.
    message: dict[str, Any] = {"node": node, "fw": "1.0", "cfg": "abc", "boot": boot,
                               "tick": tick, "streams": streams}
    if lo is not None:
        message["lo"] = lo
    return LinkFrame(HELLO, seq, encode_message(HELLO, message))


def data(seq: int, tick: int, *, t0: int | None = None, m: list[Any] = (), f: list[Any] = (),
         e: list[Any] = (), lo: int | None = None) -> LinkFrame:
    message: dict[str, Any] = {"tick": tick, "t0": tick if t0 is None else t0, "m": list(m)}
    if f:
        message["f"] = list(f)
    if e:
        message["e"] = list(e)
    if lo is not None:
        message["lo"] = lo
    return LinkFrame(DATA, seq, encode_message(DATA, message))


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[AsyncSpool]:
    async with AsyncSpool(tmp_path / "spool.sqlite", max_bytes=1 << 24) as s:
        yield s


class Recorder:
    def __init__(self) -> None:
        self.stored: list[StoredFrame] = []

    def __call__(self, stored: StoredFrame) -> None:
        self.stored.append(stored)


def session(spool: AsyncSpool, recorder: Recorder | None = None) -> NodeSession:
    return NodeSession(NODE, spool=spool, on_stored=recorder, now_ms=lambda: 42)


async def records(spool: AsyncSpool) -> list[tuple[str, int, int, Any]]:
    return [(f.kind, f.boot_id, f.seq, unpack_readings(f.payload) if f.kind != "h" else f.payload)
            for f in await spool.pending_frames()]


def test_the_clock_takes_the_smallest_delay_and_ignores_stale_resends() -> None:
    clock = TickClock(window_ms=60_000)
    clock.observe(1000, UTC0 + 30)  # 30 ms of delay
    clock.observe(2000, UTC0 + 1000 + 5)  # 5 ms: the best so far
    clock.observe(1500, UTC0 + 1500 + 900)  # a resend of an old frame: 900+ ms late
    assert clock.offset_ms == UTC0 - 1000 + 5
    assert clock.to_utc(2500) == UTC0 + 1500 + 5
    # Once the best candidate leaves the window, the best of the rest takes over (drift).
    clock.observe(70_000, UTC0 + 69_000 + 12)
    assert clock.offset_ms == UTC0 - 1000 + 12


def test_the_clock_maps_across_a_tick_wrap() -> None:
    clock = TickClock()
    near_end = TICKS_PERIOD - 100
    clock.observe(near_end, UTC0)
    after = ticks_add(near_end, 250)  # wrapped to 150
    assert after == 150
    assert clock.to_utc(after) == UTC0 + 250
    clock.observe(after, UTC0 + 250)
    assert clock.to_utc(ticks_add(near_end, 50)) == UTC0 + 50  # a late sample before the wrap


async def test_data_becomes_utc_readings_in_the_spool_and_is_acked(spool: AsyncSpool) -> None:
    recorder = Recorder()
    s = session(spool, recorder)
    ack = await s.handle([hello(1, TICK0, lo=1)], UTC0)
    assert ack == {"seq": 1, "utc": 42, "tick": TICK0}
    # Sent 1 s later, arriving with 7 ms of delay: the HELLO's 0 ms delay stays the mapping.
    frame = data(2, TICK0 + 1000, t0=TICK0 + 900,
                 m=[0, 10, 215, 1, 20, None], f=[1, 1, 0], e=[30, 82, 3], lo=2)
    ack = await s.handle([frame], UTC0 + 1007)
    assert ack == {"seq": 2, "utc": 42, "tick": TICK0 + 1000}
    assert await records(spool) == [
        ("m", BOOT, 2, (NODE, BOOT, [
            Measurement("pm1/pm2_5", "ug/m3", "gauge", 1, UTC0 + 910, 215, None),
            Measurement("pm1/pm10", "ug/m3", "gauge", 0, UTC0 + 920, None, 1)], [])),
        ("e", EVENT_BOOT_OFFSET + BOOT, 2, (NODE, BOOT, [], [Event(UTC0 + 930, 82, 3)])),
    ]
    assert [(r.kind, r.readings) for r in recorder.stored] == [("m", 2), ("e", 1)]
    assert s.counters.readings == 2 and s.counters.events == 1


async def test_serial_wire_time_is_taken_off_the_arrival(spool: AsyncSpool) -> None:
    s = session(spool)
    frame = hello(1, TICK0)
    wire_ms = int((len(frame.payload) + 12) * 1.0)  # 1 ms a character
    await s.handle([frame], UTC0 + wire_ms, ms_per_byte=1.0)
    assert s.boot is not None and s.boot.clock.to_utc(TICK0) == UTC0


async def test_resends_are_dropped_before_and_after_a_gateway_restart(spool: AsyncSpool) -> None:
    s = session(spool)
    await s.handle([hello(1, TICK0)], UTC0)
    first = data(2, TICK0 + 10, m=[0, 0, 1])
    assert (await s.handle([first], UTC0 + 10))["seq"] == 2
    ack = await s.handle([first, first], UTC0 + 20)  # resent twice in one read
    assert ack is not None and ack["seq"] == 2
    assert s.counters.duplicates == 2 and len(await spool.pending_frames()) == 1
    # A restarted gateway knows nothing but the spool; the node says HELLO again (a new seq,
    # lo = its oldest unacknowledged frame) and resends frame 2, which the spool recognises.
    restarted = session(spool)
    ack = await restarted.handle([hello(3, TICK0 + 100, lo=2), first], UTC0 + 100)
    assert ack == {"seq": 3, "utc": 42, "tick": TICK0 + 100}
    assert restarted.counters.duplicates == 1 and len(await spool.pending_frames()) == 1


async def test_the_ack_waits_for_a_gap_unless_lo_gives_it_up(spool: AsyncSpool) -> None:
    s = session(spool)
    assert (await s.handle([hello(1, TICK0, lo=1)], UTC0))["seq"] == 1
    # 2 was lost on the way: 3 is spooled but the cumulative ACK stays at 1.
    assert (await s.handle([data(3, TICK0 + 3, m=[0, 0, 3], lo=2)], UTC0 + 3))["seq"] == 1
    assert (await s.handle([data(2, TICK0 + 2, m=[0, 0, 2], lo=2)], UTC0 + 4))["seq"] == 3
    # 4..6 overflowed the node's ring: the next frame's lo says so and the ACK moves past them.
    assert (await s.handle([data(7, TICK0 + 7, m=[0, 0, 7], lo=7)], UTC0 + 7))["seq"] == 7
    assert [f.seq for f in await spool.pending_frames()] == [3, 2, 7]


async def test_a_reboot_never_mixes_ticks_or_seqs_with_the_previous_boot(
        spool: AsyncSpool) -> None:
    s = session(spool)
    await s.handle([hello(1, TICK0)], UTC0)
    await s.handle([data(2, TICK0 + 10, m=[0, 0, 1])], UTC0 + 10)
    # The node reboots 60 s later: ticks restart near 0, seqs at 1, a new stream table.
    other = [[0, "pm1/pm10", "ug/m3", "gauge", 0]]
    ack = await s.handle([hello(1, 20, boot=BOOT + 1, streams=other, lo=1)], UTC0 + 60_000)
    assert ack == {"seq": 1, "utc": 42, "tick": 20}
    ack = await s.handle([data(2, 30, m=[0, 0, 9], lo=2)], UTC0 + 60_010)
    assert ack == {"seq": 2, "utc": 42, "tick": 30}
    assert s.counters.reboots == 1
    new = [r for r in await records(spool) if r[1] == BOOT + 1]
    assert new == [("m", BOOT + 1, 2, (NODE, BOOT + 1, [
        Measurement("pm1/pm10", "ug/m3", "gauge", 0, UTC0 + 60_000 - 20 + 30, 9, None)], []))]


async def test_data_before_any_hello_is_held_back(spool: AsyncSpool) -> None:
    s = session(spool)
    assert await s.handle([data(5, TICK0, m=[0, 0, 1])], UTC0) is None
    assert s.counters.awaiting_hello == 1 and await spool.pending_frames() == []
    ack = await s.handle([hello(6, TICK0 + 5, lo=5), data(5, TICK0, m=[0, 0, 1], lo=5)],
                         UTC0 + 5)
    assert ack is not None and ack["seq"] == 6
    assert len(await spool.pending_frames()) == 1


async def test_a_stream_the_hello_did_not_declare_waits_for_the_next_hello(
        spool: AsyncSpool) -> None:
    s = session(spool)
    await s.handle([hello(1, TICK0, streams=STREAMS[:1])], UTC0)
    ack = await s.handle([data(2, TICK0 + 1, m=[1, 0, 5])], UTC0 + 1)
    assert ack is not None and ack["seq"] == 1  # not acknowledged: the node resends it
    assert s.counters.unknown_stream == 1 and await spool.pending_frames() == []
    ack = await s.handle([hello(3, TICK0 + 2, lo=2), data(2, TICK0 + 1, m=[1, 0, 5], lo=2)],
                         UTC0 + 2)
    assert ack is not None and ack["seq"] == 3
    assert [r[0] for r in await records(spool)] == ["m"]


async def test_malformed_readings_are_left_out_and_counted(spool: AsyncSpool) -> None:
    s = session(spool)
    await s.handle([hello(1, TICK0)], UTC0)
    # A string value, a fault code of 0 and an event code of 300: each left out, the rest kept.
    frame = data(2, TICK0, m=[0, 0, "x", 1, 0, None, 0, 1, 7], f=[1, 0, 0], e=[0, 300, 1])
    assert (await s.handle([frame], UTC0))["seq"] == 2
    assert s.counters.bad_readings == 3
    (kind, _boot, _seq, record), = await records(spool)
    assert record.measurements == [Measurement("pm1/pm2_5", "ug/m3", "gauge", 1, UTC0 + 1, 7, None)]


async def test_health_is_spooled_as_json_and_results_answer_commands(spool: AsyncSpool) -> None:
    s = session(spool)
    await s.handle([hello(1, TICK0)], UTC0)
    health = LinkFrame(HEALTH, 2, encode_message(HEALTH, {
        "tick": TICK0 + 5, "uptime_ms": 9, "heap_free": 100, "heap_min": 90,
        "dev": {"pm1": {"ok": 3}}, "loss": {"ring_overflow": 0}}))
    command_id, answer = s.new_command()
    result = LinkFrame(RESULT, 3, encode_message(RESULT, {"id": command_id, "ok": True,
                                                          "msg": "pong"}))
    ack = await s.handle([health, result], UTC0 + 5)
    assert ack is not None and ack["seq"] == 3
    assert (await answer)["msg"] == "pong"
    (frame,) = await spool.pending_frames()
    assert frame.kind == "h" and b'"heap_free":100' in frame.payload
    assert b'"utc_ms":%d' % (UTC0 + 5) in frame.payload


async def test_a_hello_from_another_node_is_refused(spool: AsyncSpool) -> None:
    s = session(spool)
    assert await s.handle([hello(1, TICK0, node="intruder")], UTC0) is None
    assert s.counters.wrong_node == 1 and s.boot is None
