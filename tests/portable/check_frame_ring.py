"""Vector checks for firmware/frame_ring.py (portable: CPython and MicroPython).

A case builds FrameRing(slots, size, frame_max) (a case written with "slot_size" describes a ring
of slots x slot_size bytes taking frames up to slot_size) and runs its "steps" in order; each step is a list
[op, args...] with the expected outcome last:

    ["push", seq, size, dropped]          push a frame of `size` pattern bytes; push's return value
    ["push_error", seq, size]             push must raise FrameRingError
    ["ack", seq, freed]                   ack(seq) must free `freed` frames
    ["due", now, timeout, [seqs]]         due() must yield these seqs, each with its own bytes
    ["due_ack", now, timeout, ack, [seqs]]  as "due", calling ack(ack) after the first frame
    ["rewind", count]
    ["held", [seqs]]                      the seqs held, oldest first
    ["next_due_in", now, timeout, ms]     ms is null when the ring is empty
    ["make_room", size, dropped]          make_room(size) must drop `dropped` frames
    ["tries", seq, expect]
    ["counters", {name: value}]           overflow_frames, resent, acked, len, used
"""

from firmware.frame_ring import FrameRing, FrameRingError, seq_le, seq_lt
from vectorlib import expect_equal, expect_raises


def _frame(seq, size):
    # A pattern that differs per seq and per byte, so a frame read from the wrong slot shows.
    return bytes([(seq * 7 + i * 13 + 1) & 0xFF for i in range(size)])


def _due(ring, sizes, now, timeout, ack_after_first, expect, what):
    got = []
    for seq, view in ring.due(now, timeout):
        expect_equal(bytes(view), _frame(seq, sizes[seq]), "%s: bytes of frame %d" % (what, seq))
        got.append(seq)
        if ack_after_first is not None and len(got) == 1:
            ring.ack(ack_after_first)
    expect_equal(got, expect, what + ": seqs due")


def _ring(case):
    slots = case["slots"]
    if "slot_size" in case:
        return FrameRing(slots, slots * case["slot_size"], case["slot_size"])
    return FrameRing(slots, case["size"], case.get("frame_max"))


def check_ring_script(case):
    ring = _ring(case)
    sizes = {}
    for n, step in enumerate(case["steps"]):
        op = step[0]
        what = "step %d %s" % (n, op)
        if op == "push":
            seq, size = step[1], step[2]
            sizes[seq] = size
            expect_equal(ring.push(seq, _frame(seq, size)), step[3], what + ": dropped")
        elif op == "push_error":
            exc = expect_raises(FrameRingError, ring.push, step[1], _frame(step[1], step[2]))
            if not isinstance(exc, ValueError):
                raise AssertionError("FrameRingError is not a ValueError")
        elif op == "ack":
            expect_equal(ring.ack(step[1]), step[2], what + ": freed")
        elif op == "due":
            _due(ring, sizes, step[1], step[2], None, step[3], what)
        elif op == "due_ack":
            _due(ring, sizes, step[1], step[2], step[3], step[4], what)
        elif op == "rewind":
            expect_equal(ring.rewind(), step[1], what)
        elif op == "held":
            expect_equal(ring.seqs(), step[1], what)
            expect_equal(len(ring), len(step[1]), what + ": len")
            expect_equal(ring.oldest_seq(), step[1][0] if step[1] else None, what + ": oldest")
            expect_equal(ring.newest_seq(), step[1][-1] if step[1] else None, what + ": newest")
            expect_equal(ring.full, len(step[1]) == ring.slots, what + ": full")
        elif op == "next_due_in":
            expect_equal(ring.next_due_in(step[1], step[2]), step[3], what)
        elif op == "make_room":
            expect_equal(ring.make_room(step[1]), step[2], what)
        elif op == "tries":
            expect_equal(ring.tries(step[1]), step[2], what)
        elif op == "counters":
            expected = step[1]
            for name in expected:
                actual = len(ring) if name == "len" else ring.used() if name == "used" else getattr(ring, name)
                expect_equal(actual, expected[name], what + ": " + name)
        else:
            raise AssertionError("unknown step %r" % (op,))


def check_construct_error(case):
    expect_raises(FrameRingError, _ring, case)


def check_seq_order(case):
    for a, b, le, lt in case["pairs"]:
        expect_equal(seq_le(a, b), le, "seq_le(%d, %d)" % (a, b))
        expect_equal(seq_lt(a, b), lt, "seq_lt(%d, %d)" % (a, b))


CHECKS = {
    "ring_script": check_ring_script,
    "construct_error": check_construct_error,
    "seq_order": check_seq_order,
}
