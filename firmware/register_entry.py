"""Profile register entries checked and sized (firmware/register_decode.py turns their words into
values). Apart so a board whose drivers only read bitmaps and counters (the signal controller)
carries the check without the decoder: the Modbus master plans reads with register_words and
firmware/drivers/modbus_device.py refuses bad entries with check_entry.
"""

TYPES = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
_ORDERS = ("big", "little")


class RegisterError(ValueError):
    """A profile register entry this decoder cannot honour (a config error, named by register)."""


def _name(entry):
    return entry.get("name", "?") if isinstance(entry, dict) else "?"


def check_entry(entry):
    """Raise RegisterError unless `entry` is a register entry decode() can use; return it."""
    if not isinstance(entry, dict):
        raise RegisterError("register entry %r is not an object" % (entry,))
    kind = entry.get("type", "u16")
    if kind not in TYPES:
        raise RegisterError("register %s: type %r is not one of u16, i16, u32, i32, f32"
                            % (_name(entry), kind))
    for key in ("byte_order", "word_order"):
        if entry.get(key, "big") not in _ORDERS:
            raise RegisterError("register %s: %s %r is neither 'big' nor 'little'"
                                % (_name(entry), key, entry.get(key)))
    channels = entry.get("channels", 1)
    if not isinstance(channels, int) or channels < 1:
        raise RegisterError("register %s: channels %r must be an int >= 1" % (_name(entry), channels))
    for key in ("scale", "valid_min", "valid_max"):
        value = entry.get(key)
        if value is not None and not isinstance(value, (int, float)):
            raise RegisterError("register %s: %s %r is not a number" % (_name(entry), key, value))
    if entry.get("scale") == 0:
        raise RegisterError("register %s: scale 0 would hide every reading" % _name(entry))
    return entry


def type_words(entry):
    """Registers one value of this entry occupies."""
    return TYPES[entry.get("type", "u16")]


def register_words(entry):
    """Registers the whole entry occupies (all its channels)."""
    return TYPES[entry.get("type", "u16")] * entry.get("channels", 1)
