"""Payloads of the node-link frames (HELLO, DATA, ACK, CMD, RESULT, HEALTH): msgpack maps with short
keys, validated on decode so neither side ever acts on a malformed message.

The frame around them (version, type, seq, CRC-32, COBS) is protocols/link_frame.py (a node's part
of it protocols/link_wire.py). Keys, by type:

HELLO   node str, fw str (firmware version), cfg str (config hash), boot int (boot id, new on every
        reboot), tick int (node ticks_ms when sent), streams [[sid, name, unit, kind, dec|nil], ...],
        errors [[key, reason], ...] (config entries the node refused; the rest keeps running)
DATA    tick int (ticks_ms when sent), t0 int (base tick), m flat [sid, dt, value|nil, ...],
        f flat [sample index, fault code, detail, ...] (optional), e flat [dt, code, param, ...]
        (optional). dt is ms after t0 (ticks_diff, so it survives tick wrap); a faulted sample's
        value is nil and its fault is in f: a fault is never sent as a number.
ACK     seq int (every DATA/HEALTH seq <= this is durably spooled), utc int (gateway UTC ms),
        tick int (echo of the newest acknowledged frame's tick: the node's time exchange)
CMD     id int, op str, args map
RESULT  id int, ok bool, msg str, data (optional, any)
HEALTH  tick int, uptime_ms int, heap_free int, heap_min int, dev map (device id -> counters map),
        loss map (counter -> int), errors [[key, reason], ...]

Every message the node sends (HELLO, DATA, HEALTH, RESULT) may also carry lo int: the lowest seq
the node may still send in this boot. Every seq below it was acknowledged or given up (its resend
ring overflowed, a counted loss), so the gateway stops waiting for it and its cumulative ACK can
move past the gap (firmware/link_client.py, "Numbering").

Reading a decoded DATA message's flat arrays back as samples and events is
protocols/link_data.py (a node only writes them).
"""

from protocols.errors import ProtocolError
from protocols.link_wire import ACK, CMD, DATA, HEALTH, HELLO, RESULT
from protocols.msgpack_lite import MsgpackError, packb, unpackb


class LinkMessageError(ProtocolError):
    """A frame's payload is not the message its type says it is."""


_INT = (int,)
_STR = (str,)
_LIST = (list,)
_MAP = (dict,)
_BOOL = (bool,)

# type -> ((key, accepted python types, required), ...). bool is a subclass of int in Python, so
# int fields reject bools explicitly in _check.
_SCHEMA = {
    HELLO: (("node", _STR, True), ("fw", _STR, True), ("cfg", _STR, True), ("boot", _INT, True),
            ("tick", _INT, True), ("streams", _LIST, True), ("errors", _LIST, False),
            ("lo", _INT, False)),
    DATA: (("tick", _INT, True), ("t0", _INT, True), ("m", _LIST, True), ("f", _LIST, False),
           ("e", _LIST, False), ("lo", _INT, False)),
    ACK: (("seq", _INT, True), ("utc", _INT, True), ("tick", _INT, True)),
    CMD: (("id", _INT, True), ("op", _STR, True), ("args", _MAP, True)),
    RESULT: (("id", _INT, True), ("ok", _BOOL, True), ("msg", _STR, True), ("lo", _INT, False)),
    HEALTH: (("tick", _INT, True), ("uptime_ms", _INT, True), ("heap_free", _INT, True),
             ("heap_min", _INT, True), ("dev", _MAP, True), ("loss", _MAP, True),
             ("errors", _LIST, False), ("lo", _INT, False)),
}


def _check(frame_type, message):
    schema = _SCHEMA.get(frame_type)
    if schema is None:
        raise LinkMessageError("frame type %r carries no known message" % (frame_type,))
    if not isinstance(message, dict):
        raise LinkMessageError("message of type %d is not a map" % frame_type)
    for key, types, required in schema:
        if key not in message:
            if required:
                raise LinkMessageError("message of type %d lacks key %r" % (frame_type, key))
            continue
        value = message[key]
        if not isinstance(value, types) or (types is _INT and isinstance(value, bool)):
            raise LinkMessageError("message of type %d: key %r has the wrong type" % (frame_type, key))
    if frame_type == DATA:
        _check_flat(message["m"], 3, "m")
        _check_flat(message.get("f", ()), 3, "f")
        _check_flat(message.get("e", ()), 3, "e")
    elif frame_type == HELLO:
        for entry in message["streams"]:
            if not isinstance(entry, list) or len(entry) != 5 or not isinstance(entry[0], int):
                raise LinkMessageError("HELLO stream table entry %r is not [sid, name, unit, kind, dec]" % (entry,))
    return message


def _check_flat(values, width, key):
    if len(values) % width:
        raise LinkMessageError("DATA key %r holds %d values, not a multiple of %d" % (key, len(values), width))


def encode_message(frame_type, message):
    """The payload bytes for `message` (a dict with the keys its type needs)."""
    return packb(_check(frame_type, message))


def decode_message(frame_type, payload):
    """The validated dict carried by a frame's payload; raises LinkMessageError."""
    try:
        message = unpackb(payload)
    except MsgpackError as exc:
        raise LinkMessageError("payload is not msgpack: %s" % exc.reason, exc.offset)
    return _check(frame_type, message)
