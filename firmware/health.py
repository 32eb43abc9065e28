"""The node's HEALTH report (protocols/link_messages.py): heap, uptime, per-device counters and the
loss counters that make every dropped reading or frame visible at the gateway.

The link client sends one every `health_s` (default 10 s) and when the gateway asks ("health"
command). Keys:

    tick        ticks_ms when built
    uptime_ms   since boot, accumulated by Uptime (ticks wrap every 2**30 ms, about 12 days)
    heap_free   gc.mem_free() now; -1 where the runtime cannot tell (CPython)
    heap_min    the lowest heap_free the link client has seen since boot; -1 likewise
    heap_peak   the largest live heap (gc.mem_alloc() right after a collection) seen since boot,
                sampled every heap_watch_ms by firmware/app.py; -1 where unknown
    dev         {device id: the driver's `counters` plus "last_fault"}
    loss        link and outbox counters: ring_overflow and outbox_dropped (readings that are gone
                for good), resent, bad_frames_in, ... (LinkClient.loss_counters())
    errors      node.config_errors: the config entries the node refused

A report too big for a frame loses detail in steps rather than going unsent (trim_health, called
by LinkClient._push_health), each step marked in loss["health_trimmed"]: 1 each device's last_fault
cut to FAULT_CHARS, 2 its zero counters dropped too, 3 the `dev` section dropped.
"""

from protocols.ticks import ticks_diff

_PLAIN = (int, float, str, bool)
FAULT_CHARS = 48


class Uptime:
    """Milliseconds since boot, safe past the tick wrap: call update(now) at least every few days
    (the link client does so on every pass of its loop)."""

    def __init__(self, now_ms):
        self.ms = 0
        self._last = now_ms

    def update(self, now_ms):
        step = ticks_diff(now_ms, self._last)
        if step > 0:
            self.ms += step
            self._last = now_ms
        return self.ms


def _plain(value):
    # HEALTH is msgpack: anything else a driver left in last_fault (an exception, say) goes as text.
    if value is None or isinstance(value, _PLAIN):
        return value
    return str(value)


def device_report(driver):
    """A copy of a driver's counters with its last_fault (the driver's own dict is not touched)."""
    report = {}
    counters = getattr(driver, "counters", None)
    if isinstance(counters, dict):
        for key in counters:
            report[str(key)] = _plain(counters[key])
    report["last_fault"] = _plain(getattr(driver, "last_fault", None))
    return report


def _heap_peak(node):
    peak = getattr(node, "heap_peak", None)
    return -1 if peak is None else peak


def build_health(node, link_client, devices, uptime_ms):
    """The HEALTH message dict. `devices` maps device id -> driver (may be None or empty)."""
    free = node.hal.mem_free()
    dev = {}
    if devices:
        for did in devices:
            dev[did] = device_report(devices[did])
    heap_min = link_client.heap_min
    return {
        "tick": node.hal.ticks_ms(),
        "uptime_ms": uptime_ms,
        "heap_free": -1 if free is None else free,
        "heap_min": -1 if heap_min is None else heap_min,
        "heap_peak": _heap_peak(node),
        "dev": dev,
        "loss": link_client.loss_counters(),
        "errors": node.config_errors,
    }


def trim_health(message, step):
    """Make a HEALTH message smaller, `step` 1..3 (see the module doc)."""
    message["loss"]["health_trimmed"] = step
    dev = message["dev"]
    if step >= 3:
        message["dev"] = {}
        return
    for did in dev:
        report = dev[did]
        fault = report.get("last_fault")
        if isinstance(fault, str) and len(fault) > FAULT_CHARS:
            report["last_fault"] = fault[:FAULT_CHARS - 3] + "..."
        if step >= 2:
            for key in [k for k in report if report[k] == 0]:
                del report[key]
