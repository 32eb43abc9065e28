"""Incremental Modbus RTU receiver: a byte stream (and, when known, the silences in it) in, whole
ADUs and ModbusFrameError items out. It never raises on input.

RTU frames have no start marker: the serial spec (§2.5.1.1) frames them by silence — ≥ t3.5 between
frames, and a gap > t1.5 inside a frame makes it invalid. USB serial adapters and OS drivers blur
that timing (pymodbus's FramerRTU docstring says the same), so this receiver uses silence when the
caller reports it (`gap_us`) and otherwise frames by length: the function code (and byte count)
give each ADU's length, the CRC confirms it.

Right after a frame or a silence the next header is trusted. Anywhere else (the start of the
stream, after a CRC failure) the receiver hunts, like pymodbus's framer: drop one byte and try the
next, and while a doubtful header waits for more bytes, take any whole CRC-valid frame found
further on. A silence, or flush() at the end of the stream, hunts through whatever is held.

Role "server" frames requests and skips other devices' replies (a shared bus carries both); role
"master" frames replies, exactly when told which request they answer (`expect`), else from the
function code and byte count. Frames of function codes this module does not know are skipped as
garbage (so a server emulator cannot answer them 01).
"""

from protocols.crc import crc16_modbus
from protocols.modbus_rtu import (
    ANY_ADDRESS, EXCEPTION_LENGTH, MAX_ADU, MAX_UNIT, ModbusFrameError, ModbusRequest,
    expected_response_length, parse_request, request_length, response_length)
from protocols.modbus_timing import t15_us, t35_us

_CAPACITY = 2 * MAX_ADU  # the buffer holds at most one unfinished ADU plus one chunk slice


class RtuReceiver:
    """feed(data, gap_us=None) -> list of ADUs (bytes) and ModbusFrameError, in stream order.

    `gap_us` is the silence before `data` when the caller knows it (None = unknown); without a
    `baud` the receiver frames by length alone and ignores gaps. Error offsets count bytes from
    the start of the stream. `counters` keeps: bytes (fed), frames, frame_bytes, garbage_bytes
    (bytes in no frame), bad_crc, timing_errors (gap > t1.5 inside a frame), incomplete_frames (a
    silence > t3.5 cut a frame short), and for a server replies / reply_bytes (other devices'
    replies on a shared bus, skipped without an error). bytes = frame_bytes + reply_bytes +
    garbage_bytes + pending.
    """

    def __init__(self, role="master", baud=None, framing="8E1"):
        if role != "master" and role != "server":
            raise ValueError("role %r is neither 'master' nor 'server'" % (role,))
        self.role = role
        self._t15 = None if baud is None else t15_us(baud, framing)
        self._t35 = None if baud is None else t35_us(baud, framing)
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

    @property
    def pending(self):
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf) - self._head

    def expect(self, request):
        """Master only: the next reply answers `request` (an ADU or a ModbusRequest). Bytes still
        buffered belong to an earlier exchange (a late reply, noise) and are dropped as garbage."""
        if self.role != "master":
            raise ValueError("only a master receiver expects replies")
        req = request if isinstance(request, ModbusRequest) else parse_request(request)
        length = expected_response_length(req)
        self._expect = (req.unit, req.function, length) if length else None
        if self.pending:
            self._drop(self.pending)
            self._compact()
        self._aligned = True

    def feed(self, data, gap_us=None):
        out = []
        if gap_us is not None and self._t35 is not None:
            if gap_us > self._t35:
                self._boundary(out)
            elif gap_us > self._t15 and self.pending:
                self._broken(out, gap_us)
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

    def flush(self):
        """End of stream, or a reply timeout without timing: report whatever is still buffered."""
        out = []
        self._boundary(out)
        return out

    # --- internals ------------------------------------------------------------------------------

    def _length_at(self, k):
        """The ADU length a frame starting at _buf[k] would have: > 0, 0 (need more), None."""
        buf = self._buf
        unit = buf[k]
        if self.role == "server":
            if unit > MAX_UNIT and unit != ANY_ADDRESS:
                return None
            return request_length(buf, k)
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

    def _reply_length_at(self, k):
        """Server role: the length of another device's reply starting at _buf[k] (on a shared
        bus a server hears those too), like _length_at."""
        unit = self._buf[k]
        if unit == 0 or (unit > MAX_UNIT and unit != ANY_ADDRESS):
            return None
        return response_length(self._buf, None, k)

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
        server = self.role == "server"
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
        server = self.role == "server"
        for k in range(head + 1, len(self._buf) - 3):
            if (self._try(k, self._length_at(k)) == "ok"
                    or (server and self._try(k, self._reply_length_at(k)) == "ok")):
                self._drop(k - head)
                return True
        return False

    def _pass_reply(self, out, length):
        # Another device's reply: not for a server, not garbage either.
        self._flush_skip(out)
        self._head += length
        self._pos += length
        self._aligned = True
        self.counters["replies"] += 1
        self.counters["reply_bytes"] += length

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
        if self._skipped:
            if self._skip_cause == "crc":
                reason = "a frame failed its CRC check; %d bytes skipped to resynchronise"
            elif self._skip_cause == "cut":
                reason = "a frame was cut short by a silence or the end of the stream; %d bytes dropped"
            else:
                reason = "%d bytes did not form a valid frame"
            out.append(ModbusFrameError(reason % self._skipped, self._skip_at))
            self._skipped = 0
            self._skip_cause = None

    def _boundary(self, out):
        """A silence over t3.5 (or the end of the stream): nothing held can be completed, so hunt
        through it for whole frames and drop the rest; the next byte starts a frame."""
        if self.pending:
            if not self._skipped and self._length_at(self._head) is not None:
                self.counters["incomplete_frames"] += 1
                self._skip_cause = "cut"
            self._scan(out, True)
        self._flush_skip(out)
        self._aligned = True

    def _broken(self, out, gap_us):
        """A silence over t1.5 inside a frame invalidates it (serial spec §2.5.1.1); the bytes
        after it are that frame's tail, so hunt through them rather than trust them."""
        self._flush_skip(out)
        self.counters["timing_errors"] += 1
        held = self.pending
        at = self._pos
        self._drop(held)
        self._compact()
        self._skipped = 0
        out.append(ModbusFrameError("a silence of %d us (over t1.5 = %d us) broke a frame after "
                                    "%d bytes" % (gap_us, self._t15, held), at))
