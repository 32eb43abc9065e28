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

The master role's framing by length is protocols/modbus_framing.py's RtuFramer (what a node
carries); RtuReceiver extends it with the silences, flush and the server role.
"""

from protocols.modbus_framing import RtuFramer
from protocols.modbus_rtu import (
    ANY_ADDRESS, MAX_UNIT, ModbusFrameError, request_head_of, request_length, response_length)
from protocols.modbus_timing import t15_us, t35_us


class RtuReceiver(RtuFramer):
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
        self._server = role == "server"
        self._t15 = None if baud is None else t15_us(baud, framing)
        self._t35 = None if baud is None else t35_us(baud, framing)
        RtuFramer.__init__(self)

    @property
    def pending(self):
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf) - self._head

    def expect(self, request):
        """Master only: the next reply answers `request` (an ADU or a ModbusRequest). Bytes still
        buffered belong to an earlier exchange (a late reply, noise) and are dropped as garbage."""
        if self.role != "master":
            raise ValueError("only a master receiver expects replies")
        self.expect_reply(request_head_of(request))

    def feed(self, data, gap_us=None):
        out = []
        if gap_us is not None and self._t35 is not None:
            if gap_us > self._t35:
                self._boundary(out)
            elif gap_us > self._t15 and self.pending:
                self._broken(out, gap_us)
        out.extend(RtuFramer.feed(self, data))
        return out

    def flush(self):
        """End of stream, or a reply timeout without timing: report whatever is still buffered."""
        out = []
        self._boundary(out)
        return out

    # --- internals ------------------------------------------------------------------------------

    def _length_at(self, k):
        """The ADU length a frame starting at _buf[k] would have: > 0, 0 (need more), None."""
        if not self._server:
            return RtuFramer._length_at(self, k)
        unit = self._buf[k]
        if unit > MAX_UNIT and unit != ANY_ADDRESS:
            return None
        return request_length(self._buf, k)

    def _reply_length_at(self, k):
        """Server role: the length of another device's reply starting at _buf[k] (on a shared
        bus a server hears those too), like _length_at."""
        unit = self._buf[k]
        if unit == 0 or (unit > MAX_UNIT and unit != ANY_ADDRESS):
            return None
        return response_length(self._buf, None, k)

    def _pass_reply(self, out, length):
        # Another device's reply: not for a server, not garbage either.
        self._flush_skip(out)
        self._head += length
        self._pos += length
        self._aligned = True
        self.counters["replies"] += 1
        self.counters["reply_bytes"] += length

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
