"""Per-device backoff: a unit that stops answering is asked less and less often, so its timeouts
never eat the bus time of the devices that do answer. Sans-IO: time is an argument.

After `failures` polls in a row without a single answer, the device is polled at most once per
window, starting at `initial_s` and doubling (`factor`) on every further failed attempt up to
`max_s`; its polls in between are skipped (the poller reports them FAULT_UNAVAILABLE). One answered
poll restores the device at once. ESPHome's Modbus controller does the same with a fixed window.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class BackoffPolicy:
    """When a silent device goes into backoff and how long it stays there."""

    failures: int = 3
    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"backoff failures {self.failures} must be >= 1")
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff initial_s {self.initial_s} must be > 0 and <= max_s "
                             f"{self.max_s}")
        if self.factor < 1:
            raise ValueError(f"backoff factor {self.factor} must be >= 1")


class DeviceBackoff:
    """The backoff state of one device: ask `should_skip(now)` before each poll, then report the
    poll's outcome with `succeeded()` or `failed(now)`."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self.consecutive_failures = 0
        self.window_s = 0.0  # 0: not in backoff
        self.next_attempt = 0.0
        self.entered = 0  # times the device went into backoff, for health

    @property
    def active(self) -> bool:
        return self.window_s > 0

    def should_skip(self, now: float) -> bool:
        return self.active and now < self.next_attempt

    def succeeded(self) -> bool:
        """Record an answered poll; True when this ended a backoff."""
        was = self.active
        self.consecutive_failures = 0
        self.window_s = 0.0
        return was

    def failed(self, now: float) -> bool:
        """Record a poll without any answer; True when this started a backoff."""
        self.consecutive_failures += 1
        if self.consecutive_failures < self.policy.failures:
            return False
        started = not self.active
        if started:
            self.window_s = self.policy.initial_s
            self.entered += 1
        else:
            self.window_s = min(self.window_s * self.policy.factor, self.policy.max_s)
        self.next_attempt = now + self.window_s
        return started
