"""Vector checks for protocols/modbus_rtu.py, modbus_receiver.py and modbus_plan.py (portable:
CPython and MicroPython)."""

from protocols import modbus_rtu as rtu
from protocols import modbus_server as server
from protocols.modbus_plan import ModbusPlanError, plan_reads
from protocols.modbus_plan_time import plan_bus_time_us
from protocols.modbus_receiver import RtuReceiver
from vectorlib import expect_close, expect_equal, expect_raises, unhex


def _build(case):
    builder = getattr(rtu, case["builder"])
    return builder(*case["args"], any_address=case.get("any_address", False))


def _fields(req):
    return {"unit": req.unit, "function": req.function, "address": req.address,
            "quantity": req.quantity, "values": req.values, "write_address": req.write_address}


def _decoded(value):
    # Tuples (echoes) and lists (values) compare as JSON lists.
    return list(value)


def check_build_request(case):
    frame = _build(case)
    expect_equal(frame, unhex(case["expect"]), case["builder"])
    expect_equal(rtu.crc16_modbus(frame), 0, "CRC residue of the built frame")


def check_build_roundtrip(case):
    frame = _build(case)
    req = rtu.parse_request(frame)
    expect_equal(rtu.build_request(req), frame, "build(parse(build(...)))")


def check_parse_request(case):
    frame = unhex(case["frame"])
    req = rtu.parse_request(frame)
    expect_equal(_fields(req), case["expect"], "parsed request")
    expect_equal(rtu.build_request(req, True), frame, "rebuilt request")


def check_reject_request(case):
    error = rtu.ModbusFrameError if case["error"] == "frame" else rtu.ModbusRequestError
    exc = expect_raises(error, rtu.parse_request, unhex(case["frame"]))
    if "offset" in case:
        expect_equal(exc.offset, case["offset"], "error offset")
    if "code" in case:
        expect_equal(exc.code, case["code"], "exception code to answer")
        expect_equal(exc.function, unhex(case["frame"])[1], "function on the error")


def check_limit(case):
    exc = expect_raises(rtu.ModbusRequestError, _build, case)
    expect_equal(isinstance(exc, ValueError), True, "ModbusRequestError is a ValueError")
    if "code" in case:
        expect_equal(exc.code, case["code"], "exception code")


def check_parse_response(case):
    got = rtu.parse_response(unhex(case["request"]), unhex(case["response"]))
    expect_equal(_decoded(got), case["expect"], "decoded response")
    # The same with a parsed request object.
    req = rtu.parse_request(unhex(case["request"]))
    expect_equal(_decoded(rtu.parse_response(req, unhex(case["response"]))), case["expect"],
                 "decoded response, request object")


def check_build_response(case):
    got = server.build_response(unhex(case["request"]), case["values"])
    expect_equal(got, unhex(case["expect"]), "built response")


def check_exception_response(case):
    exc = expect_raises(rtu.ModbusException, rtu.parse_response, unhex(case["request"]),
                        unhex(case["response"]))
    expect_equal(isinstance(exc, rtu.ProtocolError), False, "ModbusException is not a ProtocolError")
    expect_equal(exc.function, case["function"], "function")
    expect_equal(exc.code, case["code"], "code")
    expect_equal(exc.unit, unhex(case["request"])[0], "unit")
    if case["name"] is not None:
        expect_equal(exc.name, case["name"], "name")
    expect_equal(exc.name, rtu.exception_name(case["code"]), "name from the table")


def check_build_exception(case):
    got = server.build_exception(case["unit"], case["function"], case["code"])
    expect_equal(got, unhex(case["expect"]), "built exception")


def check_build_response_error(case):
    expect_raises(rtu.ModbusRequestError, server.build_response, unhex(case["request"]), case["values"])


def check_build_exception_error(case):
    expect_raises(rtu.ModbusRequestError, server.build_exception, case["unit"], case["function"],
                  case["code"])


def check_exception_names(case):
    for code, name in case["names"].items():
        expect_equal(rtu.exception_name(int(code)), name, "name of code %s" % code)


def check_reject_response(case):
    exc = expect_raises(rtu.ModbusFrameError, rtu.parse_response, unhex(case["request"]),
                        unhex(case["response"]))
    if "offset" in case:
        expect_equal(exc.offset, case["offset"], "error offset")


def check_expected_length(case):
    expect_equal(rtu.expected_response_length(unhex(case["request"])), case["expect"], "length")


def check_request_length(case):
    expect_equal(rtu.request_length(unhex(case["head"])), case["expect"], "request length")


def check_response_length(case):
    got = rtu.response_length(unhex(case["head"]), case.get("function"))
    expect_equal(got, case["expect"], "response length")


def check_transaction_time(case):
    us = rtu.transaction_time_us(case["request_len"], case["response_len"], case["baud"],
                                 case["framing"], case["turnaround_us"])
    if case["expect_ms"] is not None:
        expect_close(us / 1000.0, case["expect_ms"], case["ms_tolerance"], "transaction ms")
    if case["expect_per_s"] is not None:
        expect_close(1000000.0 / us, case["expect_per_s"], case["per_s_tolerance"],
                     "transactions per second")


def check_char_time(case):
    baud, framing = case["baud"], case["framing"]
    expect_equal(rtu.char_bits(framing), case["bits"], "bits per character")
    expect_close(rtu.char_time_us(baud, framing), case["char_us"], 0.001, "character time")
    expect_close(rtu.t15_us(baud, framing), case["t15_us"], 0.001, "t1.5")
    expect_close(rtu.t35_us(baud, framing), case["t35_us"], 0.001, "t3.5")


def check_bad_framing(case):
    expect_raises(ValueError, rtu.char_bits, case["framing"])


def check_receiver(case):
    rx = RtuReceiver(role=case["role"], baud=case["baud"], framing=case["framing"])
    items = []
    for step in case["steps"]:
        if "expect" in step:
            rx.expect(unhex(step["expect"]))
        elif "flush" in step:
            items.extend(rx.flush())
        else:
            items.extend(rx.feed(unhex(step["data"]), step.get("gap_us")))
    got = []
    for item in items:
        if isinstance(item, rtu.ModbusFrameError):
            got.append({"error_at": item.offset})
        elif isinstance(item, bytes):
            got.append({"frame": item})
        else:
            raise AssertionError("receiver yielded %r" % (item,))
    want = []
    for item in case["items"]:
        want.append({"frame": unhex(item["frame"])} if "frame" in item else item)
    expect_equal(got, want, "receiver items")
    for name, value in case["counters"].items():
        expect_equal(rx.counters[name], value, "counter " + name)
    c = rx.counters
    expect_equal(c["frame_bytes"] + c["reply_bytes"] + c["garbage_bytes"] + rx.pending, c["bytes"],
                 "every byte fed is in a frame, dropped, or pending")


def _plan(case):
    return plan_reads(case["wanted"], **case["options"])


def check_plan(case):
    plan = _plan(case)
    expect_equal([list(r) for r in plan.reads], case["reads"], "planned reads")
    if case["segments"] is not None:
        got = [[list(s) for s in plan.segments(i)] for i in range(len(plan.wanted))]
        expect_equal(got, case["segments"], "segments")


def check_plan_error(case):
    expect_raises(ModbusPlanError, _plan, case)


def check_plan_extract(case):
    expect_equal(_plan(case).extract(case["responses"]), case["expect"], "extracted values")


def check_plan_requests(case):
    plan = _plan(case)
    got = [r.request(case["unit"], case["any_address"]) for r in plan.reads]
    expect_equal(got, [unhex(f) for f in case["expect"]], "planned request ADUs")


def check_plan_bus_time(case):
    us = plan_bus_time_us(_plan(case), case["baud"], case["framing"], case["turnaround_us"])
    expect_close(us / 1000.0, case["expect_ms"], case["tolerance"], "plan bus time ms")


CHECKS = {
    "build_request": check_build_request,
    "build_roundtrip": check_build_roundtrip,
    "parse_request": check_parse_request,
    "reject_request": check_reject_request,
    "limit": check_limit,
    "parse_response": check_parse_response,
    "build_response": check_build_response,
    "exception_response": check_exception_response,
    "build_exception": check_build_exception,
    "build_response_error": check_build_response_error,
    "build_exception_error": check_build_exception_error,
    "exception_names": check_exception_names,
    "reject_response": check_reject_response,
    "expected_length": check_expected_length,
    "request_length": check_request_length,
    "response_length": check_response_length,
    "transaction_time": check_transaction_time,
    "char_time": check_char_time,
    "bad_framing": check_bad_framing,
    "receiver": check_receiver,
    "plan": check_plan,
    "plan_error": check_plan_error,
    "plan_extract": check_plan_extract,
    "plan_requests": check_plan_requests,
    "plan_bus_time": check_plan_bus_time,
}
