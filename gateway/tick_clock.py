"""Node ticks of one boot to UTC ms: the minimum-delay filter (gateway/node_session.py, "Time").

Every frame that carries a tick gives a candidate offset arrival UTC - tick: the true offset plus
the frame's delay. The smallest candidate of the last `window_ms` is the estimate. A DATA frame's
ticks are mapped in one step where that gives what mapping them one by one would
(frame_base/settle_frame), since the gateway maps every reading it receives.
"""

from __future__ import annotations

from collections import deque

from protocols.ticks import TICKS_PERIOD, TickUnwrapper, ticks_add, ticks_diff

__all__ = ["DEFAULT_CLOCK_WINDOW_MS", "TickClock"]

DEFAULT_CLOCK_WINDOW_MS = 120_000
_TICKS_HALF = TICKS_PERIOD // 2


class _FrameUnwrapper(TickUnwrapper):
    """TickUnwrapper plus the whole-frame shortcut of TickClock.frame_base/settle_frame."""

    __slots__ = ()

    def peek(self, tick: int) -> int | None:
        """What unwrap(tick) would give now, without recording it; None before any tick."""
        raw = self._last_raw
        return None if raw is None else self._last_unwrapped + ticks_diff(tick, raw)

    def settle(self, t0: int, lo_dt: int, hi_dt: int) -> bool:
        """True when unwrap(ticks_add(t0, dt)) == peek(t0) + dt for every dt in lo..hi, in any
        order of calls, and then the state is left as those calls would leave it; False (and no
        change) when that is not certain (ticks near half a period from the newest one)."""
        raw, newest = self._last_raw, self._last_unwrapped
        if raw is None:
            return False
        # unwrap(x) is the value == x (mod TICKS_PERIOD) in [newest - half, newest + half) for
        # the newest value at the time of the call; that newest only rises, up to max(newest,
        # hi) here. So when [lo, hi] sits inside [max(newest, hi) - half, newest + half), every
        # call gives u0 + dt whatever the order, and the newest ends at max(newest, hi).
        u0 = newest + ticks_diff(t0, raw)
        lo, hi = u0 + lo_dt, u0 + hi_dt
        if hi >= newest + _TICKS_HALF or lo < max(newest, hi) - _TICKS_HALF:
            return False
        if hi > newest:
            self._last_raw = ticks_add(t0, hi_dt)
            self._last_unwrapped = hi
        return True


class TickClock:
    """Node ticks of one boot to UTC ms: the minimum-delay filter over a sliding window."""

    def __init__(self, *, window_ms: int = DEFAULT_CLOCK_WINDOW_MS) -> None:
        self.window_ms = window_ms
        self._unwrap = _FrameUnwrapper()
        self._candidates: deque[tuple[int, int]] = deque()  # (arrival, offset), offsets rising
        self.observations = 0

    def observe(self, tick: int, arrival_utc_ms: int) -> None:
        """A frame sent at node `tick` arrived at `arrival_utc_ms` (its own wire time removed)."""
        candidate = arrival_utc_ms - self._unwrap.unwrap(tick)
        q = self._candidates
        while q and q[-1][1] >= candidate:
            q.pop()
        q.append((arrival_utc_ms, candidate))
        while len(q) > 1 and q[0][0] < arrival_utc_ms - self.window_ms:
            q.popleft()
        self.observations += 1

    @property
    def offset_ms(self) -> int | None:
        """UTC - unwrapped tick, or None before the first observation."""
        return self._candidates[0][1] if self._candidates else None

    def to_utc(self, tick: int) -> int:
        """UTC ms of a node tick of this boot (within half a tick period of the newest one)."""
        offset = self.offset_ms
        if offset is None:
            raise ValueError("no tick has been observed yet: call observe() first")
        return self._unwrap.unwrap(tick) + offset

    def frame_base(self, t0: int) -> int | None:
        """What to_utc(t0) would give now, recording nothing; None before any observation.
        With settle_frame, a frame's ticks map in one step: base + dt for tick t0 + dt."""
        offset = self.offset_ms
        u0 = self._unwrap.peek(t0)
        return None if offset is None or u0 is None else u0 + offset

    def settle_frame(self, t0: int, lo_dt: int, hi_dt: int) -> bool:
        """True when to_utc(ticks_add(t0, dt)) == frame_base(t0) + dt for every dt in
        lo_dt..hi_dt, and then the clock is left as those to_utc calls would leave it; False,
        changing nothing, when that cannot be promised (a frame near half a tick period from
        the newest tick): then map its ticks one by one with to_utc."""
        return self.offset_ms is not None and self._unwrap.settle(t0, lo_dt, hi_dt)
