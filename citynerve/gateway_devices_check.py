"""[[gateway.bus]] and [[gateway.device]]: Modbus devices wired to the gateway itself, polled by
gateway/modbus_poller.py. The keys and defaults are gateway/config.py's; the poll plan is checked
by the gateway's own planner (gateway/poll_plan.py plan_bus), at the bus's real reply timeout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from citynerve.profile_check import FRAMINGS, ProfileLibrary
from citynerve.stream_policy_check import check_stream_policy, quantities
from citynerve.table_checks import (
    BOOL, INT, NUMBER, STR, TABLE, KeySpec, Scope, check_table, did_you_mean)
from gateway.modbus_errors import PollPlanError, PollPlanTooSlowError
from gateway.poll_plan import PolledDevice, SerialBus, TcpBus, plan_bus
from gateway.topics import TopicError, validate_id
from protocols.modbus_rtu import ANY_ADDRESS, MAX_UNIT

BUS_KEYS = {
    "id": KeySpec(STR, 'id = "cab-rs485"', required=True),
    "description": KeySpec(STR, 'description = "what is wired to it"'),
    "port": KeySpec(STR, 'port = "/dev/ttyUSB0"'),
    "host": KeySpec(STR, 'host = "10.0.0.9"'),
    "tcp_port": KeySpec(INT, "tcp_port = 502"),
    "baud": KeySpec(INT, "baud = 19200"),
    "framing": KeySpec(STR, 'framing = "8E1"'),
    "timeout_s": KeySpec(NUMBER, "timeout_s = 0.5"),
    "apply_framing": KeySpec(BOOL, "apply_framing = true"),
}
_SERIAL_ONLY = ("port", "baud", "framing", "apply_framing")
_TCP_ONLY = ("host", "tcp_port")
DEVICE_KEYS = {
    "id": KeySpec(STR, 'id = "ctrl2"', required=True),
    "description": KeySpec(STR, 'description = "what and where the device is"'),
    "profile": KeySpec(STR, 'profile = "nema-phase-status"', required=True),
    "bus": KeySpec(STR, 'bus = "cab-rs485"', required=True),
    "address": KeySpec(INT, "address = 1", required=True),
    "poll_ms": KeySpec(NUMBER, "poll_ms = 1000"),
    "stream_policy": KeySpec(TABLE, "stream_policy = { co2_ppm = { deadband = 5 } }"),
}
# gateway/config.py's defaults and limits.
DEFAULT_BAUD = 19200
DEFAULT_FRAMING = "8E1"
DEFAULT_TIMEOUT_S = 0.5
TIMEOUT_S = (0.001, 60.0)
BAUD = (1, 10_000_000)
DEFAULT_POLL_MS = 1000
POLL_MS = (1, 86_400_000)


@dataclass
class _Bus:
    scope: Scope
    bus: SerialBus | TcpBus | None  # None when its settings are wrong (reported already)
    devices: list[tuple[PolledDevice, Scope, bool]]  # (device, scope, poll_ms given)


def check_gateway_devices(scope: Scope, gateway: dict[str, Any], library: ProfileLibrary,
                          serial_ports: dict[str, str]) -> int:
    """Check the gateway's buses and devices; returns how many devices there are."""
    buses: dict[str, _Bus] = {}
    for index, raw in enumerate(gateway.get("bus", [])):
        _check_bus(scope, index, raw, buses, serial_ports)
    ids: dict[str, int] = {}
    devices = gateway.get("device", [])
    for index, raw in enumerate(devices):
        _check_device(scope, index, raw, buses, ids, library)
    for bus in buses.values():
        if bus.bus is not None and bus.devices:
            _check_plan(bus)
    return len(devices)


def _check_bus(gateway: Scope, index: int, raw: dict[str, Any], buses: dict[str, _Bus],
               serial_ports: dict[str, str]) -> None:
    bus_id = raw.get("id")
    name = bus_id if isinstance(bus_id, str) and bus_id else f"#{index + 1}"
    scope = gateway.child(("bus", index), f"bus {name}.")
    good = check_table(scope, raw, BUS_KEYS, what="a [[gateway.bus]]")
    ok = True
    if "id" in good:
        if not good["id"]:
            scope.error("id", "is empty", 'name the bus, e.g. id = "cab-rs485"')
            ok = False
        elif good["id"] in buses:
            scope.error("id", f'"{good["id"]}" is already the id of the bus at line '
                              f"{buses[good['id']].scope.line()}", "give every bus its own id")
            ok = False
    tcp = "host" in raw
    if tcp and "port" in raw:
        scope.error("host", "is set together with port",
                    "give port (a serial device) for Modbus RTU or host for Modbus TCP, not both")
        ok = False
    elif not tcp and "port" not in raw:
        scope.error("port", "missing", 'add port = "/dev/ttyUSB0" (or host = "..." for Modbus TCP)',
                    line=scope.line())
        ok = False
    for key in (_SERIAL_ONLY if tcp else _TCP_ONLY):
        if key in good and not (tcp and key == "port"):
            scope.error(key, f"does not apply to a Modbus {'TCP' if tcp else 'RTU'} bus", "remove it")
    timeout = good.get("timeout_s", DEFAULT_TIMEOUT_S)
    if not TIMEOUT_S[0] <= timeout <= TIMEOUT_S[1]:
        scope.error("timeout_s", f"{timeout:g} s is outside {TIMEOUT_S[0]:g}..{TIMEOUT_S[1]:g} s",
                    "use e.g. timeout_s = 0.5")
        ok = False
    bus: SerialBus | TcpBus | None = None
    if tcp:
        port = good.get("tcp_port", 502)
        if not 1 <= port <= 65535:
            scope.error("tcp_port", f"{port} is not a TCP port", "use 502 (Modbus TCP) or the device's port")
            ok = False
        if ok and "host" in good and good["host"]:
            bus = TcpBus(id=name, host=good["host"], port=port, timeout_s=timeout)
    else:
        baud = good.get("baud", DEFAULT_BAUD)
        if not BAUD[0] <= baud <= BAUD[1]:
            scope.error("baud", f"{baud} is not a baud rate", "use the devices' rate, e.g. baud = 19200")
            ok = False
        framing = good.get("framing", DEFAULT_FRAMING)
        if framing not in FRAMINGS:
            scope.error("framing", f'"{framing}" is not a framing', f"use {', '.join(FRAMINGS)}")
            ok = False
        port = good.get("port")
        if isinstance(port, str) and port in serial_ports:
            scope.error("port", f"{port} is already the link of board {serial_ports[port]}",
                        "give the bus its own serial device")
            ok = False
        if ok and port:
            bus = SerialBus(id=name, port=port, baud=baud, framing=framing, timeout_s=timeout,
                            apply_framing=good.get("apply_framing", True))
    if "id" in good and good["id"] and good["id"] not in buses:
        buses[good["id"]] = _Bus(scope, bus, [])


def _check_device(gateway: Scope, index: int, raw: dict[str, Any], buses: dict[str, _Bus],
                  ids: dict[str, int], library: ProfileLibrary) -> None:
    device_id = raw.get("id")
    name = device_id if isinstance(device_id, str) and device_id else f"#{index + 1}"
    scope = gateway.child(("device", index), f"device {name}.")
    good = check_table(scope, raw, DEVICE_KEYS, what="a [[gateway.device]]")
    unique = False
    if "id" in good:
        try:
            validate_id("device id", good["id"])
            if good["id"] in ids:
                scope.error("id", f'"{good["id"]}" is already the id of the device at line '
                                  f"{ids[good['id']]}", "give every gateway device its own id")
            else:
                ids[good["id"]] = scope.line()
                unique = True
        except TopicError as exc:
            scope.error("id", f'"{good["id"]}" {exc.reason}' if good["id"] else "is empty",
                        "use letters, digits, '-' and '_' only (it prefixes stream names)")
    profile = None
    if "profile" in good:
        if not library.exists(good["profile"]):
            guess = did_you_mean(good["profile"], library.names())
            scope.error("profile", f'no profile "{good["profile"]}" in {library.folder.name}/',
                        f"did you mean {guess}?" if guess else f"use one of {', '.join(library.names())}")
        else:
            loaded = library.get(good["profile"])
            if loaded.usable and loaded.interface != "modbus-rtu":
                scope.error("profile", f"{loaded.name} is a {loaded.interface} device; the gateway "
                                       "polls only Modbus devices", "wire it to a node instead")
            elif loaded.usable:
                profile = loaded.data
    bus = None
    if "bus" in good:
        bus = buses.get(good["bus"])
        if bus is None:
            guess = did_you_mean(good["bus"], buses)
            scope.error("bus", f'no [[gateway.bus]] "{good["bus"]}"',
                        f"did you mean {guess}?" if guess
                        else f'add a [[gateway.bus]] with id = "{good["bus"]}"')
    poll_ms = good.get("poll_ms", DEFAULT_POLL_MS)
    poll_ok = POLL_MS[0] <= poll_ms <= POLL_MS[1]
    if not poll_ok:
        scope.error("poll_ms", f"{poll_ms:g} ms is outside {POLL_MS[0]}..{POLL_MS[1]} ms",
                    "use e.g. poll_ms = 1000")
    if profile is None:
        return
    if "stream_policy" in good:
        check_stream_policy(scope, good["stream_policy"], quantities(profile))
    address = good.get("address")
    any_address = bool(profile.get("any_address"))
    address_ok = address is not None and (1 <= address <= MAX_UNIT or (any_address and address == ANY_ADDRESS))
    if address is not None and not address_ok:
        scope.error("address", f"{address} is not a Modbus device address",
                    f"use 1..{MAX_UNIT}" + (" or 254 (any address)" if any_address else ""))
    if bus is None or bus.bus is None or not address_ok:
        return
    line_ok = True
    if isinstance(bus.bus, SerialBus):
        bauds, framings = profile.get("bauds"), profile.get("framings")
        if bauds and bus.bus.baud not in bauds:
            scope.error("bus", f'bus "{bus.bus.id}" runs at {bus.bus.baud} baud, which '
                               f"{profile.get('profile')} does not speak (it lists "
                               f"{', '.join(map(str, bauds))})",
                        f"set the bus baud to {' or '.join(map(str, bauds))}")
            line_ok = False
        if framings and bus.bus.framing not in framings:
            scope.error("bus", f'bus "{bus.bus.id}" uses {bus.bus.framing}, which '
                               f"{profile.get('profile')} does not speak (it lists {', '.join(framings)})",
                        f"set the bus framing to {' or '.join(framings)}")
            line_ok = False
    for other, other_scope, _given in bus.devices:
        if other.address == address:
            scope.error("address", f"{address} is already the address of device {other.id} on bus "
                                   f'"{bus.bus.id}" (line {other_scope.line("address")})',
                        "give every device on a bus its own address")
            return
    if line_ok and unique and poll_ok:
        bus.devices.append((PolledDevice(id=good["id"], address=address, profile=profile,
                                         poll_ms=poll_ms), scope, "poll_ms" in good))


def _check_plan(bus: _Bus) -> None:
    assert bus.bus is not None
    try:
        plan_bus(bus.bus, [d for d, _scope, _given in bus.devices])
    except PollPlanTooSlowError as exc:
        device, scope, given = next(d for d in bus.devices if d[0].id == exc.device)
        others = [d for d in exc.devices if d != exc.device]
        line = bus.bus.line
        what = (f"{exc.interval_ms:g} ms is too short for bus \"{bus.bus.id}\" at {line}: one poll of "
                f"{exc.device}" + (f" and {', '.join(others)}" if others else "")
                + f" takes {exc.needed_ms:.1f} ms on the wire, {exc.shortfall_ms:.1f} ms more")
        if not given:
            what += " (the default poll interval)"
        scope.error("poll_ms", what, f"{'set' if given else 'add'} poll_ms = "
                                     f"{math.ceil(exc.needed_ms)} or more, raise the bus baud "
                                     "rate or move a device to another bus")
    except PollPlanError as exc:
        reason = exc.reason.removeprefix(f"bus {bus.bus.id}: ")
        if reason.endswith(": raise timeout_s"):  # the planner's own sentence ends with the fix
            bus.scope.error("timeout_s", reason.removesuffix(": raise timeout_s"), "raise timeout_s")
        else:
            bus.scope.error((), reason, "correct the bus or its devices")
