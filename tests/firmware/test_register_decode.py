"""firmware/register_decode.py: properties against an independent encoder (struct), and the shipped
profiles. The shared vectors (tests/vectors/register_decode.json) run under both runtimes through
the vector rig (tests/protocols/test_vectors_*.py); these are CPython-only property tests."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware import register_decode as rd
from protocols.batch_codes import FAULT_OUT_OF_RANGE, FAULT_SENSOR
from tests.conftest import REPO_ROOT

PROFILES = {p.stem: json.loads(p.read_text()) for p in (REPO_ROOT / "profiles").glob("*.json")}
FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f"}
ORDERS = st.sampled_from(["big", "little"])


def encode(kind: str, value: float, byte_order: str, word_order: str) -> list[int]:
    """Registers holding `value` the way a device with these orders sends them."""
    raw = struct.pack(FORMATS[kind], value)
    words = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@pytest.mark.parametrize("name", sorted(p for p in PROFILES if PROFILES[p].get("interface") == "modbus-rtu"))
def test_every_modbus_profile_register_is_decodable(name: str) -> None:
    profile = PROFILES[name]
    for entry in profile["registers"]:
        rd.check_entry(entry)
        assert rd.register_words(entry) >= 1
    if "status" in profile:
        assert rd.status_register(profile) is not None
        assert rd.status_mask(profile) == sum(1 << int(b) for b in profile["status"]["fault_bits"])


def test_senseair_value_registers_exclude_the_status_register() -> None:
    names = [e["name"] for e in rd.value_registers(PROFILES["senseair-s8"])]
    assert names == ["co2_ppm"]


@given(kind=st.sampled_from(["u16", "i16", "u32", "i32"]), data=st.data(), byte_order=ORDERS,
       word_order=ORDERS)
def test_integers_round_trip(kind: str, data: st.DataObject, byte_order: str, word_order: str) -> None:
    bits = 16 if kind.endswith("16") else 32
    lo, hi = (0, 2 ** bits - 1) if kind[0] == "u" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    value = data.draw(st.integers(lo, hi))
    entry = {"name": "x", "type": kind, "byte_order": byte_order, "word_order": word_order}
    words = encode(kind, value, byte_order, word_order)
    assert rd.raw_value(entry, words) == value
    assert rd.decode(entry, words) == (value, 0, 0)


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False), byte_order=ORDERS,
       word_order=ORDERS)
def test_f32_round_trip(value: float, byte_order: str, word_order: str) -> None:
    entry = {"name": "x", "type": "f32", "byte_order": byte_order, "word_order": word_order}
    assert rd.decode(entry, encode("f32", value, byte_order, word_order)) == (value, 0, 0)


@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
       kind=st.sampled_from(["u16", "i16", "u32", "i32", "f32"]), scale=st.sampled_from([1, 0.1, 0.01, 10]),
       low=st.integers(-1000, 1000), span=st.integers(0, 2000))
def test_never_a_number_outside_the_valid_range(words: list[int], kind: str, scale: float, low: int,
                                                span: int) -> None:
    entry = {"name": "x", "type": kind, "scale": scale, "valid_min": low, "valid_max": low + span}
    value, fault, _ = rd.decode(entry, words)
    if fault:
        assert value is None and fault == FAULT_OUT_OF_RANGE
    else:
        assert math.isfinite(value) and low <= value <= low + span


@given(words=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
def test_non_finite_floats_are_faults(words: list[int]) -> None:
    value, fault, _ = rd.decode({"name": "x", "type": "f32"}, words)
    raw = struct.unpack(">f", struct.pack(">HH", *words))[0]
    assert (fault == FAULT_OUT_OF_RANGE) == (not math.isfinite(raw))
    assert fault or value == raw


@given(word=st.integers(0, 0xFFFF))
def test_status_bits_become_the_detail(word: int) -> None:
    mask = rd.status_mask(PROFILES["senseair-s8"])
    fault, detail = rd.status_fault(mask, [word])
    assert detail == word & mask
    assert fault == (FAULT_SENSOR if word & mask else 0)


@given(value=st.integers(0, 0xFFFF), dec=st.integers(0, 3))
def test_decimals_round_and_dec_zero_gives_ints(value: int, dec: int) -> None:
    got, fault, _ = rd.decode({"name": "x", "type": "u16", "scale": 0.001, "dec": dec}, [value])
    assert fault == 0
    assert got == round(value * 0.001, dec) or (dec == 0 and got == int(round(value * 0.001)))
    assert isinstance(got, int) == (dec == 0)
