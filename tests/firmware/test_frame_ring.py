"""FrameRing against a plain-list model (CPython property tests). The same ring runs under both
runtimes through the shared vectors (tests/vectors/frame_ring.json with
tests/portable/check_frame_ring.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.frame_ring import FrameRing, FrameRingError
from protocols.ticks import TICKS_PERIOD, ticks_add, ticks_diff


@dataclass
class Held:
    seq: int
    data: bytes
    at: int = 0
    tries: int = 0
    sent: int = 0
    now: bool = True


class Model:
    """What the ring promises, written the obvious way."""

    def __init__(self, slots: int, size: int) -> None:
        self.slots = slots
        self.size = size
        self.held: list[Held] = []
        self.overflow = self.resent = self.acked = 0

    def _free(self, at: int, n: int) -> bool:
        return at + n <= self.size and all(at + n <= h.at or h.at + len(h.data) <= at for h in self.held)

    def _place(self, n: int) -> int | None:
        # Right after the newest frame, else at the start of the buffer; never over a held byte.
        if len(self.held) == self.slots:
            return None
        after = self.held[-1].at + len(self.held[-1].data) if self.held else 0
        for at in (after, 0):
            if self._free(at, n):
                return at
        return None

    def push(self, seq: int, data: bytes) -> bool:
        dropped = False
        while self._place(len(data)) is None:
            self.held.pop(0)
            self.overflow += 1
            dropped = True
        self.held.append(Held(seq, data, self._place(len(data))))
        return dropped

    def ack(self, seq: int) -> int:
        keep = [h for h in self.held if h.seq > seq]
        freed = len(self.held) - len(keep)
        self.held = keep
        self.acked += freed
        return freed

    def due(self, now: int, timeout: int) -> list[tuple[int, bytes]]:
        out = []
        for h in self.held:
            if h.now or (h.tries and ticks_diff(now, h.sent) >= timeout):
                self.resent += h.tries > 0
                h.tries += 1
                h.sent = now
                h.now = False
                out.append((h.seq, h.data))
        return out

    def rewind(self) -> int:
        for h in self.held:
            h.now = True
        return len(self.held)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 3), st.integers(1, 64)),  # seq step, size
        st.tuples(st.just("ack"), st.integers(-2, 6)),  # relative to the oldest held
        st.tuples(st.just("due"), st.integers(0, 900), st.integers(0, 500)),  # time step, timeout
        st.tuples(st.just("rewind")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(slots=st.integers(1, 8), size=st.integers(64, 200), start_tick=st.integers(0, TICKS_PERIOD - 1),
       script=ops)
def test_ring_matches_model(slots: int, size: int, start_tick: int, script: list[tuple]) -> None:
    ring = FrameRing(slots, size, 64)
    model = Model(slots, size)
    seq = 0
    now = start_tick
    for op in script:
        if op[0] == "push":
            seq += op[1]
            data = bytes((seq + i) & 0xFF for i in range(op[2]))
            assert ring.push(seq, data) == model.push(seq, data)
        elif op[0] == "ack":
            base = model.held[0].seq if model.held else seq
            assert ring.ack(base + op[1]) == model.ack(base + op[1])
        elif op[0] == "due":
            now = ticks_add(now, op[1])
            got = [(s, bytes(view)) for s, view in ring.due(now, op[2])]
            assert got == model.due(now, op[2])
            wait = ring.next_due_in(now, op[2])
            if not model.held:
                assert wait is None
            else:
                assert wait == min(0 if h.now or not h.tries else max(0, op[2] - ticks_diff(now, h.sent))
                                   for h in model.held)
        else:
            assert ring.rewind() == model.rewind()
        assert ring.seqs() == [h.seq for h in model.held]
        assert ring.used() == sum(len(h.data) for h in model.held) <= size
        counts = (ring.overflow_frames, ring.resent, ring.acked)
        assert counts == (model.overflow, model.resent, model.acked)
        assert all(ring.tries(h.seq) == h.tries for h in model.held)


def test_push_copies_and_allocates_no_per_frame_storage() -> None:
    ring = FrameRing(2, 32, 16)
    buf = bytearray(b"abc")
    ring.push(1, buf)
    buf[0] = ord("z")  # the ring holds a copy, not the caller's buffer
    storage = ring._buf
    ring.push(2, memoryview(b"defg"))
    ring.push(3, b"h" * 16)
    assert ring._buf is storage and len(storage) == 32
    assert [(s, bytes(v)) for s, v in ring.due(0, 10)] == [(2, b"defg"), (3, b"h" * 16)]


def test_refusals_name_the_problem() -> None:
    ring = FrameRing(2, 32, 16)
    with pytest.raises(FrameRingError, match="17 bytes does not fit the ring \\(1..16 bytes\\)"):
        ring.push(1, bytes(17))
    with pytest.raises(FrameRingError, match="a 17-byte link frame does not fit the ring"):
        ring.make_room(17)
    ring.push(5, b"x")
    with pytest.raises(FrameRingError, match="seq 5 does not follow the newest held, 5"):
        ring.push(5, b"y")
