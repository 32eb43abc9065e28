"""Vector checks for the cnb1 batch format (portable: CPython and MicroPython).

A case's "batch" describes a Batch: node, node_boot, gateway_boot, seq, streams as
[name, unit, kind, dec], measurements as [stream, t, value, fault], events as [t, code, param].
Floats are compared within 1e-9 (MicroPython's JSON float parsing may differ in the last bit).
"""

import json

from protocols import batch_cnb1
from protocols.batch_builder import Batch
from protocols.batch_codes import fault_code, fault_name
from protocols.batch_cnb1 import BatchFormatError
from vectorlib import expect_equal, expect_raises, unhex


def build(spec):
    batch = Batch(spec["node"], spec["node_boot"], spec["streams"])
    for stream, t, value, fault in spec["measurements"]:
        batch.add_measurement(stream, t, value, fault)
    for t, code, param in spec["events"]:
        batch.add_event(t, code, param)
    return batch


def expect_same(actual, expected, where="decoded"):
    """Deep equality with a float tolerance, naming the first place that differs."""
    if isinstance(expected, dict):
        expect_equal(isinstance(actual, dict), True, where + " is a dict")
        expect_equal(sorted(actual.keys()), sorted(expected.keys()), where + " keys")
        for key in expected:
            expect_same(actual[key], expected[key], where + "." + key)
    elif isinstance(expected, list):
        expect_equal(isinstance(actual, list), True, where + " is a list")
        expect_equal(len(actual), len(expected), where + " length")
        for i in range(len(expected)):
            expect_same(actual[i], expected[i], "%s[%d]" % (where, i))
    elif isinstance(expected, float) or isinstance(actual, float):
        expect_equal(isinstance(actual, float), isinstance(expected, float), where + " is a float")
        if abs(actual - expected) > 1e-9 * max(1.0, abs(expected)):
            raise AssertionError("%s: got %r, expected %r" % (where, actual, expected))
    else:
        expect_equal(type(actual), type(expected), where + " type")
        expect_equal(actual, expected, where)


def check_encode_decode(case):
    spec = case["batch"]
    batch = build(spec)
    data = batch_cnb1.encode_batch(batch, spec["gateway_boot"], spec["seq"], case["codec"])
    expect_equal(data, unhex(case["hex"]), "encode_batch")
    expect_same(batch_cnb1.decode_batch(data), case["decoded"])
    # A re-sent batch is byte-identical: encoding again gives the same bytes.
    expect_equal(batch_cnb1.encode_batch(batch, spec["gateway_boot"], spec["seq"], case["codec"]),
                 data, "second encoding")


def check_decode(case):
    expect_same(batch_cnb1.decode_batch(unhex(case["hex"])), case["decoded"])
    if "plain_hex" in case:
        # Whatever zlib this runtime has, its zlib payload decodes to the same batch, and the
        # plain payload is the same batch too.
        decoded = batch_cnb1.decode_batch(unhex(case["plain_hex"]))
        decoded["codec"] = case["decoded"]["codec"]
        expect_same(decoded, case["decoded"])


def check_decode_zstd(case):
    data = unhex(case["hex"])
    if batch_cnb1.codec_available(batch_cnb1.CODEC_ZSTD):
        expect_same(batch_cnb1.decode_batch(data), case["decoded"])
    else:
        exc = expect_raises(BatchFormatError, batch_cnb1.decode_batch, data)
        expect_equal(exc.reason, "codec zstd not available here", "reason")


def check_json_mode(case):
    spec = case["batch"]
    text = batch_cnb1.encode_batch_json(build(spec), spec["gateway_boot"], spec["seq"])
    expect_equal(type(text), bytes, "encode_batch_json returns bytes")
    expect_same(json.loads(text), case["decoded"], "json")
    # The JSON mode of a decoded binary batch is the same document, codec aside.
    decoded = batch_cnb1.decode_batch(batch_cnb1.encode_batch(build(spec), spec["gateway_boot"],
                                                              spec["seq"], batch_cnb1.CODEC_NONE))
    decoded["codec"] = "json"
    expect_same(json.loads(batch_cnb1.batch_to_json(decoded)), case["decoded"], "batch_to_json")


def check_auto_codec(case):
    spec = case["batch"]
    data = batch_cnb1.encode_batch(build(spec), spec["gateway_boot"], spec["seq"])
    expect_equal(data[5], case["codec_byte"], "codec chosen")
    plain = batch_cnb1.encode_batch(build(spec), spec["gateway_boot"], spec["seq"],
                                    batch_cnb1.CODEC_NONE)
    expect_equal(len(data) <= len(plain), True, "auto is never larger than none")
    decoded = batch_cnb1.decode_batch(data)
    expected = batch_cnb1.decode_batch(plain)
    expected["codec"] = decoded["codec"]
    expect_same(decoded, expected)


def check_decode_error(case):
    exc = expect_raises(BatchFormatError, batch_cnb1.decode_batch, unhex(case["hex"]))
    if "offset" in case:
        expect_equal(exc.offset, case["offset"], "error offset (%s)" % exc)


def check_fault_name(case):
    expect_equal(fault_name(case["code"]), case["name"], "fault_name")
    expect_equal(fault_code(case["name"]), case["code"], "fault_code")


CHECKS = {
    "encode_decode": check_encode_decode,
    "decode": check_decode,
    "decode_zstd": check_decode_zstd,
    "json_mode": check_json_mode,
    "auto_codec": check_auto_codec,
    "decode_error": check_decode_error,
    "fault_name": check_fault_name,
}
