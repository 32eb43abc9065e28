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

Split so a node carries only what it runs: protocols/link_wire.py holds the constants, encode_frame,
a plain LinkFrame and LinkFrameReader (which only counts what it rejects), re-exported here; this
module adds LinkFrameDecoder, the reader that reports every rejection as a LinkFrameError with its
reason, and the LinkFrame it returns, which compares and prints (type_name).

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

from protocols.errors import ProtocolError
from protocols import link_wire
from protocols.link_wire import (  # noqa: F401 - re-exported: this module is the whole codec
    ACK, CMD, CRC_LEN, DATA, DELIMITER, ERROR_KINDS, HEADER_LEN, HEALTH, HELLO, MAX_PAYLOAD, MAX_SEQ,
    OVERHEAD, RESULT, TYPE_NAMES, VERSION, LinkFrameReader, LinkFrameValueError, encode_frame)


def type_name(frame_type):
    """"HELLO", "DATA", ... for a known type, "UNKNOWN(n)" otherwise (for logs and messages)."""
    name = TYPE_NAMES.get(frame_type)
    if name is None:
        return "UNKNOWN(%r)" % (frame_type,)
    return name


class LinkFrame(link_wire.LinkFrame):
    """One good frame: `type` (an int, see TYPE_NAMES), `seq` (u32) and `payload` (bytes); equal to
    any frame (this class or link_wire's, a node's) with the same three."""

    def __eq__(self, other):
        return (
            isinstance(other, link_wire.LinkFrame)
            and self.type == other.type
            and self.seq == other.seq
            and self.payload == other.payload
        )

    def __repr__(self):
        return "LinkFrame(%s, seq=%d, payload=%d bytes)" % (
            type_name(self.type), self.seq, len(self.payload))


class LinkFrameError(ProtocolError):
    """A rejected candidate frame. `kind` is one of ERROR_KINDS (also its counters key); `offset`
    is the stream offset of its first byte; `length` its length on the wire, delimiter excluded (for
    an oversize candidate, the length seen when it was reported)."""

    def __init__(self, kind, reason, offset, length):
        ProtocolError.__init__(self, reason, offset)
        self.kind = kind
        self.length = length


class LinkFrameDecoder(LinkFrameReader):
    """Incremental decoder: `feed(bytes)` returns LinkFrame and LinkFrameError items in stream order.

    It holds two pre-allocated buffers of about max_payload + 15 bytes (the candidate being
    received, and its COBS decoding) and never grows them. A candidate that arrives whole inside
    one chunk is decoded straight from the chunk, without copying it into the buffer.
    """

    _FRAME = LinkFrame

    def _reject(self, out, kind, length, a, b):
        reason = self._reason(kind, a, b)
        counted = self._count(kind, length)
        if counted != kind:
            reason = "skipped bytes before the first delimiter (%s)" % reason
        out.append(LinkFrameError(counted, reason, self._start, length))

    def _reason(self, kind, a, b):
        if kind == "oversize":
            if a is None:
                return "link frame is longer than %d bytes on the wire" % self._cap
            return "link frame payload of %d bytes exceeds max_payload %d" % (a, self.max_payload)
        if kind == "bad_cobs":
            return "link frame is not valid COBS: %s at frame byte %d" % (a, b)
        if kind == "short":
            return "link frame of %d bytes is shorter than header and CRC (%d)" % (a, OVERHEAD)
        if kind == "bad_crc":
            return "link frame CRC-32 is %08X, computed %08X" % (a, b)
        if kind == "bad_version":
            return "link frame version %d, expected %d" % (a, VERSION)
        return "unknown link frame type %d (seq %d)" % (a, b)
