"""A msgpack subset, byte-identical with the `msgpack` package's defaults for the types it covers.

Covered (msgpack spec, github.com/msgpack/msgpack/blob/master/spec.md): nil, false/true, every int
format (positive/negative fixint, uint8..64, int8..64), float32/float64, str (fixstr, str8/16/32,
UTF-8), bin (bin8/16/32), array (fixarray, array16/32) and map (fixmap, map16/32). Not covered:
ext and timestamp (0xC7-0xC9, 0xD4-0xD8) and the never-used 0xC1; they are decode errors here.

packb follows msgpack-python's defaults (use_bin_type=True): the smallest int format (uint formats
for non-negative values, int formats only for negative ones), floats as float64 unless
use_single_float=True, str as UTF-8 str, bytes/bytearray/memoryview as bin, lists and tuples as
arrays, dicts as maps. unpackb returns lists, dicts, bytes and str; unlike msgpack-python's default
strict_map_key=True it accepts any hashable key (nil, bool, int, float, str, bin), so integer-keyed
maps decode.

unpackb is one-shot: it raises MsgpackError (with the byte offset) for truncated data, a type byte
outside the subset, invalid UTF-8, trailing bytes, nesting deeper than `max_depth`, a length that
claims more bytes than remain (checked before anything is allocated) and unhashable map keys.

Speed matters (the gateway decodes every node DATA frame with it): no per-byte loops, lengths via
struct.unpack_from, payloads via slices, and the commonest small ints handled inline in arrays.
"""

import struct

from protocols.errors import ProtocolError

try:
    import sys as _sys

    # MicroPython's UTF-8 decoder accepts overlong forms, surrogates and code points above
    # U+10FFFF (measured on 1.27); CPython's rejects them. A strict check evens that out.
    _LENIENT_UTF8 = _sys.implementation.name == "micropython"
except (ImportError, AttributeError):
    _LENIENT_UTF8 = False

DEFAULT_MAX_DEPTH = 32

_unpack_from = struct.unpack_from
_pack = struct.pack


class MsgpackError(ProtocolError):
    """Bytes that are not a valid message in the supported msgpack subset."""


# ---------------------------------------------------------------------------------------------
# Packing


def packb(obj, use_single_float=False, max_depth=DEFAULT_MAX_DEPTH):
    """msgpack bytes of `obj`; TypeError for an unsupported type, OverflowError for an int outside
    -2**63 .. 2**64-1, ValueError for nesting deeper than `max_depth` (a cycle, say)."""
    out = bytearray()
    _pack_into(out, obj, use_single_float, max_depth)
    return bytes(out)


def _pack_int(out, n):
    # One- and two-byte payloads are appended byte by byte: struct.pack would allocate a bytes
    # object for each (on MicroPython, most of what packing a node's DATA message allocated).
    if n >= 0:
        if n < 0x80:
            out.append(n)
        elif n < 0x100:
            out.append(0xCC)
            out.append(n)
        elif n < 0x10000:
            out.append(0xCD)
            out.append(n >> 8)
            out.append(n & 0xFF)
        elif n < 0x100000000:
            out += _pack(">BI", 0xCE, n)
        elif n < 0x10000000000000000:
            out += _pack(">BQ", 0xCF, n)
        else:
            raise OverflowError("int %d is above the msgpack range (2**64-1)" % n)
    elif n >= -32:
        out.append(n & 0xFF)
    elif n >= -0x80:
        out.append(0xD0)
        out.append(n & 0xFF)
    elif n >= -0x8000:
        out.append(0xD1)
        out.append((n >> 8) & 0xFF)
        out.append(n & 0xFF)
    elif n >= -0x80000000:
        out += _pack(">Bi", 0xD2, n)
    elif n >= -0x8000000000000000:
        out += _pack(">Bq", 0xD3, n)
    else:
        raise OverflowError("int %d is below the msgpack range (-2**63)" % n)


def _pack_float(out, x, single):
    if single:
        # A finite double beyond float32 range: OverflowError on CPython, as msgpack raises;
        # MicroPython's struct packs it as +-inf.
        out += _pack(">Bf", 0xCA, x)
    else:
        out += _pack(">Bd", 0xCB, x)


def _pack_len(out, n, fix_base, fix_limit, op8, op16, op32, what):
    if n < fix_limit:
        out.append(fix_base | n)
    elif op8 and n < 0x100:
        out.append(op8)
        out.append(n)
    elif n < 0x10000:
        out.append(op16)
        out.append(n >> 8)
        out.append(n & 0xFF)
    elif n < 0x100000000:
        out += _pack(">BI", op32, n)
    else:
        raise ValueError("%s of length %d is too long for msgpack (2**32-1 at most)" % (what, n))


def _pack_into(out, obj, single, depth):
    t = type(obj)
    if t is int:
        _pack_int(out, obj)
    elif t is str:
        raw = obj.encode("utf-8")
        _pack_len(out, len(raw), 0xA0, 32, 0xD9, 0xDA, 0xDB, "str")
        out += raw
    elif obj is None:
        out.append(0xC0)
    elif t is bool:
        out.append(0xC3 if obj else 0xC2)
    elif t is float:
        _pack_float(out, obj, single)
    elif t is list or t is tuple:
        if depth <= 0:
            raise ValueError("packb: nesting is deeper than the limit")
        _pack_len(out, len(obj), 0x90, 16, 0, 0xDC, 0xDD, "array")
        for item in obj:
            _pack_into(out, item, single, depth - 1)
    elif t is dict:
        if depth <= 0:
            raise ValueError("packb: nesting is deeper than the limit")
        _pack_len(out, len(obj), 0x80, 16, 0, 0xDE, 0xDF, "map")
        for key, value in obj.items():
            _pack_into(out, key, single, depth - 1)
            _pack_into(out, value, single, depth - 1)
    elif t is bytes or t is bytearray or t is memoryview:
        raw = bytes(obj)
        _pack_len(out, len(raw), 0, 0, 0xC4, 0xC5, 0xC6, "bin")
        out += raw
    else:
        # Subclasses (IntEnum, OrderedDict, a namedtuple, ...) go the slow way, as msgpack's
        # non-strict mode does: converted to their base type, then packed.
        for bases, convert in _BASES:
            if isinstance(obj, bases):
                _pack_into(out, convert(obj), single, depth)
                return
        raise TypeError("msgpack_lite cannot pack a %s" % t.__name__)


_BASES = ((int, int), (float, float), (str, str), ((bytes, bytearray), bytes), ((list, tuple), list),
          (dict, dict))


# ---------------------------------------------------------------------------------------------
# Unpacking


def unpackb(data, allow_trailing=False, max_depth=DEFAULT_MAX_DEPTH):
    """The object msgpack `data` holds. Trailing bytes are an error unless allow_trailing."""
    obj, pos = unpack_from(data, 0, max_depth)
    if pos != len(data) and not allow_trailing:
        raise MsgpackError("%d trailing bytes after the msgpack object" % (len(data) - pos), pos)
    return obj


def unpack_from(data, offset=0, max_depth=DEFAULT_MAX_DEPTH):
    """(object, next_offset) for the msgpack object starting at `offset` in `data`."""
    data = _as_bytes(data)
    end = len(data)
    if offset < 0 or offset > end:
        raise MsgpackError("offset %d is outside the %d-byte buffer" % (offset, end), offset)
    if offset == end:
        raise MsgpackError("truncated: no msgpack object (0 bytes)", offset)
    return _unpack(data, offset, end, max_depth)


def _as_bytes(data):
    if type(data) is bytes:
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError("msgpack_lite unpacks bytes, not %s" % type(data).__name__)


def _truncated(what, pos):
    return MsgpackError("truncated %s" % what, pos)


def _length(data, pos, end, size, what):
    # Reads a 1/2/4-byte big-endian length at data[pos] (the byte after the type byte).
    if pos + size > end:
        raise _truncated(what + " length", pos)
    if size == 1:
        return data[pos], pos + 1
    if size == 2:
        return _unpack_from(">H", data, pos)[0], pos + 2
    return _unpack_from(">I", data, pos)[0], pos + 4


# Fixed-size scalars, type bytes 0xCA..0xD3 in order: (struct format, payload bytes, what).
_SCALARS = (
    (">f", 4, "float32"),  # 0xCA
    (">d", 8, "float64"),
    (">B", 1, "uint8"),
    (">H", 2, "uint16"),
    (">I", 4, "uint32"),
    (">Q", 8, "uint64"),
    (">b", 1, "int8"),
    (">h", 2, "int16"),
    (">i", 4, "int32"),
    (">q", 8, "int64"),  # 0xD3
)
# Variable-length families: type byte -> (length bytes, kind).
_SIZED = {
    0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
    0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
    0xDC: (2, "array"), 0xDD: (4, "array"),
    0xDE: (2, "map"), 0xDF: (4, "map"),
}


def _unpack(data, pos, end, depth):
    """(object, next position) for the object whose type byte is data[pos]; pos < end."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    if b >= 0xE0:
        return b - 0x100, pos + 1
    if b < 0x90:
        return _map(data, pos + 1, end, b & 0x0F, depth, pos)
    if b < 0xA0:
        return _array(data, pos + 1, end, b & 0x0F, depth, pos)
    if b < 0xC0:
        return _str(data, pos + 1, end, b & 0x1F, pos)
    if b == 0xC0:
        return None, pos + 1
    if b == 0xC2:
        return False, pos + 1
    if b == 0xC3:
        return True, pos + 1
    if 0xCA <= b <= 0xD3:
        spec = _SCALARS[b - 0xCA]
        if pos + 1 + spec[1] > end:
            raise _truncated(spec[2], pos)
        return _unpack_from(spec[0], data, pos + 1)[0], pos + 1 + spec[1]
    spec = _SIZED.get(b)
    if spec is None:
        if b == 0xC1:
            raise MsgpackError("type byte 0xC1 is never used in msgpack", pos)
        raise MsgpackError("type byte 0x%02X (ext/timestamp) is outside the supported subset" % b,
                           pos)
    kind = spec[1]
    n, start = _length(data, pos + 1, end, spec[0], kind)
    if kind == "str":
        return _str(data, start, end, n, pos)
    if kind == "bin":
        if n > end - start:
            raise MsgpackError("bin of %d bytes runs past the end of the data" % n, pos)
        return data[start:start + n], start + n
    if kind == "array":
        return _array(data, start, end, n, depth, pos)
    return _map(data, start, end, n, depth, pos)


def _str(data, start, end, n, pos):
    if n > end - start:
        raise MsgpackError("str of %d bytes runs past the end of the data" % n, pos)
    raw = data[start:start + n]
    try:
        text = raw.decode("utf-8")
    except Exception:  # noqa: BLE001 - UnicodeDecodeError on CPython, UnicodeError on MicroPython
        raise MsgpackError("str is not valid UTF-8", pos)
    if _LENIENT_UTF8 and len(text) != n and not _strict_utf8(raw):
        raise MsgpackError("str is not valid UTF-8", pos)
    return text, start + n


def _strict_utf8(raw):
    # Only reached on MicroPython for non-ASCII text that its decoder already accepted, so the
    # sequences are well-formed in length; reject what RFC 3629 §4 forbids and MicroPython lets by.
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b < 0x80:
            i += 1
            continue
        if b < 0xC2 or b > 0xF4:
            return False
        nxt = raw[i + 1] if i + 1 < n else 0
        if (b == 0xE0 and nxt < 0xA0) or (b == 0xED and nxt >= 0xA0):
            return False
        if (b == 0xF0 and nxt < 0x90) or (b == 0xF4 and nxt >= 0x90):
            return False
        i += 2 if b < 0xE0 else 3 if b < 0xF0 else 4
    return True


def _array(data, pos, end, n, depth, at):
    if depth <= 0:
        raise MsgpackError("nesting is deeper than the limit", at)
    if n > end - pos:  # every item takes at least one byte
        raise MsgpackError("array of %d items runs past the end of the data" % n, at)
    items = []
    append = items.append
    depth -= 1
    for _ in range(n):
        if pos >= end:
            raise _truncated("array", pos)
        b = data[pos]
        # Small ints are the commonest items in node frames (deltas): decode them without a call.
        if b < 0x80:
            append(b)
            pos += 1
        elif b >= 0xE0:
            append(b - 0x100)
            pos += 1
        elif b == 0xCD and pos + 3 <= end:
            append((data[pos + 1] << 8) | data[pos + 2])
            pos += 3
        elif b == 0xCC and pos + 2 <= end:
            append(data[pos + 1])
            pos += 2
        else:
            value, pos = _unpack(data, pos, end, depth)
            append(value)
    return items, pos


def _map(data, pos, end, n, depth, at):
    if depth <= 0:
        raise MsgpackError("nesting is deeper than the limit", at)
    if n > (end - pos) // 2:  # every pair takes at least two bytes
        raise MsgpackError("map of %d pairs runs past the end of the data" % n, at)
    result = {}
    depth -= 1
    for _ in range(n):
        if pos >= end:
            raise _truncated("map", pos)
        key_at = pos
        key, pos = _unpack(data, pos, end, depth)
        if pos >= end:
            raise _truncated("map", pos)
        value, pos = _unpack(data, pos, end, depth)
        try:
            result[key] = value
        except TypeError:
            raise MsgpackError("map key is not hashable (an array or a map)", key_at)
    return result, pos
