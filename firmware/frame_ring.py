"""The node's resend ring: wire-ready link frames the gateway has not acknowledged yet (DESIGN.md
"Node link", Reliability).

Storage is allocated once: `slots` slots of `slot_size` bytes in one bytearray, plus small per-slot
lists (length, seq, send count, last-send tick, a "send now" flag). push copies the encoded frame
into its slot through a memoryview and allocates nothing else; a frame longer than a slot is
refused with FrameRingError (the link client splits DATA so that never happens to data).

Sequence numbers are the link's u32 per boot. They only grow within a boot (the link client starts
at 1 and would need 136 years at one frame a second to wrap), but every comparison here is serial
arithmetic (RFC 1982 style, within half the u32 space) so nothing breaks if one ever did.

- push(seq, frame) appends; seqs must grow. When the ring is full the OLDEST frame goes: it is
  lost for good, counted in `overflow_frames` (reported in HEALTH as ring_overflow) and push
  returns True. The newest data is worth more to a live city brain than an old backlog.
- ack(seq) is cumulative: it frees every frame with seq <= `seq` (the gateway acknowledges a seq
  only once every seq up to it is durably in its spool) and returns how many it freed.
- due(now_ms, timeout_ms) yields (seq, memoryview) for the frames to put on the wire now, oldest
  first: never-sent frames (after push, or all of them after rewind() on a new connection) and
  frames whose last send is at least timeout_ms old. Yielding stamps the frame as sent at now_ms;
  a send after the first counts in `resent`. This is go-back-N from the oldest unacknowledged frame
  with one timer per frame: frames go out in seq order, so the expired ones are the run from the
  oldest, and a frame that was sent later than a lost one keeps its own, later timer instead of
  being duplicated early. Time is compared with ticks_diff only (ticks wrap at 2**30).

The generator is safe against ack() running between its steps (the link's reader task applies
ACKs while the writer awaits a send): it finds each next frame by seq, not by slot index. Only
the writer may push while it iterates (push can overwrite the oldest slot), and the memoryview it
yields is valid until the next push.
"""

from protocols.ticks import ticks_diff

SEQ_MASK = 0xFFFFFFFF
_SEQ_HALF = 0x80000000


def seq_le(a, b):
    """a <= b in u32 serial arithmetic (within half the sequence space)."""
    return ((b - a) & SEQ_MASK) < _SEQ_HALF


def seq_lt(a, b):
    return a != b and seq_le(a, b)


class FrameRingError(ValueError):
    """push was given a frame that does not fit a slot, or a seq that does not grow."""


class FrameRing:
    def __init__(self, slots=8, slot_size=512):
        if not isinstance(slots, int) or slots < 1:
            raise FrameRingError("the frame ring needs at least 1 slot, not %r" % (slots,))
        if not isinstance(slot_size, int) or slot_size < 16:
            raise FrameRingError("a frame ring slot must hold at least 16 bytes, not %r" % (slot_size,))
        self.slots = slots
        self.slot_size = slot_size
        self._buf = bytearray(slots * slot_size)
        self._mv = memoryview(self._buf)
        self._len = [0] * slots
        self._seq = [0] * slots
        self._sent = [0] * slots  # tick of the last send
        self._tries = [0] * slots  # sends so far
        self._now = bytearray(slots)  # 1: send at the next due() regardless of its timer
        self._head = 0  # slot of the oldest frame
        self._count = 0
        self.overflow_frames = 0
        self.resent = 0
        self.acked = 0

    def __len__(self):
        return self._count

    @property
    def full(self):
        return self._count == self.slots

    def _slot(self, k):
        i = self._head + k
        return i - self.slots if i >= self.slots else i

    def oldest_seq(self):
        return self._seq[self._head] if self._count else None

    def newest_seq(self):
        return self._seq[self._slot(self._count - 1)] if self._count else None

    def seqs(self):
        """The seqs held, oldest first (a new list: for diagnostics and tests)."""
        return [self._seq[self._slot(k)] for k in range(self._count)]

    def oldest_after_push(self, seq):
        """The oldest seq the ring will hold once `seq` is pushed: every seq below it has been
        acknowledged or given up (what the node tells the gateway it may stop waiting for)."""
        if self._count == 0 or (self._count == self.slots and self.slots == 1):
            return seq
        if self._count == self.slots:
            return self._seq[self._slot(1)]
        return self._seq[self._head]

    def push(self, seq, frame):
        """Store `frame` (bytes-like, wire-ready) as `seq`, to be sent at the next due().

        Returns True when the ring was full and its oldest frame was dropped (and counted)."""
        n = len(frame)
        if n > self.slot_size:
            raise FrameRingError("link frame seq %d of %d bytes does not fit a %d-byte ring slot"
                                 % (seq, n, self.slot_size))
        if self._count and not seq_lt(self.newest_seq(), seq):
            raise FrameRingError("link frame seq %d does not follow the newest held, %d"
                                 % (seq, self.newest_seq()))
        dropped = False
        if self._count == self.slots:
            self._head = self._slot(1)
            self._count -= 1
            self.overflow_frames += 1
            dropped = True
        i = self._slot(self._count)
        start = i * self.slot_size
        self._mv[start:start + n] = frame
        self._len[i] = n
        self._seq[i] = seq
        self._tries[i] = 0
        self._sent[i] = 0
        self._now[i] = 1
        self._count += 1
        return dropped

    def ack(self, seq):
        """Free every frame with seq <= `seq`; returns how many were freed."""
        freed = 0
        while self._count and seq_le(self._seq[self._head], seq):
            self._head = self._slot(1)
            self._count -= 1
            freed += 1
        self.acked += freed
        return freed

    def rewind(self):
        """Mark every frame to be sent at the next due() (a new connection: the old one may have
        swallowed anything). Returns how many there are."""
        for k in range(self._count):
            self._now[self._slot(k)] = 1
        return self._count

    def _next_due(self, after, now_ms, timeout_ms):
        for k in range(self._count):
            i = self._slot(k)
            if after is not None and seq_le(self._seq[i], after):
                continue
            if self._now[i] or (self._tries[i] and ticks_diff(now_ms, self._sent[i]) >= timeout_ms):
                return i
        return -1

    def due(self, now_ms, timeout_ms):
        """Yield (seq, memoryview of the frame) for each frame to send now, oldest first."""
        after = None
        while True:
            i = self._next_due(after, now_ms, timeout_ms)
            if i < 0:
                return
            if self._tries[i]:
                self.resent += 1
            self._tries[i] += 1
            self._sent[i] = now_ms
            self._now[i] = 0
            after = self._seq[i]
            start = i * self.slot_size
            yield after, self._mv[start:start + self._len[i]]

    def next_due_in(self, now_ms, timeout_ms):
        """Milliseconds until the next frame is due (0 if one is due now), None when empty."""
        best = None
        for k in range(self._count):
            i = self._slot(k)
            if self._now[i] or not self._tries[i]:
                return 0
            wait = timeout_ms - ticks_diff(now_ms, self._sent[i])
            if wait <= 0:
                return 0
            if best is None or wait < best:
                best = wait
        return best

    def tries(self, seq):
        """How many times frame `seq` has been sent (None when it is not held)."""
        for k in range(self._count):
            i = self._slot(k)
            if self._seq[i] == seq:
                return self._tries[i]
        return None
