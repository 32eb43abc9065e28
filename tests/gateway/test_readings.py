"""gateway/readings_convert.py convert_data: the one-pass conversion with a frame's ticks mapped in one step
(TickClock.frame_base/settle_frame) gives exactly what the reading-by-reading conversion gave:
the same readings, the same `bad` and unknown sids, the same error, and the clock left in the
same state (so the next frame maps the same too)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.node_session import TickClock
from gateway.readings import (
    Converted,
    RECENT_RECORDS,
    Event,
    FrameReadings,
    Measurement,
    ReadingsError,
    StreamInfo,
    pack_converted,
    pack_readings,
    _RecentRecords,
    unpack_readings,
)
from gateway.readings_convert import convert_data
from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, MAX_FAULT_CODE
from protocols.link_data import data_events, data_samples
from protocols.ticks import TICKS_PERIOD, TickUnwrapper, ticks_add

HALF = TICKS_PERIOD // 2
UTC0 = 1_700_000_000_000
STREAMS = {
    0: StreamInfo("pm1/pm2_5", "ug/m3", "gauge", 1),
    1: StreamInfo("loop/3/occupancy", "%", "gauge", 2),
    2: StreamInfo("node/heap_free", "B", "gauge", None),
    5: StreamInfo("air/co2/co2_ppm", "ppm", "gauge", 0),
}


def reference_convert(message: Any, streams: Any, to_utc: Any) -> Converted:
    """convert_data as it was before the one-pass version (commit 6d1b744), reading by reading."""
    max_utc = 2**53
    t0 = message["t0"]
    measurements: list[Measurement] = []
    events: list[Event] = []
    unknown: set[int] = set()
    bad = 0

    def number(value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return not (isinstance(value, float) and not math.isfinite(value))

    for sid, dt, value, fault, _detail in data_samples(message):
        info = streams.get(sid)
        if info is None:
            unknown.add(sid)
            continue
        if not isinstance(dt, int) or isinstance(dt, bool):
            bad += 1
            continue
        utc = to_utc(ticks_add(t0, dt))
        if not 0 <= utc < max_utc:
            bad += 1
            continue
        if fault is not None:
            if isinstance(fault, bool) or not isinstance(fault, int) or not (
                1 <= fault <= MAX_FAULT_CODE
            ):
                bad += 1
                continue
            measurements.append(Measurement(info.name, info.unit, info.kind, info.dec, utc,
                                            None, fault))
        elif number(value):
            measurements.append(Measurement(info.name, info.unit, info.kind, info.dec, utc,
                                            value, None))
        else:
            bad += 1
    for dt, code, param in data_events(message):
        if (not isinstance(dt, int) or isinstance(dt, bool)
                or not isinstance(code, int) or isinstance(code, bool)
                or not isinstance(param, int) or isinstance(param, bool)
                or not 0 <= code <= MAX_EVENT_CODE or not 0 <= param <= MAX_EVENT_PARAM):
            bad += 1
            continue
        utc = to_utc(ticks_add(t0, dt))
        if not 0 <= utc < max_utc:
            bad += 1
            continue
        events.append(Event(utc, code, param))
    return Converted(measurements, events, unknown, bad)


def state(clock: TickClock) -> tuple[Any, ...]:
    u = clock._unwrap  # noqa: SLF001 - the state the next frame is mapped with
    return (u._last_raw, u._last_unwrapped, tuple(clock._candidates))  # noqa: SLF001


def same(a: Any, b: Any) -> bool:
    """Equal, with nan == nan and types compared (1 and 1.0 and True are not the same reading)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


# Ticks near the edges that matter: 0, the wrap, and half a period from the newest tick.
edge_ticks = st.one_of(
    st.integers(0, TICKS_PERIOD - 1),
    st.integers(0, 3000),
    st.integers(TICKS_PERIOD - 3000, TICKS_PERIOD - 1),
    st.integers(HALF - 3000, HALF + 3000),
)
dts = st.one_of(
    st.integers(0, 2000),
    st.integers(-2000, 2000),
    st.integers(-HALF - 10, HALF + 10),
    st.sampled_from([HALF - 1, HALF, -HALF, -HALF - 1, 2**53, -(2**60), 2**70]),
    st.sampled_from([True, False, 1.0, None, "7"]),
)
values = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([True, False, None, "x", b"\x01", [1]]),
)
codes = st.one_of(st.integers(-2, 70_000), st.sampled_from([True, None, 2.0, "1"]))
sids = st.one_of(st.sampled_from([0, 1, 2, 5]), st.integers(0, 7), st.sampled_from([True, 1.0]))


@st.composite
def messages(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(0, 12))
    m: list[Any] = []
    for _ in range(n):
        m += [draw(sids), draw(dts), draw(values)]
    message: dict[str, Any] = {"tick": draw(edge_ticks), "t0": draw(edge_ticks), "m": m}
    if n and draw(st.booleans()):
        f: list[Any] = []
        for _ in range(draw(st.integers(1, 3))):
            f += [draw(st.integers(0, n)), draw(codes), draw(st.integers(0, 3))]
        message["f"] = f
    if draw(st.booleans()):
        e: list[Any] = []
        for _ in range(draw(st.integers(1, 6))):
            e += [draw(dts), draw(codes), draw(st.one_of(st.integers(-1, 300), st.just(True)))]
        message["e"] = e
    if draw(st.integers(0, 20)) == 0:
        message["m"] = m + [0]  # a ragged flat list, as no decoded message has it
    return message


@st.composite
def clean_messages(draw: Any) -> dict[str, Any]:
    """Frames as nodes send them: known streams, int times, finite numbers, valid events."""
    m: list[Any] = []
    for _ in range(draw(st.integers(0, 12))):
        m += [draw(st.sampled_from([0, 1, 2, 5])), draw(st.integers(-50, 2000)),
              draw(st.one_of(st.integers(-(2**40), 2**40), st.floats(-1e9, 1e9)))]
    message: dict[str, Any] = {"tick": draw(edge_ticks), "t0": draw(edge_ticks), "m": m}
    if draw(st.booleans()):
        e: list[Any] = []
        for _ in range(draw(st.integers(1, 6))):
            e += [draw(st.integers(0, 2000)), draw(st.integers(0, 255)),
                  draw(st.integers(0, 255))]
        message["e"] = e
    return message


def run(clock: TickClock, message: dict[str, Any], fast: bool) -> Any:
    try:  # (Converted.plain is new: the reference has no opinion on it)
        if fast:
            return tuple(convert_data(message, STREAMS, clock)[:4])
        return tuple(reference_convert(message, STREAMS, clock.to_utc)[:4])
    except Exception as error:  # noqa: BLE001 - the same error is part of the same answer
        return type(error)


@settings(max_examples=400, deadline=None)
@given(first=edge_ticks, frames=st.lists(st.tuples(st.one_of(messages(), clean_messages()),
                                                   st.booleans(), edge_ticks),
                                         min_size=1, max_size=5))
def test_one_pass_conversion_equals_reading_by_reading(first: int, frames: list[Any]) -> None:
    fast, slow = TickClock(), TickClock()
    for clock in (fast, slow):
        clock.observe(first, UTC0)
    for message, observe, tick in frames:
        if observe:  # as NodeSession does: the frame's own tick first
            for clock in (fast, slow):
                clock.observe(tick, UTC0 + 5)
        got, want = run(fast, message, True), run(slow, message, False)
        assert same(got, want)
        assert state(fast) == state(slow)
        probe = ticks_add(first, 1000)
        assert fast.to_utc(probe) == slow.to_utc(probe)


def test_a_clock_that_never_observed_raises_as_before() -> None:
    message = {"tick": 5, "t0": 5, "m": [0, 0, 1]}
    assert run(TickClock(), message, True) is ValueError
    assert run(TickClock(), message, False) is ValueError
    # ... and with nothing to map, nothing to raise.
    assert convert_data({"tick": 5, "t0": 5, "m": []}, STREAMS, TickClock())[:4] == (
        [], [], set(), 0)


def test_a_frame_across_the_half_period_falls_back_tick_by_tick() -> None:
    clock = TickClock()
    clock.observe(0, UTC0)
    # dt reaching half a period ahead of the newest tick: the fast mapping cannot promise it.
    message = {"tick": 0, "t0": 0, "m": [0, 10, 5, 0, HALF - 1, 6, 0, HALF + 1, 7]}
    slow = TickClock()
    slow.observe(0, UTC0)
    assert convert_data(message, STREAMS, clock)[:4] == reference_convert(message, STREAMS,
                                                                          slow.to_utc)[:4]
    assert state(clock) == state(slow)


@given(first=st.integers(0, TICKS_PERIOD - 1),
       ticks=st.lists(st.integers(-(2**31), 2**31), max_size=6),
       t0=edge_ticks, lo=st.integers(-HALF, HALF), span=st.integers(0, HALF))
def test_settle_matches_unwrapping_every_tick(first: int, ticks: list[int], t0: int, lo: int,
                                              span: int) -> None:
    clock = TickClock()
    reference = TickUnwrapper()
    for tick in [first, *ticks]:
        clock.observe(tick, UTC0)
        reference.unwrap(tick)
    base = clock.frame_base(t0)
    assert base is not None
    before = state(clock)
    if clock.settle_frame(t0, lo, lo + span):
        # Every tick of the range maps to base + dt; unwrapping the extremes (any order) and
        # anything between leaves the reference where the clock is now.
        offset = clock.offset_ms
        assert offset is not None
        for dt in (lo + span, lo, lo + span // 2):
            assert reference.unwrap(ticks_add(t0, dt)) + offset == base + dt
        assert (reference._last_raw, reference._last_unwrapped) == state(clock)[:2]  # noqa: SLF001
    else:
        assert state(clock) == before


def test_recent_records_come_back_equal_and_only_when_plain() -> None:
    clock = TickClock()
    clock.observe(100, UTC0)
    message = {"tick": 100, "t0": 90, "m": [0, 0, 215, 2, 5, 1.5], "e": [3, 82, 3]}
    converted = convert_data(message, STREAMS, clock)
    assert converted.plain
    payload = pack_readings("n", 7, converted.measurements, converted.events, plain=True)
    assert RECENT_RECORDS.take(payload) is not None  # remembered ...
    RECENT_RECORDS.add(payload, unpack_readings(payload))
    fresh = unpack_readings(payload)  # ... handed back once, then decoded
    decoded = unpack_readings(payload)
    assert fresh == decoded == ("n", 7, converted.measurements, converted.events)
    assert [type(v) for m in fresh.measurements for v in m] == [
        type(v) for m in decoded.measurements for v in m]
    # A table with a str subclass in it: not plain, never remembered (decoding gives a str).
    class Name(str):
        pass
    odd = {0: StreamInfo(Name("x/y"), "", "gauge", None)}
    converted = convert_data({"tick": 100, "t0": 90, "m": [0, 0, 1]}, odd, clock)
    assert not converted.plain
    payload = pack_readings("n", 7, converted.measurements, (), plain=converted.plain)
    assert RECENT_RECORDS.take(payload) is None
    assert type(unpack_readings(payload).measurements[0].stream) is str


def test_recent_records_are_bounded_oldest_first() -> None:
    recent = _RecentRecords(max_readings=5)
    rows = [Measurement("a/b", "", "gauge", None, UTC0 + i, i, None) for i in range(3)]
    for i in range(3):
        recent.add(bytes([i]), FrameReadings("n", 1, rows, []))
    assert recent.take(b"\x00") is None  # 9 readings > 5: the oldest went
    assert recent.take(b"\x01") is None
    assert recent.take(b"\x02") == ("n", 1, rows, [])
    assert recent.take(b"\x02") is None  # taken once


@settings(max_examples=300, deadline=None)
@given(first=edge_ticks, message=st.one_of(messages(), clean_messages()),
       node=st.sampled_from(["n", "cabinet-1"]),
       boot=st.integers(0, 2**32 - 1))
def test_columns_records_read_back_as_the_readings(first: int, message: dict[str, Any],
                                                   node: str, boot: int) -> None:
    clock = TickClock()
    clock.observe(first, UTC0)
    try:
        converted = convert_data(message, STREAMS, clock)
    except Exception:  # noqa: BLE001 - a malformed message: nothing to store
        return
    m_payload, e_payload = pack_converted(node, boot, converted)
    RECENT_RECORDS.clear()  # decode them, as after a restart
    if converted.measurements:
        assert m_payload is not None
        assert same(tuple(unpack_readings(m_payload)), (node, boot, converted.measurements, []))
        assert same(tuple(unpack_readings(m_payload)), tuple(unpack_readings(
            pack_readings(node, boot, converted.measurements, ()))))
    else:
        assert m_payload is None
    if converted.events:
        assert e_payload is not None
        assert same(tuple(unpack_readings(e_payload)), (node, boot, [], converted.events))
    else:
        assert e_payload is None
    if converted.columns is not None:  # a clean frame: stored in columns, a third the bytes
        assert all(p is None or msgpack.unpackb(p, strict_map_key=False)[0] == 2 for p in (m_payload, e_payload))


def test_a_clean_frame_is_stored_in_columns_and_a_faulted_one_as_arrays() -> None:
    clock = TickClock()
    clock.observe(100, UTC0)
    clean = convert_data({"tick": 100, "t0": 90, "m": [0, 0, 215, 2, 5, 1.5]}, STREAMS, clock)
    faulted = convert_data({"tick": 100, "t0": 90, "m": [0, 0, None, 2, 5, 1.5],
                            "f": [0, 3, 0]}, STREAMS, clock)
    assert clean.columns is not None and faulted.columns is None
    assert msgpack.unpackb(pack_converted("n", 1, clean)[0], strict_map_key=False)[0] == 2
    assert msgpack.unpackb(pack_converted("n", 1, faulted)[0])[0] == 1


def test_a_columns_record_that_does_not_add_up_is_not_readings() -> None:
    bad = msgpack.packb([2, "n", 1, UTC0, {0: ["a/b", "", "gauge", None]}, [0, 0], [1], [5, 6],
                         [], [], []])
    with pytest.raises(ReadingsError):
        unpack_readings(bad)
    unknown_sid = msgpack.packb([2, "n", 1, UTC0, {}, [0], [1], [5], [], [], []])
    with pytest.raises(ReadingsError):
        unpack_readings(unknown_sid)


def test_spool_records_pack_namedtuples_as_before() -> None:
    ms = [Measurement("a/b", "u", "gauge", 1, UTC0, 1.5, None),
          Measurement("a/c", "", "counter", None, UTC0 + 1, None, 3)]
    es = [Event(UTC0, 82, 3)]
    payload = pack_readings("n", 7, ms, es)
    assert payload == pack_readings("n", 7, [list(m) for m in ms], (list(e) for e in es))
    assert unpack_readings(payload) == ("n", 7, ms, es)
