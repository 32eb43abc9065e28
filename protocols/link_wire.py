"""The node link's frame codec, what a node carries (protocols/link_frame.py documents the frame
and re-exports the rest of this): the constants, encode_frame, LinkFrame, and LinkFrameReader, the
incremental reader. A node only counts what it rejects, so the reader returns, for a rejected
candidate, only its kind (a str, also its counters key); link_frame.LinkFrameDecoder, the
gateway's, returns a LinkFrameError with the reason in its place.
"""

import struct

from protocols import cobs
from protocols.crc import crc32

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


class LinkFrameValueError(ValueError):
    """encode_frame was given a type, seq or payload it cannot put in a frame."""


class LinkFrame:
    """One good frame: `type` (an int, see TYPE_NAMES), `seq` (u32) and `payload` (bytes). A node
    only reads its fields; link_frame.LinkFrame, the gateway's, adds == and a repr."""

    def __init__(self, frame_type, seq, payload):
        self.type = frame_type
        self.seq = seq
        self.payload = payload


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


class LinkFrameReader:
    """Incremental reader: `feed(bytes)` returns LinkFrame items and, for each rejected candidate,
    its kind (a str: one of ERROR_KINDS), in stream order.

    It holds two pre-allocated buffers of about max_payload + 15 bytes (the candidate being
    received, and its COBS decoding) and never grows them. A candidate that arrives whole inside
    one chunk is decoded straight from the chunk, without copying it into the buffer.
    """

    _FRAME = LinkFrame  # the class of the frames returned (LinkFrameDecoder: link_frame's)

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
                self._reject(out, "oversize", self._len + seg, None, None)  # on the wire
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

    def _count(self, kind, length):
        """Count a rejected candidate; returns its kind ("garbage" for a failure before the first
        delimiter, see link_frame's doc)."""
        if not self._synced and kind in ("oversize", "bad_cobs", "short", "bad_crc"):
            kind = "garbage"
        self.counters[kind] += 1
        self.counters["garbage_bytes"] += length
        return kind

    def _reject(self, out, kind, length, a, b):
        # `a` and `b` are the details LinkFrameDecoder puts in its reason.
        out.append(self._count(kind, length))

    def _finish(self, frame, out):
        length = len(frame)
        try:
            n = cobs.decode_into(frame, self._raw_mv)
        except cobs.CobsError as exc:
            self._reject(out, "bad_cobs", length, exc.reason, exc.offset)
            return
        if n < OVERHEAD:
            self._reject(out, "short", length, n, None)
            return
        if n > self._raw_max:
            self._reject(out, "oversize", length, n - OVERHEAD, None)
            return
        raw = self._raw
        body = n - CRC_LEN
        expected = crc32(self._raw_mv[:body])
        stored = struct.unpack_from(_CRC, raw, body)[0]
        if stored != expected:
            self._reject(out, "bad_crc", length, stored, expected)
            return
        version, frame_type, seq = struct.unpack_from(_HEADER, raw, 0)
        if version != VERSION:
            self._reject(out, "bad_version", length, version, None)
            return
        if frame_type not in TYPE_NAMES:
            self._reject(out, "unknown_type", length, frame_type, seq)
            return
        self.counters["frames"] += 1
        out.append(self._FRAME(frame_type, seq, bytes(self._raw_mv[HEADER_LEN:body])))
