"""The demo junction's readings (boards.toml, hil/scenarios/demo.toml), synthesized in virtual time.

    stream = demo_junction(seconds=600, seed=7)
    stream.nodes["cab-pico"].measurements     # [Reading(t_ms, stream, value)], time order
    stream.nodes["cab-pico"].events           # [(t_ms, code, param)], time order

What each node of the demo junction reports, made by the same models the harness uses, so that
the wire-size and gateway benchmarks measure the stream the demo produces, not a guess:

  cab-pico   two loop pairs (nb-lane1 900 veh/h, sb-lane1 700 veh/h, 25-45 mph; firmware/
             traffic_sim.py): detector on/off events (82/81) on channels 1-4 at every loop edge,
             and the loop-presence profile's 7 measures per lane every 30 s; the fixed-time plan of
             the demo scenario (hil/emulators/signal_controller.py DualRingController) polled
             every 100 ms and turned into phase and pedestrian events (firmware/phase_events.py)
  air-esp32  PMS5003 pm1_0 / pm2_5 / pm10 (ug/m3, whole numbers) every 1-2 s; SenseAir S8 co2_ppm
             every 4 s (boards.toml poll_ms)
  air-pico   SDS011 pm2_5 / pm10 (one decimal) every 1 s

Air values follow a slow swell with noise, as the demo scenario's air profile does; everything is
deterministic for a seed. Times are UTC ms from `t0_ms`.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware.phase_events import PhaseEventDetector  # noqa: E402
from firmware.traffic_sim import LaneSpec, TrafficRun  # noqa: E402
from hil.emulators.signal_controller import DualRingController  # noqa: E402

__all__ = ["DemoStream", "NodeStream", "Reading", "StreamInfo", "demo_junction"]

T0_MS = 1_750_000_000_000
LOOP_INTERVAL_S = 30  # boards.toml cab-pico interval_s (PeMS raw sample)
CONTROLLER_POLL_MS = 100  # boards.toml ctrl poll_ms
CO2_POLL_MS = 4000  # boards.toml co2 poll_ms

# hil/scenarios/demo.toml [signal]: fixed time, through phases 2/6 with pedestrians, 4/8 without.
DEMO_PLAN = {
    "mode": "fixed", "startup_s": 1.0,
    "phases": {"2": {"green": 8, "yellow": 3, "red_clear": 1, "ped": {"walk": 4, "ped_clear": 4}},
               "6": {"green": 8, "yellow": 3, "red_clear": 1, "ped": {"walk": 4, "ped_clear": 4}},
               "4": {"green": 5, "yellow": 3, "red_clear": 1, "ped": False},
               "8": {"green": 5, "yellow": 3, "red_clear": 1, "ped": False}},
}  # fmt: skip
# (device id, detector channels of loops A and B, flow veh/h): boards.toml and demo.toml.
LANES = [("nb-lane1", (1, 2), 900), ("sb-lane1", (3, 4), 700)]
# profiles/loop-presence.json streams
LOOP_MEASURES = [("volume", "veh", "count", 0), ("flow", "veh/h", "rate", 0),
                 ("occupancy", "%", "gauge", 2), ("speed", "mph", "gauge", 1),
                 ("headway", "s", "gauge", 2), ("gap", "s", "gauge", 2),
                 ("length", "ft", "gauge", 1)]


class StreamInfo(NamedTuple):
    name: str
    unit: str
    kind: str
    dec: int | None


class Reading(NamedTuple):
    t_ms: int
    stream: str
    value: int | float


@dataclass
class NodeStream:
    node: str
    streams: list[StreamInfo]
    measurements: list[Reading] = field(default_factory=list)
    events: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def readings(self) -> int:
        return len(self.measurements) + len(self.events)


@dataclass
class DemoStream:
    seconds: int
    t0_ms: int
    nodes: dict[str, NodeStream]

    @property
    def readings(self) -> int:
        return sum(n.readings for n in self.nodes.values())


def _cab(seconds: int, seed: int, t0_ms: int) -> NodeStream:
    streams = [StreamInfo(f"{lane}/{name}", unit, kind, dec)
               for lane, _, _ in LANES for name, unit, kind, dec in LOOP_MEASURES]
    node = NodeStream("cab-pico", streams)
    duration_us = seconds * 1_000_000
    specs = [LaneSpec(flow_vph=flow, speed_mph=(25, 45), spacing_ft=20) for _, _, flow in LANES]
    run = TrafficRun(specs, seed, duration_us)
    events: list[tuple[int, int, int]] = []
    for (lane, channels, _), vehicles in zip(LANES, run.lanes):
        for v in vehicles:
            for (on, off), channel in (((v.a_on, v.a_off), channels[0]),
                                       ((v.b_on, v.b_off), channels[1])):
                if off < duration_us:
                    events.append((t0_ms + on // 1000, 82, channel))
                    events.append((t0_ms + off // 1000, 81, channel))
    # The controller polled like the node's driver does: maps every 100 ms, events from changes.
    controller = DualRingController(DEMO_PLAN, start_us=0)
    detector = PhaseEventDetector()
    for t_us in range(0, duration_us, CONTROLLER_POLL_MS * 1000):
        controller.advance_to(t_us)
        for t, code, param in detector.update(controller.maps(), t_us):
            events.append((t0_ms + t // 1000, code, param))
    node.events = sorted(events)
    interval_us = LOOP_INTERVAL_S * 1_000_000
    count = seconds // LOOP_INTERVAL_S
    for li, (lane, _, _) in enumerate(LANES):
        for k, row in enumerate(run.truth(li, interval_us, count)):
            t = t0_ms + (k + 1) * LOOP_INTERVAL_S * 1000
            volume = row["volume"]
            values: dict[str, int | float] = {
                "volume": volume, "flow": volume * 3600 // LOOP_INTERVAL_S,
                "occupancy": round(row["on_us"] * 100 / interval_us, 2)}
            if row["speeds_mph"]:
                values["speed"] = round(sum(row["speeds_mph"]) / len(row["speeds_mph"]), 1)
                values["length"] = round(sum(row["lengths_ft"]) / len(row["lengths_ft"]), 1)
            if row["headways_us"]:
                values["headway"] = round(sum(row["headways_us"]) / len(row["headways_us"]) / 1e6, 2)
                values["gap"] = round(sum(row["gaps_us"]) / len(row["gaps_us"]) / 1e6, 2)
            for name, _, _, _ in LOOP_MEASURES:
                if name in values:
                    node.measurements.append(Reading(t, f"{lane}/{name}", values[name]))
    node.measurements.sort()
    return node


def _swell(t_s: float, low: float, high: float, period_s: float = 300.0) -> float:
    return low + (high - low) * (0.5 - 0.5 * math.cos(2 * math.pi * t_s / period_s))


def _air_esp32(seconds: int, rng: random.Random, t0_ms: int) -> NodeStream:
    streams = [StreamInfo(f"pm1/{n}", "ug/m3", "gauge", 0) for n in ("pm1_0", "pm2_5", "pm10")]
    streams.append(StreamInfo("co2/co2_ppm", "ppm", "gauge", 0))
    node = NodeStream("air-esp32", streams)
    end = seconds * 1000
    t = rng.randint(0, 900)
    while t < end:
        pm25 = _swell(t / 1000, 9, 24) + rng.gauss(0, 1.5)
        for name, factor in (("pm1_0", 0.65), ("pm2_5", 1.0), ("pm10", 1.45)):
            node.measurements.append(Reading(t0_ms + t, f"pm1/{name}", max(0, round(pm25 * factor))))
        t += rng.randint(1000, 2000)
    t = rng.randint(0, CO2_POLL_MS)
    while t < end:
        co2 = _swell(t / 1000, 415, 560) + rng.gauss(0, 3)
        node.measurements.append(Reading(t0_ms + t + rng.randint(0, 30), "co2/co2_ppm", round(co2)))
        t += CO2_POLL_MS
    node.measurements.sort()
    return node


def _air_pico(seconds: int, rng: random.Random, t0_ms: int) -> NodeStream:
    streams = [StreamInfo("pm2/pm2_5", "ug/m3", "gauge", 1), StreamInfo("pm2/pm10", "ug/m3", "gauge", 1)]
    node = NodeStream("air-pico", streams)
    t = rng.randint(0, 1000)
    while t < seconds * 1000:
        pm25 = max(0.0, _swell(t / 1000, 8, 22) + rng.gauss(0, 1.5))
        node.measurements.append(Reading(t0_ms + t, "pm2/pm2_5", round(pm25, 1)))
        node.measurements.append(Reading(t0_ms + t, "pm2/pm10", round(pm25 * 1.6 + rng.gauss(0, 1), 1)))
        t += 1000 + rng.randint(-20, 20)  # SDS011 at 1 Hz, with the node's read jitter
    return node


def demo_junction(*, seconds: int = 600, seed: int = 7, t0_ms: int = T0_MS) -> DemoStream:
    """The demo junction's readings over `seconds` (see the module doc)."""
    rng = random.Random(seed)
    nodes = [_cab(seconds, seed, t0_ms), _air_esp32(seconds, rng, t0_ms),
             _air_pico(seconds, rng, t0_ms)]
    return DemoStream(seconds, t0_ms, {n.node: n for n in nodes})


if __name__ == "__main__":
    demo = demo_junction()
    for n in demo.nodes.values():
        print(f"{n.node:10} {len(n.measurements):6} measurements {len(n.events):6} events "
              f"({n.readings / demo.seconds:.2f} readings/s)")
    print(f"{'all':10} {demo.readings} readings in {demo.seconds} s")
