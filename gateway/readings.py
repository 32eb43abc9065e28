"""The spooled frame payloads: node data already converted to UTC readings, and health as JSON.

Each accepted DATA frame is converted at once, while its boot's stream table and tick mapping are
at hand, into self-contained readings, so what the spool holds still means the same after a
gateway restart (when neither is known until the node says HELLO again):

    msgpack [1, node, node boot, measurements, events]
        measurements  [[stream name, unit, kind, dec, utc_ms, value, fault], ...]
        events        [[utc_ms, code, param], ...]

`value` is nil exactly when `fault` (a protocols.batch_codes fault code) is set; a fault is never
stored as a number. HEALTH frames are stored as the JSON the .../{node}/health topic carries.
Packing uses the `msgpack` C package (the same bytes as protocols.msgpack_lite, faster).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgpack

from protocols.batch_codes import MAX_EVENT_CODE, MAX_EVENT_PARAM, MAX_FAULT_CODE
from protocols.link_messages import data_events, data_samples
from protocols.ticks import ticks_add

__all__ = [
    "Converted",
    "Event",
    "FrameReadings",
    "Measurement",
    "ReadingsError",
    "StreamInfo",
    "convert_data",
    "health_json",
    "pack_readings",
    "unpack_readings",
]

READINGS_VERSION = 1
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


class Converted(NamedTuple):
    """convert_data's answer: the readings, the stream ids the table lacks (the frame must wait
    for the HELLO that declares them) and how many readings were malformed and left out."""

    measurements: list[Measurement]
    events: list[Event]
    unknown_sids: set[int]
    bad: int


def pack_readings(node: str, node_boot: int, measurements: Iterable[Sequence[Any]],
                  events: Iterable[Sequence[Any]]) -> bytes:
    """The spool payload of one frame's readings."""
    return msgpack.packb(
        [READINGS_VERSION, node, node_boot, [list(m) for m in measurements],
         [list(e) for e in events]],
        use_bin_type=True,
    )


def unpack_readings(payload: bytes) -> FrameReadings:
    """The readings of a spool payload; ReadingsError if it is not one."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        version, node, boot, measurements, events = obj
        if version != READINGS_VERSION:
            raise ReadingsError(f"readings record version {version!r}, expected 1")
        return FrameReadings(
            node, boot, [Measurement(*m) for m in measurements], [Event(*e) for e in events]
        )
    except ReadingsError:
        raise
    except Exception as error:  # noqa: BLE001 - any shape error means "not a readings record"
        raise ReadingsError(f"not a readings record ({error})") from None


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def convert_data(message: Mapping[str, Any], streams: Mapping[int, StreamInfo],
                 to_utc: Callable[[int], int]) -> Converted:
    """A DATA message's samples and events as UTC readings. `to_utc(raw tick)` maps a node tick
    of this boot to UTC ms. A sample whose value is neither a finite number nor faulted, a fault
    code outside 1..0xFFFF, an event code or parameter outside 0..255, or a time outside
    0..2**53 ms is counted in `bad` and left out: it is malformed at the source."""
    t0 = message["t0"]
    measurements: list[Measurement] = []
    events: list[Event] = []
    unknown: set[int] = set()
    bad = 0
    for sid, dt, value, fault, _detail in data_samples(message):
        info = streams.get(sid)
        if info is None:
            unknown.add(sid)
            continue
        if not isinstance(dt, int) or isinstance(dt, bool):
            bad += 1
            continue
        utc = to_utc(ticks_add(t0, dt))
        if not 0 <= utc < _MAX_UTC:
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
        elif _number(value):
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
        if not 0 <= utc < _MAX_UTC:
            bad += 1
            continue
        events.append(Event(utc, code, param))
    return Converted(measurements, events, unknown, bad)


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
