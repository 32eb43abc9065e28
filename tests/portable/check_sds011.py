"""Vector checks for protocols/sds011.py (portable: CPython and MicroPython).

Stream cases are fed three ways (the chunks as written, one chunk, one byte at a time) and must give
the same items every time: what the parser reports may not depend on how the UART delivered bytes.
"""

from protocols import sds011
from protocols.errors import ProtocolError
from vectorlib import expect_close, expect_equal, expect_raises, unhex


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _describe(item):
    """An item from feed() in the JSON shape the vectors use."""
    if isinstance(item, sds011.Sds011Reading):
        return {"reading": [item.pm2_5_tenths, item.pm10_tenths, item.device_id]}
    if isinstance(item, sds011.Sds011Reply):
        return {"reply": [item.command, item.is_set, _plain(item.value), item.device_id]}
    if isinstance(item, sds011.Sds011Error):
        if not isinstance(item, ProtocolError) or not item.reason or item.offset is None:
            raise AssertionError("error item lacks a reason or an offset: %r" % (item,))
        return {"error": item.kind, "offset": item.offset}
    raise AssertionError("feed returned an unexpected item %r" % (item,))


def _feed_all(chunks):
    parser = sds011.Sds011Parser()
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
    accounted = 10 * (c["frames"] + c["replies"]) + c["garbage_bytes"] + parser.pending
    expect_equal(accounted, total, "bytes accounted for (%s)" % how)
    if parser.pending >= sds011.FRAME_SIZE:
        raise AssertionError("parser holds %d bytes, more than a frame" % parser.pending)


def check_data_frame(case):
    frame = unhex(case["frame"])
    parser, items = _feed_all([frame])
    expect_equal(items, [{"reading": [case["pm2_5_tenths"], case["pm10_tenths"], case["device_id"]]}],
                 "decoded items")
    reading = sds011.Sds011Parser().feed(frame)[0]
    expect_close(reading.pm2_5, case["pm2_5"], 0.001, "pm2_5")
    expect_close(reading.pm10, case["pm10"], 0.001, "pm10")
    expect_equal(sds011.build_data_frame(case["pm2_5_tenths"], case["pm10_tenths"], case["device_id"]),
                 frame, "build_data_frame")
    _check_accounting(parser, len(frame), "data frame")


def check_reply_frame(case):
    frame = unhex(case["frame"])
    parser, items = _feed_all([frame])
    value = case["value"]
    expect_equal(items, [{"reply": [case["command"], case["is_set"], value, case["device_id"]]}],
                 "decoded items")
    reply = sds011.Sds011Parser().feed(frame)[0]
    if reply.kind is None:
        raise AssertionError("reply to command 0x%02X has no kind" % case["command"])
    if isinstance(value, list):
        value = tuple(value)
    expect_equal(sds011.build_reply(case["command"], value, case["device_id"], case["is_set"]),
                 frame, "build_reply")
    expect_equal(parser.counters["replies"], 1, "replies counter")


def check_command(case):
    frame = unhex(case["frame"])
    expect_equal(getattr(sds011, "cmd_" + case["name"])(**case["args"]), frame, "cmd_" + case["name"])
    reply = sds011.decode_command(frame)
    expect_equal([reply.command, reply.is_set, reply.value, reply.device_id], case["decoded"],
                 "decode_command")


def check_decode_command_error(case):
    exc = expect_raises(sds011.Sds011Error, sds011.decode_command, unhex(case["frame"]))
    expect_equal(exc.kind, case["kind"], "error kind")
    expect_equal(exc.offset, case["offset"], "error offset")


def check_build_error(case):
    name = case["name"]
    fn = getattr(sds011, name if name.startswith("build_") else "cmd_" + name)
    expect_raises(ValueError, fn, **case["args"])


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
    "reply_frame": check_reply_frame,
    "command": check_command,
    "decode_command_error": check_decode_command_error,
    "build_error": check_build_error,
    "stream": check_stream,
}
