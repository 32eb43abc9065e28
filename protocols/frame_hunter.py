"""What the PMS5003 and SDS011 stream parsers share: the buffer position and the bookkeeping of
skipped ("garbage") bytes, so a run of unsynchronised bytes is reported once, as one error, and
counted exactly.

A subclass sets ERROR (its error class, built as ERROR(reason, offset, kind)) and FRAME_NAME
("a PMS5003 frame"), calls _skip() for bytes it passes over, _close_run() when a frame header ends
a run, and _reject() for a bad frame (whose error then stands for the run its header byte starts).
"""

# A run of unsynchronised bytes is reported as one error when the next header ends it, or once it
# reaches this length (so a line spewing noise still shows up as errors, not only as counts).
GARBAGE_REPORT_BYTES = 256


class FrameHunter:
    ERROR = None
    FRAME_NAME = "a frame"

    def __init__(self, counters):
        self.counters = counters
        self._buf = b""
        self._base = 0  # stream offset of self._buf[0]
        self._run_start = 0  # the current run of skipped bytes: where it began,
        self._run_len = 0  # how long it is,
        self._run_reported = False  # and whether a bad-frame error already stands for it

    @property
    def pending(self):
        """Bytes held back as the start of a frame not yet complete."""
        return len(self._buf)

    def reset(self):
        """Forget a partial frame (after reopening the port, say); counters are kept."""
        self._base += len(self._buf)
        self._buf = b""
        self._run_len = 0
        self._run_reported = False

    def _skip(self, out, start, count):
        self.counters["garbage_bytes"] += count
        # Runs are cut at exact multiples of GARBAGE_REPORT_BYTES so the items feed returns do not
        # depend on how the stream was chunked.
        while count > 0:
            if self._run_len == 0:
                self._run_start = start
            take = GARBAGE_REPORT_BYTES - self._run_len
            if take > count:
                take = count
            self._run_len += take
            start += take
            count -= take
            if self._run_len >= GARBAGE_REPORT_BYTES:
                self._close_run(out)

    def _close_run(self, out):
        if self._run_len and not self._run_reported:
            out.append(self.ERROR("skipped %d bytes that are not part of %s" % (self._run_len, self.FRAME_NAME),
                                  self._run_start, "garbage"))
        self._run_len = 0
        self._run_reported = False

    def _reject(self, out, kind, reason, offset):
        self.counters[kind] += 1
        out.append(self.ERROR(reason, offset, kind))
        # The rejected header byte starts a run that this error already stands for.
        self._run_start = offset
        self._run_len = 1
        self._run_reported = True
        self.counters["garbage_bytes"] += 1
