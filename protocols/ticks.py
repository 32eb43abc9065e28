"""Wrap-safe millisecond ticks, shared by the node (which produces them) and the gateway (which maps
them to UTC).

MicroPython's time.ticks_ms() wraps at TICKS_PERIOD (2**30 on every port, micropython/py/mphal.h
MICROPY_PY_UTIME_TICKS_PERIOD), so two ticks are only comparable through ticks_diff. Nodes put raw
ticks on the link; the gateway unwraps them per boot into a monotonic count it can map to UTC.
"""

TICKS_PERIOD = 1 << 30
_TICKS_MAX = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD // 2


def ticks_add(ticks, delta):
    return (ticks + delta) & _TICKS_MAX


def ticks_diff(end, start):
    """Signed difference end - start, correct across one wrap (|difference| < TICKS_PERIOD / 2)."""
    return ((end - start + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


class TickUnwrapper:
    """Turns a node's wrapping ticks into a monotonic millisecond count for one boot.

    Ticks must be fed in roughly arrival order: each new tick is placed within half a period of
    the newest one seen, so data resent late (behind the newest) still lands in the right place.
    """

    __slots__ = ("_last_raw", "_last_unwrapped")

    def __init__(self):
        self._last_raw = None
        self._last_unwrapped = 0

    def unwrap(self, raw):
        if self._last_raw is None:
            self._last_raw = raw
            self._last_unwrapped = raw
            return raw
        value = self._last_unwrapped + ticks_diff(raw, self._last_raw)
        if value > self._last_unwrapped:
            self._last_raw = raw
            self._last_unwrapped = value
        return value
