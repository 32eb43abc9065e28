"""Vector checks for firmware/register_decode.py (portable: CPython and MicroPython).

Words are the register values as parse_response returns them (big-endian on the wire); "fault" is
0 or a fault name from protocols/batch_codes.py; "type": "int" also checks an int came back (dec 0
and unscaled integer registers must not turn into floats).
"""

from firmware import register_decode as rd
from protocols.batch_codes import fault_code
from protocols.modbus_rtu import parse_response
from vectorlib import expect_close, expect_equal, expect_raises, unhex


def _fault(case):
    return 0 if not case["fault"] else fault_code(case["fault"])


def _expect_value(case, value, fault):
    expect_equal(fault, _fault(case), "fault")
    want = case["expect"]
    if want is None:
        expect_equal(value, None, "value of a faulted sample")
        return
    if "tolerance" in case:
        expect_close(value, want, case["tolerance"], "value")
    else:
        expect_equal(value, want, "value")
    if case.get("type") == "int":
        expect_equal(isinstance(value, int), True, "value is an int")


def check_decode(case):
    rd.check_entry(case["entry"])
    value, fault, detail = rd.decode(case["entry"], case["words"])
    _expect_value(case, value, fault)
    expect_equal(detail, 0, "detail")


def check_decode_reply(case):
    words = parse_response(unhex(case["request"]), unhex(case["reply"]))
    value, fault, _ = rd.decode(case["entry"], words)
    _expect_value(case, value, fault)


def check_status(case):
    profile = {} if case["status"] is None else {"status": case["status"]}
    fault, detail = rd.status_fault(rd.status_mask(profile), [case["word"]])
    expect_equal(fault, _fault(case), "status fault")
    expect_equal(detail, case["detail"], "status detail (the set fault bits)")


def check_words(case):
    expect_equal(rd.register_words(case["entry"]), case["expect"], "registers")


def check_channels(case):
    rd.check_entry(case["entry"])
    expect_equal(rd.decode_channels(case["entry"], case["words"]), case["expect"], "channels")


def check_bad_entry(case):
    expect_raises(rd.RegisterError, rd.check_entry, case["entry"])


CHECKS = {
    "decode": check_decode,
    "decode_reply": check_decode_reply,
    "status": check_status,
    "words": check_words,
    "channels": check_channels,
    "bad_entry": check_bad_entry,
}
