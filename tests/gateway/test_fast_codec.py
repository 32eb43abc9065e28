"""gateway/fast_codec.py: the C msgpack fast paths give the portable code's answers, byte for byte.

- cnb1 bodies (and whole payloads) packed with fast_codec.packb are the bytes msgpack_lite writes,
  on generated batches of every shape (the cnb1 round-trip strategy) and on the vectors;
- decode_data returns what decode_message(DATA, ...) returns, or raises the same LinkMessageError,
  on valid DATA payloads, on payloads with ext types, deep nesting, odd keys, and on mutated bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import fast_codec
from protocols import batch_builder
from protocols.batch_builder import body_fields, pack_body
from protocols.batch_cnb1 import CODEC_AUTO, CODEC_NONE, CODEC_ZLIB, Batch, encode_batch
from protocols.link_frame import DATA
from protocols.link_messages import LinkMessageError, decode_message
from protocols.msgpack_lite import packb as packb_lite
from tests.conftest import VECTOR_DIR
from tests.protocols.fuzz import mutated
from tests.protocols.test_batch_cnb1 import batches, build

VECTORS = json.loads((VECTOR_DIR / "batch_cnb1.json").read_text())["cases"]


@pytest.fixture
def installed() -> Any:
    """The C packer installed for cnb1 bodies, as GatewayService does; uninstalled after."""
    fast_codec.install()
    yield
    batch_builder.set_packer(None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_the_fast_body_is_the_portable_body(made: tuple[Batch, dict]) -> None:
    batch, _ = made
    fields = body_fields(batch)
    portable = pack_body(fields, packb_lite)
    assert pack_body(fields, fast_codec.packb) == portable
    for key, value in fields:  # each part alone, too: the packers agree value by value
        assert fast_codec.packb(value) == packb_lite(value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.sampled_from([CODEC_NONE, CODEC_ZLIB, CODEC_AUTO]))
def test_installed_packer_writes_the_same_payloads(made: tuple[Batch, dict], codec: Any) -> None:
    batch, _ = made
    portable = encode_batch(batch, 7, 9, codec)
    fast_codec.install()
    try:
        assert encode_batch(batch, 7, 9, codec) == portable
    finally:
        batch_builder.set_packer(None)


ENCODED = [c for c in VECTORS if c["check"] == "encode_decode"]


@pytest.mark.parametrize("case", ENCODED, ids=[c["id"] for c in ENCODED])
def test_the_vectors_come_out_of_the_fast_packer(case: dict, installed: None) -> None:
    spec = case["batch"]
    payload = encode_batch(build(spec), spec["gateway_boot"], spec["seq"], case["codec"])
    assert payload.hex() == case["hex"]


def test_edge_values_pack_the_same() -> None:
    edges: list[Any] = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
                        -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1,
                        -(2**63), 0.0, -0.0, 1.5, 1e300, None, True, False, "", "x" * 31,
                        "x" * 32, "é" * 200, "x" * 70_000, list(range(15)), list(range(16)),
                        list(range(70_000)), [[[[]]]]]
    for value in edges:
        assert fast_codec.packb(value) == packb_lite(value), value


# -- DATA decoding ------------------------------------------------------------------------------

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                   st.text(max_size=6), st.binary(max_size=4))


@st.composite
def data_messages(draw: st.DrawFn) -> Any:
    message: dict[Any, Any] = {"tick": draw(st.integers(0, 2**30)),
                               "t0": draw(st.integers(0, 2**30))}
    message["m"] = draw(st.lists(SCALAR, max_size=30))
    for key in ("f", "e"):
        if draw(st.booleans()):
            message[key] = draw(st.lists(st.integers(0, 300), max_size=12))
    if draw(st.booleans()):
        message["lo"] = draw(st.one_of(st.integers(0, 100), SCALAR))
    for _ in range(draw(st.integers(0, 2))):  # keys a newer node may add, of any shape
        message[draw(st.one_of(st.text(max_size=3), st.integers(-5, 5)))] = draw(
            st.recursive(SCALAR, lambda c: st.lists(c, max_size=3), max_leaves=6))
    if draw(st.integers(0, 4)) == 0:
        del message[draw(st.sampled_from(["tick", "t0", "m"]))]
    return message


def _ext(code: int, data: bytes) -> bytes:
    sizes = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if len(data) in sizes:
        return bytes([sizes[len(data)], code & 0xFF]) + data
    return bytes([0xC7, len(data), code & 0xFF]) + data


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


# Hand-made payloads where msgpack (C) and msgpack_lite could part ways: ext types (timestamps
# included), nesting beyond msgpack_lite's 32 levels, unhashable and odd keys, bad UTF-8,
# trailing bytes, truncation, 0xC1.
SPECIAL = [
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m" + b"\x93\x00\x00" + _ext(-1, b"\x00\x00\x00\x01"),
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m" + b"\x93\x00\x00" + _ext(5, b"ab"),
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m" + b"\x93\x00\x00" + _ext(5, b""),
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90\xa1x" + _nested(40),
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90\xa1x" + _nested(31),
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90\xa1x" + _nested(32),
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90" + _ext(-1, b"\x00\x00\x00\x01") + b"\x01",
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90\x91\x01\x01",
    b"\x84\xa4tick\x01\xa2t0\x02\xa1m\x90\xc2\x01",
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m\x91\xa2\xff\xfe",
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m\x90\x00",
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m\x91",
    b"\x83\xa4tick\x01\xa2t0\x02\xa1m\x91\xc1",
    b"\x83\xa4tick\xc3\xa2t0\x02\xa1m\x90",
    b"\x93\x01\x02\x03",
    b"",
]


def decode_both(payload: bytes) -> tuple[Any, Any]:
    def run(fn: Any) -> Any:
        try:
            return ("ok", fn(payload))
        except LinkMessageError as error:
            return ("error", str(error), error.offset)
    return run(fast_codec.decode_data), run(lambda p: decode_message(DATA, p))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.mark.parametrize("payload", SPECIAL, ids=range(len(SPECIAL)))
def test_decode_data_answers_as_the_portable_decoder_on_edge_payloads(payload: bytes) -> None:
    fast, portable = decode_both(payload)
    assert same(fast, portable)


SEED_MESSAGES = [
    {"tick": 1000, "t0": 900, "m": [0, 10, 215, 1, 20, None], "f": [1, 1, 0], "e": [30, 82, 3]},
    {"tick": 5, "t0": 5, "m": [3, 0, 1.25, 4, 1, -7], "lo": 2},
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(data_messages().map(packb_lite),
                 mutated([packb_lite(m) for m in SEED_MESSAGES]),
                 st.sampled_from(SPECIAL)))
def test_decode_data_answers_as_the_portable_decoder(payload: bytes) -> None:
    fast, portable = decode_both(payload)
    assert same(fast, portable)
