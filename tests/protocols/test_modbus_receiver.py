"""protocols/modbus_receiver.py under CPython: frames survive any chunking, timing rules, resync
after garbage, and fuzzing (the receiver never raises and accounts for every byte)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import modbus_rtu as rtu
from protocols import modbus_server as server
from protocols.modbus_receiver import RtuReceiver
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings, garbage_and_frames
from tests.protocols.test_modbus_rtu import REQUEST_SEEDS, RESPONSE_SEEDS, read_values, requests

PROPERTY_EXAMPLES = 200


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def check_accounting(rx: RtuReceiver) -> None:
    c = rx.counters
    assert c["frame_bytes"] + c["reply_bytes"] + c["garbage_bytes"] + rx.pending == c["bytes"]
    assert rx.pending < rtu.MAX_ADU


def frames_and_errors(items: list) -> tuple[list[bytes], list[rtu.ModbusFrameError]]:
    frames = [i for i in items if isinstance(i, bytes)]
    errors = [i for i in items if isinstance(i, rtu.ModbusFrameError)]
    assert len(frames) + len(errors) == len(items), items
    return frames, errors


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.lists(requests(broadcast=True), min_size=1, max_size=6), st.lists(st.integers(0, 4000)))
def test_server_frames_survive_any_chunking(reqs: list, cuts: list[int]) -> None:
    adus = [rtu.build_request(r, any_address=True) for r in reqs]
    rx = RtuReceiver(role="server")
    items = []
    for chunk in chunked(b"".join(adus), cuts):
        items += rx.feed(chunk)
    assert items == adus
    assert rx.counters["frames"] == len(adus) and rx.counters["garbage_bytes"] == 0
    check_accounting(rx)


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.data())
def test_master_gets_each_reply_it_expects(data: st.DataObject) -> None:
    rx = RtuReceiver(role="master", baud=data.draw(st.sampled_from((None, 9600, 115200))))
    for _ in range(data.draw(st.integers(1, 4))):
        req = data.draw(requests())
        if data.draw(st.booleans()):
            reply = server.build_response(req, read_values(data.draw, req))
        else:
            reply = server.build_exception(req.unit, req.function, data.draw(st.integers(1, 11)))
        rx.expect(rtu.build_request(req, any_address=True))
        items = []
        for chunk in chunked(reply, data.draw(st.lists(st.integers(0, 300)))):
            items += rx.feed(chunk, gap_us=data.draw(st.sampled_from((None, 0, 500))))
        assert items == [reply]
    check_accounting(rx)


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.data())
def test_master_frames_replies_by_function_code_alone(data: st.DataObject) -> None:
    replies = []
    for _ in range(data.draw(st.integers(1, 5))):
        req = data.draw(requests())
        replies.append(server.build_response(req, read_values(data.draw, req)))
    rx = RtuReceiver(role="master")
    items = []
    for chunk in chunked(b"".join(replies), data.draw(st.lists(st.integers(0, 2000)))):
        items += rx.feed(chunk)
    assert items == replies


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.data())
def test_server_on_a_shared_bus_skips_other_replies(data: st.DataObject) -> None:
    # Requests and the addressed devices' replies interleaved on one wire, no timing.
    stream, want = b"", []
    for _ in range(data.draw(st.integers(1, 5))):
        req = data.draw(requests())
        adu = rtu.build_request(req, any_address=True)
        if data.draw(st.booleans()):
            reply = server.build_response(req, read_values(data.draw, req))
        else:
            reply = server.build_exception(req.unit, req.function, data.draw(st.integers(1, 11)))
        stream += adu + reply
        # A 05/06 echo is byte for byte a request, and any reply exactly as long as a request of
        # its function code (say 17 coils: 3 data bytes, 8 bytes in all) is a CRC-valid request
        # frame too: the server's receiver cannot tell them apart, so it delivers both and leaves
        # the request's fields to parse_request.
        looks_like_request = rtu.request_length(reply) == len(reply)
        want += [adu, reply] if reply == adu or looks_like_request else [adu]
    rx = RtuReceiver(role="server")
    # The stream starts with a frame: a boundary first, so the receiver trusts the first header
    # rather than hunting (joined mid-stream, it takes a CRC-valid frame that happens to lie inside
    # a long request's data while the request waits for its tail, as hypothesis found: a function
    # 17 request whose values include 40BD 0001 4400, fed in two chunks).
    assert rx.flush() == []
    items = []
    for chunk in chunked(stream, data.draw(st.lists(st.integers(0, 3000)))):
        items += rx.feed(chunk)
    assert items + rx.flush() == want
    assert rx.counters["garbage_bytes"] == 0
    check_accounting(rx)


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.data())
def test_silences_separate_garbage_from_frames(data: st.DataObject) -> None:
    # With timing known, garbage between t3.5 silences never costs a frame that follows one.
    baud = data.draw(st.sampled_from((9600, 19200, 115200)))
    t15, t35 = rtu.t15_us(baud), rtu.t35_us(baud)
    rx = RtuReceiver(role="server", baud=baud)
    want, items = [], []
    for _ in range(data.draw(st.integers(1, 5))):
        if data.draw(st.booleans()):
            piece = data.draw(st.binary(min_size=1, max_size=40))
        else:
            piece = rtu.build_request(data.draw(requests()), any_address=True)
            want.append(piece)
        chunks = chunked(piece, data.draw(st.lists(st.integers(0, 300), max_size=4)))
        for n, chunk in enumerate(chunks):
            gap = t35 + 1 + data.draw(st.integers(0, 10**6)) if n == 0 else data.draw(st.floats(0, t15))
            items += rx.feed(chunk, gap_us=gap)
    items += rx.flush()
    frames, errors = frames_and_errors(items)
    assert frames == want
    assert rx.counters["timing_errors"] == 0
    assert (rx.counters["garbage_bytes"] > 0) == bool(errors)
    assert rx.pending == 0
    check_accounting(rx)


@fuzz_settings(PROPERTY_EXAMPLES)
@given(requests(), st.data())
def test_a_t15_gap_inside_a_frame_invalidates_it(req: rtu.ModbusRequest, data: st.DataObject) -> None:
    baud = data.draw(st.sampled_from((9600, 19200, 38400, 115200)))
    adu = rtu.build_request(req, any_address=True)
    cut = data.draw(st.integers(1, len(adu) - 1))
    gap = data.draw(st.floats(rtu.t15_us(baud) + 1, rtu.t35_us(baud)))
    rx = RtuReceiver(role="server", baud=baud)
    items = rx.feed(adu[:cut]) + rx.feed(adu[cut:], gap_us=gap) + rx.flush()
    frames, errors = frames_and_errors(items)
    assert frames == [] and errors and errors[0].offset == 0
    assert rx.counters["timing_errors"] == 1
    check_accounting(rx)


@fuzz_settings(PROPERTY_EXAMPLES)
@given(st.binary(max_size=60), st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(0, 400)))
def test_resync_after_garbage_finds_every_frame(garbage: bytes, reqs: list, cuts: list[int]) -> None:
    # No timing at all (a USB adapter): hunting alone must still find every intact frame by the
    # end of the stream.
    adus = [rtu.build_request(r, any_address=True) for r in reqs]
    rx = RtuReceiver(role="server")
    items = []
    for chunk in chunked(garbage + b"".join(adus), cuts):
        items += rx.feed(chunk)
    items += rx.flush()
    frames, _ = frames_and_errors(items)
    assert frames[-len(adus):] == adus
    check_accounting(rx)


def test_buffer_stays_bounded() -> None:
    rx = RtuReceiver(role="server")
    # A header that claims a 255-byte write, over and over: the receiver must not hoard bytes.
    claim = bytes.fromhex("01 10 00 00 00 7B F6")
    for _ in range(200):
        rx.feed(claim * 5)
        assert rx.pending < rtu.MAX_ADU and len(rx._buf) <= 2 * rtu.MAX_ADU
    items = rx.feed(REQUEST_SEEDS[0]) + rx.flush()
    assert REQUEST_SEEDS[0] in items
    check_accounting(rx)


def test_garbage_runs_are_reported_without_a_frame() -> None:
    rx = RtuReceiver(role="master")
    items = rx.feed(b"\xff" * 1000)
    assert items and all(isinstance(i, rtu.ModbusFrameError) for i in items)
    assert rx.counters["garbage_bytes"] == 1000 and rx.pending == 0


def test_configuration_errors() -> None:
    with pytest.raises(ValueError):
        RtuReceiver(role="client")
    with pytest.raises(ValueError):
        RtuReceiver(role="server").expect(REQUEST_SEEDS[0])
    with pytest.raises(ValueError):
        RtuReceiver(baud=9600, framing="7E1")


# --- fuzzing ---------------------------------------------------------------------------------------

@st.composite
def receiver_runs(draw: st.DrawFn) -> tuple:
    role = draw(st.sampled_from(("master", "server")))
    seeds = RESPONSE_SEEDS if role == "master" else REQUEST_SEEDS
    stream = draw(garbage_and_frames(seeds))
    baud = draw(st.sampled_from((None, 9600, 115200)))
    expect = draw(st.sampled_from((None,) + tuple(REQUEST_SEEDS))) if role == "master" else None
    # Chunk boundaries and gaps come from one drawn seed: drawing them one by one doubled the
    # cost of each example, and the stream's content is what needs shrinking.
    return role, stream, baud, expect, draw(st.integers(0, 2**32))


def _fuzz_receiver(run: tuple) -> None:
    role, stream, baud, expect, seed = run
    rng = random.Random(seed)
    cuts = [rng.randrange(len(stream) + 1) for _ in range(rng.randrange(8))]
    rx = RtuReceiver(role=role, baud=baud)
    if expect is not None:
        rx.expect(expect)
    items = []
    for chunk in chunked(stream, cuts):
        gap = rng.choice((None, None, rng.randrange(6000)))
        items += rx.feed(chunk, gap_us=gap)
        check_accounting(rx)
    items += rx.flush()
    frames, errors = frames_and_errors(items)
    for frame in frames:
        assert 4 <= len(frame) <= rtu.MAX_ADU and rtu.crc16_modbus(frame) == 0
    for error in errors:
        assert 0 <= error.offset < len(stream) and error.reason
    offsets = [e.offset for e in errors]
    assert offsets == sorted(offsets)
    assert rx.pending == 0 and rx.counters["frames"] == len(frames)
    assert sum(len(f) for f in frames) == rx.counters["frame_bytes"]
    assert (rx.counters["garbage_bytes"] > 0) == bool(errors)
    check_accounting(rx)


@fuzz_settings(DEFAULT_EXAMPLES)
@given(receiver_runs())
def test_fuzz_receiver(run: tuple) -> None:
    _fuzz_receiver(run)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(receiver_runs())
def test_fuzz_receiver_long(run: tuple) -> None:
    _fuzz_receiver(run)
