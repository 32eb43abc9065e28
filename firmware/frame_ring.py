"""The node's resend ring: wire-ready link frames the gateway has not acknowledged yet (DESIGN.md
"Node link", Reliability).

Storage is allocated once: one bytearray of `size` bytes that holds the frames back to back, each
where the previous one ends (or at the start of the buffer when it would not fit before the end: a
frame is never split, so a view of it can go straight to the wire), plus small per-frame lists
(start, length, seq, send count, last-send tick, a "send now" flag) for at most `slots` frames.
push copies the encoded frame in through a memoryview and allocates nothing else. Link frames vary
from ~40 B (an event) to ~1 KB (a cabinet node's HEALTH), so a byte ring holds several times as many
frames as fixed slots sized for the largest one in the same memory. A frame longer than
`frame_max` (default: the whole buffer) is refused with FrameRingError.

Sequence numbers are the link's u32 per boot. They only grow within a boot (the link client starts
at 1 and would need 136 years at one frame a second to wrap), but every comparison here is serial
arithmetic (RFC 1982 style, within half the u32 space) so nothing breaks if one ever did.

- push(seq, frame) appends; seqs must grow. When the frame does not fit (the index is full, or the
  bytes it needs are held) the OLDEST frames go until it does: they are lost for good, counted in
  `overflow_frames` (reported in HEALTH as ring_overflow), and push returns True. The newest data is
  worth more to a live city brain than an old backlog. make_room(n) does that dropping ahead of a
  push of n bytes, so the link client can tell the gateway the right "lo" in the frame itself.
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
ACKs while the writer awaits a send): it finds each next frame by seq, not by index. Only the
writer may push while it iterates (push can overwrite the oldest frames), and the memoryview it
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
    """push was given a frame that does not fit the ring, or a seq that does not grow."""


class FrameRing:
    def __init__(self, slots=24, size=2048, frame_max=None):
        if not isinstance(slots, int) or slots < 1:
            raise FrameRingError("the frame ring needs at least 1 slot, not %r" % (slots,))
        if not isinstance(size, int) or size < 16:
            raise FrameRingError("a frame ring must hold at least 16 bytes, not %r" % (size,))
        self.slots = slots
        self.size = size
        self.frame_max = size if frame_max is None else min(frame_max, size)
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)
        self._at = [0] * slots  # start of each frame in _buf
        self._len = [0] * slots
        self._seq = [0] * slots
        self._sent = [0] * slots  # tick of the last send
        self._tries = [0] * slots  # sends so far
        self._now = bytearray(slots)  # 1: send at the next due() regardless of its timer
        self._head = 0  # index entry of the oldest frame
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

    def used(self):
        """Bytes held by frames (not counting the gap a wrap leaves at the end of the buffer)."""
        n = 0
        for k in range(self._count):
            n += self._len[self._slot(k)]
        return n

    def _place(self, n):
        # Where a frame of n bytes goes, or -1 while the oldest frames are in the way.
        if not self._count:
            return 0
        if self._count == self.slots:
            return -1
        last = self._slot(self._count - 1)
        p = self._at[last] + self._len[last]
        first = self._at[self._head]
        if p > first:  # held bytes are [first, p): the free run is after p, then before first
            if p + n <= self.size:
                return p
            p = 0
        return p if p + n <= first else -1

    def make_room(self, n):
        """Drop (and count) the oldest frames until one of n bytes fits; returns how many went."""
        if n > self.frame_max:
            raise FrameRingError("a %d-byte link frame does not fit the ring (at most %d)"
                                 % (n, self.frame_max))
        dropped = 0
        while self._place(n) < 0:
            self._head = self._slot(1)
            self._count -= 1
            dropped += 1
        self.overflow_frames += dropped
        return dropped

    def push(self, seq, frame):
        """Store `frame` (bytes-like, wire-ready) as `seq`, to be sent at the next due().

        Returns True when older frames were dropped (and counted) to make room."""
        n = len(frame)
        if n < 1 or n > self.frame_max:
            raise FrameRingError("link frame seq %d of %d bytes does not fit the ring (1..%d bytes)"
                                 % (seq, n, self.frame_max))
        if self._count and not seq_lt(self.newest_seq(), seq):
            raise FrameRingError("link frame seq %d does not follow the newest held, %d"
                                 % (seq, self.newest_seq()))
        dropped = self.make_room(n) > 0
        start = self._place(n)
        i = self._slot(self._count)
        self._mv[start:start + n] = frame
        self._at[i] = start
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
            start = self._at[i]
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
