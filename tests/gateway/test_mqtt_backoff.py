"""Reconnect backoff: doubling, capped, jittered within [d/2, d], reset."""

from __future__ import annotations

import random

import pytest

from gateway.mqtt_backoff import Backoff


def test_delays_double_up_to_the_cap_within_the_jitter_band() -> None:
    rng = random.Random(7)
    backoff = Backoff(initial=0.5, maximum=8.0, random_fraction=rng.random)
    ceilings = [0.5, 1, 2, 4, 8, 8, 8]
    for ceiling in ceilings:
        assert backoff.ceiling() == ceiling
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling


def test_jitter_extremes_and_reset() -> None:
    low = Backoff(initial=1, maximum=10, random_fraction=lambda: 0.0)
    high = Backoff(initial=1, maximum=10, random_fraction=lambda: 1.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    assert [high.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    high.reset()
    assert high.next_delay() == 1.0


def test_a_long_outage_stays_capped() -> None:
    backoff = Backoff(initial=0.5, maximum=30, random_fraction=lambda: 1.0)
    for _ in range(10_000):
        delay = backoff.next_delay()
    assert delay == 30


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0, maximum=1)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=2, maximum=1)
    with pytest.raises(ValueError, match="factor"):
        Backoff(initial=1, maximum=2, factor=0.5)
