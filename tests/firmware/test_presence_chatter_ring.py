"""The chatter ring of firmware/presence_filter.py starts small and grows to chatter_per_min + 1
only when a minute's transitions need it; chatter is still raised on the transition that makes
chatter_per_min + 1 within 60 s, and cleared as before."""

from __future__ import annotations

from firmware.presence_filter import CHATTER, PresenceFilter
from protocols.ticks import ticks_add


def test_ring_grows_only_as_needed_and_chatter_is_raised_at_the_limit() -> None:
    f = PresenceFilter(20_000, None, None, 40)
    t = 1_000_000
    f.start(t)
    sizes = []
    raised = []
    for k in range(1, 42):
        t = ticks_add(t, 1_000_000)  # one transition a second: 41 in 41 s
        out = f.feed(k % 2, t, [])
        sizes.append(len(f._ring))
        raised += [(k, item) for item in out if getattr(item, "kind", None) == CHATTER]
    assert sizes[0] == 16 and sizes[16] == 32 and sizes[-1] == 41
    assert [k for k, item in raised] == [41] and raised[0][1].active
    assert f.counters["chatter"] == 1
    # Quiet for a minute: the fault clears, and the ring keeps its size (no churn).
    out = f.poll(ticks_add(t, 61_000_000), [])
    assert [(i.kind, i.active) for i in out if hasattr(i, "kind")] == [(CHATTER, False)]
    assert len(f._ring) == 41


def test_a_loop_at_normal_traffic_keeps_a_small_ring() -> None:
    f = PresenceFilter(20_000, None, None, 120)
    t = 0
    f.start(t)
    for k in range(1, 600):  # 30 transitions a minute (900 veh/h) for 20 minutes
        t = ticks_add(t, 2_000_000)
        f.feed(k % 2, t, [])
    assert len(f._ring) == 32 and f.counters["chatter"] == 0
