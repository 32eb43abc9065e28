"""The accepted-seq window: exact against a set model, compact, and stable across its byte form."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.spool_seen import (
    EMPTY,
    SEQ_WINDOW,
    is_seen,
    mark,
    mask_from_bytes,
    mask_to_bytes,
)


def test_a_contiguous_stream_keeps_an_empty_mask() -> None:
    window = EMPTY
    for seq in range(10_000):
        assert not is_seen(window, seq)
        window = mark(window, seq)
    assert window == (9_999, 0)
    assert mask_to_bytes(window[1]) == b""
    assert is_seen(window, 0) and is_seen(window, 9_999) and not is_seen(window, 10_000)


def test_a_gap_is_remembered_until_it_falls_out_of_the_window() -> None:
    window = EMPTY
    for seq in (0, 1, 3, 4):
        window = mark(window, seq)
    assert window[0] == 1  # 2 is missing
    assert not is_seen(window, 2) and is_seen(window, 3)
    window = mark(window, 2)
    assert window == (4, 0)
    # A jump of more than the window gives the skipped seqs up.
    window = mark(window, 4 + SEQ_WINDOW + 10)
    assert window[0] == 10 + 4
    assert is_seen(window, 14) and not is_seen(window, 15)


# Seqs around a moving front with repeats, reordering and occasional big jumps.
_steps = st.lists(
    st.one_of(st.integers(-20, 40), st.integers(SEQ_WINDOW - 50, SEQ_WINDOW + 50)),
    min_size=1,
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_the_window_matches_the_set_model(steps: list[int]) -> None:
    window = EMPTY
    accepted: set[int] = set()
    front = 0
    for step in steps:
        seq = max(0, front + step)
        model_seen = seq in accepted or (bool(accepted) and seq <= max(accepted) - SEQ_WINDOW)
        assert is_seen(window, seq) == model_seen, (seq, window)
        if not model_seen:
            window = mark(window, seq)
            accepted.add(seq)
            front = max(front, seq)
        _, mask = window
        assert mask.bit_length() <= SEQ_WINDOW
        assert mask & 1 == 0  # the run at the bottom is always absorbed into the floor
        assert mask_from_bytes(mask_to_bytes(mask)) == mask
