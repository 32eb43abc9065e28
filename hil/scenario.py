"""Scenarios as data: what the emulated junction runs, how long, with which faults, and what the
accounting must find. A scenario is a TOML file (hil/scenarios/*.toml):

    name = "demo"
    duration_s = 25            # scenario time 0 is when the traffic starts; truth counts up to here
    drain_s = 30               # at most this long after it for everything to be delivered
    boards = "boards.toml"     # the junction (relative to the repository root or the file)
    seed = 7
    broker = "embedded"        # "embedded" (amqtt), "mosquitto", or "auto" (mosquitto if installed)

    [runtimes]                 # board -> "cpython" | "micropython" (default cpython)
    air-pico = "micropython"

    [gateway]                  # [gateway] settings for the emulated run (boards.toml's otherwise)
    measurement_interval_s = 2

    [nodes]                    # every board's config: top-level keys (interval_s) and
    interval_s = 5
    [nodes.link]               # link settings (firmware/link_client.py SETTINGS)
    ring_slots = 48
    ring_bytes = 16384
    [nodes.devices.pm1]        # per device id: keys merged into that device's entry
    warmup_s = 0

    [[traffic.lane]]           # one per loop device: demand played to its pins (and the controller)
    board = "cab-pico"
    device = "nb-lane1"
    flow_vph = 900
    speed_mph = [25, 45]
    phase = 2                  # loop A calls this controller phase

    [signal]                   # hil.emulators.signal_controller.SignalPlan.from_dict
    mode = "fixed"

    [air]                      # piecewise-linear profiles, [[t_s, value], ...], repeated past the end
    pm2_5 = [[0, 12], [60, 30]]
    co2_ppm = [[0, 420], [60, 700]]
    pm_noise = 2               # +- uniform noise on PM, seeded

    [[fault]]                  # kinds: broker_down, gateway_kill, node_reboot, bit_errors, dead_unit
    kind = "broker_down"
    at_s = 8
    duration_s = 12

    [expect]                   # what the accounting must find (see Expectations)
    lost = 0

Errors are ScenarioError with the file and the key, in one sentence.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hil.firmware_process import RUNTIMES

__all__ = [
    "AirProfile",
    "Expectations",
    "FAULT_KINDS",
    "FaultSpec",
    "LaneDemand",
    "SCENARIO_DIR",
    "Scenario",
    "ScenarioError",
    "find_scenario",
    "load_scenario",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
FAULT_KINDS = ("broker_down", "gateway_kill", "node_reboot", "bit_errors", "dead_unit")
BROKERS = ("embedded", "mosquitto", "auto")


class ScenarioError(Exception):
    """A scenario file cannot be used: `path`, the `key` at fault and the reason, in one sentence."""

    def __init__(self, path: str | Path, key: str, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        super().__init__(f"scenario {self.path}, {key}: {reason}")


@dataclass(frozen=True, kw_only=True)
class LaneDemand:
    """Traffic on one loop device of a board."""

    board: str
    device: str
    flow_vph: int = 900
    speed_mph: tuple[float, float] = (25.0, 45.0)
    phase: int | None = None


@dataclass(frozen=True, kw_only=True)
class AirProfile:
    """Air quality over scenario time: PM2.5 in ug/m3 and CO2 in ppm, as (t_s, value) points."""

    pm2_5: tuple[tuple[float, float], ...] = ((0.0, 12.0), (60.0, 28.0), (120.0, 12.0))
    co2_ppm: tuple[tuple[float, float], ...] = ((0.0, 420.0), (60.0, 650.0), (120.0, 420.0))
    pm_noise: float = 2.0

    def at(self, points: tuple[tuple[float, float], ...], t_s: float) -> float:
        """The profile's value at t_s (linear between points, repeating after the last one)."""
        if len(points) == 1:
            return points[0][1]
        span = points[-1][0] - points[0][0]
        t = points[0][0] + ((t_s - points[0][0]) % span if span > 0 else 0.0)
        for (t0, v0), (t1, v1) in zip(points, points[1:]):
            if t0 <= t <= t1:
                return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return points[-1][1]


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """One scheduled fault. `at_s` is scenario time; the other fields apply per kind:
    broker_down (duration_s), gateway_kill (restart_after_s), node_reboot (board, down_s),
    bit_errors (rate, wires: "all" or a list of wire names like "cab-pico/link"),
    dead_unit (board, bus, address, profile, poll_ms; silent from at_s for duration_s or for good)."""

    kind: str
    at_s: float = 0.0
    duration_s: float | None = None
    restart_after_s: float = 1.0
    board: str | None = None
    down_s: float = 1.0
    rate: float = 0.0
    wires: tuple[str, ...] | str = "all"
    bus: str | None = None
    address: int | None = None
    profile: str = "generic-modbus-sensor"
    poll_ms: int = 1000


@dataclass(frozen=True, kw_only=True)
class Expectations:
    """What a run must end with. Counts are maxima (0: none allowed). Late is measured from the
    truth instant to the subscriber; lateness inside a fault's window (its start to its end plus
    `recovery_s`) is counted apart as explained."""

    lost: int = 0
    corrupted: int = 0
    duplicated: int = 0
    late: int = 0
    unexplained_faults: int | None = None  # None: reported, not judged
    late_event_ms: int = 1500
    late_measurement_ms: int | None = None  # default: measurement interval + 5 s
    recovery_s: float = 20.0
    reboot_loss_window_s: float = 3.0  # data a node held in RAM when it was reset is explained loss


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    path: Path | None
    description: str = ""
    duration_s: float = 25.0
    drain_s: float = 30.0
    boards: Path = REPO_ROOT / "boards.toml"
    seed: int = 7
    broker: str = "embedded"
    runtimes: Mapping[str, str] = field(default_factory=dict)
    gateway: Mapping[str, Any] = field(default_factory=dict)
    node_settings: Mapping[str, Any] = field(default_factory=dict)
    link: Mapping[str, Any] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    lanes: tuple[LaneDemand, ...] = ()
    signal: Mapping[str, Any] = field(default_factory=lambda: {"mode": "fixed"})
    air: AirProfile = field(default_factory=AirProfile)
    faults: tuple[FaultSpec, ...] = ()
    expect: Expectations = field(default_factory=Expectations)

    def runtime_of(self, board: str) -> str:
        return self.runtimes.get(board, "cpython")

    def with_runtimes(self, runtimes: Mapping[str, str]) -> Scenario:
        """The same scenario with some boards' runtimes replaced."""
        for board, runtime in runtimes.items():
            if runtime not in RUNTIMES:
                raise ScenarioError(self.path or self.name, f"runtimes.{board}",
                                    f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
        return replace(self, runtimes={**self.runtimes, **runtimes})

    def with_changes(self, **changes: Any) -> Scenario:
        return replace(self, **changes)

    def faults_of(self, kind: str) -> list[FaultSpec]:
        return [f for f in self.faults if f.kind == kind]


def find_scenario(name_or_path: str | Path) -> Path:
    """A scenario file: a path, or a name in hil/scenarios/ ("faults" -> hil/scenarios/faults.toml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
    raise ScenarioError(name_or_path, "file", f"no such file and no such scenario (known: {known})")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Read and check a scenario file; ScenarioError names the key at fault."""
    path = find_scenario(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(path, "file", f"is not valid TOML ({exc})") from None
    return _build(path, data)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, reason: str) -> ScenarioError:
        return ScenarioError(self.path, key, reason)

    def number(self, table: Mapping[str, Any], key: str, default: float, where: str, *,
               low: float = 0.0) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            raise self.fail(f"{where}{key}", f"{value!r} is not a number >= {low:g}")
        return float(value)

    def table(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def points(self, value: object, key: str) -> tuple[tuple[float, float], ...]:
        if (not isinstance(value, list) or not value
                or not all(isinstance(p, list) and len(p) == 2
                           and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in p)
                           for p in value)):
            raise self.fail(key, "must be a list of [t_s, value] pairs")
        points = tuple((float(t), float(v)) for t, v in value)
        if any(b[0] <= a[0] for a, b in zip(points, points[1:])):
            raise self.fail(key, "times must rise from one point to the next")
        return points


def _build(path: Path, data: Mapping[str, Any]) -> Scenario:
    r = _Reader(path)
    known = {"name", "description", "duration_s", "drain_s", "boards", "seed", "broker", "runtimes",
             "gateway", "nodes", "traffic", "signal", "air", "fault", "expect"}
    for key in data:
        if key not in known:
            raise r.fail(key, f"is not a scenario key (keys: {', '.join(sorted(known))})")
    boards = Path(str(data.get("boards", "boards.toml")))
    if not boards.is_absolute():
        beside = path.parent / boards
        boards = beside if beside.exists() else REPO_ROOT / boards
    if not boards.exists():
        raise r.fail("boards", f"{boards} does not exist")
    broker = data.get("broker", "embedded")
    if broker not in BROKERS:
        raise r.fail("broker", f"{broker!r} is not one of {', '.join(BROKERS)}")
    runtimes = r.table(data, "runtimes")
    for board, runtime in runtimes.items():
        if runtime not in RUNTIMES:
            raise r.fail(f"runtimes.{board}", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    nodes = r.table(data, "nodes")
    link = nodes.get("link", {})
    devices = nodes.get("devices", {})
    if not isinstance(link, dict) or not isinstance(devices, dict) or not all(
            isinstance(v, dict) for v in devices.values()):
        raise r.fail("nodes", "link and devices.<id> must be tables")
    settings = {k: v for k, v in nodes.items() if k not in ("link", "devices")}
    lanes = []
    traffic = r.table(data, "traffic")
    for i, raw in enumerate(traffic.get("lane", [])):
        where = f"traffic.lane[{i}]."
        if not isinstance(raw.get("board"), str) or not isinstance(raw.get("device"), str):
            raise r.fail(f"{where}board", "a lane names its board and loop device")
        speed = raw.get("speed_mph", [25, 45])
        if (not isinstance(speed, list) or len(speed) != 2
                or not all(isinstance(x, (int, float)) for x in speed) or not 0 < speed[0] <= speed[1]):
            raise r.fail(f"{where}speed_mph", "must be [lowest, highest] mph, both > 0")
        phase = raw.get("phase")
        if phase is not None and (not isinstance(phase, int) or not 1 <= phase <= 8):
            raise r.fail(f"{where}phase", f"{phase!r} is not a phase 1..8")
        lanes.append(LaneDemand(board=raw["board"], device=raw["device"],
                                flow_vph=int(r.number(raw, "flow_vph", 900, where, low=1)),
                                speed_mph=(float(speed[0]), float(speed[1])), phase=phase))
    signal = r.table(data, "signal") or {"mode": "fixed"}
    air_raw = r.table(data, "air")
    air = AirProfile(
        pm2_5=r.points(air_raw["pm2_5"], "air.pm2_5") if "pm2_5" in air_raw else AirProfile().pm2_5,
        co2_ppm=r.points(air_raw["co2_ppm"], "air.co2_ppm") if "co2_ppm" in air_raw else AirProfile().co2_ppm,
        pm_noise=r.number(air_raw, "pm_noise", 2.0, "air."))
    faults = tuple(_fault(r, i, raw) for i, raw in enumerate(data.get("fault", [])))
    expect_raw = r.table(data, "expect")
    expect_keys = set(Expectations.__dataclass_fields__)
    for key in expect_raw:
        if key not in expect_keys:
            raise r.fail(f"expect.{key}", f"is not an expectation (keys: {', '.join(sorted(expect_keys))})")
    expect = Expectations(**expect_raw)
    duration = r.number(data, "duration_s", 25, "", low=1)
    for i, f in enumerate(faults):
        if f.at_s > duration:
            raise r.fail(f"fault[{i}].at_s", f"{f.at_s:g} s is after the end ({duration:g} s)")
    return Scenario(
        name=str(data.get("name", path.stem)), path=path, description=str(data.get("description", "")),
        duration_s=duration, drain_s=r.number(data, "drain_s", 30, "", low=1), boards=boards,
        seed=int(r.number(data, "seed", 7, "")), broker=broker, runtimes=runtimes,
        gateway=r.table(data, "gateway"), node_settings=settings, link=link, devices=devices,
        lanes=tuple(lanes), signal=signal, air=air, faults=faults, expect=expect)


def _fault(r: _Reader, i: int, raw: Mapping[str, Any]) -> FaultSpec:
    where = f"fault[{i}]."
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise r.fail(f"{where}kind", f"{kind!r} is not one of {', '.join(FAULT_KINDS)}")
    allowed = set(FaultSpec.__dataclass_fields__)
    for key in raw:
        if key not in allowed:
            raise r.fail(f"{where}{key}", f"is not a fault setting (settings: {', '.join(sorted(allowed))})")
    at = r.number(raw, "at_s", 0, where)
    duration = raw.get("duration_s")
    if duration is not None:
        duration = r.number(raw, "duration_s", 0, where, low=0.001)
    if kind == "broker_down" and duration is None:
        raise r.fail(f"{where}duration_s", "a broker outage needs its duration")
    if kind in ("node_reboot", "dead_unit") and not isinstance(raw.get("board"), str):
        raise r.fail(f"{where}board", f"a {kind} fault names its board")
    if kind == "dead_unit" and (not isinstance(raw.get("bus"), str)
                                or not isinstance(raw.get("address"), int)):
        raise r.fail(f"{where}bus", "a dead unit names its bus and Modbus address")
    rate = r.number(raw, "rate", 0, where)
    if kind == "bit_errors" and not 0 < rate <= 0.01:
        raise r.fail(f"{where}rate", f"{rate!r} is not a bit error rate in (0, 0.01]")
    wires = raw.get("wires", "all")
    if wires != "all" and (not isinstance(wires, list) or not all(isinstance(w, str) for w in wires)):
        raise r.fail(f"{where}wires", "must be \"all\" or a list of wire names like \"cab-pico/link\"")
    return FaultSpec(kind=kind, at_s=at, duration_s=duration,
                     restart_after_s=r.number(raw, "restart_after_s", 1.0, where),
                     board=raw.get("board"), down_s=r.number(raw, "down_s", 1.0, where),
                     rate=rate, wires=wires if wires == "all" else tuple(wires), bus=raw.get("bus"),
                     address=raw.get("address"), profile=str(raw.get("profile", "generic-modbus-sensor")),
                     poll_ms=int(r.number(raw, "poll_ms", 1000, where, low=1)))
