"""The spooled frame payloads: node data already converted to UTC readings, and health as JSON.

Each accepted DATA frame is converted at once, while its boot's stream table and tick mapping are
at hand, into self-contained readings, so what the spool holds still means the same after a
gateway restart (when neither is known until the node says HELLO again):

    msgpack [1, node, node boot, measurements, events]
        measurements  [[stream name, unit, kind, dec, utc_ms, value, fault], ...]
        events        [[utc_ms, code, param], ...]

`value` is nil exactly when `fault` (a protocols.batch_codes fault code) is set; a fault is never
stored as a number. A frame as nodes send it (no fault, every field plain) is stored in columns
instead, a third of the bytes and packed without a Python object per reading (version 2):

    msgpack [2, node, node boot, base utc_ms, {sid: [stream name, unit, kind, dec]},
             [sid, ...], [dt, ...], [value, ...],      measurements: utc_ms = base + dt
             [dt, ...], [code, ...], [param, ...]]     events

Both read back as the same FrameReadings. HEALTH frames are stored as the JSON the
.../{node}/health topic carries. Packing uses the `msgpack` C package.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgpack

from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, MAX_FAULT_CODE
from protocols.ticks import ticks_add

__all__ = [
    "Columns",
    "Converted",
    "Event",
    "FrameClock",
    "FrameReadings",
    "Measurement",
    "ReadingsError",
    "StreamInfo",
    "convert_data",
    "health_json",
    "pack_converted",
    "pack_readings",
    "unpack_readings",
]

READINGS_VERSION = 1
_COLUMNS_VERSION = 2  # the columns form of a clean frame's readings (module doc)
_MAX_UTC = 2**53  # what a cnb1 batch carries exactly


class ReadingsError(ValueError):
    """A stored payload is not a readings record (a bug or a foreign spool file)."""


class StreamInfo(NamedTuple):
    """One entry of a node's HELLO stream table."""

    name: str
    unit: str
    kind: str
    dec: int | None


class Measurement(NamedTuple):
    stream: str
    unit: str
    kind: str
    dec: int | None
    utc_ms: int
    value: int | float | None
    fault: int | None


class Event(NamedTuple):
    utc_ms: int
    code: int
    param: int


class FrameReadings(NamedTuple):
    node: str
    node_boot: int
    measurements: list[Measurement]
    events: list[Event]


class Columns(NamedTuple):
    """A clean frame's readings as the message carried them (pack_converted stores these)."""

    base: int  # UTC ms of tick t0; a reading's UTC is base + its dt
    table: dict[int, StreamInfo]  # the streams of the sids below
    sids: list[int]
    dts: list[int]
    values: list[int | float]
    event_dts: list[int]
    codes: list[int]
    params: list[int]


class Converted(NamedTuple):
    """convert_data's answer: the readings, the stream ids the table lacks (the frame must wait
    for the HELLO that declares them) and how many readings were malformed and left out.
    `plain`: every field is exactly a str, int, float or None, so decoding the packed record
    gives these very values back (pack_readings may then remember them)."""

    measurements: list[Measurement]
    events: list[Event]
    unknown_sids: set[int]
    bad: int
    plain: bool = False
    columns: Columns | None = None


class _RecentRecords:
    """The readings of records packed lately, by payload, for unpack_readings to hand back without
    decoding: the batcher reads a frame back from the spool within about a second of its
    arrival. Exact by construction: the key is the whole payload, and only records of plain
    values (Converted.plain) are kept, for which decoding gives equal values of the same types.
    Bounded by a reading count (oldest first out); the spool stays the record of truth."""

    def __init__(self, max_readings: int) -> None:
        self.max_readings = max_readings
        self._records: dict[bytes, FrameReadings] = {}
        self._readings = 0

    def add(self, payload: bytes, record: FrameReadings) -> None:
        size = len(record.measurements) + len(record.events)
        if size > self.max_readings or payload in self._records:
            return
        self._records[payload] = record
        self._readings += size
        while self._readings > self.max_readings:
            self._drop(next(iter(self._records)))

    def take(self, payload: bytes) -> FrameReadings | None:
        record = self._records.get(payload)
        if record is not None:
            self._drop(payload)
            # Fresh lists: the caller may keep or change them, the next taker gets its own.
            record = FrameReadings(record.node, record.node_boot, list(record.measurements),
                                   list(record.events))
        return record

    def _drop(self, payload: bytes) -> None:
        record = self._records.pop(payload, None)
        if record is not None:
            self._readings -= len(record.measurements) + len(record.events)

    def clear(self) -> None:
        self._records.clear()
        self._readings = 0


# ~6 MB at most: a 10 s interval of a busy junction, a fraction of a second at the bench's rate.
RECENT_RECORDS = _RecentRecords(max_readings=32_768)


def pack_readings(node: str, node_boot: int, measurements: Iterable[Sequence[Any]],
                  events: Iterable[Sequence[Any]], *, plain: bool = False) -> bytes:
    """The spool payload of one frame's readings. `plain`: the readings are Measurement and
    Event tuples of plain values (Converted.plain), and unpack_readings of this payload may
    hand them back without decoding (RECENT_RECORDS)."""
    if (type(measurements) in _SEQUENCES and type(events) in _SEQUENCES
            and _ARRAYS.issuperset(map(type, measurements))
            and _ARRAYS.issuperset(map(type, events))):
        # Readings that are Measurement/Event tuples (or lists) pack as the arrays below do.
        payload: bytes = _packb([READINGS_VERSION, node, node_boot, measurements, events])
        if (plain and type(node) is str and type(node_boot) is int
                and _RECORD_TYPES.issuperset(map(type, measurements))
                and _RECORD_TYPES.issuperset(map(type, events))):
            RECENT_RECORDS.add(payload, FrameReadings(node, node_boot, list(measurements),
                                                      list(events)))
        return payload
    return _packb([READINGS_VERSION, node, node_boot, [list(m) for m in measurements],
                   [list(e) for e in events]])


def pack_converted(node: str, node_boot: int, converted: Converted
                   ) -> tuple[bytes | None, bytes | None]:
    """The spool payloads of a converted DATA frame: (measurements, events), None where it has
    none. Columns (version 2) when convert_data kept them, else one reading an array (1)."""
    columns = converted.columns
    if columns is None or type(node) is not str or type(node_boot) is not int:
        return (pack_readings(node, node_boot, converted.measurements, (),
                              plain=converted.plain) if converted.measurements else None,
                pack_readings(node, node_boot, (), converted.events,
                              plain=converted.plain) if converted.events else None)
    m_payload = e_payload = None
    if converted.measurements:
        m_payload = _packb([_COLUMNS_VERSION, node, node_boot, columns.base, columns.table,
                            columns.sids, columns.dts, columns.values, [], [], []])
        RECENT_RECORDS.add(m_payload, FrameReadings(node, node_boot,
                                                    list(converted.measurements), []))
    if converted.events:
        e_payload = _packb([_COLUMNS_VERSION, node, node_boot, columns.base, {}, [], [], [],
                            columns.event_dts, columns.codes, columns.params])
        RECENT_RECORDS.add(e_payload, FrameReadings(node, node_boot, [],
                                                    list(converted.events)))
    return m_payload, e_payload


def _unpack_columns(obj: list[Any]) -> FrameReadings:
    (_version, node, boot, base, table, sids, dts, values, event_dts, codes,
     params) = obj
    if not len(sids) == len(dts) == len(values) or not len(event_dts) == len(codes) == len(
            params):
        raise ReadingsError("readings columns of different lengths")
    heads = {sid: tuple(info) for sid, info in table.items()}
    if set(map(len, heads.values())) - {4}:
        raise ReadingsError("a stream table entry has the wrong number of fields")
    measurements = list(map(_new_tuple, _MEASUREMENT, map(
        tuple.__add__, map(heads.__getitem__, sids), zip(map(base.__add__, dts), values,
                                                         _NONES))))
    events = list(map(_new_tuple, _EVENT, zip(map(base.__add__, event_dts), codes, params)))
    return FrameReadings(node, boot, measurements, events)


def unpack_readings(payload: bytes) -> FrameReadings:
    """The readings of a spool payload; ReadingsError if it is not one."""
    recent = RECENT_RECORDS.take(payload)
    if recent is not None:
        return recent
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if type(obj) is list and len(obj) == 11 and obj[0] == _COLUMNS_VERSION:
            return _unpack_columns(obj)
        version, node, boot, measurements, events = obj
        if version != READINGS_VERSION:
            raise ReadingsError(f"readings record version {version!r}, expected 1 or 2")
        # Measurement(*m) for each, without a Python call each: the lengths are checked first.
        if set(map(len, measurements)) - {7} or set(map(len, events)) - {3}:
            raise ReadingsError("a reading has the wrong number of fields")
        return FrameReadings(node, boot, list(map(_new_tuple, _MEASUREMENT, measurements)),
                             list(map(_new_tuple, _EVENT, events)))
    except ReadingsError:
        raise
    except Exception as error:  # noqa: BLE001 - any shape error means "not a readings record"
        raise ReadingsError(f"not a readings record ({error})") from None


# One packer for every call (packb builds one each time); it never runs Python code mid-pack.
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_SEQUENCES = (list, tuple)
_ARRAYS = frozenset((Measurement, Event, list, tuple))
_RECORD_TYPES = frozenset((Measurement, Event))
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def health_json(node: str, node_boot: int, seq: int, message: Mapping[str, Any], *,
                received_ms: int, tick_utc_ms: int | None) -> bytes:
    """The JSON a node HEALTH frame is stored and published as ("source": "node"; the gateway's
    own view of the node goes to the same topic with "source": "gateway")."""
    body: dict[str, Any] = {
        "source": "node",
        "node": node,
        "node_boot": node_boot,
        "seq": seq,
        "received_ms": received_ms,
        "utc_ms": tick_utc_ms,
    }
    for key, value in message.items():
        if key not in ("tick", "lo"):
            body[key] = _jsonable(value)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
