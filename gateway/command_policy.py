"""Which commands exist and what their arguments may be, checked after the signature and before a
command goes down to its node (docs/commands.md "Operations").

    ping, diagnostics, health      no arguments
    set_interval {interval_s}      a whole number of seconds, 5..3600
    reboot {clear_safe_mode?}      optional boolean
    sleep / wake {device}          a device of that node
    mode {device, mode}            one of the modes the device's profile lists
    write_register {device, register, value}
                                   only a register the device's profile lists under "writable";
                                   value is the raw integer the register will hold

The write rule is the safety rule for signal controllers: a signed command is still refused unless
the profile, which is reviewed with the cabinet, opens that one register. profiles/
nema-phase-status.json opens none, so every controller write is refused. The node checks its own
bounds again (firmware/commands.py): a gateway bug cannot push a value the node would choke on.

`check` never raises: a refusal is data with a reason code and one sentence for the result topic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.modbus_errors import ProfileError
from gateway.register_values import RegisterSpec, register_spec

__all__ = [
    "MAX_INTERVAL_S",
    "MIN_INTERVAL_S",
    "OPS",
    "Allowed",
    "PolicyRefusal",
    "RegisterWrite",
    "check",
    "devices_of",
]

# The node's own bounds (firmware/commands.py); the gateway refuses earlier with the same numbers.
MIN_INTERVAL_S = 5
MAX_INTERVAL_S = 3600
# The integers each register type can hold; f32 is left out: a signed command carries integers.
_TYPE_RANGES = {
    "u16": (0, 0xFFFF),
    "i16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "i32": (-0x8000_0000, 0x7FFF_FFFF),
    "bool": (0, 1),
}
_WRITABLE_TABLES = ("holding", "coil")  # Modbus has no write for input registers or discrete inputs


@dataclass(frozen=True)
class RegisterWrite:
    """A write the profile allows: `value` is the raw integer for `register` of `device`."""

    device: str
    register: RegisterSpec
    value: int


@dataclass(frozen=True)
class Allowed:
    """The command may go to the node; `args` are the checked arguments."""

    op: str
    args: dict[str, Any]
    write: RegisterWrite | None = None


@dataclass(frozen=True)
class PolicyRefusal:
    """The command is refused: `reason` is unknown_op, bad_args, unknown_device, not_writable,
    out_of_bounds or profile_error; `msg` is one sentence."""

    reason: str
    msg: str

    ok = False


Devices = Mapping[str, Mapping[str, Any]]  # device id -> that device's profile


def devices_of(board_config: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """device id -> profile, from a board config (citynerve.inventory.board_config)."""
    profiles = board_config.get("profiles", {})
    return {d["id"]: profiles.get(d.get("profile"), {"profile": d.get("profile")})
            for d in board_config.get("devices", []) if isinstance(d.get("id"), str)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _extra(op: str, args: Mapping[str, Any], known: tuple[str, ...]) -> PolicyRefusal | None:
    extra = sorted(set(args) - set(known))
    if not extra:
        return None
    takes = f"takes only {', '.join(known)}" if known else "takes no arguments"
    return PolicyRefusal("bad_args", f"{op} {takes}, not {extra[0]!r}")


def _device(op: str, args: Mapping[str, Any], devices: Devices) -> str | PolicyRefusal:
    device = args.get("device")
    if not isinstance(device, str):
        return PolicyRefusal("bad_args", f"{op} needs args.device, the id of one of the node's "
                                         "devices")
    if device not in devices:
        known = ", ".join(sorted(devices)) or "none"
        return PolicyRefusal("unknown_device", f"{op}: the node has no device {device!r} "
                                               f"(its devices: {known})")
    return device


def _no_args(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    return _extra(op, args, ()) or Allowed(op, {})


def _set_interval(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    refusal = _extra(op, args, ("interval_s",))
    if refusal:
        return refusal
    value = args.get("interval_s")
    if not _is_int(value):
        return PolicyRefusal("bad_args", "set_interval needs args.interval_s, a whole number of "
                                         "seconds")
    if not MIN_INTERVAL_S <= value <= MAX_INTERVAL_S:
        return PolicyRefusal("out_of_bounds", f"set_interval: {value} s is outside "
                                              f"{MIN_INTERVAL_S}..{MAX_INTERVAL_S} s")
    return Allowed(op, {"interval_s": value})


def _reboot(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    refusal = _extra(op, args, ("clear_safe_mode",))
    if refusal:
        return refusal
    if "clear_safe_mode" in args and not isinstance(args["clear_safe_mode"], bool):
        return PolicyRefusal("bad_args", "reboot: args.clear_safe_mode must be true or false")
    return Allowed(op, dict(args))


def _sleep_wake(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    device = _extra(op, args, ("device",)) or _device(op, args, devices)
    return device if isinstance(device, PolicyRefusal) else Allowed(op, {"device": device})


def _mode(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    device = _extra(op, args, ("device", "mode")) or _device(op, args, devices)
    if isinstance(device, PolicyRefusal):
        return device
    modes = devices[device].get("modes") or []
    mode = args.get("mode")
    if mode not in modes:
        offered = ", ".join(map(str, modes)) or "none"
        return PolicyRefusal("bad_args", f"mode: device {device} has no mode {mode!r} "
                                         f"(its profile offers: {offered})")
    return Allowed(op, {"device": device, "mode": mode})


def _writable_entry(profile: Mapping[str, Any], register: str) -> Mapping[str, Any] | None:
    for entry in profile.get("writable") or []:
        if entry == register:
            return {"register": register}
        if isinstance(entry, Mapping) and entry.get("register") == register:
            return entry
    return None


def _write_register(op: str, args: Mapping[str, Any], devices: Devices) -> Allowed | PolicyRefusal:
    device = _extra(op, args, ("device", "register", "value")) or _device(op, args, devices)
    if isinstance(device, PolicyRefusal):
        return device
    profile = devices[device]
    pname = profile.get("profile", "?")
    register, value = args.get("register"), args.get("value")
    if not isinstance(register, str):
        return PolicyRefusal("bad_args", "write_register needs args.register, a register name")
    allowed = _writable_entry(profile, register)
    if allowed is None:
        opened = ", ".join(e if isinstance(e, str) else str(e.get("register"))
                           for e in profile.get("writable") or []) or "none"
        return PolicyRefusal("not_writable", f"device {device} (profile {pname}) does not list "
                                             f"{register!r} as writable (writable: {opened}); "
                                             "writes are off unless the profile opens the register")
    entry = next((e for e in profile.get("registers") or []
                  if isinstance(e, Mapping) and e.get("name") == register), None)
    if entry is None:
        return PolicyRefusal("profile_error", f"profile {pname} lists {register!r} as writable "
                                              "but has no such register")
    try:
        spec = register_spec(entry, profile=str(pname))
    except ProfileError as error:
        return PolicyRefusal("profile_error", str(error))
    if spec.table not in _WRITABLE_TABLES or spec.type not in _TYPE_RANGES or spec.channels != 1:
        return PolicyRefusal("profile_error", f"profile {pname}: {register!r} is a {spec.type} "
                                              f"{spec.table} entry; only single u16/i16/u32/i32 "
                                              "holding registers and coils can be written")
    if not (_is_int(value) or (spec.type == "bool" and isinstance(value, bool))):
        return PolicyRefusal("bad_args", "write_register needs args.value, the raw integer the "
                                         "register will hold")
    low, high = _TYPE_RANGES[spec.type]
    for key in ("min", "max"):
        if allowed.get(key) is not None and not _is_int(allowed[key]):
            return PolicyRefusal("profile_error", f"profile {pname}: writable {register!r} {key} "
                                                  "must be an integer")
    if allowed.get("min") is not None:
        low = max(low, allowed["min"])
    if allowed.get("max") is not None:
        high = min(high, allowed["max"])
    raw = int(value)
    if not low <= raw <= high:
        return PolicyRefusal("out_of_bounds", f"write_register: {raw} is outside {low}..{high} "
                                              f"for {device} {register}")
    scaled = raw * spec.scale
    if (spec.valid_min is not None and scaled < spec.valid_min) or \
            (spec.valid_max is not None and scaled > spec.valid_max):
        return PolicyRefusal("out_of_bounds", f"write_register: {raw} (x{spec.scale:g} = "
                                              f"{scaled:g}) is outside {register}'s valid "
                                              f"{spec.valid_min}..{spec.valid_max}")
    return Allowed(op, {"device": device, "register": register, "value": raw},
                   RegisterWrite(device, spec, raw))


OPS: dict[str, Callable[[str, Mapping[str, Any], Devices], Allowed | PolicyRefusal]] = {
    "ping": _no_args,
    "diagnostics": _no_args,
    "health": _no_args,
    "set_interval": _set_interval,
    "reboot": _reboot,
    "sleep": _sleep_wake,
    "wake": _sleep_wake,
    "mode": _mode,
    "write_register": _write_register,
}


def check(op: str, args: Mapping[str, Any], node_profile_info: Devices) -> Allowed | PolicyRefusal:
    """Whether command `op` with `args` may go to a node whose devices and profiles are
    `node_profile_info` (device id -> profile; see `devices_of`)."""
    handler = OPS.get(op)
    if handler is None:
        return PolicyRefusal("unknown_op", f"unknown command op {op!r} (known: "
                                           f"{', '.join(sorted(OPS))})")
    if not isinstance(args, Mapping):
        return PolicyRefusal("bad_args", f"{op}: args must be an object")
    return handler(op, args, node_profile_info)
