"""Collects samples and events into the next DATA message (protocols/link_messages.py).

Drivers call sample()/event() as readings happen; the link client calls take() to seal what has
accumulated into one message. Sizes are bounded so a DATA frame always fits the link's maximum
payload: when a list is full the outbox reports `full` and the link client seals early; if it is
still not drained, further readings are dropped and counted in `dropped` (reported in HEALTH),
never lost silently.

`on_add`, when set (the link client sets it), is called after every reading is added, with True for
an event and False for a sample: events must reach the gateway within tens of ms, so the link client
flushes shortly after one arrives rather than polling.
"""

from protocols.ticks import ticks_diff


class Outbox:
    def __init__(self, max_samples=48, max_events=48):
        self.max_samples = max_samples
        self.max_events = max_events
        self.dropped = 0
        self.on_add = None
        self._t0 = None
        self._m = []
        self._f = []
        self._e = []

    def _base(self, tick_ms):
        if self._t0 is None:
            self._t0 = tick_ms
        return self._t0

    def sample(self, sid, tick_ms, value, fault=0, detail=0):
        """One measurement; a faulted sample (fault != 0) carries no value, only the fault."""
        if len(self._m) >= 3 * self.max_samples:
            self.dropped += 1
            return False
        dt = ticks_diff(tick_ms, self._base(tick_ms))
        if fault:
            f = self._f
            f.append(len(self._m) // 3)
            f.append(fault)
            f.append(detail)
            value = None
        # append, not extend((...)): no tuple per reading
        m = self._m
        m.append(sid)
        m.append(dt)
        m.append(value)
        if self.on_add is not None:
            self.on_add(False)
        return True

    def event(self, tick_ms, code, param):
        if len(self._e) >= 3 * self.max_events:
            self.dropped += 1
            return False
        e = self._e
        e.append(ticks_diff(tick_ms, self._base(tick_ms)))
        e.append(code)
        e.append(param)
        if self.on_add is not None:
            self.on_add(True)
        return True

    @property
    def full(self):
        return len(self._m) >= 3 * self.max_samples or len(self._e) >= 3 * self.max_events

    def __len__(self):
        return (len(self._m) + len(self._e)) // 3

    def take(self, now_tick):
        """The DATA message holding everything collected so far (None when empty); starts afresh."""
        if not self._m and not self._e:
            return None
        message = {"tick": now_tick, "t0": self._t0, "m": self._m}
        if self._f:
            message["f"] = self._f
        if self._e:
            message["e"] = self._e
        self._t0 = None
        self._m = []
        self._f = []
        self._e = []
        return message
