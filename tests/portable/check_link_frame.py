"""Vector checks for protocols/link_frame.py (portable: CPython and MicroPython)."""

from protocols import link_frame as lf
from protocols.errors import ProtocolError
from vectorlib import expect_equal, expect_raises, unhex


def _max_payload(case):
    return case.get("max_payload", lf.MAX_PAYLOAD)


def check_encode(case):
    payload = unhex(case["payload"])
    wire = unhex(case["wire"])
    got = lf.encode_frame(case["type"], case["seq"], payload, _max_payload(case), case["lead"])
    expect_equal(got, wire, "encode_frame")
    expect_equal(lf.encode_frame(case["type"], case["seq"], memoryview(payload),
                                 max_payload=_max_payload(case), lead=case["lead"]),
                 wire, "encode_frame of a memoryview payload")
    # And back: the frame decodes to itself.
    decoder = lf.LinkFrameDecoder(_max_payload(case))
    items = decoder.feed(wire)
    expect_equal(items, [lf.LinkFrame(case["type"], case["seq"], payload)], "decoded frame")
    expect_equal(decoder.counters["frames"], 1, "frames counter")


def check_encode_error(case):
    payload = bytes(case["payload_len"])
    exc = expect_raises(lf.LinkFrameValueError, lf.encode_frame, case["type"], case["seq"],
                        payload, _max_payload(case))
    if not isinstance(exc, ValueError):
        raise AssertionError("LinkFrameValueError is not a ValueError")


def check_type_names(case):
    for code, name in case["names"].items():
        expect_equal(lf.type_name(int(code)), name, "type_name(%s)" % code)
        expect_equal(getattr(lf, name), int(code), "constant %s" % name)
    expect_equal(len(lf.TYPE_NAMES), len(case["names"]), "number of frame types")
    expect_equal(lf.type_name(99), "UNKNOWN(99)", "type_name of an unknown type")


def _hex(data):
    # Not data.hex(): MicroPython 1.27 returns b"" (bytes, not str) for an empty input.
    return "".join("%02x" % b for b in data)


def _describe(item):
    if isinstance(item, lf.LinkFrame):
        return {"frame": {"type": item.type, "seq": item.seq, "payload": _hex(item.payload)}}
    if isinstance(item, lf.LinkFrameError):
        return {"error": item.kind, "offset": item.offset}
    raise AssertionError("feed returned %r, neither a LinkFrame nor a LinkFrameError" % (item,))


def check_decode(case):
    decoder = lf.LinkFrameDecoder(_max_payload(case))
    items = []
    for chunk in case["chunks"]:
        got = decoder.feed(unhex(chunk))
        if not isinstance(got, list):
            raise AssertionError("feed returned %r, not a list" % (got,))
        items += got
    got = [_describe(item) for item in items]
    expected = case["expect"]
    if len(got) != len(expected):
        raise AssertionError("decoded %r, expected %r" % (got, expected))
    for index in range(len(expected)):
        want = expected[index]
        have = got[index]
        if "frame" in want:
            expect_equal(have.get("frame"), want["frame"], "item %d" % index)
        else:
            expect_equal(have.get("error"), want["error"], "item %d kind" % index)
            if "offset" in want:
                expect_equal(have["offset"], want["offset"], "item %d offset" % index)
            error = items[index]
            if not isinstance(error, ProtocolError):
                raise AssertionError("LinkFrameError is not a ProtocolError")
            if not error.reason or str(error).find("at byte") < 0:
                raise AssertionError("error message %r names no byte offset" % str(error))
    for key, value in case.get("counters", {}).items():
        expect_equal(decoder.counters[key], value, "counters[%r]" % key)
    errors = 0
    for kind in lf.ERROR_KINDS:
        errors += decoder.counters[kind]
    expect_equal(errors, len(items) - decoder.counters["frames"], "error counters total")


CHECKS = {
    "encode": check_encode,
    "encode_error": check_encode_error,
    "type_names": check_type_names,
    "decode": check_decode,
}
