"""The node link's frame codec (DESIGN.md "Node link"): node <-> gateway over UART, RS-485, USB CDC
or TCP, all treated as one byte stream.

Raw frame: version u8 (= 1) | type u8 | seq u32 big-endian | payload (0..max_payload bytes;
msgpack, opaque here) | CRC-32 u32 big-endian (protocols.crc.crc32, zlib's) over everything before it.

    offset  size  field
    0       1     version, u8 = 1
    1       1     type, u8: HELLO 1, DATA 2, ACK 3, CMD 4, RESULT 5, HEALTH 6
    2       4     seq, u32 big-endian
    6       n     payload, 0..max_payload bytes (msgpack; opaque to this module)
    6+n     4     CRC-32, u32 big-endian: protocols.crc.crc32 (zlib's CRC-32/ISO-HDLC) over
                  every byte before it (version .. end of payload)

On the wire: COBS(raw frame) (protocols.cobs, Cheshire & Baker 1999) followed by one 0x00
delimiter. The encoder may also emit a leading 0x00 (`encode_frame(..., lead=True)`) so a receiver
that joined mid-frame resynchronises immediately; empty frames (consecutive 0x00) are ignored
silently by the decoder. The default max_payload is 1024 bytes (configurable on both sides; the two
ends of a link must agree).

LinkFrameDecoder never raises on input. Every non-empty run of bytes between delimiters is one
candidate frame; one that fails is reported as a LinkFrameError in the list `feed` returns, counted
under its `kind`, and skipped, and decoding resumes after the next delimiter. Kinds, in the order
they are checked:

    oversize      longer than a frame with a max_payload payload can be, on the wire (reported as
                  soon as the buffer would overflow: the decoder stops buffering and drops bytes up
                  to the next delimiter, so memory stays bounded) or once COBS-decoded
    bad_cobs      not a valid COBS encoding
    short         decodes to fewer than 10 bytes (header + CRC)
    bad_crc       the CRC-32 does not match
    bad_version   version is not 1 (good CRC)
    unknown_type  type is not one of the six above (good CRC)
    garbage       bytes before the first delimiter the decoder saw that do not form a frame with
                  a good CRC: the decoder joined the stream mid-frame, which is expected rather than
                  a sign of a bad line, so it is not counted as bad_cobs / short / bad_crc / oversize

`counters` holds one count per kind, "frames" (good frames) and "garbage_bytes" (every byte skipped
in a rejected candidate; delimiters are not counted). Error offsets are stream offsets (bytes fed
since the decoder was created or reset) of the candidate's first byte.
"""

import struct

from protocols import cobs
from protocols.crc import crc32
from protocols.errors import ProtocolError

VERSION = 1

HELLO = 1
DATA = 2
ACK = 3
CMD = 4
RESULT = 5
HEALTH = 6

TYPE_NAMES = {
    HELLO: "HELLO",
    DATA: "DATA",
    ACK: "ACK",
    CMD: "CMD",
    RESULT: "RESULT",
    HEALTH: "HEALTH",
}

MAX_PAYLOAD = 1024
MAX_SEQ = 0xFFFFFFFF

HEADER_LEN = 6  # version, type, seq
CRC_LEN = 4
OVERHEAD = HEADER_LEN + CRC_LEN
DELIMITER = 0

_HEADER = ">BBI"
_CRC = ">I"

ERROR_KINDS = (
    "oversize", "bad_cobs", "short", "bad_crc", "bad_version", "unknown_type", "garbage",
)


def type_name(frame_type):
    """"HELLO", "DATA", ... for a known type, "UNKNOWN(n)" otherwise (for logs and messages)."""
    name = TYPE_NAMES.get(frame_type)
    if name is None:
        return "UNKNOWN(%r)" % (frame_type,)
    return name


class LinkFrameValueError(ValueError):
    """encode_frame was given a type, seq or payload it cannot put in a frame."""


class LinkFrameError(ProtocolError):
    """A rejected candidate frame. `kind` is one of ERROR_KINDS (also its counters key); `offset`
    is the stream offset of its first byte; `length` its length on the wire, delimiter excluded (for
    an oversize candidate, the length seen when it was reported)."""

    def __init__(self, kind, reason, offset, length):
        ProtocolError.__init__(self, reason, offset)
        self.kind = kind
        self.length = length


class LinkFrame:
    """One good frame: `type` (an int, see TYPE_NAMES), `seq` (u32) and `payload` (bytes)."""

    __slots__ = ("type", "seq", "payload")

    def __init__(self, frame_type, seq, payload):
        self.type = frame_type
        self.seq = seq
        self.payload = payload

    def __eq__(self, other):
        return (
            isinstance(other, LinkFrame)
            and self.type == other.type
            and self.seq == other.seq
            and self.payload == other.payload
        )

    def __repr__(self):
        return "LinkFrame(%s, seq=%d, payload=%d bytes)" % (
            type_name(self.type), self.seq, len(self.payload))


def _check_max_payload(max_payload):
    if not isinstance(max_payload, int) or max_payload < 0:
        raise LinkFrameValueError("max_payload must be a non-negative int, not %r" % (max_payload,))


def encode_frame(frame_type, seq, payload, max_payload=MAX_PAYLOAD, lead=False):
    """The wire bytes of one frame: COBS(raw frame) + 0x00, preceded by a 0x00 if `lead`.

    Raises LinkFrameValueError for an unknown type, a seq outside 0..2**32-1 or a payload longer
    than max_payload.
    """
    _check_max_payload(max_payload)
    if frame_type not in TYPE_NAMES:
        raise LinkFrameValueError("unknown link frame type %r" % (frame_type,))
    if not isinstance(seq, int) or seq < 0 or seq > MAX_SEQ:
        raise LinkFrameValueError("link frame seq %r is outside 0..%d" % (seq, MAX_SEQ))
    size = len(payload)
    if size > max_payload:
        raise LinkFrameValueError(
            "link frame payload of %d bytes exceeds max_payload %d" % (size, max_payload))
    end = HEADER_LEN + size
    raw = bytearray(end + CRC_LEN)
    struct.pack_into(_HEADER, raw, 0, VERSION, frame_type, seq)
    raw[HEADER_LEN:end] = payload
    struct.pack_into(_CRC, raw, end, crc32(memoryview(raw)[:end]))
    # Sized once (a 0x00 before when `lead`, the delimiter after): the COBS runs are copied into
    # it, nothing grows. On MicroPython this halves what a frame allocates.
    out = bytearray(cobs.max_encoded_length(len(raw)) + 2)
    o = cobs.encode_to(raw, out, 1 if lead else 0)
    out[o] = DELIMITER
    return bytes(memoryview(out)[:o + 1])


class LinkFrameDecoder:
    """Incremental decoder: `feed(bytes)` returns LinkFrame and LinkFrameError items in stream order.

    It holds two pre-allocated buffers of about max_payload + 15 bytes (the candidate being
    received, and its COBS decoding) and never grows them. A candidate that arrives whole inside
    one chunk is decoded straight from the chunk, without copying it into the buffer.
    """

    def __init__(self, max_payload=MAX_PAYLOAD):
        _check_max_payload(max_payload)
        self.max_payload = max_payload
        self._raw_max = OVERHEAD + max_payload
        self._cap = cobs.max_encoded_length(self._raw_max)
        self._buf = bytearray(self._cap)
        self._buf_mv = memoryview(self._buf)
        self._raw = bytearray(self._cap)  # decode_into needs len(candidate) - 1 bytes at most
        self._raw_mv = memoryview(self._raw)
        self.counters = {"frames": 0, "garbage_bytes": 0}
        for kind in ERROR_KINDS:
            self.counters[kind] = 0
        self.reset()

    def reset(self):
        """Forget any partial frame and start as on a fresh stream (e.g. a new TCP connection).
        Counters are kept."""
        self._len = 0  # bytes of the current candidate held in _buf
        self._discarding = False  # an oversize candidate is being dropped up to the next delimiter
        self._synced = False  # a delimiter has been seen, so candidates start at frame starts
        self._offset = 0  # stream offset of the next byte fed
        self._start = 0  # stream offset of the current candidate's first byte

    def feed(self, data):
        """Consume `data` (bytes-like); return the frames and errors it completed, in order."""
        out = []
        if isinstance(data, memoryview):
            data = bytes(data)  # memoryview has no find() on MicroPython
        n = len(data)
        if not n:
            return out
        base = self._offset
        self._offset = base + n
        view = memoryview(data)
        pos = 0
        while pos < n:
            zero = data.find(b"\x00", pos)
            end = n if zero < 0 else zero
            seg = end - pos
            if self._discarding:
                self.counters["garbage_bytes"] += seg
            elif self._len + seg > self._cap:
                self._reject(out, "oversize", "link frame is longer than %d bytes on the wire"
                             % self._cap, self._len + seg)
                self._len = 0
                self._discarding = True
            elif self._len == 0 and zero >= 0:
                if seg:
                    self._finish(view[pos:end], out)
            else:
                held = self._len + seg
                self._buf_mv[self._len:held] = view[pos:end]
                self._len = held
                if zero >= 0:
                    self._finish(self._buf_mv[:held], out)
                    self._len = 0
            if zero < 0:
                break
            # A delimiter: whatever follows starts a new candidate.
            self._discarding = False
            self._synced = True
            pos = zero + 1
            self._start = base + pos
        return out

    def _reject(self, out, kind, reason, length):
        if not self._synced and kind in ("oversize", "bad_cobs", "short", "bad_crc"):
            kind = "garbage"
            reason = "skipped bytes before the first delimiter (%s)" % reason
        self.counters[kind] += 1
        self.counters["garbage_bytes"] += length
        out.append(LinkFrameError(kind, reason, self._start, length))

    def _finish(self, frame, out):
        length = len(frame)
        try:
            n = cobs.decode_into(frame, self._raw_mv)
        except cobs.CobsError as exc:
            self._reject(out, "bad_cobs", "link frame is not valid COBS: %s at frame byte %d"
                         % (exc.reason, exc.offset), length)
            return
        if n < OVERHEAD:
            self._reject(out, "short", "link frame of %d bytes is shorter than header and CRC (%d)"
                         % (n, OVERHEAD), length)
            return
        if n > self._raw_max:
            self._reject(out, "oversize", "link frame payload of %d bytes exceeds max_payload %d"
                         % (n - OVERHEAD, self.max_payload), length)
            return
        raw = self._raw
        body = n - CRC_LEN
        expected = crc32(self._raw_mv[:body])
        stored = struct.unpack_from(_CRC, raw, body)[0]
        if stored != expected:
            self._reject(out, "bad_crc", "link frame CRC-32 is %08X, computed %08X"
                         % (stored, expected), length)
            return
        version, frame_type, seq = struct.unpack_from(_HEADER, raw, 0)
        if version != VERSION:
            self._reject(out, "bad_version", "link frame version %d, expected %d"
                         % (version, VERSION), length)
            return
        if frame_type not in TYPE_NAMES:
            self._reject(out, "unknown_type", "unknown link frame type %d (seq %d)"
                         % (frame_type, seq), length)
            return
        self.counters["frames"] += 1
        out.append(LinkFrame(frame_type, seq, bytes(self._raw_mv[HEADER_LEN:body])))
