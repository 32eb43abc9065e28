"""msgpack_lite against the `msgpack` package (the independent implementation), plus fuzzing."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.msgpack_lite import MsgpackError, packb, unpack_from, unpackb
from tests.conftest import VECTOR_DIR
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings, mutated

INT64 = st.integers(-(2**63), 2**64 - 1)
# Bias towards the format boundaries, where the encoding changes width.
EDGES = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
         -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]
INTS = st.one_of(INT64, st.sampled_from(EDGES), st.integers(-200, 200))


def subset_values(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """Any value built from the subset: scalars, arrays and maps with any hashable scalar key."""
    keys = st.one_of(st.none(), st.booleans(), INTS, floats, st.text(max_size=8), st.binary(max_size=8))
    leaves = st.one_of(st.none(), st.booleans(), INTS, floats, st.text(), st.binary())
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=20),
            st.dictionaries(keys, children, max_size=20),
        ),
        max_leaves=60,
    )


VALUES = subset_values(st.floats(allow_nan=False))
VALUES32 = subset_values(st.floats(width=32, allow_nan=False))


def ref_unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, strict_map_key=False)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_byte_identical_with_msgpack_both_ways(value: Any) -> None:
    # One generated value serves three properties: generating recursive values is the cost here.
    data = msgpack.packb(value)
    assert packb(value) == data
    decoded = unpackb(data)
    assert decoded == value
    # Re-packing compares types as well (True vs 1, 1.0 vs 1) and the map order.
    assert msgpack.packb(decoded) == data
    assert ref_unpackb(packb(value)) == value


@settings(max_examples=200, deadline=None)
@given(VALUES32)
def test_packb_single_float_is_byte_identical_with_msgpack(value: Any) -> None:
    data = packb(value, use_single_float=True)
    assert data == msgpack.packb(value, use_single_float=True)
    # width=32 floats survive float32 exactly, so the round trip is exact too.
    assert unpackb(data) == value
    assert unpackb(data) == ref_unpackb(data)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_including_nan_and_inf(x: float) -> None:
    assert packb(x) == msgpack.packb(x)
    back = unpackb(packb(x))
    assert back == x or (math.isnan(x) and math.isnan(back))
    if math.isnan(x) or math.isinf(x) or abs(x) < 3.4e38:
        assert packb(x, use_single_float=True) == msgpack.packb(x, use_single_float=True)


def test_single_float_overflow_raises_like_msgpack() -> None:
    with pytest.raises(OverflowError):
        msgpack.packb(1e300, use_single_float=True)
    with pytest.raises(OverflowError):
        packb(1e300, use_single_float=True)


@pytest.mark.parametrize("n", [2**64, 2**100, -(2**63) - 1])
def test_out_of_range_ints_raise_overflow_like_msgpack(n: int) -> None:
    with pytest.raises(OverflowError):
        msgpack.packb(n)
    with pytest.raises(OverflowError):
        packb(n)


@pytest.mark.parametrize("value", [{1, 2}, object(), 1j, [1, {"a": object()}]])
def test_unsupported_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        packb(value)


def test_subclasses_pack_like_their_base() -> None:
    import enum
    from collections import OrderedDict

    class Level(enum.IntEnum):
        HIGH = 300

    value = OrderedDict([("a", Level.HIGH), ("b", (1, 2))])
    assert packb(value) == msgpack.packb(value) == bytes.fromhex("82a161cd012ca1629201 02".replace(" ", ""))


def test_vectors_agree_with_msgpack() -> None:
    # The hand-written hex in the vectors file, re-derived by the independent implementation.
    cases = json.loads((VECTOR_DIR / "msgpack_lite.json").read_text())["cases"]
    checked = 0
    for case in cases:
        if case["check"] in ("roundtrip", "decode"):
            data = bytes.fromhex(case["hex"])
            ours = unpackb(data)
            assert msgpack.packb(ours, use_single_float=case.get("single", False)) == data or \
                case["check"] == "decode", case["id"]
            assert msgpack.packb(ref_unpackb(data)) == msgpack.packb(ours), case["id"]
            checked += 1
        elif case["check"] == "decode_error" and case["id"].startswith(("ext", "fixext", "timestamp")):
            assert _has_ext(ref_unpackb(bytes.fromhex(case["hex"])))
    assert checked > 50


def test_unpack_from_walks_a_sequence() -> None:
    items = [1, "two", [3], {"four": 4.0}, None, b"\x06"]
    data = b"".join(msgpack.packb(i) for i in items)
    offset, out = 0, []
    while offset < len(data):
        obj, offset = unpack_from(data, offset)
        out.append(obj)
    assert out == items


def test_error_offsets_point_into_the_input() -> None:
    data = msgpack.packb({"ok": [1, 2, 3], "bad": "x"})[:-1]
    with pytest.raises(MsgpackError) as info:
        unpackb(data)
    assert info.value.offset is not None and 0 <= info.value.offset <= len(data)
    assert "byte" in str(info.value)


def test_huge_claimed_lengths_fail_before_allocating() -> None:
    # 4 GiB / 4 G items claimed by a 6-byte input: must be an immediate MsgpackError, no MemoryError.
    for head in (b"\xc6", b"\xdb", b"\xdd", b"\xdf"):
        with pytest.raises(MsgpackError):
            unpackb(head + b"\xff\xff\xff\xff\x00")


# ---------------------------------------------------------------------------------------------
# Fuzzing: arbitrary and mutated bytes raise only MsgpackError, and agree with msgpack when valid.

SEEDS = [
    msgpack.packb(v)
    for v in (
        {"node": "n1", "boot": 7, "s": [["air/pm", "ug/m3", "g", 0]], "m": [[0, [1, 2], [3, -4]]]},
        [1, -1, 300, -300, 70000, 2**40, -(2**40), 1.5, None, True, False, "é", b"\x00"],
        {"a": {"b": {"c": [[], {}, ""]}}},
        list(range(20)),
        "x" * 40,
    )
] + [msgpack.packb(1.5, use_single_float=True), b"\x91" * 32 + b"\x01"]


def _has_ext(obj: Any) -> bool:
    if isinstance(obj, (msgpack.ExtType, msgpack.Timestamp)):
        return True
    if isinstance(obj, list):
        return any(_has_ext(i) for i in obj)
    if isinstance(obj, dict):
        return any(_has_ext(k) or _has_ext(v) for k, v in obj.items())
    return False


def _depth(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + max((_depth(i) for i in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((_depth(v) for v in obj.values()), default=0)
    return 0


def _check_against_msgpack(data: bytes) -> None:
    try:
        ours = unpackb(data)
    except MsgpackError as exc:
        assert exc.offset is None or 0 <= exc.offset <= len(data)
        try:
            ref = msgpack.unpackb(data, strict_map_key=False, use_list=True)
        except Exception:  # noqa: BLE001 - msgpack refuses it too: agreed
            return
        # msgpack accepted it: only what the subset leaves out may explain our refusal.
        assert _has_ext(ref) or _depth(ref) > 32, (data.hex(), exc)
        return
    ref = msgpack.unpackb(data, strict_map_key=False)
    assert msgpack.packb(ours) == msgpack.packb(ref)


@fuzz_settings(DEFAULT_EXAMPLES)
@given(st.one_of(st.binary(max_size=64), mutated(SEEDS)))
def test_fuzz_unpackb(data: bytes) -> None:
    _check_against_msgpack(data)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(st.one_of(st.binary(max_size=64), mutated(SEEDS)))
def test_fuzz_unpackb_long(data: bytes) -> None:
    _check_against_msgpack(data)
