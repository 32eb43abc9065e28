"""A Modbus RTU master's incremental reply framer: a byte stream in, whole reply ADUs out, the bytes
between them counted. It never raises on input.

This is what a node carries (firmware/modbus_master.py): framing by length and CRC alone, which
is all a node can do (its UART hands bytes over in chunks, the inter-character gaps are gone).
protocols/modbus_receiver.py's RtuReceiver extends it with ModbusFrameError reports of the skipped
bytes, framing by silence (a known baud and the gaps between chunks), flush at the end of a stream
and the server role, and documents the hunting rules both share.

Right after a frame (or expect_reply) the next header is trusted. Anywhere else (the start of the
stream, after a CRC failure) the framer hunts: drop one byte and try the next, and while a
doubtful header waits for more bytes, take any whole CRC-valid frame found further on.
"""

from protocols.crc import crc16_modbus
from protocols.modbus_adu import (
    ANY_ADDRESS, EXCEPTION_LENGTH, MAX_ADU, MAX_UNIT, reply_length, response_length)

_CAPACITY = 2 * MAX_ADU  # the buffer holds at most one unfinished ADU plus one chunk slice


class RtuFramer:
    """feed(data) -> list of reply ADUs (bytes), in stream order; see RtuReceiver for `counters`
    (a framer only ever counts bytes, frames, frame_bytes, garbage_bytes and bad_crc)."""

    _server = False  # RtuReceiver's server role: requests, and other devices' replies passed by

    def __init__(self):
        # Bytes held are _buf[_head:]; dropping or emitting moves _head, and the consumed prefix
        # is cut once per call (MicroPython's bytearray has no `del b[:n]`; slice assignment works).
        self._buf = bytearray()
        self._head = 0
        self._pos = 0  # stream offset of _buf[_head]
        # _buf[_head] follows a frame or a silence, so its header is trusted and a bad CRC there is
        # a bad frame. Not at the start: the stream may have been joined mid-frame.
        self._aligned = False
        self._skipped = 0  # bytes dropped since the last reported garbage run
        self._skip_at = 0
        self._skip_cause = None  # None (garbage), "crc" (a frame failed its CRC), "cut" (silence)
        self._expect = None  # (unit, function, normal length) of the reply a master waits for
        self.counters = {"bytes": 0, "frames": 0, "frame_bytes": 0, "garbage_bytes": 0,
                         "bad_crc": 0, "timing_errors": 0, "incomplete_frames": 0,
                         "replies": 0, "reply_bytes": 0}

    def expect_reply(self, head):
        """The next reply answers the request whose head (unit, function, address, word) is
        `head` (protocols.modbus_adu.request_head). Bytes still buffered belong to an earlier
        exchange (a late reply, noise) and are dropped as garbage."""
        length = reply_length(head)
        self._expect = (head[0], head[1], length) if length else None
        held = len(self._buf) - self._head
        if held:
            self._drop(held)
            self._compact()
        self._aligned = True

    def feed(self, data):
        out = []
        n = len(data)
        i = 0
        while i < n:
            take = min(n - i, _CAPACITY - len(self._buf))
            # The whole chunk, usually: no slice copy of it.
            self._buf.extend(data if take == n else data[i:i + take])
            self.counters["bytes"] += take
            i += take
            self._scan(out)
        return out

    # --- internals ------------------------------------------------------------------------------

    def _length_at(self, k):
        """The ADU length a reply starting at _buf[k] would have: > 0, 0 (need more), None."""
        buf = self._buf
        unit = buf[k]
        if self._expect is not None:
            want_unit, fn, length = self._expect
            if unit != want_unit:
                return None
            if len(buf) - k < 2:
                return 0
            got = buf[k + 1]
            if got == fn:
                return length
            return EXCEPTION_LENGTH if got == fn | 0x80 else None
        if unit == 0 or (unit > MAX_UNIT and unit != ANY_ADDRESS):
            return None
        return response_length(buf, None, k)

    def _try(self, k, length):
        """"ok" (a whole CRC-valid frame), "wait" (needs more bytes), "bad" (CRC fails), None."""
        if length is None:
            return None
        if not length or len(self._buf) - k < length:
            return "wait"
        return "ok" if crc16_modbus(memoryview(self._buf)[k:k + length]) == 0 else "bad"

    def _scan(self, out, final=False):
        """Deliver every frame in the buffer. `final`: no more bytes will come for what is held
        (a silence or the end of the stream), so an unfinished candidate is dropped, not awaited."""
        buf = self._buf
        server = self._server
        while self._head < len(buf):
            head = self._head
            length = self._length_at(head)
            got = self._try(head, length)
            if got == "ok":
                self._emit(out, length)
                continue
            other = None
            if server:
                reply = self._reply_length_at(head)
                other = self._try(head, reply)
                if other == "ok":
                    self._pass_reply(out, reply)
                    continue
            waiting = got == "wait" or other == "wait"
            if waiting and not final:
                # Wait for more bytes; but while hunting, a whole valid frame further on wins.
                if not self._aligned and self._lookahead():
                    continue
                break
            if not waiting and self._aligned and (got == "bad" or other == "bad"):
                self.counters["bad_crc"] += 1
                self._flush_skip(out)
                self._skip_cause = "crc"
            self._drop(1)
        if self._skipped >= MAX_ADU:
            self._flush_skip(out)
        self._compact()

    def _lookahead(self):
        head = self._head
        server = self._server
        for k in range(head + 1, len(self._buf) - 3):
            if (self._try(k, self._length_at(k)) == "ok"
                    or (server and self._try(k, self._reply_length_at(k)) == "ok")):
                self._drop(k - head)
                return True
        return False

    def _compact(self):
        if self._head:
            self._buf[:self._head] = b""
            self._head = 0

    def _emit(self, out, length):
        self._flush_skip(out)
        head = self._head
        out.append(bytes(memoryview(self._buf)[head:head + length]))
        self._head = head + length
        self._pos += length
        self._aligned = True
        self._expect = None
        self.counters["frames"] += 1
        self.counters["frame_bytes"] += length

    def _drop(self, count):
        if not self._skipped:
            self._skip_at = self._pos
        self._skipped += count
        self.counters["garbage_bytes"] += count
        self._head += count
        self._pos += count
        self._aligned = False

    def _flush_skip(self, out):
        """The run of skipped bytes ends. A framer only counts them (garbage_bytes, bad_crc): the
        node's master has no use for the report; RtuReceiver adds it to `out` as a
        ModbusFrameError."""
        self._skipped = 0
        self._skip_cause = None
