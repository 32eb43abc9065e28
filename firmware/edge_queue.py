"""A pre-allocated ring of input edges, filled by pin interrupt handlers and drained by a task.

The handler side (push) allocates nothing: times and levels go into preallocated arrays, so it is
safe in a hard IRQ on a board. When the ring is full the newest edge is dropped and counted: a
loop detector's edges arrive at most tens per second, so overflow means the consumer task stalled,
and the count says so in HEALTH rather than silently bending the traffic measures.
"""

from array import array


class EdgeQueue:
    def __init__(self, capacity=128):
        self._times = array("L", [0] * capacity)
        self._chan = bytearray(capacity)  # bit 7 = level, bits 0..6 = channel
        self._cap = capacity
        self._head = 0  # next slot to read
        self._count = 0
        self.overflows = 0

    def push(self, channel, level, t_us):
        if self._count == self._cap:
            self.overflows += 1
            return False
        i = self._head + self._count
        if i >= self._cap:
            i -= self._cap
        self._times[i] = t_us
        self._chan[i] = (channel & 0x7F) | (0x80 if level else 0)
        self._count += 1
        return True

    def __len__(self):
        return self._count

    def pop(self):
        """The oldest edge as (channel, level, t_us), or None when empty."""
        if not self._count:
            return None
        i = self._head
        c = self._chan[i]
        t = self._times[i]
        self._head = i + 1 if i + 1 < self._cap else 0
        self._count -= 1
        return (c & 0x7F, 1 if c & 0x80 else 0, t)
