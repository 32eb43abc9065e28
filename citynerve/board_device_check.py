"""One [[board.device]]: its keys (which depend on its profile's interface and the node driver
that profile gets), its profile, its bus or pins, and what that driver would refuse.
"""

from __future__ import annotations

from typing import Any

from citynerve.board_state import (
    INTERVAL_S, BoardState, BusInfo, check_positive, check_range, claim_pin)
from citynerve.board_types import INPUT, OUTPUT
from citynerve.bus_time_check import ModbusOnBus
from citynerve.profile_check import FRAMINGS, INTERFACES, LoadedProfile, ProfileLibrary
from citynerve.site_gateway_check import check_topic_id
from citynerve.stream_policy_check import check_stream_policy, quantities
from citynerve.table_checks import (
    INT, INT_LIST, INT_OR_INT_LIST, NUMBER, STR, TABLE, KeySpec, Scope, check_table, did_you_mean)
from firmware.register_decode import RegisterError, check_entry
from protocols.modbus_rtu import ANY_ADDRESS, MAX_UNIT

DEVICE_KEYS = {
    "id": KeySpec(STR, 'id = "co2"', required=True),
    "profile": KeySpec(STR, 'profile = "senseair-s8"', required=True),
    "description": KeySpec(STR, 'description = "what and where the device is"'),
    # The gateway's publishing policy per quantity (gateway/config.py), checked separately.
    "stream_policy": KeySpec(TABLE, "stream_policy = { co2_ppm = { deadband = 5 } }"),
}
# Keys each interface's drivers read from the device's entry (firmware/drivers/*).
DEVICE_KEYS_BY_INTERFACE = {
    "modbus-rtu": {
        "bus": KeySpec(STR, 'bus = "rs485"', required=True),
        "address": KeySpec(INT, "address = 1", required=True),
        "poll_ms": KeySpec(INT, "poll_ms = 1000"),
        "timeout_ms": KeySpec(INT, "timeout_ms = 100"),
        "retries": KeySpec(INT, "retries = 1"),
        "offline_after": KeySpec(INT, "offline_after = 3"),
        "backoff_ms": KeySpec(INT, "backoff_ms = 1000"),
        "backoff_max_ms": KeySpec(INT, "backoff_max_ms = 60000"),
        "fault_repeat_ms": KeySpec(INT, "fault_repeat_ms = 10000"),
    },
    "uart-frames": {
        "bus": KeySpec(STR, 'bus = "pms-uart"', required=True),
        "mode": KeySpec(STR, 'mode = "active"'),
        "set_pin": KeySpec(INT, "set_pin = 27"),
        "poll_ms": KeySpec(INT, "poll_ms = 1000"),
        "period_ms": KeySpec(INT, "period_ms = 1000"),
        "warmup_s": KeySpec(NUMBER, "warmup_s = 30"),
        "silence_timeout_s": KeySpec(NUMBER, "silence_timeout_s = 5"),
    },
    "presence-pins": {
        "pins": KeySpec(INT_LIST, "pins = [10, 11]", required=True),
        "lane": KeySpec(INT, "lane = 1"),
        "approach": KeySpec(STR, 'approach = "NB"'),
        "detector": KeySpec(INT_OR_INT_LIST, "detector = [1, 2]"),
        "trap_spacing_ft": KeySpec(NUMBER, "trap_spacing_ft = 20"),
        "loop_length_ft": KeySpec(NUMBER, "loop_length_ft = 6"),
        "interval_s": KeySpec(INT, "interval_s = 30"),
        "queue": KeySpec(INT, "queue = 64"),
    },
}
DEVICE_KEYS_BY_DRIVER = {
    "SignalControllerDriver": {"max_red_clear_ms": KeySpec(INT, "max_red_clear_ms = 6000")},
    "LoopCardDriver": {"detector": KeySpec(INT_LIST, "detector = [1, 2, 3, 4, 5, 6, 7, 8]"),
                       "interval_s": KeySpec(INT, "interval_s = 30")},
    "Sds011Driver": {"sensor_id": KeySpec(INT, "sensor_id = 65535")},
}
APPROACHES = ("NB", "SB", "EB", "WB", "NE", "NW", "SE", "SW")


def _device_keys(loaded: LoadedProfile | None) -> dict[str, KeySpec] | None:
    """The keys a device with this profile may have; None when the profile cannot tell."""
    if loaded is None or loaded.interface not in INTERFACES:
        return None
    keys = dict(DEVICE_KEYS) | DEVICE_KEYS_BY_INTERFACE[loaded.interface]
    driver = loaded.driver()
    if driver is not None:
        keys |= DEVICE_KEYS_BY_DRIVER.get(driver[1], {})
    return keys


def check_device(state: BoardState, index: int, device: dict[str, Any], library: ProfileLibrary) -> None:
    device_id = device.get("id")
    name = device_id if isinstance(device_id, str) and device_id else f"#{index + 1}"
    scope = state.scope.child(("device", index), f"device {name}.")
    loaded = None
    profile_name = device.get("profile")
    if isinstance(profile_name, str) and library.exists(profile_name):
        loaded = library.get(profile_name)
    keys = _device_keys(loaded)
    if isinstance(device.get("bus"), str):
        state.bus_refs.add(device["bus"])
    if keys is None:  # the profile is missing or broken: only the keys every device has
        good = check_table(scope, {k: v for k, v in device.items() if k in DEVICE_KEYS},
                           DEVICE_KEYS, what="a device")
    else:
        good = check_table(scope, device, keys, what=f"a {loaded.interface} device")  # type: ignore[union-attr]
    if "id" in good:
        check_topic_id(scope, "id", good["id"], "device id")
        if good["id"] in state.device_ids:
            scope.error("id", f'"{good["id"]}" is already the id of the device at line '
                              f'{state.device_ids[good["id"]]}',
                        "give every device of a board its own id")
        else:
            state.device_ids[good["id"]] = scope.line()
    if "profile" in good and loaded is None:
        guess = did_you_mean(good["profile"], library.names())
        scope.error("profile", f'no profile "{good["profile"]}" in {library.folder.name}/',
                    f"did you mean {guess}?" if guess
                    else f"use one of {', '.join(library.names())}, or add {good['profile']}.json")
        return
    if loaded is None or not loaded.usable or keys is None:
        return  # the profile's own problems are reported once, at the profile
    if loaded.driver() is None:
        scope.error("profile", f"the node has no driver for the {loaded.interface} profile {loaded.name}",
                    "use a profile the firmware has a driver for (pms5003 or sds011 for uart-frames)")
        return
    profile = loaded.data or {}
    interface = loaded.interface
    if "stream_policy" in good:
        check_stream_policy(scope, good["stream_policy"], quantities(profile))
    if interface == "presence-pins":
        _check_presence(state, scope, good)
        return
    bus = _device_bus(state, scope, good, str(good.get("id", name)), str(interface))
    line_ok = bus is not None and _check_line(scope, bus, loaded)
    if interface == "modbus-rtu":
        # Only a device with nothing else wrong joins its bus's poll plan (one problem, one line).
        unique = "id" in good and state.device_ids.get(good["id"]) == scope.line()
        _check_modbus(state, scope, good, loaded, bus, in_plan=line_ok and unique)
    else:
        _check_uart_frames(state, scope, good, profile)


def _device_bus(state: BoardState, scope: Scope, good: dict[str, Any], device_id: str,
                interface: str) -> BusInfo | None:
    if "bus" not in good:
        return None
    bus = state.buses.get(good["bus"])
    if bus is None:
        known = list(state.buses)
        guess = did_you_mean(good["bus"], known)
        fix = (f"did you mean {guess}?" if guess
               else f'add a [[board.bus]] with id = "{good["bus"]}"'
               + (f" or use {', '.join(known)}" if known else ""))
        scope.error("bus", f'no bus "{good["bus"]}" on this board', fix)
        return None
    for other_id, other_interface, other_scope in bus.users:
        if interface == "uart-frames" or other_interface == "uart-frames":
            scope.error("bus", f'bus "{bus.id}" is already used by device {other_id} '
                               f"(line {other_scope.line()}), and a {('uart-frames' if interface == 'uart-frames' else other_interface)} "
                               "sensor streams frames on a UART of its own",
                        "give this device its own [[board.bus]]")
            return None
    bus.users.append((device_id, interface, scope))
    return bus


def _check_line(scope: Scope, bus: BusInfo, loaded: LoadedProfile) -> bool:
    """Does the device speak the bus's baud rate and framing? Reports it when not."""
    ok = True
    profile = loaded.data or {}
    bauds = profile.get("bauds")
    if bus.baud is not None and bauds and bus.baud not in bauds:
        scope.error("bus", f'bus "{bus.id}" runs at {bus.baud} baud, which {loaded.name} does not '
                           f"speak (it lists {', '.join(map(str, bauds))})",
                    f"set the bus baud to {' or '.join(map(str, bauds))}, or reconfigure the device")
        ok = False
    framings = profile.get("framings")
    if bus.framing in FRAMINGS and framings and bus.framing not in framings:
        scope.error("bus", f'bus "{bus.id}" uses {bus.framing}, which {loaded.name} does not speak '
                           f"(it lists {', '.join(framings)})",
                    f"set the bus framing to {' or '.join(framings)}")
        ok = False
    return ok


def _check_modbus(state: BoardState, scope: Scope, good: dict[str, Any], loaded: LoadedProfile,
                  bus: BusInfo | None, *, in_plan: bool) -> None:
    profile = loaded.data or {}
    any_address = bool(profile.get("any_address"))
    address = good.get("address")
    address_ok = False
    if address is not None:
        if 1 <= address <= MAX_UNIT or (any_address and address == ANY_ADDRESS):
            address_ok = True
        else:
            scope.error("address", f"{address} is not a Modbus device address",
                        f"use 1..{MAX_UNIT}" + (" or 254 (any address)" if any_address else "")
                        + (f" ({loaded.name} does not answer 254)" if address == ANY_ADDRESS
                           and not any_address else ""))
    for key, unit in (("poll_ms", "ms"), ("timeout_ms", "ms"), ("backoff_ms", "ms"),
                      ("backoff_max_ms", "ms"), ("fault_repeat_ms", "ms"), ("max_red_clear_ms", "ms")):
        check_positive(scope, good, key, unit)
    for key in ("retries", "offline_after"):
        check_positive(scope, good, key, "", zero=True)
    check_range(scope, good, "interval_s", *INTERVAL_S, "whole seconds")
    if "detector" in good:
        channels = profile.get("channels", 8)
        if len(good["detector"]) != channels:
            scope.error("detector", f"lists {len(good['detector'])} detector numbers for "
                                    f"{loaded.name}'s {channels} channels",
                        f"list one detector number for each of the {channels} channels")
    for entry in profile.get("registers", []):
        try:
            check_entry(entry)
        except RegisterError as exc:  # the gateway can decode it, the node cannot
            scope.error("profile", f"{loaded.name} {exc} on a node",
                        "use it on a device wired to the gateway, or change the register's type")
            break
    if bus is None or not address_ok:
        return
    device_id = str(good.get("id", "?"))
    for other in state.modbus:
        if other.bus is not bus:
            continue
        if other.address == address:
            scope.error("address", f"{address} is already the address of device {other.id} on bus "
                                   f'"{bus.id}" (line {other.scope.line("address")})',
                        "give every device on a bus its own address")
            return
        # A device that answers 254 whatever its own address collides with any other use of 254.
        if ((address == ANY_ADDRESS and other.profile.get("any_address"))
                or (other.address == ANY_ADDRESS and any_address)):
            scope.error("address", f"device {other.id} on bus \"{bus.id}\" (line "
                                   f"{other.scope.line('address')}) and this one both answer 254 "
                                   f"(any address), so both would reply at once",
                        f"give the one at 254 its own address 1..{MAX_UNIT}")
            return
    klass = loaded.driver_class()
    default_poll = profile.get("poll_ms", getattr(klass, "DEFAULT_POLL_MS", 1000))
    poll_ms = good.get("poll_ms", default_poll)
    state.modbus.append(ModbusOnBus(device_id, scope, bus, address, profile, poll_ms,
                                    poll_ms_given="poll_ms" in good, in_plan=in_plan and poll_ms > 0))


def _check_uart_frames(state: BoardState, scope: Scope, good: dict[str, Any],
                       profile: dict[str, Any]) -> None:
    modes = profile.get("modes")
    if "mode" in good and modes and good["mode"] not in modes:
        guess = did_you_mean(good["mode"], modes)
        scope.error("mode", f'"{good["mode"]}" is not a mode of {profile.get("profile")}',
                    f"did you mean {guess}?" if guess else f"use {' or '.join(modes)}")
    if "set_pin" in good:
        claim_pin(state, scope, "set_pin", good["set_pin"], OUTPUT,
                  f"device {good.get('id', '?')}.set_pin")
    for key in ("poll_ms", "period_ms", "silence_timeout_s"):
        check_positive(scope, good, key, "ms" if key.endswith("ms") else "s")
    check_positive(scope, good, "warmup_s", "s", zero=True)
    check_range(scope, good, "sensor_id", 0, 0xFFFF, "the sensor's id")


def _check_presence(state: BoardState, scope: Scope, good: dict[str, Any]) -> None:
    pins = good.get("pins")
    if pins is not None:
        if not 1 <= len(pins) <= 2:
            scope.error("pins", f"lists {len(pins)} pins",
                        "list one loop pin, or two (leading, trailing) for a speed trap")
        else:
            for pin in pins:
                claim_pin(state, scope, "pins", pin, INPUT, f"device {good.get('id', '?')}.pins")
    detector = good.get("detector")
    if detector is not None and pins is not None and 1 <= len(pins) <= 2:
        numbers = [detector] if isinstance(detector, int) else detector
        if len(numbers) < len(pins):
            scope.error("detector", f"lists {len(numbers)} detector channel(s) for {len(pins)} pins",
                        "give one detector number per pin, e.g. detector = [1, 2]")
        elif any(n < 1 for n in numbers):
            scope.error("detector", "detector numbers start at 1", "renumber them from 1")
    if "approach" in good and good["approach"] not in APPROACHES:
        guess = did_you_mean(good["approach"], APPROACHES)
        scope.error("approach", f'"{good["approach"]}" is not an approach direction',
                    f"did you mean {guess}?" if guess else f"use {', '.join(APPROACHES)}")
    if "lane" in good and good["lane"] < 1:
        scope.error("lane", f"{good['lane']} is not a lane number", "number lanes from 1")
    for key in ("trap_spacing_ft", "loop_length_ft"):
        check_positive(scope, good, key, "ft")
    if "trap_spacing_ft" in good and pins is not None and len(pins) == 1:
        scope.warning("trap_spacing_ft", "only applies to a two-pin speed trap",
                      "remove it, or add the trailing loop's pin to pins")
    check_range(scope, good, "interval_s", *INTERVAL_S, "whole seconds")
    check_positive(scope, good, "queue", "entries")
