"""cnb1: the gateway's batch format for MQTT payloads (README.md, "Batch format (cnb1)", byte for byte).

    offset 0  magic    b"cnb1"
    offset 4  version  u8 = 1
    offset 5  codec    u8: 0 none, 1 zlib (RFC 1950), 2 zstd (RFC 8878),
                          3 deflate-dict (RFC 1951 with protocols/batch_dictionary.py's preset)
    offset 6  gateway boot id  u32 big-endian
    offset 10 batch seq        u32 big-endian
    offset 14 body, compressed per codec: a columnar msgpack map (protocols/batch_columns.py)

The batch id is (gateway boot id, seq); encoding is deterministic, so a re-sent batch is
byte-identical. decode_batch turns a payload into plain, JSON-serialisable dicts and raises only
BatchFormatError. The JSON mode (encode_batch_json / batch_to_json) carries the same decoded form
as text, for humans and low-rate integrations.

Compression: zlib from `zlib` on CPython, from MicroPython's `deflate` module otherwise; zstd from
the `zstandard` package when it is installed (CPython only); deflate-dict from `zlib` (CPython
only: MicroPython's deflate takes no preset dictionary, and no node encodes or decodes batches).
"""

import json
import struct

from protocols.batch_builder import Batch, body_fields, pack_body
from protocols.batch_columns import BatchFormatError, read_body
from protocols.msgpack_lite import MsgpackError, unpackb

MAGIC = b"cnb1"
VERSION = 1
HEADER_SIZE = 14
CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_ZSTD = 2
CODEC_DICT = 3
CODEC_AUTO = "auto"  # an encoder choice, never on the wire: zlib if it helps, else none
CODEC_AUTO_DICT = "auto-dict"  # likewise: deflate-dict if it helps, else none
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZLIB: "zlib", CODEC_ZSTD: "zstd", CODEC_DICT: "deflate-dict"}
# A decompressed body larger than this is refused (a zip bomb is a malformed payload too).
DEFAULT_MAX_BODY = 8 * 1024 * 1024
ZLIB_LEVEL = 9
ZSTD_LEVEL = 19

__all__ = [
    "Batch", "BatchFormatError", "encode_batch", "decode_batch", "encode_batch_json",
    "batch_to_json", "batch_to_dict", "codec_available", "MAGIC", "VERSION", "HEADER_SIZE",
    "CODEC_NONE", "CODEC_ZLIB", "CODEC_ZSTD", "CODEC_DICT", "CODEC_AUTO", "CODEC_AUTO_DICT",
    "decode_header",
]

try:
    import zlib as _zlib

    if not hasattr(_zlib, "decompressobj"):  # MicroPython's zlib shim: use deflate (bounded)
        _zlib = None
except ImportError:
    _zlib = None
try:
    import deflate as _deflate
    import io as _io
except ImportError:
    _deflate = None
try:
    import zstandard as _zstd
except ImportError:
    _zstd = None


def codec_available(codec):
    """True when this runtime can both encode and decode `codec`."""
    if codec == CODEC_NONE:
        return True
    if codec == CODEC_ZLIB:
        return _zlib is not None or _deflate is not None
    if codec == CODEC_ZSTD:
        return _zstd is not None
    if codec == CODEC_DICT:
        return _zlib is not None
    return False


_dict_compressor = None


def _dictionary():
    from protocols.batch_dictionary import DICTIONARY_1

    return DICTIONARY_1


def _compress_dict(body):
    # A raw deflate stream (no zlib header or Adler-32: 6 bytes a batch, and TLS to the broker
    # already guards the payload) primed once with the dictionary; each batch starts from a copy.
    global _dict_compressor
    if _dict_compressor is None:
        _dict_compressor = _zlib.compressobj(ZLIB_LEVEL, _zlib.DEFLATED, -15, 9,
                                             _zlib.Z_DEFAULT_STRATEGY, _dictionary())
    c = _dict_compressor.copy()
    return c.compress(body) + c.flush()


def _unavailable(codec, offset=None):
    return BatchFormatError("codec %s not available here" % CODEC_NAMES[codec], offset)


# ---------------------------------------------------------------------------------------------
# Encoding


def _compress(body, codec):
    if codec == CODEC_NONE:
        return body
    if codec == CODEC_ZLIB:
        # The smallest window that holds the body (2**9 .. 2**15): same output size, and the
        # zlib header tells a small decoder it needs no more RAM than that (RFC 1950 CINFO).
        wbits = 9
        while wbits < 15 and (1 << wbits) < len(body):  # no int.bit_length on MicroPython
            wbits += 1
        if _zlib is not None:
            c = _zlib.compressobj(ZLIB_LEVEL, _zlib.DEFLATED, wbits)
            return c.compress(body) + c.flush()
        if _deflate is not None:
            buf = _io.BytesIO()
            w = _deflate.DeflateIO(buf, _deflate.ZLIB, wbits)
            w.write(body)
            w.close()
            return buf.getvalue()
    if codec == CODEC_DICT and _zlib is not None:
        return _compress_dict(body)
    if codec == CODEC_ZSTD and _zstd is not None:
        return _zstd.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                    write_checksum=True).compress(body)
    if codec in CODEC_NAMES:
        raise _unavailable(codec)
    raise ValueError("unknown codec %r: use CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD or CODEC_DICT"
                     % (codec,))


def _check_u32(v, what):
    if type(v) is not int or not 0 <= v <= 0xFFFFFFFF:
        raise ValueError("%s must be an int in 0..2**32-1, not %r" % (what, v))


def encode_batch(batch, gateway_boot, seq, codec=CODEC_AUTO):
    """The cnb1 payload of `batch` with batch id (gateway_boot, seq).

    codec: CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, CODEC_DICT, or CODEC_AUTO (the default): zlib when
    that is smaller than the plain body, none otherwise (a batch of one or two events does not
    shrink); CODEC_AUTO_DICT likewise with deflate-dict.
    The output depends only on the arguments, so a re-sent batch is byte-identical."""
    _check_u32(gateway_boot, "gateway_boot")
    _check_u32(seq, "seq")
    body = pack_body(body_fields(batch))
    if codec == CODEC_AUTO or codec == CODEC_AUTO_DICT:
        chosen = CODEC_ZLIB if codec == CODEC_AUTO else CODEC_DICT
        packed = _compress(body, chosen)
        codec = chosen if len(packed) < len(body) else CODEC_NONE
        if codec == CODEC_NONE:
            packed = body
    else:
        packed = _compress(body, codec)
    return MAGIC + struct.pack(">BBII", VERSION, codec, gateway_boot, seq) + packed


# ---------------------------------------------------------------------------------------------
# Decoding


def _adler32(data):
    # RFC 1950 §8.2; only used on MicroPython, whose deflate cannot report trailing input.
    a, b = 1, 0
    for i in range(0, len(data), 3800):  # 3800 bytes cannot overflow 32 bits before the modulo
        for byte in data[i:i + 3800]:
            a += byte
            b += a
        a %= 65521
        b %= 65521
    return (b << 16) | a


def _inflate_bounded(packed, max_body):
    # In chunks: read(n) on MicroPython allocates n bytes up front, whatever the stream holds.
    stream = _deflate.DeflateIO(_io.BytesIO(packed), _deflate.ZLIB)
    chunks = []
    size = 0
    while size <= max_body:
        chunk = stream.read(4096)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _whole(body, complete, codec, max_body):
    """The decompressed body once it is within max_body and its stream ended exactly at the end."""
    if len(body) > max_body:
        raise BatchFormatError("the body decompresses to more than %d bytes" % max_body,
                               HEADER_SIZE)
    if not complete:
        raise BatchFormatError("the %s body is cut short or followed by extra bytes"
                               % CODEC_NAMES[codec], HEADER_SIZE)
    return body


def _decompress(data, codec, max_body):
    if codec == CODEC_NONE:
        return data[HEADER_SIZE:]
    packed = data[HEADER_SIZE:]
    if codec == CODEC_ZLIB:
        if _zlib is not None:
            try:
                d = _zlib.decompressobj()
                body = d.decompress(packed, max_body + 1)
                complete = d.eof and not d.unused_data and not d.unconsumed_tail
            except Exception:  # noqa: BLE001 - zlib.error and friends: a malformed stream
                raise BatchFormatError("the zlib body does not decompress", HEADER_SIZE)
        elif _deflate is not None:
            try:
                body = _inflate_bounded(packed, max_body)
            except Exception:  # noqa: BLE001 - EOFError/OSError on MicroPython
                raise BatchFormatError("the zlib body does not decompress", HEADER_SIZE)
            # deflate checked the Adler-32 but not what follows it: the trailer must end the data.
            complete = len(packed) >= 6 and packed[-4:] == struct.pack(">I", _adler32(body))
        else:
            raise _unavailable(codec, 5)
        return _whole(body, complete, codec, max_body)
    if codec == CODEC_DICT:
        if _zlib is None:
            raise _unavailable(codec, 5)
        try:
            d = _zlib.decompressobj(-15, _dictionary())
            body = d.decompress(packed, max_body + 1)
            complete = d.eof and not d.unused_data and not d.unconsumed_tail
        except Exception:  # noqa: BLE001 - zlib.error: a malformed stream
            raise BatchFormatError("the deflate-dict body does not decompress", HEADER_SIZE)
        return _whole(body, complete, codec, max_body)
    if _zstd is None:
        raise _unavailable(codec, 5)
    try:
        # The frame must declare its size (the encoder always writes it): that bounds the output
        # before anything is decompressed, and libzstd checks the result against it.
        size = _zstd.get_frame_parameters(packed).content_size
        if 0 <= size <= max_body:
            d = _zstd.ZstdDecompressor().decompressobj()
            body = d.decompress(packed)
            complete = d.eof and not d.unused_data and len(body) == size
    except Exception:  # noqa: BLE001 - zstandard.ZstdError: a malformed frame
        raise BatchFormatError("the zstd body does not decompress", HEADER_SIZE)
    if not 0 <= size <= max_body:
        raise BatchFormatError("the zstd frame must declare a content size of at most %d bytes"
                               % max_body, HEADER_SIZE)
    if not complete:
        raise BatchFormatError("the zstd body is cut short or followed by extra bytes",
                               HEADER_SIZE)
    return body


def decode_header(data):
    """(version, codec, gateway_boot, seq) of a cnb1 payload; BatchFormatError if it is not one."""
    if len(data) < HEADER_SIZE:
        raise BatchFormatError("a cnb1 payload has a 14-byte header, got %d bytes" % len(data),
                               len(data))
    if data[:4] != MAGIC:
        raise BatchFormatError("bad magic %r, expected b'cnb1'" % bytes(data[:4]), 0)
    version, codec, gateway_boot, seq = struct.unpack_from(">BBII", data, 4)
    if version != VERSION:
        raise BatchFormatError("version %d is not supported (this decoder reads 1)" % version, 4)
    if codec not in CODEC_NAMES:
        raise BatchFormatError("unknown codec %d" % codec, 5)
    return version, codec, gateway_boot, seq


def decode_batch(data, max_body=DEFAULT_MAX_BODY):
    """A cnb1 payload as a JSON-serialisable dict:
        {"format": "cnb1", "version": 1, "codec": "zlib", "gateway_boot": .., "seq": ..,
         "node": .., "node_boot": .., "t0": .., "streams": [{"name", "unit", "kind", "dec"}],
         "measurements": [{"stream", "unit", "kind", "t", "value", "fault"}],
         "events": [{"t", "code", "name", "param"}]}
    Raises BatchFormatError, and nothing else, for any malformed input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("decode_batch takes bytes, not %s" % type(data).__name__)
    data = bytes(data)
    version, codec, gateway_boot, seq = decode_header(data)
    body = _decompress(data, codec, max_body)
    try:
        obj = unpackb(body)
    except MsgpackError as exc:
        if exc.offset is None:
            raise BatchFormatError("body is not msgpack: " + exc.reason)
        if codec == CODEC_NONE:
            raise BatchFormatError("body is not msgpack: " + exc.reason, HEADER_SIZE + exc.offset)
        raise BatchFormatError("body is not msgpack: %s (at byte %d of the decompressed body)"
                               % (exc.reason, exc.offset))
    decoded = read_body(obj)
    decoded["format"] = "cnb1"
    decoded["version"] = version
    decoded["codec"] = CODEC_NAMES[codec]
    decoded["gateway_boot"] = gateway_boot
    decoded["seq"] = seq
    return decoded


# ---------------------------------------------------------------------------------------------
# JSON mode


def batch_to_dict(batch, gateway_boot, seq, codec_name="json"):
    """The decoded form of `batch` without going through bytes (what decode_batch would return)."""
    _check_u32(gateway_boot, "gateway_boot")
    _check_u32(seq, "seq")
    body = {}
    for key, value in body_fields(batch):
        body[key] = value
    decoded = read_body(body)
    decoded["format"] = "cnb1"
    decoded["version"] = VERSION
    decoded["codec"] = codec_name
    decoded["gateway_boot"] = gateway_boot
    decoded["seq"] = seq
    return decoded


def batch_to_json(decoded):
    """Compact JSON text of a decoded batch (decode_batch's or batch_to_dict's result)."""
    return json.dumps(decoded, separators=(",", ":"))


def encode_batch_json(batch, gateway_boot, seq):
    """The JSON-mode payload of `batch`: UTF-8 JSON of its decoded form, with "codec": "json"."""
    return batch_to_json(batch_to_dict(batch, gateway_boot, seq)).encode("utf-8")
