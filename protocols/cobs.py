"""Consistent Overhead Byte Stuffing (Cheshire & Baker, "Consistent Overhead Byte Stuffing",
IEEE/ACM Transactions on Networking 7(2), 1999).

COBS rewrites a byte string so it contains no 0x00, so a single 0x00 can delimit frames on a byte
stream. The input, with a zero conceptually appended, is cut into groups ending at each zero; each
group is sent as a code byte (group length + 1) followed by its non-zero bytes, and the zero is
implied. A run of 254 non-zero bytes is sent as code 0xFF with no implied zero after it, so the
overhead is at most one byte per 254 (plus one). As in the paper's reference code and the `cobs`
PyPI package, a run of exactly 254 non-zero bytes at the very end is not followed by a code 0x01:
`encode(bytes(range(1, 255)))` is 0xFF and the 254 bytes. The decoder also accepts that trailing
0x01, which changes nothing.

The encoder and decoder work group by group (`bytes.find` for the next zero, memoryview copies)
rather than byte by byte, which matters on MicroPython.
"""

from protocols.errors import ProtocolError

# Longest group of non-zero bytes one code byte can describe (code 0xFF, no implied zero).
_MAX_RUN = 254


class CobsError(ProtocolError):
    """Bytes that are not a valid COBS encoding; `offset` is where in the encoded input."""


def max_encoded_length(n):
    """Upper bound on len(encode(data)) for len(data) == n: one code byte per started 254-byte run."""
    return n + 1 + n // _MAX_RUN


def encode(data):
    """COBS encoding of `data` (bytes-like); the result has no zero byte and no delimiter."""
    if isinstance(data, memoryview):
        data = bytes(data)  # memoryview has no find() on MicroPython
    room = bytearray(max_encoded_length(len(data)))
    return bytes(memoryview(room)[:encode_to(data, room)])


def encode_into(data, out):
    """Append the COBS encoding of `data` to the bytearray `out` (no delimiter); returns `out`."""
    if isinstance(data, memoryview):
        data = bytes(data)
    room = bytearray(max_encoded_length(len(data)))
    out += memoryview(room)[:encode_to(data, room)]
    return out


def encode_to(data, dst, at=0):
    """Write the COBS encoding of `data` (bytes or bytearray) into `dst` (a bytearray) from index
    `at`; `dst` must have max_encoded_length(len(data)) bytes of room there. Returns the index just
    past the encoding. It allocates nothing per group (runs are copied through a memoryview into
    room the caller sized once): encode, encode_into and the link frame encoder all use it."""
    src = memoryview(data)
    n = len(data)
    pos = 0
    o = at
    full_run_last = False
    while True:
        zero = data.find(b"\x00", pos)
        end = n if zero < 0 else zero
        while end - pos >= _MAX_RUN:
            dst[o] = 0xFF
            dst[o + 1:o + 1 + _MAX_RUN] = src[pos:pos + _MAX_RUN]
            o += 1 + _MAX_RUN
            pos += _MAX_RUN
            full_run_last = True
        if zero < 0:
            if pos < n or not full_run_last:  # the 254-byte run rule, as in encode_into
                run = n - pos
                dst[o] = run + 1
                if run:
                    dst[o + 1:o + 1 + run] = src[pos:n]
                o += run + 1
            return o
        run = zero - pos
        dst[o] = run + 1
        if run:
            dst[o + 1:o + 1 + run] = src[pos:zero]
        o += run + 1
        pos = zero + 1
        full_run_last = False


def decode(data):
    """Decode one COBS-encoded block (without its delimiter). Raises CobsError on bad input.

    An empty input decodes to b"" (the streaming decoders never pass one: they skip empty frames).
    """
    if isinstance(data, memoryview):
        data = bytes(data)
    zero = data.find(b"\x00")
    if zero >= 0:
        raise CobsError("COBS data contains a zero byte", zero)
    # The decoded form is always shorter than the encoded one.
    buf = bytearray(len(data))
    n = decode_into(memoryview(data), memoryview(buf))
    return bytes(buf[:n])


def decode_into(src, dst):
    """Decode the COBS block `src` into `dst` (both indexable buffers, e.g. memoryviews); return the
    decoded length. `src` must hold no zero byte (callers split on the delimiter, or check, first)
    and `dst` must be at least len(src) - 1 bytes long. Raises CobsError on a bad code byte."""
    n = len(src)
    i = 0
    o = 0
    while i < n:
        code = src[i]
        if code == 0:
            raise CobsError("COBS code byte is zero", i)
        end = i + code
        if end > n:
            raise CobsError("COBS code byte %d runs past the end of the %d-byte block" % (code, n), i)
        run = code - 1
        if run:
            dst[o:o + run] = src[i + 1:end]
            o += run
        i = end
        if code != 0xFF and i < n:
            dst[o] = 0
            o += 1
    return o
