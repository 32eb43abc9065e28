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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgpack


__all__ = [
    "Columns",
    "Converted",
    "Event",
    "FrameReadings",
    "Measurement",
    "ReadingsError",
    "StreamInfo",
    "health_json",
    "pack_converted",
    "pack_readings",
    "unpack_readings",
]

READINGS_VERSION = 1
_COLUMNS_VERSION = 2  # the columns form of a clean frame's readings (module doc)


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
    bases = itertools.repeat(base)  # operator.add: a foreign float dt still adds up, or raises
    measurements = list(map(_new_tuple, _MEASUREMENT, map(
        tuple.__add__, map(heads.__getitem__, sids), zip(map(operator.add, bases, dts), values,
                                                         _NONES))))
    events = list(map(_new_tuple, _EVENT, zip(map(operator.add, bases, event_dts), codes,
                                              params)))
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
_NONES = itertools.repeat(None)


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
