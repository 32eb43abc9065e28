"""The node's view of gateway time, learnt from ACKs (each carries the gateway's UTC and echoes the
tick of the frame it acknowledges), so traffic intervals can close on gateway-aligned boundaries
(e.g. every :00 and :30 s UTC) rather than on each node's arbitrary boot time.

offset = utc - tick is estimated from the ACK with the shortest round trip seen recently (the
classic minimum-delay filter: queueing only ever adds delay), halving the round trip.
"""

from protocols.ticks import ticks_diff


class GatewayClock:
    def __init__(self, ticks_ms):
        self._ticks_ms = ticks_ms
        self.offset = None  # utc_ms - tick_ms, None until the first ACK
        self._best_rtt = None
        self._best_age = 0

    def on_ack(self, utc_ms, echoed_tick):
        now = self._ticks_ms()
        rtt = ticks_diff(now, echoed_tick)
        if rtt < 0:
            return
        self._best_age += 1
        # Prefer a short round trip, but let an old estimate age out so drift is followed.
        if self._best_rtt is None or rtt <= self._best_rtt or self._best_age > 64:
            self._best_rtt = rtt
            self._best_age = 0
            self.offset = utc_ms + rtt // 2 - now

    def utc_ms(self, tick_ms):
        return None if self.offset is None else tick_ms + self.offset

    def ms_to_boundary(self, interval_ms, tick_ms=None):
        """Milliseconds from tick_ms (default now) to the next multiple of interval_ms in gateway
        time, or in node ticks before the first ACK."""
        tick = self._ticks_ms() if tick_ms is None else tick_ms
        base = tick if self.offset is None else tick + self.offset
        return interval_ms - base % interval_ms
