"""Vector checks for protocols/cobs.py (portable: CPython and MicroPython)."""

from protocols import cobs
from protocols.errors import ProtocolError
from vectorlib import expect_equal, expect_raises, unhex


def check_pair(case):
    decoded = unhex(case["decoded"])
    encoded = unhex(case["encoded"])
    expect_equal(cobs.encode(decoded), encoded, "COBS encode")
    expect_equal(cobs.decode(encoded), decoded, "COBS decode")
    expect_equal(cobs.decode(memoryview(encoded)), decoded, "COBS decode of a memoryview")
    expect_equal(cobs.encode(bytearray(decoded)), encoded, "COBS encode of a bytearray")
    expect_equal(encoded.find(b"\x00"), -1, "zero byte in the encoding")
    if len(encoded) > cobs.max_encoded_length(len(decoded)):
        raise AssertionError("encoding is longer than max_encoded_length")
    out = bytearray(b"\x00")
    expect_equal(cobs.encode_into(decoded, out), bytearray(b"\x00") + encoded, "COBS encode_into")
    room = bytearray(2 + cobs.max_encoded_length(len(decoded)))
    end = cobs.encode_to(decoded, room, 1)
    expect_equal(bytes(room[1:end]), encoded, "COBS encode_to")


def check_decode(case):
    expect_equal(cobs.decode(unhex(case["encoded"])), unhex(case["decoded"]), "COBS decode")


def check_decode_error(case):
    exc = expect_raises(cobs.CobsError, cobs.decode, unhex(case["encoded"]))
    expect_equal(exc.offset, case["offset"], "CobsError offset")
    if not isinstance(exc, ProtocolError):
        raise AssertionError("CobsError is not a ProtocolError")


CHECKS = {
    "cobs_pair": check_pair,
    "cobs_decode": check_decode,
    "cobs_decode_error": check_decode_error,
}
