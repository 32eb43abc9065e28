"""Latency on the emulated demo junction: emulator event -> decoded at an MQTT subscriber, at the
demo's 115200-baud node links (DESIGN.md target: p99 <= 150 ms).

    .venv/bin/python bench/latency.py [--seconds 30] [--runtime cab-pico=micropython]

Runs hil/scenarios/demo.toml (fault-free) with the firmware's own event flush (link
event_flush_ms, default 0) and the gateway's [gateway] event_window_ms from boards.toml (100 ms,
counted from each event's own time), then prints the accounting's latency percentiles per kind.
The instant is the emulator's: a loop edge's own time for detector events (the node stamps events
with it), the controller's interval change for phase events (the node stamps the start of the
poll that saw it: boards.toml polls every 40 ms), the frame or the reply for PM and CO2
(measurements wait for the gateway's measurement interval as well, so they are shown but not
judged). A second table gives each event's time from its stamp (the UTC time it carries) to the
subscriber: node pipeline, link, spool, the event window and the broker; the rest of its latency
is how late the node stamped it (for a phase event, the wait for the poll that saw the change).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil.junction import run_scenario  # noqa: E402
from hil.scenario import load_scenario  # noqa: E402
from protocols.quality_codes import EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON  # noqa: E402

TARGET_P99_MS = 150
EVENT_KINDS = ("detector", "phase")


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="scenario duration")
    parser.add_argument("--runtime", action="append", default=[], help="BOARD=cpython|micropython")
    parser.add_argument("--event-window-ms", type=int, default=None,
                        help="the gateway's event window (default: boards.toml's, 100 ms)")
    parser.add_argument("--event-flush-ms", type=int, default=None,
                        help="the nodes' link event_flush_ms (default: the firmware's, 0)")
    args = parser.parse_args()
    runtimes = dict(item.split("=", 1) for item in args.runtime)
    scenario = load_scenario("demo").with_runtimes(runtimes)
    gateway = {k: v for k, v in scenario.gateway.items() if k != "event_window_ms"}
    if args.event_window_ms is not None:
        gateway["event_window_ms"] = args.event_window_ms
    # The scenario's own event flush (50 ms, for its wire faults) is not what a node runs.
    link = {k: v for k, v in scenario.link.items() if k != "event_flush_ms"}
    if args.event_flush_ms is not None:
        link["event_flush_ms"] = args.event_flush_ms
    scenario = scenario.with_changes(duration_s=args.seconds, link=link, gateway=gateway)
    with tempfile.TemporaryDirectory(prefix="citynerve-latency-") as folder:
        result = asyncio.run(run_scenario(scenario, workdir=Path(folder)))
    acc = result.accounting
    boards = ", ".join(f"{b} {i.runtime}" for b, i in result.truth.boards.items())
    window = scenario.gateway.get("event_window_ms", "boards.toml's")
    print(f"demo junction, {args.seconds:g} s, node links 115200 baud, gateway event window {window} ms; {boards}")
    print(f"{'kind':<10} {'count':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind, p in sorted(acc.latency_ms.items()):
        print(f"{kind:<10} {p['count']:>6} {p['p50']:>8} {p['p90']:>8} {p['p99']:>8} {p['max']:>8}"
              + ("" if kind in EVENT_KINDS else "   (waits for the measurement interval)"))
    # Each decoded event's way from its stamp to the subscriber; the stamp's own lag is the rest.
    after: dict[str, list[float]] = {}
    for r in result.readings:
        if r.kind == "e":
            kind = "detector" if r.code in (EVENT_DETECTOR_ON, EVENT_DETECTOR_OFF) else "phase"
            after.setdefault(kind, []).append(r.recv_ms - r.t)
    print("from the event's stamp to the subscriber:")
    for kind in EVENT_KINDS:
        if kind in after:
            v = after[kind]
            print(f"{kind:<10} {len(v):>6} {_pct(v, 50):>8.0f} {_pct(v, 90):>8.0f} {_pct(v, 99):>8.0f} {max(v):>8.0f}")
    worst = max((acc.latency_ms[k]["p99"] or 0) for k in EVENT_KINDS if k in acc.latency_ms)
    verdict = "met" if worst <= TARGET_P99_MS else "NOT met"
    print(f"events p99 {worst} ms against the {TARGET_P99_MS} ms target: {verdict}")
    if acc.violations(scenario.expect):
        print("accounting: " + "; ".join(acc.violations(scenario.expect)))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
