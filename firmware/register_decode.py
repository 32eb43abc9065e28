"""Profile register entries to values: the register map is data (profiles/*.json), this is the one
place that turns its raw 16-bit words into numbers, or into a fault when a number would be wrong.

An entry is a dict from a profile's "registers" list:
  type        u16 | i16 | u32 | i32 | f32 (one or two registers each; "channels": n repeats it)
  byte_order  "big" (default, Modbus's own order inside a register) | "little" (bytes swapped)
  word_order  "big" (default, high word at the lower address) | "little" (low word first)
  scale       multiplied into the raw number (default 1); dec rounds the result to that many
              decimals (0: an int)
  valid_min / valid_max   the range the device can truly report; outside it the sample is
              FAULT_OUT_OF_RANGE and the number is never published. A non-finite float is too.
  role        "status" marks a status register; with the profile's "status" section
              ({"register": name, "fault_bits": {"bit": "name", ...}}) set bits there make the
              device's samples FAULT_SENSOR, detail = the set fault bits (SenseAir S8 meter status,
              REFERENCE.md §4).

Pure and allocation-light: decode() returns (value, fault, detail) with fault 0 for a good value.
"""

import struct

from firmware.register_entry import (  # noqa: F401 - check_entry, register_words, RegisterError: re-exported
    TYPES, RegisterError, check_entry, register_words, type_words)
from protocols.quality_codes import FAULT_OUT_OF_RANGE, FAULT_SENSOR

def _word(entry, w):
    if entry.get("byte_order", "big") == "little":
        return ((w & 0xFF) << 8) | ((w >> 8) & 0xFF)
    return w & 0xFFFF


def raw_value(entry, words, at=0):
    """The unscaled number in words[at:] (u16/i16/u32/i32 an int, f32 a float)."""
    kind = entry.get("type", "u16")
    w0 = _word(entry, words[at])
    if kind == "u16":
        return w0
    if kind == "i16":
        return w0 - 0x10000 if w0 & 0x8000 else w0
    w1 = _word(entry, words[at + 1])
    if entry.get("word_order", "big") == "little":
        w0, w1 = w1, w0
    if kind == "f32":
        return struct.unpack(">f", struct.pack(">HH", w0, w1))[0]
    value = (w0 << 16) | w1
    if kind == "i32" and value & 0x80000000:
        value -= 0x100000000
    return value


def _finite(x):
    # NaN is the only value unequal to itself; inf - inf is NaN.
    return x == x and (x - x) == 0


def scale_value(entry, raw):
    """(value, fault): raw scaled, range-checked, rounded to the entry's decimals."""
    if isinstance(raw, float) and not _finite(raw):
        return None, FAULT_OUT_OF_RANGE
    scale = entry.get("scale", 1)
    value = raw if scale == 1 else raw * scale
    low = entry.get("valid_min")
    high = entry.get("valid_max")
    if (low is not None and value < low) or (high is not None and value > high):
        return None, FAULT_OUT_OF_RANGE
    dec = entry.get("dec")
    if dec is not None:
        if dec <= 0:
            value = int(round(value))
        elif isinstance(value, float):
            value = round(value, dec)
    return value, 0


def decode(entry, words, at=0):
    """(value, fault, detail) for the entry's first value in words[at:]: fault 0 and a number, or
    a fault code (FAULT_OUT_OF_RANGE) and None."""
    value, fault = scale_value(entry, raw_value(entry, words, at))
    return value, fault, 0


def decode_channels(entry, words):
    """The raw number of every channel of a multi-channel entry (counters), in channel order."""
    step = type_words(entry)
    out = []
    for i in range(entry.get("channels", 1)):
        out.append(raw_value(entry, words, i * step))
    return out


def status_mask(profile):
    """The fault bits of the profile's status register, as an int mask (0 when it has none)."""
    status = profile.get("status")
    if not status:
        return 0
    mask = 0
    for bit in status.get("fault_bits", {}):
        mask |= 1 << int(bit)
    return mask


def status_register(profile):
    """The register entry with role "status" named by the profile's status section, or None."""
    status = profile.get("status")
    name = status.get("register") if status else None
    for entry in profile.get("registers", ()):
        if entry.get("role") == "status" and (name is None or entry.get("name") == name):
            return entry
    return None


def status_fault(mask, words, entry=None):
    """(fault, detail) from a status register's words: FAULT_SENSOR with the set fault bits as
    detail, or (0, 0) when none of `mask` is set."""
    word = words[0] if entry is None else _word(entry, words[0])
    bits = word & mask
    if bits:
        return FAULT_SENSOR, bits
    return 0, 0


def value_registers(profile):
    """The entries that are published as streams: no role, or role "value"."""
    out = []
    for entry in profile.get("registers", ()):
        if entry.get("role", "value") == "value":
            out.append(entry)
    return out
