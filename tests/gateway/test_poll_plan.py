"""Poll plans, register decoding and backoff: the sans-IO half of the gateway's Modbus poller."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.modbus_errors import PollPlanError, PollPlanTooSlowError, ProfileError
from gateway.poll_backoff import BackoffPolicy, DeviceBackoff
from gateway.poll_plan import PolledDevice, SerialBus, TcpBus, plan_bus
from gateway.register_values import (
    decode_channels, profile_registers, profile_status, register_spec, status_fault)
from protocols.batch_codes import FAULT_OUT_OF_RANGE, FAULT_SENSOR, fault_code

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
DECODE_VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "register_decode.json"


def load_profile(name: str) -> dict[str, Any]:
    return json.loads((PROFILES / f"{name}.json").read_text())


SCATTERED = load_profile("test-scattered-sensor")


def block_profile(count: int = 10, **quirks: Any) -> dict[str, Any]:
    """One entry of `count` consecutive u16 registers: one read of `count` registers."""
    return {"profile": "block", "bauds": [9600, 19200, 115200], "framings": ["8E1", "8N1"],
            "registers": [{"name": "block", "table": "holding", "address": 0, "type": "u16",
                           "channels": count}], **quirks}


def bus(baud: int = 19200, framing: str = "8E1", timeout_s: float = 0.5) -> SerialBus:
    return SerialBus(id="rs485", port="/dev/null", baud=baud, framing=framing, timeout_s=timeout_s)


def device(name: str = "s1", address: int = 1, profile: dict[str, Any] | None = None,
           poll_ms: float = 1000) -> PolledDevice:
    return PolledDevice(id=name, address=address, profile=profile or SCATTERED, poll_ms=poll_ms)


def read_us(count: int, baud: int, bits: int, turnaround_us: float = 0) -> float:
    """Independent of the code under test: request 8 bytes, reply 5 + 2·count, two t3.5 gaps
    (fixed 1750 µs above 19200 baud), the device's turnaround."""
    char = bits * 1e6 / baud
    t35 = 1750.0 if baud > 19200 else 3.5 * char
    return (8 + 5 + 2 * count) * char + 2 * t35 + turnaround_us


# --- plans -------------------------------------------------------------------------------------

def test_scattered_profile_merges_into_seven_reads_with_gaps_filled_and_limit_kept() -> None:
    plan = plan_bus(bus(), [device()])
    reads = [tuple(r) for r in plan.devices[0].reads]
    assert reads == [("holding", 0, 3), ("holding", 10, 7), ("holding", 19, 1),
                     ("holding", 40, 3), ("input", 0, 4), ("input", 50, 4), ("input", 100, 2)]
    assert plan.request_count == 7 < len(SCATTERED["registers"])
    assert all(r.count <= SCATTERED["max_registers_per_request"] for r in plan.devices[0].reads)
    expected = sum(read_us(r.count, 19200, 11, 5000) for r in plan.devices[0].reads)
    assert plan.cycle_us == pytest.approx(expected)
    assert plan.devices[0].bus_time_us == pytest.approx(expected)


@pytest.mark.parametrize(("baud", "framing", "ms"), [
    (9600, "8E1", 45.8), (19200, "8E1", 22.9), (115200, "8E1", 6.65),
    # REFERENCE.md §1's 8N1 ceilings: 24.0, 48.0 and 157 transactions a second.
    (9600, "8N1", 1000 / 24.0), (19200, "8N1", 1000 / 48.0), (115200, "8N1", 1000 / 157)])
def test_ten_register_read_costs_what_reference_section_1_says(baud: int, framing: str,
                                                                 ms: float) -> None:
    plan = plan_bus(bus(baud, framing), [device(profile=block_profile(10))])
    assert plan.request_count == 1
    assert plan.cycle_ms == pytest.approx(ms, rel=0.005)
    assert plan.cycle_us == pytest.approx(read_us(10, baud, 11 if framing == "8E1" else 10))


def test_a_plan_too_slow_for_its_interval_is_refused_saying_by_how_much() -> None:
    devices = [device("a", 1, poll_ms=300), device("b", 2, poll_ms=1000)]
    with pytest.raises(PollPlanTooSlowError) as caught:
        plan_bus(bus(9600, "8E1"), devices)
    needed = 2 * sum(read_us(n, 9600, 11, 5000) for n in (3, 7, 1, 3, 4, 4, 2)) / 1000
    err = caught.value
    assert isinstance(err, PollPlanError)
    assert err.needed_ms == pytest.approx(needed) and err.interval_ms == 300 and err.device == "a"
    assert err.shortfall_ms == pytest.approx(needed - 300)
    assert str(err) == (
        f"bus rs485 at 9600 8E1 needs {needed:.1f} ms per cycle for devices a, b; the 300 ms poll "
        f"interval of a leaves {needed - 300:.1f} ms too little: raise the baud rate, lengthen "
        f"the interval or move a device to another bus")
    # Each way out the message names works.
    assert plan_bus(bus(115200, "8E1"), devices).cycle_ms < 300
    assert plan_bus(bus(9600, "8E1"), [device("a", 1, poll_ms=needed + 1), devices[1]])
    assert plan_bus(bus(9600, "8E1"), devices[:1])


def test_quirks_from_the_profile_shape_the_plan() -> None:
    one = plan_bus(bus(), [device(profile={**SCATTERED, "one_register_per_request": True})])
    registers = sum(count for _, _, count in one.devices[0].read_plan.wanted)
    assert one.request_count == registers == 19
    no_gap = plan_bus(bus(), [device(profile={**SCATTERED, "max_gap": 0})])
    assert [tuple(r) for r in no_gap.devices[0].reads][:5] == [
        ("holding", 0, 3), ("holding", 10, 2), ("holding", 13, 1), ("holding", 16, 1),
        ("holding", 19, 1)]
    split = plan_bus(bus(), [device(profile=block_profile(30, max_registers_per_request=8))])
    assert [r.count for r in split.devices[0].reads] == [8, 8, 8, 6]
    slow = plan_bus(bus(), [device(profile={**SCATTERED, "turnaround_ms": 25})])
    fast = plan_bus(bus(), [device()])
    assert slow.cycle_us - fast.cycle_us == pytest.approx(7 * 20_000)


def test_each_entry_knows_the_slices_that_hold_it() -> None:
    plan = plan_bus(bus(), [device()]).devices[0]
    names = [r.name for r in plan.registers]
    assert plan.read_plan.segments(names.index("offset_c")) == [(1, 3, 1)]
    assert plan.read_plan.segments(names.index("uptime_s")) == [(6, 0, 2)]
    assert plan.status is not None and plan.status.register.name == "meter_status"
    assert plan.status.fault_mask == 0b100001


@pytest.mark.parametrize(("devices", "bus_", "match"), [
    ([device("a", 1), device("b", 1)], bus(), "devices a and b share address 1"),
    ([device("a", 1), device("a", 2)], bus(), "device id a appears twice"),
    ([device(profile=load_profile("generic-modbus-sensor"))], bus(115200),
     "does not speak 115200 baud"),
    ([device(profile=load_profile("senseair-s8"), address=254)], bus(9600, "8E1"),
     "does not speak 8E1"),
    ([device(address=254)], bus(), "address 254 must be 1..247"),
    ([device(address=0)], bus(), "address 0 must be 1..247"),
    ([device(poll_ms=0)], bus(), "poll_ms 0 must be a positive"),
    ([device(profile=block_profile(125))], bus(9600, timeout_s=0.2),
     "longer than the 200 ms reply timeout"),
    ([device(profile={**SCATTERED, "max_gap": -1})], bus(), "max_gap -1 must be an int"),
    ([device(profile={**SCATTERED, "registers": [{"name": "x", "type": "f64", "address": 0}]})],
     bus(), "register x, key type: 'f64' is not one of"),
    ([device(profile={**SCATTERED, "registers": []})], bus(), "non-empty list"),
    ([], bus(), "has no devices"),
])
def test_plans_that_cannot_work_are_refused_naming_the_place(
        devices: list[PolledDevice], bus_: SerialBus, match: str) -> None:
    with pytest.raises(PollPlanError, match=match) as caught:
        plan_bus(bus_, devices)
    assert caught.value.bus == "rs485"


def test_any_address_profiles_may_use_0xfe_and_tcp_has_no_wire_budget() -> None:
    s8 = load_profile("senseair-s8")
    plan = plan_bus(bus(9600, "8N1"), [device(profile=s8, address=254, poll_ms=4000)])
    # Status (IR1) and CO2 (IR4) merge into one read: the S8 profile's max_gap 2 fills IR2..IR3.
    assert [tuple(r) for r in plan.devices[0].reads] == [("input", 0, 4)]
    tcp = plan_bus(TcpBus(id="plc", host="127.0.0.1"), [device(poll_ms=1)])
    assert tcp.cycle_us is None and tcp.devices[0].bus_time_us is None and tcp.request_count == 7


# --- register values ---------------------------------------------------------------------------

def spec(**entry: Any) -> Any:
    return register_spec({"name": "r", "table": "holding", "address": 0, **entry}, profile="t")


def words_of(fmt: str, value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(fmt, value)))


def test_values_decode_per_type_order_and_scale() -> None:
    hi_lo = words_of(">f", 21.53125)
    assert decode_channels(spec(type="f32"), hi_lo) == [(21.53125, None)]
    assert decode_channels(spec(type="f32", word_order="little"), hi_lo[::-1]) == [(21.53125, None)]
    swapped = [((w & 0xFF) << 8) | (w >> 8) for w in hi_lo]
    assert decode_channels(spec(type="f32", byte_order="little"), swapped) == [(21.53125, None)]
    assert decode_channels(spec(type="i16"), [0xFFF1]) == [(-15, None)]
    assert decode_channels(spec(type="u16"), [0xFFF1]) == [(0xFFF1, None)]
    assert decode_channels(spec(type="i32"), words_of(">i", -123456)) == [(-123456, None)]
    assert decode_channels(spec(type="u32"), [1, 35789]) == [(101325, None)]
    assert decode_channels(spec(type="u32", scale=0.01, dec=2), [1, 35789]) == [(1013.25, None)]
    assert decode_channels(spec(scale=0.1, dec=1), [523]) == [(52.3, None)]
    assert decode_channels(spec(scale=2.5, dec=0), [3]) == [(8, None)]
    assert decode_channels(spec(channels=3), [1, 2, 3]) == [(1, None), (2, None), (3, None)]
    assert decode_channels(spec(table="coil", type="bool", channels=2), [True, False]) == [
        (1, None), (0, None)]


def test_out_of_range_and_non_finite_values_become_faults_never_numbers() -> None:
    humidity = spec(scale=0.1, dec=1, valid_min=0, valid_max=100)
    assert decode_channels(humidity, [1000]) == [(100.0, None)]
    assert decode_channels(humidity, [1001]) == [(None, FAULT_OUT_OF_RANGE)]
    assert decode_channels(spec(type="i16", valid_min=-40), [0xFFD7]) == [(None, FAULT_OUT_OF_RANGE)]
    for bad in (math.nan, math.inf, -math.inf):
        assert decode_channels(spec(type="f32"), words_of(">f", bad)) == [(None, FAULT_OUT_OF_RANGE)]


def test_status_bits_in_the_fault_mask_are_a_sensor_fault() -> None:
    s8 = load_profile("senseair-s8")
    status = profile_status(s8, profile_registers(s8))
    assert status is not None and status.fault_mask == 0x7F
    assert status_fault(status, [0]) == (None, 0)
    assert status_fault(status, [0x0080]) == (None, 0)  # bit 7 is not a fault bit
    assert status_fault(status, [0x0021]) == (FAULT_SENSOR, 0x21)


@pytest.mark.parametrize(("entry", "match"), [
    ({"table": "register"}, "key table"), ({"type": "bool"}, "key type"),
    ({"table": "coil", "type": "u16"}, "key type"), ({"address": 70000}, "key address"),
    ({"address": 65535, "type": "u32"}, "runs past 65535"), ({"byte_order": "middle"}, "byte_order"),
    ({"scale": 0}, "key scale"), ({"scale": "x"}, "key scale"), ({"dec": -1}, "key dec"),
    ({"channels": 0}, "key channels"), ({"valid_min": 5, "valid_max": 1}, "valid_min"),
])
def test_bad_register_entries_name_profile_register_and_key(entry: dict[str, Any], match: str) -> None:
    with pytest.raises(ProfileError, match=match) as caught:
        spec(**entry)
    assert caught.value.profile == "t" and caught.value.register == "r"
    assert str(caught.value).startswith("profile t, register r, key ")


def test_repeated_register_names_and_unknown_status_registers_are_refused() -> None:
    twice = {"profile": "p", "registers": [{"name": "a", "address": 0}, {"name": "a", "address": 1}]}
    with pytest.raises(ProfileError, match="appears twice"):
        profile_registers(twice)
    lost = {**SCATTERED, "status": {"register": "nope", "fault_bits": {"0": "x"}}}
    with pytest.raises(ProfileError, match="'nope' is not a register"):
        profile_status(lost, profile_registers(lost))


def _vector_cases(*checks: str) -> list[Any]:
    if not DECODE_VECTORS.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason="no register_decode vectors"))]
    cases = json.loads(DECODE_VECTORS.read_text())["cases"]
    return [pytest.param(c, id=c["id"]) for c in cases if c["check"] in checks]


def _vector_entry(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    return {"name": "x", "table": "holding", "address": 0, **entry}


@pytest.mark.parametrize("case", _vector_cases("decode", "channels", "words", "bad_entry", "status"))
def test_gateway_decodes_the_nodes_shared_vectors_alike(case: dict[str, Any]) -> None:
    """The node's decoder (firmware/register_decode.py) is checked against the same vectors: the
    gateway, which may not import it, must agree with it case for case."""
    if case["check"] == "bad_entry":
        with pytest.raises(ProfileError):
            register_spec(_vector_entry(case["entry"]), profile="vectors")
        return
    if case["check"] == "status":
        profile = {"profile": "p", "registers": [{"name": "meter_status", "address": 0}]}
        if case["status"] is not None:
            profile["status"] = case["status"]
        status = profile_status(profile, profile_registers(profile))
        got = (None, 0) if status is None else status_fault(status, [case["word"]])
        assert got == ((fault_code(case["fault"]) if case["fault"] else None), case["detail"])
        return
    entry = register_spec(_vector_entry(case["entry"]), profile="vectors")
    if case["check"] == "words":
        assert entry.count == case["expect"]
        return
    decoded = decode_channels(entry, case["words"])
    if case["check"] == "channels":
        assert decoded == [(v, None) for v in case["expect"]]
        return
    [(value, fault)] = decoded
    assert fault == (fault_code(case["fault"]) if case["fault"] else None)
    if case["expect"] is None:
        assert value is None
    else:
        assert value == pytest.approx(case["expect"], abs=case.get("tolerance", 0))
        assert isinstance(value, int) == (case.get("type") == "int") or case.get("type") is None


@given(st.integers(-(2**31), 2**31 - 1), st.booleans())
def test_i32_round_trips_in_either_word_order(value: int, little: bool) -> None:
    words = words_of(">i", value)
    entry = spec(type="i32", word_order="little" if little else "big")
    assert decode_channels(entry, words[::-1] if little else words) == [(value, None)]


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_f32_round_trips_exactly(value: float) -> None:
    assert decode_channels(spec(type="f32"), words_of(">f", value)) == [(value, None)]


# --- backoff -----------------------------------------------------------------------------------

def test_backoff_starts_after_n_failures_doubles_to_the_cap_and_one_success_ends_it() -> None:
    b = DeviceBackoff(BackoffPolicy(failures=3, initial_s=1.0, max_s=4.0))
    assert not b.failed(0.0) and not b.failed(0.1) and not b.should_skip(0.2)
    assert b.failed(0.2) and b.active and b.window_s == 1.0
    assert b.should_skip(1.1) and not b.should_skip(1.2)
    windows = []
    now = 1.2
    for _ in range(4):
        assert not b.failed(now)  # already in backoff: not a new start
        windows.append(b.window_s)
        now = b.next_attempt
    assert windows == [2.0, 4.0, 4.0, 4.0]
    assert b.succeeded() and not b.active and not b.should_skip(now)
    assert b.consecutive_failures == 0 and b.entered == 1
    assert not b.succeeded()


def test_backoff_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="failures"):
        BackoffPolicy(failures=0)
    with pytest.raises(ValueError, match="initial_s"):
        BackoffPolicy(initial_s=10, max_s=1)
