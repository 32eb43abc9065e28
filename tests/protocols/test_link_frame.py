"""protocols/link_frame.py against an independent implementation (struct + zlib.crc32 + the PyPI
`cobs` package), property tests for chunking and resynchronisation, and fuzzing of the decoder
(and of the node's LinkFrameReader, protocols/link_wire.py, against it)."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import pytest
from cobs import cobs as reference_cobs
from hypothesis import given
from hypothesis import strategies as st

from protocols import link_frame as lf
from protocols import link_wire
from protocols.errors import ProtocolError
from tests.conftest import VECTOR_DIR
from tests.protocols.fuzz import (
    DEFAULT_EXAMPLES,
    LONG_EXAMPLES,
    fuzz_settings,
    garbage_and_frames,
    mutated,
)

TYPES = (1, 2, 3, 4, 5, 6)


# --- the independent path ----------------------------------------------------------------------

def independent_raw(frame_type: int, seq: int, payload: bytes, version: int = 1) -> bytes:
    body = struct.pack(">BBI", version, frame_type, seq) + payload
    return body + struct.pack(">I", zlib.crc32(body))


def independent_wire(frame_type: int, seq: int, payload: bytes, lead: bool = False) -> bytes:
    raw = independent_raw(frame_type, seq, payload)
    return (b"\x00" if lead else b"") + reference_cobs.encode(raw) + b"\x00"


def reference_decode(stream: bytes, max_payload: int) -> list[tuple]:
    """What a LinkFrameDecoder fed `stream` (in any chunks) must return, written independently:
    ("frame", type, seq, payload) or ("error", kind, offset) tuples."""
    raw_max = lf.OVERHEAD + max_payload
    cap = raw_max + 1 + raw_max // 254
    items: list[tuple] = []
    parts = stream.split(b"\x00")
    offset = 0
    synced = False
    for index, part in enumerate(parts):
        complete = index < len(parts) - 1
        kind = None
        if len(part) > cap:
            kind = "oversize"
        elif part and complete:
            try:
                raw = reference_cobs.decode(part)
            except reference_cobs.DecodeError:
                kind = "bad_cobs"
            else:
                if len(raw) < 10:
                    kind = "short"
                elif len(raw) > raw_max:
                    kind = "oversize"
                elif zlib.crc32(raw[:-4]) != struct.unpack(">I", raw[-4:])[0]:
                    kind = "bad_crc"
                elif raw[0] != 1:
                    kind = "bad_version"
                elif raw[1] not in TYPES:
                    kind = "unknown_type"
                else:
                    seq = struct.unpack(">I", raw[2:6])[0]
                    items.append(("frame", raw[1], seq, raw[6:-4]))
        if kind is not None:
            if not synced and kind in ("oversize", "bad_cobs", "short", "bad_crc"):
                kind = "garbage"
            items.append(("error", kind, offset))
        offset += len(part) + 1
        synced = synced or complete
    return items


def describe(item: object) -> tuple:
    if isinstance(item, lf.LinkFrame):
        assert type(item.payload) is bytes
        return ("frame", item.type, item.seq, item.payload)
    assert isinstance(item, lf.LinkFrameError), f"feed returned {item!r}"
    assert isinstance(item, ProtocolError)
    assert item.kind in lf.ERROR_KINDS
    assert f"at byte {item.offset}" in str(item)
    return ("error", item.kind, item.offset)


def feed_in_chunks(decoder: lf.LinkFrameReader, stream: bytes, cuts: list[int]) -> list:
    items = []
    previous = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        got = decoder.feed(stream[previous:cut])
        assert isinstance(got, list)
        items += got
        previous = cut
    return items


# --- strategies --------------------------------------------------------------------------------

max_payloads = st.sampled_from([16, 64, 300, 1024])


@st.composite
def frame_specs(draw: st.DrawFn, max_payload: int) -> tuple[int, int, bytes]:
    payload = draw(st.one_of(
        st.binary(max_size=max_payload),
        st.integers(0, max_payload).map(lambda n: bytes([0x77]) * n),  # long non-zero runs
        st.integers(0, max_payload).map(bytes),  # all zeros
    ))
    return draw(st.sampled_from(TYPES)), draw(st.integers(0, lf.MAX_SEQ)), payload


cuts = st.lists(st.integers(0, 1 << 20), max_size=12)


# --- encoder -----------------------------------------------------------------------------------

@given(st.data(), max_payloads, st.booleans())
def test_encode_matches_the_independent_path(data: st.DataObject, max_payload: int,
                                             lead: bool) -> None:
    frame_type, seq, payload = data.draw(frame_specs(max_payload))
    wire = lf.encode_frame(frame_type, seq, payload, max_payload=max_payload, lead=lead)
    assert wire == independent_wire(frame_type, seq, payload, lead)
    assert wire.count(0) == (2 if lead else 1)


def test_encode_vectors_rederived_independently() -> None:
    cases = json.loads((VECTOR_DIR / "link_frame.json").read_text())["cases"]
    encodes = [c for c in cases if c["check"] == "encode"]
    assert len(encodes) >= 8
    for case in encodes:
        wire = independent_wire(case["type"], case["seq"], bytes.fromhex(case["payload"]),
                                case["lead"])
        assert wire.hex() == case["wire"], case["id"]


def test_decode_vectors_agree_with_the_independent_decoder() -> None:
    cases = json.loads((VECTOR_DIR / "link_frame.json").read_text())["cases"]
    decodes = [c for c in cases if c["check"] == "decode"]
    assert len(decodes) >= 20
    for case in decodes:
        stream = b"".join(bytes.fromhex(c) for c in case["chunks"])
        got = reference_decode(stream, case.get("max_payload", lf.MAX_PAYLOAD))
        assert len(got) == len(case["expect"]), case["id"]
        for have, want in zip(got, case["expect"]):
            if "frame" in want:
                f = want["frame"]
                assert have == ("frame", f["type"], f["seq"], bytes.fromhex(f["payload"])), case["id"]
            else:
                assert have[1] == want["error"], case["id"]
                assert want.get("offset", have[2]) == have[2], case["id"]


@pytest.mark.parametrize(("args", "kwargs"), [
    ((0, 0, b""), {}),
    ((7, 0, b""), {}),
    (("DATA", 0, b""), {}),
    ((2, -1, b""), {}),
    ((2, 1 << 32, b""), {}),
    ((2, 1.0, b""), {}),
    ((2, 0, bytes(1025)), {}),
    ((2, 0, bytes(17)), {"max_payload": 16}),
    ((2, 0, b""), {"max_payload": -1}),
])
def test_encode_rejects_bad_arguments(args: tuple, kwargs: dict) -> None:
    with pytest.raises(lf.LinkFrameValueError):
        lf.encode_frame(*args, **kwargs)
    assert issubclass(lf.LinkFrameValueError, ValueError)


# --- decoder: properties -----------------------------------------------------------------------

@given(st.data(), max_payloads, cuts)
def test_round_trip_in_any_chunking(data: st.DataObject, max_payload: int,
                                    cut_points: list[int]) -> None:
    specs = data.draw(st.lists(frame_specs(max_payload), max_size=6))
    leads = data.draw(st.lists(st.booleans(), min_size=len(specs), max_size=len(specs)))
    stream = b"".join(lf.encode_frame(t, s, p, max_payload=max_payload, lead=lead)
                      for (t, s, p), lead in zip(specs, leads))
    decoder = lf.LinkFrameDecoder(max_payload)
    items = feed_in_chunks(decoder, stream, cut_points)
    assert [describe(i) for i in items] == [("frame", t, s, p) for t, s, p in specs]
    assert decoder.counters["frames"] == len(specs)
    assert decoder.counters["garbage_bytes"] == 0


@given(st.data(), max_payloads, cuts)
def test_garbage_between_frames_loses_no_frame(data: st.DataObject, max_payload: int,
                                               cut_points: list[int]) -> None:
    """Frames sent with a leading delimiter all survive any garbage before, between and after."""
    specs = data.draw(st.lists(frame_specs(max_payload), min_size=1, max_size=5))
    junk = st.one_of(st.binary(max_size=60), st.binary(min_size=1000, max_size=2500))
    pieces = [data.draw(junk)]
    for t, s, p in specs:
        pieces.append(lf.encode_frame(t, s, p, max_payload=max_payload, lead=True))
        pieces.append(data.draw(junk))
    decoder = lf.LinkFrameDecoder(max_payload)
    items = feed_in_chunks(decoder, b"".join(pieces), cut_points)
    frames = [describe(i) for i in items if isinstance(i, lf.LinkFrame)]
    assert frames == [("frame", t, s, p) for t, s, p in specs]
    errors = [i for i in items if isinstance(i, lf.LinkFrameError)]
    assert sum(decoder.counters[k] for k in lf.ERROR_KINDS) == len(errors)


def test_oversize_stream_keeps_memory_bounded() -> None:
    decoder = lf.LinkFrameDecoder(64)
    chunk = b"\x5a" * 4096
    tracemalloc.start()
    try:
        decoder.feed(b"\x00")
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        items = []
        for _ in range(256):  # 1 MiB with no delimiter
            items += decoder.feed(chunk)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"feeding a 1 MiB oversize frame allocated {peak} bytes at peak"
    assert [describe(i) for i in items] == [("error", "oversize", 1)]
    assert decoder.counters["garbage_bytes"] == 256 * 4096
    good = lf.encode_frame(lf.ACK, 5, b"ok", max_payload=64, lead=True)
    assert [describe(i) for i in decoder.feed(good)] == [("frame", lf.ACK, 5, b"ok")]


def test_reset_drops_a_partial_frame_and_keeps_counters() -> None:
    decoder = lf.LinkFrameDecoder()
    wire = lf.encode_frame(lf.DATA, 1, b"abc")
    assert decoder.feed(wire[:5]) == []
    decoder.reset()
    assert decoder.feed(wire) == [lf.LinkFrame(lf.DATA, 1, b"abc")]
    assert decoder.feed(b"\x01\x01\x00")[0].kind == "short"
    decoder.reset()
    (item,) = decoder.feed(b"\x01\x01\x00")
    assert (item.kind, item.offset) == ("garbage", 0)
    assert decoder.counters["frames"] == 1 and decoder.counters["short"] == 1


def test_link_frame_value_semantics() -> None:
    a = lf.LinkFrame(lf.HEALTH, 3, b"\x00")
    assert a == lf.LinkFrame(6, 3, b"\x00")
    assert a != lf.LinkFrame(6, 4, b"\x00")
    assert a != (6, 3, b"\x00")
    assert repr(a) == "LinkFrame(HEALTH, seq=3, payload=1 bytes)"
    # A node's frames are link_wire's plain LinkFrame (no == or repr on its flash; no __slots__
    # either: MicroPython ignores them, an instance keeps its attribute map whatever they say).
    plain = link_wire.LinkFrame(6, 3, b"\x00")
    assert a == plain and plain == a and a != link_wire.LinkFrame(6, 3, b"\x01")
    assert (plain.type, plain.seq, plain.payload) == (6, 3, b"\x00")


# --- decoder: fuzzing --------------------------------------------------------------------------

SEEDS = [
    independent_wire(1, 0, b""),
    independent_wire(2, 7, b"\x93\x01\x02\x03", lead=True),
    independent_wire(3, 0xFFFFFFFF, bytes(12)),
    independent_wire(6, 0x01020304, b"\xaa" * 300),
    b"\x00" + reference_cobs.encode(independent_raw(9, 1, b"x")) + b"\x00",
    b"\x00" + reference_cobs.encode(independent_raw(2, 1, b"x", version=2)) + b"\x00",
]
fuzz_streams = st.one_of(st.binary(max_size=600), garbage_and_frames(SEEDS),
                         st.lists(mutated(SEEDS), max_size=4).map(b"".join))


def check_feed_matches_reference(stream: bytes, max_payload: int, cut_points: list[int]) -> None:
    decoder = lf.LinkFrameDecoder(max_payload)
    items = [describe(i) for i in feed_in_chunks(decoder, stream, cut_points)]
    assert items == reference_decode(stream, max_payload)
    errors = sum(1 for i in items if i[0] == "error")
    assert sum(decoder.counters[k] for k in lf.ERROR_KINDS) == errors
    assert decoder.counters["frames"] == len(items) - errors
    # The node's reader (protocols/link_wire.py) takes the same frames and rejects the same
    # candidates, returning only their kinds, and counts exactly as the decoder does.
    reader = lf.LinkFrameReader(max_payload)
    decoder = lf.LinkFrameDecoder(max_payload)
    expected = [i.kind if isinstance(i, lf.LinkFrameError) else i
                for i in feed_in_chunks(decoder, stream, cut_points)]
    assert feed_in_chunks(reader, stream, cut_points) == expected
    assert reader.counters == decoder.counters


@fuzz_settings(DEFAULT_EXAMPLES)
@given(fuzz_streams, st.sampled_from([16, 300, 1024]), cuts)
def test_fuzz_feed(stream: bytes, max_payload: int, cut_points: list[int]) -> None:
    check_feed_matches_reference(stream, max_payload, cut_points)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(fuzz_streams, st.sampled_from([16, 300, 1024]), cuts)
def test_fuzz_feed_long(stream: bytes, max_payload: int, cut_points: list[int]) -> None:
    check_feed_matches_reference(stream, max_payload, cut_points)
