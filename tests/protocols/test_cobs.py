"""protocols/cobs.py against the independent `cobs` package (PyPI, C extension), plus fuzzing."""

from __future__ import annotations

import pytest
from cobs import cobs as reference
from hypothesis import given
from hypothesis import strategies as st

from protocols import cobs
from protocols.errors import ProtocolError
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings, mutated

# Data with long non-zero runs and scattered zeros, so the 254-byte run rule is hit often.
runs = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.integers(1, 600).map(lambda n: bytes([0x5A]) * n),
        st.just(b"\x00"),
    ),
    max_size=8,
).map(b"".join)
any_data = st.one_of(st.binary(max_size=1200), runs)

SEEDS = [
    reference.encode(d)
    for d in (b"", b"\x00", b"\x11\x22\x00\x33", bytes(range(1, 255)), bytes(range(256)),
              bytes(range(1, 255)) + b"\x00", bytes(300), b"\x5a" * 600)
]


@given(any_data)
def test_encode_is_byte_identical_to_the_cobs_package(data: bytes) -> None:
    encoded = cobs.encode(data)
    assert encoded == reference.encode(data)
    assert len(encoded) <= cobs.max_encoded_length(len(data))
    assert cobs.decode(encoded) == data


@given(any_data, st.integers(0, 3), st.sampled_from([bytes, bytearray]))
def test_encode_to_writes_the_same_bytes_into_room_sized_once(data: bytes, at: int, kind: type) -> None:
    room = bytearray(b"\xEE" * (at + cobs.max_encoded_length(len(data)) + 2))
    end = cobs.encode_to(kind(data), room, at)
    assert room[at:end] == reference.encode(data)
    assert room[:at] == b"\xEE" * at and set(room[end:]) <= {0xEE}  # nothing outside its room


@pytest.mark.parametrize("run", [0, 1, 253, 254, 255, 507, 508, 509, 762])
@pytest.mark.parametrize("layout", ["alone", "zero-after", "zero-before", "zero-both", "two-zeros"])
def test_run_length_boundaries_match_the_cobs_package(run: int, layout: str) -> None:
    body = bytes([0xC3]) * run
    data = {
        "alone": body,
        "zero-after": body + b"\x00",
        "zero-before": b"\x00" + body,
        "zero-both": b"\x00" + body + b"\x00",
        "two-zeros": body + b"\x00\x00" + body,
    }[layout]
    assert cobs.encode(data) == reference.encode(data)
    assert cobs.decode(reference.encode(data)) == data


def test_inputs_of_other_buffer_types() -> None:
    data = b"\x01\x00\x02" * 100
    assert cobs.encode(memoryview(data)) == cobs.encode(bytearray(data)) == reference.encode(data)
    out = bytearray(b"head")
    assert cobs.encode_into(data, out) is out
    assert out == b"head" + reference.encode(data)


def test_decode_error_offsets_and_type() -> None:
    with pytest.raises(cobs.CobsError) as info:
        cobs.decode(b"\x02\x11\x05\x22")
    assert info.value.offset == 2
    assert isinstance(info.value, ProtocolError)
    assert "at byte 2" in str(info.value)
    with pytest.raises(cobs.CobsError) as info:
        cobs.decode(b"\x05\x11\x22\x00\x33")
    assert info.value.offset == 3


def check_decode_agrees(data: bytes) -> None:
    """cobs.decode accepts exactly what the reference accepts, with the same result; on bad input
    it raises only CobsError, with an offset inside the input."""
    try:
        expected = reference.decode(data)
    except reference.DecodeError:
        expected = None
    try:
        got = cobs.decode(data)
    except cobs.CobsError as exc:
        assert expected is None, f"rejected {data.hex()} which the reference decodes"
        assert exc.offset is not None and 0 <= exc.offset < len(data)
        return
    assert got == expected


fuzz_input = st.one_of(st.binary(max_size=600), mutated(SEEDS))


@fuzz_settings(DEFAULT_EXAMPLES)
@given(fuzz_input)
def test_fuzz_decode(data: bytes) -> None:
    check_decode_agrees(data)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(fuzz_input)
def test_fuzz_decode_long(data: bytes) -> None:
    check_decode_agrees(data)
