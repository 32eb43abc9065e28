"""Reconnect delays: exponential, capped, with jitter.

Jitter matters at city scale: when a clustered broker restarts, thousands of gateways lose it at
the same instant; without jitter they would all come back in lockstep, every retry a thundering
herd. "Equal jitter" keeps at least half the exponential delay (so a gateway never hammers a
broker that is still down) and spreads the rest uniformly.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays initial·2ⁿ capped at `maximum`, each drawn from [d/2, d]; reset() starts over."""

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        factor: float = 2.0,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff: need 0 < initial ({initial}) <= maximum ({maximum})")
        if factor < 1:
            raise ValueError(f"backoff: factor {factor} must be at least 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._random = random_fraction
        self.attempts = 0

    def ceiling(self) -> float:
        """The delay before jitter for the next attempt."""
        # Stop multiplying once capped, so a week-long outage cannot overflow a float.
        exponent = min(self.attempts, 64)
        return min(self.maximum, self.initial * self.factor**exponent)

    def next_delay(self) -> float:
        """The delay to wait before the next attempt; counts the attempt."""
        ceiling = self.ceiling()
        self.attempts += 1
        return ceiling / 2 + self._random() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0
