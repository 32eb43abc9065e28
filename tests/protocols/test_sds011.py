"""protocols/sds011.py: independent checksums for the shared vectors, a brute-force reference
scanner the incremental parser must agree with, hypothesis round trips and fuzzing."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import sds011
from protocols.errors import ProtocolError
from tests.conftest import VECTOR_DIR
from tests.protocols.fuzz import (
    DEFAULT_EXAMPLES,
    LONG_EXAMPLES,
    fuzz_settings,
    garbage_and_frames,
    mutated,
)

VECTORS = json.loads((VECTOR_DIR / "sds011.json").read_text())["cases"]
PROPERTY = settings(max_examples=300, deadline=None, database=None)
KNOWN_REPLIES = {0x02, 0x05, 0x06, 0x07, 0x08}  # protocol V1.3 §3.1, 3.3 .. 3.6


# --- an independent model of the wire format (written from REFERENCE.md §3, not from the module) ---

def ref_sensor_frame(kind: int, d: list[int]) -> bytes:
    return bytes([0xAA, kind, *d, sum(d) % 256, 0xAB])


def ref_data_frame(pm25: int, pm10: int, dev: int) -> bytes:
    return ref_sensor_frame(0xC0, [pm25 % 256, pm25 // 256, pm10 % 256, pm10 // 256, dev // 256, dev % 256])


def ref_command(d: list[int], dev: int) -> bytes:
    body = [*d, *([0] * (13 - len(d))), dev // 256, dev % 256]
    return bytes([0xAA, 0xB4, *body, sum(body) % 256, 0xAB])


def ref_frame_ok(frame: bytes) -> bool:
    if len(frame) == 10:
        return frame[9] == 0xAB and frame[8] == sum(frame[2:8]) % 256
    return len(frame) == 19 and frame[18] == 0xAB and frame[17] == sum(frame[2:17]) % 256


def ref_scan(stream: bytes) -> list[tuple[int, tuple]]:
    """Decode a complete stream by brute force: at each AA C0 / AA C5 with ten bytes available,
    a good frame is taken and a bad one (tail, then checksum, then unknown reply) skipped by one
    byte. Returns (offset, item) for readings, replies (command, d2, d3, d4, id) and bad frames."""
    out: list[tuple[int, tuple]] = []
    i = 0
    while i < len(stream):
        frame = stream[i:i + 10]
        if len(frame) < 10 or frame[0] != 0xAA or frame[1] not in (0xC0, 0xC5):
            i += 1
            continue
        if frame[9] != 0xAB:
            out.append((i, ("error", "bad_tail", i)))
        elif frame[8] != sum(frame[2:8]) % 256:
            out.append((i, ("error", "bad_checksum", i)))
        elif frame[1] == 0xC5 and frame[2] not in KNOWN_REPLIES:
            out.append((i, ("error", "unknown_reply", i)))
        else:
            dev = frame[6] * 256 + frame[7]
            if frame[1] == 0xC0:
                out.append((i, ("reading", frame[3] * 256 + frame[2], frame[5] * 256 + frame[4], dev)))
            else:
                out.append((i, ("reply", frame[2], frame[3], frame[4], frame[5], dev)))
            i += 10
            continue
        i += 1
    return out


def ref_items_before(stream: bytes, done: int) -> list[tuple]:
    return [item for pos, item in ref_scan(stream) if pos < done]


def as_tuple(item: object) -> tuple:
    if isinstance(item, sds011.Sds011Reading):
        return ("reading", item.pm2_5_tenths, item.pm10_tenths, item.device_id)
    if isinstance(item, sds011.Sds011Reply):
        return ("parsed-reply", item.command, item.is_set, item.value, item.device_id)
    assert isinstance(item, sds011.Sds011Error), f"unexpected item {item!r}"
    return ("error", item.kind, item.offset)


def ref_reply_fields(raw: tuple) -> tuple:
    """What Sds011Reply should hold for a raw ("reply", d1, d2, d3, d4, id) from the scanner."""
    _, command, d2, d3, d4, dev = raw
    if command == 0x07:
        return ("parsed-reply", command, False, (d2, d3, d4), dev)
    if command == 0x05:
        return ("parsed-reply", command, True, dev, dev)
    return ("parsed-reply", command, d2 != 0, d3, dev)


def feed_chunks(stream: bytes, cuts: list[int]) -> tuple[sds011.Sds011Parser, list]:
    parser = sds011.Sds011Parser()
    items: list = []
    edges = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(edges, edges[1:]):
        items.extend(parser.feed(stream[a:b]))
    return parser, items


def check_invariants(parser: sds011.Sds011Parser, items: list, total: int) -> None:
    c = parser.counters
    assert 10 * (c["frames"] + c["replies"]) + c["garbage_bytes"] + parser.pending == total
    assert parser.pending < sds011.FRAME_SIZE
    for item in items:
        if isinstance(item, ProtocolError):
            assert isinstance(item, sds011.Sds011Error)
            assert item.reason and item.offset is not None and 0 <= item.offset < total
            assert item.kind == "garbage" or item.kind in c
    errors = [i for i in items if isinstance(i, sds011.Sds011Error)]
    for kind in ("bad_checksum", "bad_tail", "unknown_reply"):
        assert c[kind] == sum(1 for e in errors if e.kind == kind)
    assert c["frames"] == sum(1 for i in items if isinstance(i, sds011.Sds011Reading))
    assert c["replies"] == sum(1 for i in items if isinstance(i, sds011.Sds011Reply))


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- the shared vectors, checked against the independent model ---

@pytest.mark.parametrize("case", [c for c in VECTORS if c["check"] in ("data_frame", "reply_frame", "command")],
                         ids=lambda c: c["id"])
def test_vector_frames_have_independently_computed_checksums(case: dict) -> None:
    frame = unhex(case["frame"])
    assert ref_frame_ok(frame)
    if case["check"] == "data_frame":
        assert frame == ref_data_frame(case["pm2_5_tenths"], case["pm10_tenths"], case["device_id"])
        assert case["pm2_5"] == case["pm2_5_tenths"] / 10 and case["pm10"] == case["pm10_tenths"] / 10
    elif case["check"] == "command":
        assert frame == ref_command(list(frame[2:15]), frame[15] * 256 + frame[16])


@pytest.mark.parametrize("case", [c for c in VECTORS if c["check"] == "stream"], ids=lambda c: c["id"])
def test_vector_streams_agree_with_the_reference_scanner(case: dict) -> None:
    stream = b"".join(unhex(c) for c in case["chunks"])
    expected = ref_items_before(stream, len(stream) - case["pending"])
    got = [i for i in case["items"] if i.get("error") != "garbage"]
    assert len(got) == len(expected)
    for mine, ref in zip(got, expected):
        if "reading" in mine:
            assert ref == ("reading", *mine["reading"])
        elif "reply" in mine:
            command, is_set, value, dev = mine["reply"]
            value = tuple(value) if isinstance(value, list) else value
            assert ref_reply_fields(ref) == ("parsed-reply", command, is_set, value, dev)
        else:
            assert ref == ("error", mine["error"], mine["offset"])


def test_reference_md_vectors_decode_to_the_stated_values() -> None:
    items = sds011.Sds011Parser().feed(unhex("AA C0 D4 04 3A 0A A1 60 1D AB AA C0 7B 00 01 01 A1 60 7E AB"))
    assert [(r.pm2_5, r.pm10, r.device_id) for r in items] == [(123.6, 261.8, 0xA160), (12.3, 25.7, 0xA160)]
    assert [(r.pm2_5_tenths, r.pm10_tenths) for r in items] == [(1236, 2618), (123, 257)]
    assert sds011.cmd_query_data() == unhex("AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")


def test_feed_accepts_any_bytes_like() -> None:
    frame = ref_data_frame(1, 2, 3)
    for data in (bytearray(frame), memoryview(frame), frame):
        assert [as_tuple(i) for i in sds011.Sds011Parser().feed(data)] == [("reading", 1, 2, 3)]


def test_reply_kinds_and_reset() -> None:
    parser = sds011.Sds011Parser()
    reply = sds011.build_reply(sds011.WORKING_PERIOD, 5, 0x1234, is_set=True)
    assert parser.feed(reply[:4]) == [] and parser.pending == 4
    parser.reset()
    (item,) = parser.feed(reply)
    assert item.kind == "working_period" and item.is_set and item.value == 5 and item.device_id == 0x1234


def test_errors_are_data_with_one_sentence_and_a_stream_offset() -> None:
    parser = sds011.Sds011Parser()
    parser.feed(b"\x00" * 3)
    bad = bytearray(ref_data_frame(10, 20, 0xA160))
    bad[8] ^= 1
    items = parser.feed(bytes(bad))
    assert [as_tuple(i) for i in items] == [("error", "garbage", 0), ("error", "bad_checksum", 3)]
    assert "at byte 3" in str(items[1]) and "checksum" in items[1].reason


# --- hypothesis: round trips over any chunking ---

u16 = st.integers(0, 0xFFFF)
cuts = st.lists(st.integers(0, 10_000), max_size=12)
replies = st.one_of(
    st.tuples(st.sampled_from([0x02, 0x06, 0x08]), st.integers(0, 255), st.booleans(), u16),
    st.tuples(st.just(0x07), st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
              st.just(False), u16),
    st.tuples(st.just(0x05), st.none(), st.just(True), u16),
)


@PROPERTY
@given(u16, u16, u16, cuts)
def test_build_then_parse_over_any_chunking(pm25: int, pm10: int, dev: int, cut_points: list[int]) -> None:
    frame = sds011.build_data_frame(pm25, pm10, dev)
    assert frame == ref_data_frame(pm25, pm10, dev)
    parser, items = feed_chunks(frame, cut_points)
    assert [as_tuple(i) for i in items] == [("reading", pm25, pm10, dev)]
    assert items[0].pm2_5 == pm25 / 10 and items[0].pm10 == pm10 / 10
    assert parser.pending == 0


def encode_spec(spec: tuple) -> bytes:
    if spec[0] == "reading":
        return sds011.build_data_frame(*spec[1:])
    _, command, value, is_set, dev = spec
    return sds011.build_reply(command, value, dev, is_set)


def expected_item(spec: tuple) -> tuple:
    if spec[0] == "reading":
        return spec
    _, command, value, is_set, dev = spec
    return ("parsed-reply", command, is_set, dev if command == 0x05 else value, dev)


frame_specs = st.lists(
    st.one_of(st.tuples(st.just("reading"), u16, u16, u16), replies.map(lambda r: ("reply", *r))),
    max_size=6,
)


@PROPERTY
@given(frame_specs, cuts)
def test_a_stream_of_readings_and_replies_round_trips(specs: list[tuple], cut_points: list[int]) -> None:
    stream = b"".join(encode_spec(s) for s in specs)
    for s in specs:
        assert ref_frame_ok(encode_spec(s))
    parser, items = feed_chunks(stream, cut_points)
    assert [as_tuple(i) for i in items] == [expected_item(s) for s in specs]
    check_invariants(parser, items, len(stream))


commands = st.one_of(
    st.tuples(st.just("query_data"), st.fixed_dictionaries({}), st.just((4, False, None))),
    st.integers(0, 1).map(lambda m: ("set_reporting_mode", {"mode": m}, (2, True, m))),
    st.integers(0, 30).map(lambda m: ("set_working_period", {"minutes": m}, (8, True, m))),
    u16.map(lambda n: ("set_device_id", {"new_id": n}, (5, True, n))),
    st.sampled_from([("sleep", {}, (6, True, 0)), ("work", {}, (6, True, 1)),
                     ("get_sleep_work", {}, (6, False, None)), ("get_reporting_mode", {}, (2, False, None)),
                     ("get_working_period", {}, (8, False, None)), ("query_firmware", {}, (7, False, None))]),
)


@PROPERTY
@given(commands, u16)
def test_command_builders_decode_back(spec: tuple, dev: int) -> None:
    name, args, (command, is_set, value) = spec
    frame = getattr(sds011, "cmd_" + name)(device_id=dev, **args)
    assert ref_frame_ok(frame) and frame[:3] == bytes([0xAA, 0xB4, command]) and frame[15:17] == dev.to_bytes(2, "big")
    decoded = sds011.decode_command(frame)
    assert (decoded.command, decoded.is_set, decoded.value, decoded.device_id) == (command, is_set, value, dev)


def valid_frame_starts_in(stream: bytes, start: int, stop: int, end_after: int) -> bool:
    """Whether a good sensor frame starts in stream[start:stop] and runs past end_after."""
    for k in range(start, stop):
        frame = stream[k:k + 10]
        if (len(frame) == 10 and frame[0] == 0xAA and frame[1] in (0xC0, 0xC5) and k + 10 > end_after
                and ref_frame_ok(frame) and (frame[1] == 0xC0 or frame[2] in KNOWN_REPLIES)):
            return True
    return False


@PROPERTY
@given(st.binary(max_size=40), u16, u16, u16, cuts)
def test_a_good_frame_after_garbage_is_found(garbage: bytes, pm25: int, pm10: int, dev: int,
                                             cut_points: list[int]) -> None:
    stream = garbage + ref_data_frame(pm25, pm10, dev)
    _, items = feed_chunks(stream, cut_points)
    # Only a good frame that starts in the garbage and overlaps ours could hide it.
    if not valid_frame_starts_in(stream, 0, len(garbage), len(garbage)):
        assert ("reading", pm25, pm10, dev) in [as_tuple(i) for i in items]


# --- fuzzing: arbitrary and mutated bytes ---

SEEDS = [
    unhex("AA C0 D4 04 3A 0A A1 60 1D AB"),
    unhex("AA C0 7B 00 01 01 A1 60 7E AB"),
    unhex("AA C5 07 0F 07 0A A1 60 28 AB"),
    unhex("AA C5 02 01 01 00 A1 60 05 AB"),
    unhex("AA C5 05 00 00 00 A0 01 A6 AB"),
    sds011.cmd_query_data(),
    sds011.cmd_set_device_id(0xA001, 0xA160),
    sds011.cmd_set_working_period(3),
]


def check_stream_against_reference(stream: bytes, cut_points: list[int]) -> None:
    """Nothing raised; the same items whatever the chunking; the bad-frame errors, readings and
    replies are exactly the brute-force scanner's; every byte is accounted for."""
    parser, items = feed_chunks(stream, cut_points)
    check_invariants(parser, items, len(stream))
    _, whole = feed_chunks(stream, [])
    assert [(as_tuple(i), str(i)) for i in items] == [(as_tuple(i), str(i)) for i in whole]
    mine = [as_tuple(i) for i in items if as_tuple(i)[:2] != ("error", "garbage")]
    ref = [ref_reply_fields(r) if r[0] == "reply" else r
           for r in ref_items_before(stream, len(stream) - parser.pending)]
    assert mine == ref


def check_decode_command(data: bytes) -> None:
    try:
        decoded = sds011.decode_command(data)
    except sds011.Sds011Error as exc:
        assert exc.offset is not None and exc.kind
        assert not (data[:2] == b"\xaa\xb4" and ref_frame_ok(data))
        return
    assert data[:2] == b"\xaa\xb4" and ref_frame_ok(data)
    assert decoded.command == data[2] and decoded.device_id == data[15] * 256 + data[16]


def check_fuzz_input(stream: bytes, cut_seed: int) -> None:
    """One fuzz example exercises both decoders: the stream through the parser (cut where a seeded
    RNG says), and the stream and its first 19 bytes through decode_command."""
    rng = random.Random(cut_seed)
    check_stream_against_reference(stream, [rng.randrange(len(stream) + 1) for _ in range(cut_seed % 8)])
    check_decode_command(stream)
    check_decode_command(stream[:19])


# One fuzz test per module (not one per decoder): hypothesis' own cost per example dominates here.
fuzz_input = st.one_of(st.binary(max_size=200), garbage_and_frames(SEEDS), mutated(SEEDS))


@fuzz_settings(DEFAULT_EXAMPLES)
@given(fuzz_input, st.integers(0, 2**32))
def test_fuzz(stream: bytes, cut_seed: int) -> None:
    check_fuzz_input(stream, cut_seed)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(fuzz_input, st.integers(0, 2**32))
def test_fuzz_long(stream: bytes, cut_seed: int) -> None:
    check_fuzz_input(stream, cut_seed)


# --- encoders refuse what they cannot encode ---

def test_builders_reject_out_of_range_arguments() -> None:
    for call in (lambda: sds011.build_data_frame(0x10000, 0, 0), lambda: sds011.build_data_frame(0, -1, 0),
                 lambda: sds011.build_data_frame(0, 0, 0x10000), lambda: sds011.cmd_set_working_period(31),
                 lambda: sds011.cmd_set_reporting_mode(2), lambda: sds011.cmd_set_device_id(0x10000),
                 lambda: sds011.build_reply(sds011.FIRMWARE, (1, 2)), lambda: sds011.build_reply(0x03, 0),
                 lambda: sds011.build_reply(sds011.SLEEP_WORK, 256)):
        with pytest.raises(ValueError):
            call()
