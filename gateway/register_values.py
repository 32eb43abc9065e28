"""Profile register entries to typed specs, and raw Modbus words to values or faults.

The register map is data (profiles/*.json); this module reads a profile's "registers" list into
RegisterSpec objects once, checking every key, and turns the words of one read into a value or a
fault code, so a wrong number is never published:

  type        u16 | i16 | u32 | i32 | f32 (one or two registers) | bool (a coil or discrete input);
              "channels": n repeats it at consecutive addresses (one stream per channel)
  byte_order  "big" (default, Modbus's own order inside a register) | "little" (bytes swapped)
  word_order  "big" (default, high word at the lower address) | "little" (low word first)
  scale       multiplied into the raw number (default 1); dec rounds to that many decimals (0: int)
  valid_min / valid_max   outside them (or a NaN/infinite float) the sample is FAULT_OUT_OF_RANGE
  role        "status" marks the register the profile's "status" section names; set fault bits
              there make the device's other samples of that poll FAULT_SENSOR (SenseAir S8 meter
              status, REFERENCE.md §4). Other roles (bitmaps, counters) publish the raw number.

The node decodes the same profiles in firmware/register_decode.py; gateway/ never imports
firmware/, so the rules are mirrored here (same types, orders, scaling, range and rounding).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.modbus_errors import ProfileError
from protocols.batch_codes import FAULT_OUT_OF_RANGE, FAULT_SENSOR

Value = int | float

# Registers (or bits) one value of each type occupies.
TYPE_WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "bool": 1}
BIT_TABLES = ("coil", "discrete")
REGISTER_TABLES = ("holding", "input")
_ORDERS = ("big", "little")


@dataclass(frozen=True, kw_only=True)
class RegisterSpec:
    """One checked register entry of a profile."""

    name: str
    table: str
    address: int
    type: str = "u16"
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1
    dec: int | None = None
    valid_min: float | None = None
    valid_max: float | None = None
    role: str = "value"
    channels: int = 1
    unit: str | None = None
    kind: str | None = None

    @property
    def words_per_value(self) -> int:
        return TYPE_WORDS[self.type]

    @property
    def count(self) -> int:
        """Registers (or bits) the whole entry occupies, all channels."""
        return self.words_per_value * self.channels

    def stream_names(self, device: str) -> list[str]:
        """"<device>/<name>", or "<device>/<name>/<k>" for channel k = 1..n of a multi-channel entry."""
        if self.channels == 1:
            return [f"{device}/{self.name}"]
        return [f"{device}/{self.name}/{k}" for k in range(1, self.channels + 1)]


@dataclass(frozen=True)
class StatusSpec:
    """The profile's status register and the mask of its bits that mean "device fault"."""

    register: RegisterSpec
    fault_mask: int


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def register_spec(entry: Mapping[str, Any], *, profile: str) -> RegisterSpec:
    """A RegisterSpec from one profile entry; ProfileError names the register and key at fault."""
    if not isinstance(entry, Mapping):
        raise ProfileError(profile, None, None, f"register entry {entry!r} is not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ProfileError(profile, None, "name", f"{name!r} must be a non-empty name without '/'")

    def fail(key: str, problem: str) -> ProfileError:
        return ProfileError(profile, name, key, problem)

    table = entry.get("table", "holding")
    if table not in BIT_TABLES + REGISTER_TABLES:
        raise fail("table", f"{table!r} is not coil, discrete, holding or input")
    kind = entry.get("type", "bool" if table in BIT_TABLES else "u16")
    if kind not in TYPE_WORDS:
        raise fail("type", f"{kind!r} is not one of {', '.join(TYPE_WORDS)}")
    if (kind == "bool") != (table in BIT_TABLES):
        raise fail("type", f"{kind!r} does not fit the {table} table (bool is for coils and "
                           f"discrete inputs, u16..f32 for registers)")
    address = entry.get("address")
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 0xFFFF:
        raise fail("address", f"{address!r} must be an int 0..65535")
    for key in ("byte_order", "word_order"):
        if entry.get(key, "big") not in _ORDERS:
            raise fail(key, f"{entry.get(key)!r} is neither 'big' nor 'little'")
    channels = entry.get("channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise fail("channels", f"{channels!r} must be an int >= 1")
    if address + TYPE_WORDS[kind] * channels > 0x10000:
        raise fail("address", f"{address} plus its {TYPE_WORDS[kind] * channels} registers runs "
                              f"past 65535")
    for key in ("scale", "valid_min", "valid_max"):
        value = entry.get(key)
        if value is not None and not _number(value):
            raise fail(key, f"{value!r} is not a number")
    scale = entry.get("scale", 1)
    if scale == 0:
        raise fail("scale", "0 would hide every reading")
    dec = entry.get("dec")
    if dec is not None and (not isinstance(dec, int) or isinstance(dec, bool) or dec < 0):
        raise fail("dec", f"{dec!r} must be an int >= 0")
    low, high = entry.get("valid_min"), entry.get("valid_max")
    if low is not None and high is not None and low > high:
        raise fail("valid_min", f"{low} is above valid_max {high}")
    role = entry.get("role", "value")
    if not isinstance(role, str):
        raise fail("role", f"{role!r} is not a name")
    return RegisterSpec(
        name=name, table=table, address=address, type=kind,
        byte_order=entry.get("byte_order", "big"), word_order=entry.get("word_order", "big"),
        scale=scale, dec=dec, valid_min=low, valid_max=high, role=role, channels=channels,
        unit=entry.get("unit"), kind=entry.get("kind"),
    )


def profile_registers(profile: Mapping[str, Any]) -> tuple[RegisterSpec, ...]:
    """Every register entry of a profile, checked; names must be unique."""
    name = str(profile.get("profile", "?"))
    entries = profile.get("registers")
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)) or not entries:
        raise ProfileError(name, None, "registers", "a polled Modbus profile needs a non-empty "
                                                    "list of register entries")
    specs = tuple(register_spec(e, profile=name) for e in entries)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ProfileError(name, spec.name, "name", "appears twice; stream names must be unique")
        seen.add(spec.name)
    return specs


def profile_status(profile: Mapping[str, Any], specs: Sequence[RegisterSpec]) -> StatusSpec | None:
    """The status register named by the profile's "status" section and its fault-bit mask."""
    name = str(profile.get("profile", "?"))
    section = profile.get("status")
    if not section:
        return None
    if not isinstance(section, Mapping):
        raise ProfileError(name, None, "status", "must be an object with register and fault_bits")
    register = section.get("register")
    found = [s for s in specs if s.name == register]
    if not found:
        raise ProfileError(name, None, "status.register", f"{register!r} is not a register of "
                                                          f"this profile")
    if found[0].table in BIT_TABLES or found[0].words_per_value != 1:
        raise ProfileError(name, register, "status.register", "a status register is one 16-bit "
                                                              "register")
    mask = 0
    bits = section.get("fault_bits", {})
    if not isinstance(bits, Mapping):
        raise ProfileError(name, register, "status.fault_bits", "must map bit numbers to names")
    for bit in bits:
        try:
            index = int(bit)
        except ValueError:
            index = -1
        if not 0 <= index <= 15:
            raise ProfileError(name, register, "status.fault_bits", f"bit {bit!r} is not 0..15")
        mask |= 1 << index
    return StatusSpec(found[0], mask)


def _word(spec: RegisterSpec, word: int) -> int:
    if spec.byte_order == "little":
        return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)
    return word & 0xFFFF


def raw_value(spec: RegisterSpec, words: Sequence[int], at: int = 0) -> Value:
    """The unscaled number in words[at:] (an int; a float for f32)."""
    if spec.type == "bool":
        return 1 if words[at] else 0
    w0 = _word(spec, words[at])
    if spec.type == "u16":
        return w0
    if spec.type == "i16":
        return w0 - 0x10000 if w0 & 0x8000 else w0
    w1 = _word(spec, words[at + 1])
    if spec.word_order == "little":
        w0, w1 = w1, w0
    if spec.type == "f32":
        return float(struct.unpack(">f", struct.pack(">HH", w0, w1))[0])
    value = (w0 << 16) | w1
    if spec.type == "i32" and value & 0x80000000:
        value -= 0x100000000
    return value


def scale_value(spec: RegisterSpec, raw: Value) -> tuple[Value | None, int | None]:
    """(value, None) scaled, range-checked and rounded, or (None, FAULT_OUT_OF_RANGE)."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, FAULT_OUT_OF_RANGE
    value: Value = raw if spec.scale == 1 else raw * spec.scale
    if ((spec.valid_min is not None and value < spec.valid_min)
            or (spec.valid_max is not None and value > spec.valid_max)):
        return None, FAULT_OUT_OF_RANGE
    if spec.dec is not None:
        value = int(round(value)) if spec.dec == 0 else round(float(value), spec.dec)
    return value, None


def decode_channels(spec: RegisterSpec, words: Sequence[int]) -> list[tuple[Value | None, int | None]]:
    """(value, fault) for every channel of the entry, from the entry's own words."""
    if len(words) < spec.count:
        raise ValueError(f"register {spec.name} needs {spec.count} words, got {len(words)}")
    step = spec.words_per_value
    return [scale_value(spec, raw_value(spec, words, k * step)) for k in range(spec.channels)]


def status_fault(status: StatusSpec, words: Sequence[int]) -> tuple[int | None, int]:
    """(FAULT_SENSOR, set fault bits) when any fault bit of the status word is set, else (None, 0)."""
    bits = _word(status.register, words[0]) & status.fault_mask
    return (FAULT_SENSOR, bits) if bits else (None, 0)
