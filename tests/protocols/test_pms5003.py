"""protocols/pms5003.py: independent checksums for the shared vectors, a brute-force reference
scanner the incremental parser must agree with, hypothesis round trips and fuzzing."""

from __future__ import annotations

import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import pms5003
from protocols.errors import ProtocolError
from tests.conftest import VECTOR_DIR
from tests.protocols.fuzz import (
    DEFAULT_EXAMPLES,
    LONG_EXAMPLES,
    fuzz_settings,
    garbage_and_frames,
    mutated,
)

VECTORS = json.loads((VECTOR_DIR / "pms5003.json").read_text())["cases"]
PROPERTY = settings(max_examples=300, deadline=None, database=None)


# --- an independent model of the wire format (written from REFERENCE.md §2, not from the module) ---

def ref_checksum_ok(frame: bytes) -> bool:
    """The last two bytes are the big-endian sum of all the others."""
    return int.from_bytes(frame[-2:], "big") == sum(frame[:-2])


def ref_frame(words: list[int]) -> bytes:
    body = b"BM" + (28).to_bytes(2, "big") + b"".join(w.to_bytes(2, "big") for w in words)
    return body + sum(body).to_bytes(2, "big")


def ref_ack(command: int, data: int) -> bytes:
    body = bytes([0x42, 0x4D, 0x00, 0x04, command, data])
    return body + sum(body).to_bytes(2, "big")


def ref_scan(stream: bytes) -> list[tuple[int, tuple]]:
    """Decode a complete stream by brute force: at each offset either a whole valid frame (taken),
    a rejected header (one byte skipped) or anything else (one byte skipped); a header whose frame
    runs past the end is skipped too. Returns (offset, item) for readings, acks and bad frames."""
    out: list[tuple[int, tuple]] = []
    i = 0
    while i < len(stream):
        if stream[i:i + 2] != b"BM" or len(stream) - i < 4:
            i += 1
            continue
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        if length not in (28, 4):
            out.append((i, ("error", "bad_length", i)))
            i += 1
            continue
        frame = stream[i:i + 4 + length]
        if len(frame) < 4 + length:
            i += 1
            continue
        if not ref_checksum_ok(frame):
            out.append((i, ("error", "bad_checksum", i)))
            i += 1
            continue
        if length == 28:
            out.append((i, ("reading", struct.unpack(">13H", frame[4:30]))))
        else:
            out.append((i, ("ack", frame[4], frame[5])))
        i += len(frame)
    return out


def ref_items_before(stream: bytes, done: int) -> list[tuple]:
    """The scanner's items that start before `done`: what a streaming parser holding the rest as a
    possibly-incomplete frame has been able to decide so far."""
    return [item for pos, item in ref_scan(stream) if pos < done]


def as_tuple(item: object) -> tuple:
    if isinstance(item, pms5003.Pms5003Reading):
        return ("reading", item.values())
    if isinstance(item, pms5003.Pms5003Ack):
        return ("ack", item.command, item.data)
    assert isinstance(item, pms5003.Pms5003Error), f"unexpected item {item!r}"
    return ("error", item.kind, item.offset)


def feed_chunks(stream: bytes, cuts: list[int]) -> tuple[pms5003.Pms5003Parser, list]:
    parser = pms5003.Pms5003Parser()
    items: list = []
    edges = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(edges, edges[1:]):
        items.extend(parser.feed(stream[a:b]))
    return parser, items


def check_invariants(parser: pms5003.Pms5003Parser, items: list, total: int) -> None:
    c = parser.counters
    assert 32 * c["frames"] + 8 * c["acks"] + c["garbage_bytes"] + parser.pending == total
    assert parser.pending < pms5003.DATA_FRAME_SIZE
    for item in items:
        if isinstance(item, ProtocolError):
            assert isinstance(item, pms5003.Pms5003Error)
            assert item.reason and item.offset is not None and 0 <= item.offset < total
            assert item.kind == "garbage" or item.kind in c
    errors = [i for i in items if isinstance(i, pms5003.Pms5003Error)]
    for kind in ("bad_checksum", "bad_length"):
        assert c[kind] == sum(1 for e in errors if e.kind == kind)
    assert c["frames"] == sum(1 for i in items if isinstance(i, pms5003.Pms5003Reading))
    assert c["acks"] == sum(1 for i in items if isinstance(i, pms5003.Pms5003Ack))


# --- the shared vectors, checked against the independent model ---

@pytest.mark.parametrize("case", [c for c in VECTORS if c["check"] in ("data_frame", "ack_frame", "command")],
                         ids=lambda c: c["id"])
def test_vector_frames_have_independently_computed_checksums(case: dict) -> None:
    frame = bytes.fromhex(case["frame"].replace(" ", ""))
    assert ref_checksum_ok(frame)
    if case["check"] == "data_frame":
        assert frame == ref_frame([case["fields"][name] for name in pms5003.FIELDS])
    elif case["check"] == "ack_frame":
        assert frame == ref_ack(case["command"], case["data"])


@pytest.mark.parametrize("case", [c for c in VECTORS if c["check"] == "stream"], ids=lambda c: c["id"])
def test_vector_streams_agree_with_the_reference_scanner(case: dict) -> None:
    stream = b"".join(bytes.fromhex(c.replace(" ", "")) for c in case["chunks"])
    expected = ref_items_before(stream, len(stream) - case["pending"])
    got = [i for i in case["items"] if i.get("error") != "garbage"]
    assert len(got) == len(expected)
    for mine, ref in zip(got, expected):
        if "reading" in mine:
            assert ref == ("reading", tuple(mine["reading"]))
        elif "ack" in mine:
            assert ref == ("ack", *mine["ack"])
        else:
            assert ref == ("error", mine["error"], mine["offset"])


def test_reference_md_vectors_decode_to_the_stated_values() -> None:
    frame = bytes.fromhex("424D001C0005000D00160005000D001602FD00FC001D000F00060006970003C5")
    (reading,) = pms5003.Pms5003Parser().feed(frame)
    assert (reading.pm1_0_atm, reading.pm2_5_atm, reading.pm10_atm) == (5, 13, 22)
    assert (reading.count_0_3, reading.count_0_5, reading.count_1_0, reading.count_2_5,
            reading.count_5_0, reading.count_10) == (765, 252, 29, 15, 6, 6)


def test_feed_accepts_any_bytes_like() -> None:
    frame = ref_frame(list(range(13)))
    for data in (bytearray(frame), memoryview(frame), frame):
        (reading,) = pms5003.Pms5003Parser().feed(data)
        assert reading.values() == tuple(range(13))


def test_reset_drops_a_partial_frame() -> None:
    parser = pms5003.Pms5003Parser()
    frame = ref_frame([1] * 13)
    assert parser.feed(frame[:20]) == [] and parser.pending == 20
    parser.reset()
    assert parser.pending == 0
    assert [as_tuple(i) for i in parser.feed(frame)] == [("reading", (1,) * 13)]


def test_errors_are_data_with_one_sentence_and_a_stream_offset() -> None:
    parser = pms5003.Pms5003Parser()
    bad = bytearray(ref_frame([7] * 13))
    bad[-1] ^= 1
    parser.feed(b"\x00" * 5)
    items = parser.feed(bytes(bad))
    assert [as_tuple(i) for i in items] == [("error", "garbage", 0), ("error", "bad_checksum", 5)]
    assert "at byte 5" in str(items[1]) and "checksum" in items[1].reason


# --- hypothesis: round trips over any chunking ---

words = st.lists(st.integers(0, 0xFFFF), min_size=13, max_size=13)
cuts = st.lists(st.integers(0, 10_000), max_size=12)


@PROPERTY
@given(words, cuts)
def test_build_then_parse_over_any_chunking(values: list[int], cut_points: list[int]) -> None:
    frame = pms5003.build_data_frame(**dict(zip(pms5003.FIELDS, values)))
    assert frame == ref_frame(values)
    parser, items = feed_chunks(frame, cut_points)
    assert [as_tuple(i) for i in items] == [("reading", tuple(values))]
    assert parser.pending == 0


frame_specs = st.lists(
    st.one_of(words.map(lambda w: ("reading", tuple(w))),
              st.tuples(st.just("ack"), st.sampled_from([0xE1, 0xE2, 0xE4]), st.integers(0, 255))),
    max_size=6,
)


def encode_spec(spec: tuple) -> bytes:
    if spec[0] == "reading":
        return pms5003.build_data_frame(*spec[1])
    return pms5003.build_ack(spec[1], spec[2])


@PROPERTY
@given(frame_specs, cuts)
def test_a_stream_of_frames_and_acks_round_trips(specs: list[tuple], cut_points: list[int]) -> None:
    stream = b"".join(encode_spec(s) for s in specs)
    parser, items = feed_chunks(stream, cut_points)
    assert [as_tuple(i) for i in items] == specs
    check_invariants(parser, items, len(stream))


def valid_frame_starts_in(stream: bytes, start: int, stop: int, end_after: int) -> bool:
    """Whether a whole valid frame starts in stream[start:stop] and runs past end_after."""
    for k in range(start, stop):
        if stream[k:k + 2] == b"BM" and len(stream) - k >= 4:
            size = 4 + int.from_bytes(stream[k + 2:k + 4], "big")
            if size in (32, 8) and k + size > end_after and k + size <= len(stream):
                if ref_checksum_ok(stream[k:k + size]):
                    return True
    return False


@PROPERTY
@given(st.binary(max_size=80), words, cuts)
def test_a_good_frame_after_garbage_is_found(garbage: bytes, values: list[int], cut_points: list[int]) -> None:
    frame = ref_frame(values)
    stream = garbage + frame
    _, items = feed_chunks(stream, cut_points)
    # Only a valid frame that starts in the garbage and overlaps ours could hide it (it would be
    # taken first); the reference scanner then agrees with the parser anyway (checked elsewhere).
    if not valid_frame_starts_in(stream, 0, len(garbage), len(garbage)):
        assert ("reading", tuple(values)) in [as_tuple(i) for i in items]


# --- fuzzing: arbitrary and mutated bytes ---

SEEDS = [
    bytes.fromhex("424D001C0005000D00160005000D001602FD00FC001D000F00060006970003C5"),
    bytes.fromhex("424D001C000C00120015000C0012001508520 26C006E000C00030001970002EE".replace(" ", "")),
    ref_frame([0] * 12 + [0x9700]),
    ref_ack(0xE1, 0),
    ref_ack(0xE4, 0),
    pms5003.cmd_passive_mode(),
    pms5003.cmd_passive_read(),
]


def check_stream_against_reference(stream: bytes, cut_points: list[int]) -> None:
    """Nothing raised; the same items whatever the chunking; the bad-frame errors, readings and
    acks are exactly the brute-force scanner's; every byte is accounted for."""
    parser, items = feed_chunks(stream, cut_points)
    check_invariants(parser, items, len(stream))
    _, whole = feed_chunks(stream, [])
    assert [(as_tuple(i), str(i)) for i in items] == [(as_tuple(i), str(i)) for i in whole]
    mine = [as_tuple(i) for i in items if as_tuple(i)[:2] != ("error", "garbage")]
    assert mine == ref_items_before(stream, len(stream) - parser.pending)


def check_decode_command(data: bytes) -> None:
    try:
        command, value = pms5003.decode_command(data)
    except pms5003.Pms5003Error as exc:
        assert exc.offset is not None and exc.kind
        return
    assert len(data) == 7 and ref_checksum_ok(data)
    assert pms5003.build_command(command, value) == data


def check_fuzz_input(stream: bytes, cut_seed: int) -> None:
    """One fuzz example exercises both decoders: the stream through the parser (cut where a seeded
    RNG says), and the stream and its first 7 bytes through decode_command."""
    rng = random.Random(cut_seed)
    check_stream_against_reference(stream, [rng.randrange(len(stream) + 1) for _ in range(cut_seed % 8)])
    check_decode_command(stream)
    check_decode_command(stream[:7])


# One fuzz test per module (not one per decoder): hypothesis' own cost per example dominates here.
fuzz_input = st.one_of(st.binary(max_size=200), garbage_and_frames(SEEDS))


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

@PROPERTY
@given(st.sampled_from(pms5003.FIELDS), st.one_of(st.integers(max_value=-1), st.integers(min_value=0x10000)))
def test_build_data_frame_rejects_out_of_range_words(field: str, value: int) -> None:
    with pytest.raises(ValueError):
        pms5003.build_data_frame(**{field: value})


def test_command_builders_match_reference_md_bytes() -> None:
    assert pms5003.cmd_passive_mode().hex(" ").upper() == "42 4D E1 00 00 01 70"
    assert pms5003.cmd_active_mode().hex(" ").upper() == "42 4D E1 00 01 01 71"
    assert pms5003.cmd_passive_read().hex(" ").upper() == "42 4D E2 00 00 01 71"
    assert pms5003.cmd_sleep().hex(" ").upper() == "42 4D E4 00 00 01 73"
    assert pms5003.cmd_wake().hex(" ").upper() == "42 4D E4 00 01 01 74"
