"""DATA messages to UTC readings (gateway/readings.py holds the records they are stored as).

convert_data runs once for every DATA frame the gateway accepts, so it has two ways to the same
answer: reading by reading (any message, any `to_utc`), and for a frame as nodes send it, column
by column with the frame's ticks mapped in one step (TickClock.frame_base/settle_frame); tests/
gateway/test_readings.py holds them to the same readings, counts, errors and clock state.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.readings import Columns, Converted, Event, Measurement, StreamInfo
from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, MAX_FAULT_CODE
from protocols.ticks import ticks_add

__all__ = ["FrameClock", "convert_data"]

_MAX_UTC = 2**53  # what a cnb1 batch carries exactly
_new_tuple = tuple.__new__
_MEASUREMENT = itertools.repeat(Measurement)
_EVENT = itertools.repeat(Event)


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class FrameClock(Protocol):
    """A clock that maps one frame's ticks in one step (gateway/node_session.py TickClock)."""

    def to_utc(self, tick: int) -> int: ...

    def frame_base(self, t0: int) -> int | None: ...

    def settle_frame(self, t0: int, lo_dt: int, hi_dt: int) -> bool: ...


def convert_data(message: Mapping[str, Any], streams: Mapping[int, StreamInfo],
                 to_utc: Callable[[int], int] | FrameClock) -> Converted:
    """A DATA message's samples and events as UTC readings. `to_utc(raw tick)` maps a node tick
    of this boot to UTC ms; or pass the clock itself (a FrameClock, e.g. TickClock) and the
    frame's ticks are mapped in one step, to the same values. A sample whose value is neither a
    finite number nor faulted, a fault code outside 1..0xFFFF, an event code or parameter
    outside 0..255, or a time outside 0..2**53 ms is counted in `bad` and left out: it is
    malformed at the source."""
    t0 = message["t0"]
    clock = to_utc if hasattr(to_utc, "frame_base") else None
    if clock is not None:
        try:
            base = clock.frame_base(t0)  # type: ignore[union-attr]
            if base is not None:
                clean = _convert_clean(message, streams, base)
                converted, lo_dt, hi_dt = (
                    clean if clean is not None else _convert(message, streams, None, base))
                # The clock records the ticks that were mapped (as per-tick to_utc calls
                # would); when it cannot promise base + dt for all of them, or the message is
                # so malformed that it raises, go tick by tick: same answer, same error.
                if lo_dt is None or clock.settle_frame(  # type: ignore[union-attr]
                        t0, lo_dt, hi_dt):  # type: ignore[arg-type]
                    return converted
        except Exception:  # noqa: BLE001, S110 - raised again below, at the same reading
            pass
        return _convert(message, streams, clock.to_utc, 0)[0]  # type: ignore[union-attr]
    return _convert(message, streams, to_utc, 0)[0]  # type: ignore[arg-type]


def _convert_clean(message: Mapping[str, Any], streams: Mapping[int, StreamInfo], base: int
                   ) -> tuple[Converted, int | None, int | None] | None:
    """_convert(message, streams, None, base) for a frame as nodes send them (no faults, known
    streams, int times, finite int/float values, codes in range), column by column with no
    Python code per reading; None for any other frame (then _convert does it reading by
    reading). Returns the same readings: see tests/gateway/test_readings.py."""
    m = message["m"]
    if type(m) is not list or len(m) % 3 or (
            "f" in message and (type(message["f"]) is not list or message["f"])):
        return None
    e = message.get("e", ())
    if e != () and (type(e) is not list or len(e) % 3):
        return None
    lo = hi = None
    measurements: list[Measurement] = []
    sids: list[Any] = []
    dts: list[Any] = []
    values: list[Any] = []
    table: dict[Any, StreamInfo] = {}
    if m:
        sids = m[0::3]
        infos = list(map(streams.get, sids))
        dts, values = m[1::3], m[2::3]
        kinds = set(map(type, values))
        if (_ONE_STREAM_INFO != set(map(type, infos)) or _ONE_INT != set(map(type, dts))
                or not _NUMBERS.issuperset(kinds) or _ONE_INT != set(map(type, sids))):
            return None
        table = dict(zip(sids, infos))
        if float in kinds:
            try:
                total = sum(values)  # inf or nan when any value is (or, rarely, overflow)
            except OverflowError:
                return None
            if total - total != 0.0:
                return None
        lo, hi = min(dts), max(dts)
        if base + lo < 0 or base + hi >= _MAX_UTC:
            return None
        measurements = list(map(_new_tuple, _MEASUREMENT, map(
            tuple.__add__, infos, zip(map(base.__add__, dts), values, _NONES))))
    events: list[Event] = []
    event_dts: list[Any] = []
    codes: list[Any] = []
    params: list[Any] = []
    if e:
        codes, params = e[1::3], e[2::3]
        if (_ONE_INT != set(map(type, e)) or min(codes) < 0 or max(codes) > MAX_EVENT_CODE
                or min(params) < 0 or max(params) > MAX_EVENT_PARAM):
            return None
        event_dts = e[0::3]
        elo, ehi = min(event_dts), max(event_dts)
        if base + elo < 0 or base + ehi >= _MAX_UTC:
            return None
        lo = elo if lo is None else min(lo, elo)
        hi = ehi if hi is None else max(hi, ehi)
        events = list(map(_new_tuple, _EVENT, zip(map(base.__add__, event_dts), codes, params)))
    # Plain when the stream table's fields are (as a HELLO decodes them): see Converted.plain.
    plain = _PLAIN_FIELDS.issuperset(map(type, itertools.chain.from_iterable(streams.values())))
    columns = Columns(base, table, sids, dts, values, event_dts, codes, params) if plain else None
    return Converted(measurements, events, set(), 0, plain, columns), lo, hi


_ONE_STREAM_INFO = {StreamInfo}
_PLAIN_FIELDS = frozenset((str, int, type(None)))
_ONE_INT = {int}
_NUMBERS = frozenset((int, float))
_NONES = itertools.repeat(None)


def _convert(message: Mapping[str, Any], streams: Mapping[int, StreamInfo],
             to_utc: Callable[[int], int] | None, base: int
             ) -> tuple[Converted, int | None, int | None]:
    """convert_data with tick t0 + dt at `to_utc(ticks_add(t0, dt))`, or at base + dt when
    to_utc is None; also the lowest and highest dt mapped (None when none was)."""
    # One pass without a call per reading in the common case (ints, finite floats, known
    # streams): this runs for every reading the gateway receives. The order of the checks is
    # the order of the readings' fields, so the same readings are left out as ever.
    t0 = message["t0"]
    measurements: list[Measurement] = []
    events: list[Event] = []
    unknown: set[int] = set()
    bad = 0
    stray: list[int] = []  # dts mapped to UTC, then left out
    new = tuple.__new__
    heads: dict[Any, tuple[Any, ...] | None] = {}
    faults: dict[Any, Any] = {}
    f = message.get("f", ())
    for i in range(0, len(f), 3):
        index, code, _detail = f[i], f[i + 1], f[i + 2]
        faults[index] = code
    m = message["m"]
    for n in range(len(m) // 3):
        sid = m[3 * n]
        head = heads.get(sid, heads)
        if head is heads:
            info = streams.get(sid)
            head = heads[sid] = None if info is None else (info.name, info.unit, info.kind,
                                                           info.dec)
        if head is None:
            unknown.add(sid)
            continue
        dt = m[3 * n + 1]
        if type(dt) is not int and not _plain_int(dt):
            bad += 1
            continue
        utc = base + dt if to_utc is None else to_utc(ticks_add(t0, dt))
        if not 0 <= utc < _MAX_UTC:
            bad += 1
            stray.append(dt)
            continue
        fault = faults.get(n) if faults else None
        if fault is not None:
            if type(fault) is not int and not _plain_int(fault) or not (
                1 <= fault <= MAX_FAULT_CODE
            ):
                bad += 1
                stray.append(dt)
                continue
            measurements.append(new(Measurement, head + (utc, None, fault)))
            continue
        value = m[3 * n + 2]
        t = type(value)
        # x - x == 0.0 for a finite float only (inf and nan give nan)
        if t is int or (t is float and value - value == 0.0) or (
            t is not float and _number(value)
        ):
            measurements.append(new(Measurement, head + (utc, value, None)))
        else:
            bad += 1
            stray.append(dt)
    e = message.get("e", ())
    for i in range(0, len(e), 3):
        dt, code, param = e[i], e[i + 1], e[i + 2]
        if (type(dt) is not int and not _plain_int(dt)
                or type(code) is not int and not _plain_int(code)
                or type(param) is not int and not _plain_int(param)
                or not 0 <= code <= MAX_EVENT_CODE or not 0 <= param <= MAX_EVENT_PARAM):
            bad += 1
            continue
        utc = base + dt if to_utc is None else to_utc(ticks_add(t0, dt))
        if not 0 <= utc < _MAX_UTC:
            bad += 1
            stray.append(dt)
            continue
        events.append(new(Event, (utc, code, param)))
    converted = Converted(measurements, events, unknown, bad)
    if to_utc is not None:
        return converted, None, None
    if measurements:
        stray.append(min(map(_UTC_OF_M, measurements)) - base)
        stray.append(max(map(_UTC_OF_M, measurements)) - base)
    if events:
        stray.append(min(map(_UTC_OF_E, events)) - base)
        stray.append(max(map(_UTC_OF_E, events)) - base)
    if not stray:
        return converted, None, None
    return converted, min(stray), max(stray)


_UTC_OF_M = operator.itemgetter(4)
_UTC_OF_E = operator.itemgetter(0)
