"""Vector checks for protocols/msgpack_lite.py (portable: CPython and MicroPython).

Values JSON cannot hold are tagged: {"$bin": hex} bytes, {"$f64": hex} / {"$f32": hex} an exact
float from its IEEE bits, {"$map": [[key, value], ...]} a map with non-string keys, {"$nest": n}
n nested one-item arrays around 1.
"""

import struct
import sys

from protocols import msgpack_lite
from protocols.msgpack_lite import MsgpackError
from vectorlib import expect_equal, expect_raises, unhex


def value_of(spec):
    if isinstance(spec, list):
        return [value_of(item) for item in spec]
    if isinstance(spec, dict):
        if "$bin" in spec:
            return unhex(spec["$bin"])
        if "$f64" in spec:
            return struct.unpack(">d", unhex(spec["$f64"]))[0]
        if "$f32" in spec:
            return struct.unpack(">f", unhex(spec["$f32"]))[0]
        if "$map" in spec:
            result = {}
            for key, value in spec["$map"]:
                result[value_of(key)] = value_of(value)
            return result
        if "$nest" in spec:
            value = 1
            for _ in range(spec["$nest"]):
                value = [value]
            return value
        result = {}
        for key in spec:
            result[key] = value_of(spec[key])
        return result
    return spec


# MicroPython dicts do not keep insertion order, so a map of several keys packs in some other order
# there: compare such values by what they decode to, and byte for byte on CPython only.
_ORDERED_DICTS = sys.implementation.name != "micropython"


def _has_multikey_map(value):
    if isinstance(value, list):
        for item in value:
            if _has_multikey_map(item):
                return True
    elif isinstance(value, dict):
        if len(value) > 1:
            return True
        for key in value:
            if _has_multikey_map(value[key]):
                return True
    return False


def _expect_packs_to(value, data, what, single=False):
    packed = msgpack_lite.packb(value, use_single_float=single)
    if _ORDERED_DICTS or not _has_multikey_map(value):
        expect_equal(packed, data, what)
    else:
        expect_equal(len(packed), len(data), what + " length")
        expect_equal(msgpack_lite.unpackb(packed) == value, True, what + " decodes back")


def _same(actual, expected, what):
    # float -0.0 == 0.0 and ints equal floats, so compare the types and the re-encoding too.
    expect_equal(actual, expected, what)
    expect_equal(type(actual), type(expected), what + " type")


def check_roundtrip(case):
    value = value_of(case["value"])
    single = case.get("single", False)
    data = unhex(case["hex"])
    _expect_packs_to(value, data, "packb", single)
    decoded = msgpack_lite.unpackb(data)
    _same(decoded, value, "unpackb")
    _expect_packs_to(decoded, data, "packb(unpackb)", single)


def _repeated(case):
    kind, unit, count = case["kind"], case["unit"], case["count"]
    if kind == "str":
        return unit * count, unit.encode("utf-8") * count
    if kind == "bin":
        return unhex(unit) * count, unhex(unit) * count
    if kind == "array":
        return [unit] * count, msgpack_lite.packb(unit) * count
    value = {}
    body = bytearray()
    for i in range(count):  # count distinct string keys k0, k1, ... each mapped to `unit`
        key = "k%d" % i
        value[key] = unit
        body += msgpack_lite.packb(key) + msgpack_lite.packb(unit)
    return value, bytes(body)


def check_repeat(case):
    value, body = _repeated(case)
    data = unhex(case["header"]) + body
    packed = msgpack_lite.packb(value)
    expect_equal(packed[:len(case["header"]) // 2], unhex(case["header"]), "header")
    if _ORDERED_DICTS or case["kind"] != "map":
        expect_equal(packed == data, True, "packb equals header + body")
    expect_equal(len(packed), len(data), "packed length")
    expect_equal(msgpack_lite.unpackb(data) == value, True, "unpackb")


def check_decode(case):
    _same(msgpack_lite.unpackb(unhex(case["hex"])), value_of(case["value"]), "unpackb")


def check_decode_error(case):
    kwargs = {}
    if "max_depth" in case:
        kwargs["max_depth"] = case["max_depth"]
    exc = expect_raises(MsgpackError, msgpack_lite.unpackb, unhex(case["hex"]), **kwargs)
    expect_equal(exc.offset, case["offset"], "error offset (%s)" % exc)


def check_unpack_from(case):
    value, nxt = msgpack_lite.unpack_from(unhex(case["hex"]), case["offset"])
    _same(value, value_of(case["value"]), "unpack_from value")
    expect_equal(nxt, case["next"], "next offset")


def check_unpack_from_error(case):
    exc = expect_raises(MsgpackError, msgpack_lite.unpack_from, unhex(case["hex"]), case["offset"])
    expect_equal(exc.offset, case["offset"], "error offset")


def check_allow_trailing(case):
    data = unhex(case["hex"])
    expect_equal(msgpack_lite.unpackb(data, allow_trailing=True), value_of(case["value"]), "value")
    expect_raises(MsgpackError, msgpack_lite.unpackb, data)


class _Opaque:
    pass


_UNPACKABLE = {
    "int-2**64": (OverflowError, lambda: 2 ** 64),
    "int-minus-2**63-minus-1": (OverflowError, lambda: -(2 ** 63) - 1),
    "set": (TypeError, lambda: set([1])),
    "object": (TypeError, _Opaque),
    "complex-in-list": (TypeError, lambda: [1, _Opaque()]),
}


def check_pack_error(case):
    error, make = _UNPACKABLE[case["what"]]
    expect_raises(error, msgpack_lite.packb, make())


def check_pack_too_deep(case):
    value = 1
    for _ in range(case["depth"]):
        value = [value]
    expect_raises(ValueError, msgpack_lite.packb, value)
    expect_equal(msgpack_lite.packb(value[0]), unhex("91" * (case["depth"] - 1) + "01"), "at limit")


def check_pack_tuple(case):
    expect_equal(msgpack_lite.packb((1, "b")), unhex(case["hex"]), "tuple packs as an array")


def check_pack_bytearray(case):
    expect_equal(msgpack_lite.packb(bytearray(b"\x01\x02\x03")), unhex(case["hex"]), "bytearray")
    expect_equal(msgpack_lite.packb(memoryview(b"\x01\x02\x03")), unhex(case["hex"]), "memoryview")
    expect_equal(msgpack_lite.unpackb(bytearray(unhex(case["hex"]))), b"\x01\x02\x03", "unpack")


CHECKS = {
    "roundtrip": check_roundtrip,
    "repeat": check_repeat,
    "decode": check_decode,
    "decode_error": check_decode_error,
    "unpack_from": check_unpack_from,
    "unpack_from_error": check_unpack_from_error,
    "allow_trailing": check_allow_trailing,
    "pack_error": check_pack_error,
    "pack_too_deep": check_pack_too_deep,
    "pack_tuple": check_pack_tuple,
    "pack_bytearray": check_pack_bytearray,
}
