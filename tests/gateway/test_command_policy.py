"""Command policy against the real inventory and profiles: which ops exist, their argument bounds,
and the write rule (a register is writable only where its profile says so; the signal controller's
profile opens none)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from citynerve.inventory import board_config, load_inventory, load_profiles
from gateway.command_policy import (
    MAX_INTERVAL_S,
    MIN_INTERVAL_S,
    OPS,
    Allowed,
    PolicyRefusal,
    check,
    devices_of,
)

PROFILES = load_profiles()
INVENTORY = load_inventory()
CABINET = devices_of(board_config(INVENTORY, "cab-pico", PROFILES))
AIR = devices_of(board_config(INVENTORY, "air-esp32", PROFILES))


def refused(outcome: Allowed | PolicyRefusal, reason: str) -> PolicyRefusal:
    assert isinstance(outcome, PolicyRefusal), outcome
    assert outcome.reason == reason, outcome
    assert outcome.msg and "\n" not in outcome.msg
    return outcome


def test_devices_of_maps_the_boards_devices_to_their_profiles() -> None:
    assert sorted(CABINET) == ["ctrl", "nb-lane1", "sb-lane1"]
    assert CABINET["ctrl"] is PROFILES["nema-phase-status"]
    assert AIR["co2"]["profile"] == "senseair-s8"


@pytest.mark.parametrize("op", ["ping", "diagnostics", "health"])
def test_argument_free_ops_pass_and_refuse_arguments(op: str) -> None:
    assert check(op, {}, CABINET) == Allowed(op, {})
    assert "takes no arguments" in refused(check(op, {"x": 1}, CABINET), "bad_args").msg


def test_unknown_ops_are_refused_with_the_list_of_known_ones() -> None:
    msg = refused(check("format_disk", {}, CABINET), "unknown_op").msg
    assert all(op in msg for op in OPS)
    refused(check("ping", [], CABINET), "bad_args")  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "reason"), [
    (MIN_INTERVAL_S - 1, "out_of_bounds"), (MIN_INTERVAL_S, None), (60, None),
    (MAX_INTERVAL_S, None), (MAX_INTERVAL_S + 1, "out_of_bounds"), (-30, "out_of_bounds"),
    ("60", "bad_args"), (True, "bad_args"), (60.0, "bad_args"), (None, "bad_args"),
])
def test_set_interval_bounds(value: object, reason: str | None) -> None:
    outcome = check("set_interval", {"interval_s": value}, CABINET)
    if reason is None:
        assert outcome == Allowed("set_interval", {"interval_s": value})
    else:
        refused(outcome, reason)


def test_set_interval_takes_only_interval_s() -> None:
    assert "not 'seconds'" in refused(
        check("set_interval", {"interval_s": 60, "seconds": 60}, CABINET), "bad_args").msg


def test_reboot_takes_an_optional_boolean() -> None:
    assert isinstance(check("reboot", {}, CABINET), Allowed)
    assert check("reboot", {"clear_safe_mode": True}, CABINET) == Allowed(
        "reboot", {"clear_safe_mode": True})
    refused(check("reboot", {"clear_safe_mode": 1}, CABINET), "bad_args")
    refused(check("reboot", {"now": True}, CABINET), "bad_args")


@pytest.mark.parametrize("op", ["sleep", "wake"])
def test_sleep_and_wake_need_a_device_of_that_node(op: str) -> None:
    assert check(op, {"device": "pm1"}, AIR) == Allowed(op, {"device": "pm1"})
    msg = refused(check(op, {"device": "pm1"}, CABINET), "unknown_device").msg
    assert "ctrl" in msg  # names the devices the node does have
    refused(check(op, {}, AIR), "bad_args")
    refused(check(op, {"device": "pm1", "for_s": 10}, AIR), "bad_args")


def test_mode_must_be_one_the_profile_offers() -> None:
    assert check("mode", {"device": "pm1", "mode": "passive"}, AIR) == Allowed(
        "mode", {"device": "pm1", "mode": "passive"})
    assert "active, passive" in refused(check("mode", {"device": "pm1", "mode": "turbo"}, AIR),
                                        "bad_args").msg
    assert "none" in refused(check("mode", {"device": "co2", "mode": "active"}, AIR),
                             "bad_args").msg


# -- the write rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("register",
                         [r["name"] for r in PROFILES["nema-phase-status"]["registers"]])
def test_every_signal_controller_write_is_refused(register: str) -> None:
    assert PROFILES["nema-phase-status"]["writable"] == []
    msg = refused(check("write_register", {"device": "ctrl", "register": register, "value": 0},
                        CABINET), "not_writable").msg
    assert "nema-phase-status" in msg and "writable" in msg and register in msg


@pytest.mark.parametrize("name", [n for n, p in PROFILES.items() if p.get("registers")])
def test_no_real_profile_opens_a_register(name: str) -> None:
    devices = {"dev": PROFILES[name]}
    for entry in PROFILES[name]["registers"]:
        refused(check("write_register", {"device": "dev", "register": entry["name"], "value": 1},
                      devices), "not_writable")


def test_a_profile_without_a_writable_list_opens_nothing() -> None:
    refused(check("write_register", {"device": "pm1", "register": "pm2_5", "value": 1}, AIR),
            "not_writable")


def opened(name: str, writable: list[Any]) -> dict[str, dict[str, Any]]:
    profile = copy.deepcopy(PROFILES[name])
    profile["writable"] = writable
    return {"dev": profile}


def write(devices: dict[str, Any], register: str, value: object) -> Allowed | PolicyRefusal:
    return check("write_register", {"device": "dev", "register": register, "value": value}, devices)


def test_a_controller_register_the_profile_opens_can_be_written() -> None:
    devices = opened("nema-phase-status", ["preempt"])
    outcome = write(devices, "preempt", 0x0001)
    assert isinstance(outcome, Allowed) and outcome.write is not None
    assert (outcome.write.device, outcome.write.value) == ("dev", 1)
    assert (outcome.write.register.table, outcome.write.register.address) == ("holding", 16)
    refused(write(devices, "greens", 1), "not_writable")  # the others stay closed
    refused(write(devices, "preempt", 0x10000), "out_of_bounds")  # u16
    refused(write(devices, "preempt", -1), "out_of_bounds")
    refused(write(devices, "preempt", "1"), "bad_args")
    refused(write(devices, "preempt", True), "bad_args")


def test_writable_bounds_come_from_type_entry_and_valid_range() -> None:
    devices = opened("test-scattered-sensor", [
        "wind_dir_deg", "humidity_pct", "offset_c", {"register": "firmware_build", "min": 10,
                                                     "max": 20},
    ])
    assert isinstance(write(devices, "wind_dir_deg", 359), Allowed)
    refused(write(devices, "wind_dir_deg", 360), "out_of_bounds")  # valid_max 359
    assert isinstance(write(devices, "humidity_pct", 1000), Allowed)  # x0.1 = 100 %
    refused(write(devices, "humidity_pct", 1001), "out_of_bounds")
    assert isinstance(write(devices, "offset_c", -32768), Allowed)  # i16
    refused(write(devices, "offset_c", 32768), "out_of_bounds")
    assert isinstance(write(devices, "firmware_build", 15), Allowed)
    assert "10..20" in refused(write(devices, "firmware_build", 9), "out_of_bounds").msg
    refused(write(devices, "firmware_build", 21), "out_of_bounds")


@pytest.mark.parametrize(("writable", "register", "fragment"), [
    (["co2_ppm"], "co2_ppm", "input"),  # Modbus cannot write an input register
    (["temperature_c"], "temperature_c", "f32"),
    (["lane_count"], "lane_count", "input"),
    (["ghost"], "ghost", "no such register"),
    ([{"register": "wind_dir_deg", "max": 1.5}], "wind_dir_deg", "must be an integer"),
])
def test_profiles_that_open_what_cannot_be_written_are_reported(
    writable: list[Any], register: str, fragment: str
) -> None:
    devices = opened("test-scattered-sensor", writable)
    msg = refused(write(devices, register, 1), "profile_error").msg
    assert fragment in msg and "test-scattered-sensor" in msg


def test_write_register_needs_its_arguments() -> None:
    devices = opened("nema-phase-status", ["preempt"])
    refused(check("write_register", {"device": "dev", "value": 1}, devices), "bad_args")
    refused(check("write_register", {"device": "dev", "register": "preempt"}, devices), "bad_args")
    refused(check("write_register", {"device": "x", "register": "preempt", "value": 1}, devices),
            "unknown_device")
    refused(check("write_register", {"device": "dev", "register": "preempt", "value": 1,
                                     "unit": 2}, devices), "bad_args")
