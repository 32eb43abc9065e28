"""Vector checks for protocols/pms5003.py (portable: CPython and MicroPython).

Stream cases are fed three ways (the chunks as written, one chunk, one byte at a time) and must give
the same items every time: what the parser reports may not depend on how the UART delivered bytes.
"""

from protocols import pms5003
from protocols.errors import ProtocolError
from vectorlib import expect_equal, expect_raises, unhex


def _describe(item):
    """An item from feed() in the JSON shape the vectors use."""
    if isinstance(item, pms5003.Pms5003Reading):
        return {"reading": list(item.values())}
    if isinstance(item, pms5003.Pms5003Ack):
        return {"ack": [item.command, item.data]}
    if isinstance(item, pms5003.Pms5003Error):
        if not isinstance(item, ProtocolError) or not item.reason or item.offset is None:
            raise AssertionError("error item lacks a reason or an offset: %r" % (item,))
        return {"error": item.kind, "offset": item.offset}
    raise AssertionError("feed returned an unexpected item %r" % (item,))


def _feed_all(chunks):
    parser = pms5003.Pms5003Parser()
    items = []
    for chunk in chunks:
        for item in parser.feed(chunk):
            items.append(_describe(item))
    return parser, items


def _chunkings(chunks):
    whole = b"".join(chunks)
    return (("as written", chunks), ("one chunk", [whole]),
            ("byte by byte", [whole[k:k + 1] for k in range(len(whole))]))


def _check_accounting(parser, total, how):
    c = parser.counters
    accounted = 32 * c["frames"] + 8 * c["acks"] + c["garbage_bytes"] + parser.pending
    expect_equal(accounted, total, "bytes accounted for (%s)" % how)
    if parser.pending >= pms5003.DATA_FRAME_SIZE:
        raise AssertionError("parser holds %d bytes, more than a frame" % parser.pending)


def check_data_frame(case):
    frame = unhex(case["frame"])
    fields = case["fields"]
    parser, items = _feed_all([frame])
    expect_equal(items, [{"reading": [fields[name] for name in pms5003.FIELDS]}], "decoded items")
    reading = pms5003.Pms5003Parser().feed(frame)[0]
    for name in pms5003.FIELDS:
        expect_equal(getattr(reading, name), fields[name], name)
    expect_equal(pms5003.build_data_frame(**fields), frame, "build_data_frame")
    expect_equal(parser.counters["frames"], 1, "frames counter")
    _check_accounting(parser, len(frame), "data frame")


def check_ack_frame(case):
    frame = unhex(case["frame"])
    parser, items = _feed_all([frame])
    expect_equal(items, [{"ack": [case["command"], case["data"]]}], "decoded items")
    expect_equal(parser.counters["acks"], 1, "acks counter")
    expect_equal(pms5003.build_ack(case["command"], case["data"]), frame, "build_ack")


def check_command(case):
    frame = unhex(case["frame"])
    expect_equal(getattr(pms5003, "cmd_" + case["name"])(), frame, "cmd_" + case["name"])
    expect_equal(pms5003.build_command(case["command"], case["data"]), frame, "build_command")
    expect_equal(pms5003.decode_command(frame), (case["command"], case["data"]), "decode_command")


def check_decode_command_error(case):
    exc = expect_raises(pms5003.Pms5003Error, pms5003.decode_command, unhex(case["frame"]))
    expect_equal(exc.kind, case["kind"], "error kind")
    expect_equal(exc.offset, case["offset"], "error offset")


def check_build_error(case):
    expect_raises(ValueError, pms5003.build_data_frame, **case["args"])


def check_stream(case):
    chunks = [unhex(c) for c in case["chunks"]]
    total = 0
    for chunk in chunks:
        total += len(chunk)
    for how, pieces in _chunkings(chunks):
        parser, items = _feed_all(pieces)
        expect_equal(items, case["items"], "items (%s)" % how)
        for name in case["counters"]:
            expect_equal(parser.counters[name], case["counters"][name], "counter %s (%s)" % (name, how))
        expect_equal(parser.pending, case["pending"], "pending bytes (%s)" % how)
        _check_accounting(parser, total, how)


CHECKS = {
    "data_frame": check_data_frame,
    "ack_frame": check_ack_frame,
    "command": check_command,
    "decode_command_error": check_decode_command_error,
    "build_error": check_build_error,
    "stream": check_stream,
}
