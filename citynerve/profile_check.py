"""Device profiles (profiles/*.json) as `boards check` sees them: loaded once each, checked key by
key against what the node's drivers and the gateway's poller read, problems at their JSON line.

Only the profiles boards.toml names are loaded; a broken profile is reported once, however many
devices use it, and the devices using it are not checked further against it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citynerve.check_report import ERROR, Problem
from citynerve.json_locations import json_locations
from citynerve.stream_policy_check import POLICY_KEYS, check_policy_values
from citynerve.table_checks import (
    BOOL, INT, INT_LIST, NUMBER, STR, Kind, KeySpec, Scope, Sink, is_int, check_table)
from citynerve.toml_locations import Locations
from firmware.config import driver_for
from gateway.modbus_errors import ProfileError
from gateway.register_values import profile_registers, profile_status, register_spec

FRAMINGS = ("8N1", "8E1", "8O1", "8N2")  # firmware/config.py and hal_machine accept exactly these
INTERFACES = ("modbus-rtu", "uart-frames", "presence-pins")

OBJECT = Kind("an object", lambda v: isinstance(v, dict))
OBJECTS = Kind("a list of objects", lambda v: isinstance(v, list) and all(isinstance(e, dict) for e in v))
STR_LIST = Kind("a list of strings", lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v))
LIST = Kind("a list", lambda v: isinstance(v, list))
INT_OR_OBJECT = Kind("a whole number or a {table: number} object", lambda v: is_int(v) or isinstance(v, dict))

_COMMON = {
    "profile": KeySpec(STR, '"profile": "<the file name without .json>"', required=True),
    "description": KeySpec(STR, '"description": "what the device is"'),
    "interface": KeySpec(STR, '"interface": "modbus-rtu"', required=True),
}
_LINE = {
    "bauds": KeySpec(INT_LIST, '"bauds": [9600, 19200]', required=True),
    "framings": KeySpec(STR_LIST, '"framings": ["8N1", "8E1"]', required=True),
}
# Per-device tuning of firmware/modbus_master.py a profile may default (firmware/drivers/modbus_sensor.py).
_TUNING = ("timeout_ms", "retries", "offline_after", "backoff_ms", "backoff_max_ms")
PROFILE_KEYS: dict[str, dict[str, KeySpec]] = {
    "modbus-rtu": {
        **_COMMON, **_LINE,
        "any_address": KeySpec(BOOL, '"any_address": false'),
        "turnaround_ms": KeySpec(NUMBER, '"turnaround_ms": 10'),
        "max_registers_per_request": KeySpec(INT, '"max_registers_per_request": 16'),
        "one_register_per_request": KeySpec(BOOL, '"one_register_per_request": false'),
        "max_gap": KeySpec(INT_OR_OBJECT, '"max_gap": 2'),
        "registers": KeySpec(OBJECTS, '"registers": [{"name": "co2_ppm", "table": "input", "address": 3}]',
                             required=True),
        "status": KeySpec(OBJECT, '"status": {"register": "meter_status", "fault_bits": {"0": "fatal"}}'),
        "writable": KeySpec(LIST, '"writable": []'),
        "commands": KeySpec(OBJECT, '"commands": {}'),
        "channels": KeySpec(INT, '"channels": 8'),
        "phases": KeySpec(INT, '"phases": 8'),
        "poll_ms": KeySpec(INT, '"poll_ms": 1000'),
        **{key: KeySpec(INT, f'"{key}": 100') for key in _TUNING},
    },
    "uart-frames": {
        **_COMMON, **_LINE,
        "modes": KeySpec(STR_LIST, '"modes": ["active", "passive"]'),
        "warmup_s": KeySpec(NUMBER, '"warmup_s": 30'),
        "silence_timeout_s": KeySpec(NUMBER, '"silence_timeout_s": 5'),
        "streams": KeySpec(OBJECTS, '"streams": [{"name": "pm2_5", "unit": "ug/m3"}]', required=True),
    },
    "presence-pins": {
        **_COMMON,
        "active_level": KeySpec(INT, '"active_level": 0'),
        "debounce_ms": KeySpec(NUMBER, '"debounce_ms": 20'),
        "stuck_on_s": KeySpec(NUMBER, '"stuck_on_s": 300'),
        "stuck_off_s": KeySpec(NUMBER, '"stuck_off_s": 3600'),
        "chatter_per_min": KeySpec(NUMBER, '"chatter_per_min": 120'),
        "g_factor_ft": KeySpec(NUMBER, '"g_factor_ft": 22'),
        "streams": KeySpec(OBJECTS, '"streams": [{"name": "volume", "unit": "veh"}]', required=True),
    },
}
# Publishing policy defaults per quantity (gateway/config.py; a device's stream_policy overrides).
_POLICY = {key: KeySpec(NUMBER, f'"{key}": 5') for key in POLICY_KEYS}
REGISTER_KEYS = {
    "name": KeySpec(STR, '"name": "co2_ppm"', required=True),
    "table": KeySpec(STR, '"table": "holding"'),
    "address": KeySpec(INT, '"address": 0', required=True),
    "type": KeySpec(STR, '"type": "u16"'),
    "byte_order": KeySpec(STR, '"byte_order": "big"'),
    "word_order": KeySpec(STR, '"word_order": "big"'),
    "scale": KeySpec(NUMBER, '"scale": 0.1'),
    "dec": KeySpec(INT, '"dec": 1'),
    "unit": KeySpec(STR, '"unit": "ppm"'),
    "kind": KeySpec(STR, '"kind": "gauge"'),
    "valid_min": KeySpec(NUMBER, '"valid_min": 0'),
    "valid_max": KeySpec(NUMBER, '"valid_max": 10000'),
    "role": KeySpec(STR, '"role": "status"'),
    "channels": KeySpec(INT, '"channels": 4'),
    **_POLICY,
}
STREAM_KEYS = {
    "name": KeySpec(STR, '"name": "pm2_5"', required=True),
    "field": KeySpec(STR, '"field": "pm2_5_atm"'),
    "unit": KeySpec(STR, '"unit": "ug/m3"'),
    "kind": KeySpec(STR, '"kind": "gauge"'),
    "dec": KeySpec(INT, '"dec": 1'),
    **_POLICY,
}
_MIN = {  # key -> (least value, whether the least itself is allowed)
    "turnaround_ms": (0, True), "max_registers_per_request": (1, True), "channels": (1, True),
    "phases": (1, True), "poll_ms": (1, True), "warmup_s": (0, True), "silence_timeout_s": (0, False),
    "debounce_ms": (0, True), "stuck_on_s": (0, False), "stuck_off_s": (0, False),
    "chatter_per_min": (0, True), "g_factor_ft": (0, False), **{key: (0, True) for key in _TUNING},
}


@dataclass
class LoadedProfile:
    """One profile file: its parsed JSON (None when unreadable) and its problems."""

    name: str
    file: str
    data: dict[str, Any] | None
    locations: Locations
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.data is not None and not any(p.severity == ERROR for p in self.problems)

    @property
    def interface(self) -> str | None:
        interface = None if self.data is None else self.data.get("interface")
        return interface if interface in INTERFACES else None

    def driver(self) -> tuple[str, str] | None:
        """(module, class) of the node driver for this profile (firmware/config.py's table)."""
        return None if self.data is None else node_driver(self.data, self.name)

    def driver_class(self) -> type | None:
        found = self.driver()
        if found is None:
            return None
        return getattr(importlib.import_module(found[0]), found[1], None)


def node_driver(data: Mapping[str, Any], name: str) -> tuple[str, str] | None:
    """The node's driver for a profile named `name` (the file name, which the node goes by)."""
    if data.get("interface") not in INTERFACES:
        return None
    return driver_for({}, dict(data, profile=name))


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter messages)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class ProfileLibrary:
    """The profiles in `folder`, each loaded and checked the first time it is asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._loaded: dict[str, LoadedProfile] = {}

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def exists(self, name: str) -> bool:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            return False  # a profile is a file of this folder, never a path out of it
        return (self.folder / f"{name}.json").is_file()

    def get(self, name: str) -> LoadedProfile:
        if name not in self._loaded:
            self._loaded[name] = load_profile(self.folder / f"{name}.json")
        return self._loaded[name]

    def used(self) -> list[LoadedProfile]:
        return [self._loaded[name] for name in sorted(self._loaded)]


def load_profile(path: Path) -> LoadedProfile:
    """Read and check one profile file."""
    name, file = path.stem, display_path(path)
    sink = Sink(file, Locations({}))
    scope = Scope(sink, (), f"profile {name}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        scope.error((), f"cannot be read ({exc.__class__.__name__}: {exc})",
                    "check the file exists and is UTF-8 text", line=0)
        return LoadedProfile(name, file, None, sink.locations, sink.problems)
    except json.JSONDecodeError as exc:
        before = exc.doc[:exc.pos].rstrip()
        if exc.msg == "Expecting ',' delimiter" and exc.doc.count("\n", 0, exc.pos) > before.count("\n"):
            # JSON notices a missing comma at the next value; the comma belongs on the line before.
            scope.error((), "not valid JSON: a comma is missing at the end of this line",
                        "add the comma", line=before.count("\n") + 1)
        else:
            scope.error((), f"not valid JSON: {exc.msg} at column {exc.colno}",
                        "fix the JSON syntax there (often a missing or extra comma or quote)",
                        line=exc.lineno)
        return LoadedProfile(name, file, None, sink.locations, sink.problems)
    sink.locations = json_locations(text)
    if not isinstance(data, dict):
        scope.error((), "is not a JSON object", 'write it as {"profile": ..., "interface": ...}', line=1)
        return LoadedProfile(name, file, None, sink.locations, sink.problems)
    check_profile(scope, data, name)
    return LoadedProfile(name, file, data, sink.locations, sink.problems)


def _least(scope: Scope, key: str, value: Any) -> None:
    least, inclusive = _MIN[key]
    if value < least or (value == least and not inclusive):
        scope.error(key, f"{value} is too small", f"use a value {'>=' if inclusive else '>'} {least}")


def check_profile(scope: Scope, data: Mapping[str, Any], name: str) -> None:
    """Every problem of one profile's content."""
    interface = data.get("interface")
    if interface not in INTERFACES:
        if "interface" in data:
            scope.error("interface", f"{interface!r} is not an interface citynerve knows",
                        f"use one of {', '.join(INTERFACES)}")
        # Which keys belong depends on the interface: check only the common ones' types.
        anything = KeySpec(Kind("anything", lambda v: True), "")
        check_table(scope, data, _COMMON | {k: anything for k in data if k not in _COMMON},
                    what="a profile")
        return
    spec = PROFILE_KEYS.get(interface, _COMMON)
    good = check_table(scope, data, spec, what=f"a {interface} profile" if interface else "a profile")
    if "profile" in good and good["profile"] != name:
        scope.error("profile", f'"{good["profile"]}" does not match the file name {name}.json',
                    f'write "profile": "{name}" or rename the file')
    for key, value in good.items():
        if key in _MIN:
            _least(scope, key, value)
    if "max_registers_per_request" in good and good["max_registers_per_request"] > 125:
        scope.error("max_registers_per_request", f"{good['max_registers_per_request']} is more than "
                    "Modbus allows", "use at most 125 (Modbus application spec §6.3)")
    if "active_level" in good and good["active_level"] not in (0, 1):
        scope.error("active_level", f"{good['active_level']} is neither 0 nor 1",
                    "use 0 (the card pulls the input low for a vehicle) or 1")
    for i, baud in enumerate(good.get("bauds", [])):
        if baud <= 0:
            scope.error(("bauds", i), f"{baud} is not a baud rate", "list positive baud rates")
    for i, framing in enumerate(good.get("framings", [])):
        if framing not in FRAMINGS:
            scope.error(("framings", i), f'"{framing}" is not a framing',
                        f"use {', '.join(FRAMINGS)} (in capitals)")
    for key in ("bauds", "framings", "modes", "registers", "streams"):
        if key in good and not good[key]:
            scope.error(key, "is empty", "list at least one")
    if "max_gap" in good:
        gaps = good["max_gap"] if isinstance(good["max_gap"], dict) else {"": good["max_gap"]}
        if not all(is_int(v) and v >= 0 for v in gaps.values()):
            scope.error("max_gap", f"{good['max_gap']!r} must be a whole number >= 0",
                        'write "max_gap": 2 or {"holding": 2, "input": 0}')
    if good.get("registers"):
        _check_registers(scope, data, good["registers"], name)
    for i, stream in enumerate(good.get("streams", [])):
        _check_stream(scope.child(("streams", i), f"streams[{stream.get('name', i)}]."),
                      stream, interface)


def _check_registers(scope: Scope, data: Mapping[str, Any], entries: list[dict[str, Any]],
                     name: str) -> None:
    clean = True
    for i, entry in enumerate(entries):
        reg = scope.child(("registers", i), f"registers[{entry.get('name', i)}].")
        before = len(scope.sink.problems)
        check_table(reg, entry, REGISTER_KEYS, what="a register")
        check_policy_values(reg, entry)
        if len(scope.sink.problems) > before:
            clean = False
            continue
        try:
            register_spec(entry, profile=name)
        except ProfileError as exc:
            clean = False
            reg.error(exc.key or (), exc.reason.split(": ", 1)[-1], _REGISTER_FIX.get(exc.key or "", "correct it"))
    if not clean:
        return
    try:
        specs = profile_registers(data)
        profile_status(data, specs)
    except ProfileError as exc:
        index = next((i for i, e in enumerate(entries) if e.get("name") == exc.register), None)
        key: tuple[str | int, ...] = ("status",) if exc.key and exc.key.startswith("status") else ()
        if not key and index is not None:
            key = ("registers", index, exc.key or "name")
        scope.error(key, exc.reason.split(": ", 1)[-1], "correct the register map")
        return
    _check_driver_needs(scope, data, specs, name)


_REGISTER_FIX = {
    "type": "use u16, i16, u32, i32 or f32 for registers, bool for coils and discrete inputs",
    "table": "use holding, input, coil or discrete",
    "address": "use the register's 0-based PDU address, 0..65535",
    "byte_order": 'use "big" or "little"',
    "word_order": 'use "big" or "little"',
    "channels": "use a whole number >= 1",
    "scale": "use a non-zero number",
    "valid_min": "make valid_min at most valid_max",
}


def _check_driver_needs(scope: Scope, data: Mapping[str, Any], specs: tuple[Any, ...],
                        name: str) -> None:
    """What the node driver chosen for this profile needs from its register map."""
    driver = node_driver(data, name)
    roles = {s.role for s in specs}
    if driver is not None and driver[1] == "SignalControllerDriver":
        # The driver's own list of bitmaps it cannot derive events without.
        from firmware.drivers.signal_controller import _REQUIRED

        names = {s.name for s in specs if s.role == "phase_bitmap"}
        missing = [n for n in _REQUIRED if n not in names]
        if missing:
            scope.error("registers", f"has no phase_bitmap register for {', '.join(missing)}",
                        'add {"name": ..., "role": "phase_bitmap"} entries for them')
    elif driver is not None and driver[1] == "LoopCardDriver":
        if "channel_bitmap" not in roles:
            scope.error("registers", "has no channel_bitmap register (the presence bits)",
                        'add {"name": "presence", "role": "channel_bitmap", ...}')
    elif not any(s.role == "value" for s in specs) and data.get("status") is None:
        scope.error("registers", "lists no value registers, so the device would publish nothing",
                    "give at least one register no role (or role \"value\")")


def _check_stream(scope: Scope, stream: dict[str, Any], interface: str | None) -> None:
    good = check_table(scope, stream, STREAM_KEYS, what="a stream")
    check_policy_values(scope, good)
    if "name" in good and (not good["name"] or "/" in good["name"]):
        scope.error("name", f'"{good["name"]}" cannot name a stream', "use a non-empty name without '/'")
    if "dec" in good and good["dec"] < 0:
        scope.error("dec", f"{good['dec']} is negative", "use 0 or more decimals")
    if interface == "presence-pins" and "name" in good:
        # The node driver's own table of loop measures: a stream it does not know is refused.
        from firmware.drivers.loop_presence import _MEASURES

        if "field" in good and good["field"] not in _MEASURES.values():
            scope.error("field", f'"{good["field"]}" is not a loop measure',
                        f"use one of {', '.join(_MEASURES.values())}")
        elif "field" not in good and good["name"] not in _MEASURES:
            scope.error("name", f'"{good["name"]}" is not a loop measure',
                        f"use one of {', '.join(_MEASURES)} (or name the measure with \"field\")")

