"""One [[board]] of boards.toml: its id and type, its link and buses, the pins and UARTs they take,
and its devices (citynerve/board_device_check.py). Everything firmware/config.py would refuse at
boot is refused here too, with the line to fix; so is what the node would accept and then fail
on (a pin the board does not have, a UART two buses share, a baud rate the device does not speak).
"""

from __future__ import annotations

from typing import Any

from citynerve.board_device_check import check_device
from citynerve.board_state import (
    INTERVAL_S, BoardState, BusInfo, check_framing, check_range, claim_pin, claim_uart)
from citynerve.board_types import BOARD_TYPES, INPUT, OUTPUT
from citynerve.bus_time_check import check_bus_time
from citynerve.profile_check import ProfileLibrary
from citynerve.site_gateway_check import check_topic_id
from citynerve.table_checks import (
    INT, STR, STR_OR_INT, TABLE, TABLES, KeySpec, Scope, check_table, did_you_mean)
from gateway.topics import RESERVED_NODE_IDS

BOARD_KEYS = {
    "id": KeySpec(STR, 'id = "cab-pico"', required=True),
    "type": KeySpec(STR, 'type = "rp2040"', required=True),
    "description": KeySpec(STR, 'description = "what and where the board is"'),
    "link": KeySpec(TABLE, 'link = { transport = "usb", gateway_port = "/dev/ttyACM0" }',
                    required=True),
    "interval_s": KeySpec(INT, "interval_s = 30"),
    "bus": KeySpec(TABLES, "[[board.bus]] sections"),
    "device": KeySpec(TABLES, "[[board.device]] sections"),
}
TRANSPORTS = ("uart", "usb", "tcp")
LINK_KEYS = {
    "transport": KeySpec(STR, 'transport = "uart"', required=True),
    "uart": KeySpec(INT, "uart = 0"),
    "tx": KeySpec(INT, "tx = 0"),
    "rx": KeySpec(INT, "rx = 1"),
    "baud": KeySpec(INT, "baud = 115200"),
    "framing": KeySpec(STR, 'framing = "8N1"'),
    "gateway_port": KeySpec(STR_OR_INT, 'gateway_port = "/dev/ttyACM0"'),
}
# The keys each transport uses and needs (firmware/hal_machine.py open_link).
LINK_TRANSPORT_KEYS = {
    "uart": (("uart", "tx", "rx", "baud", "gateway_port"), ("framing",)),
    "usb": (("gateway_port",), ("baud",)),  # the gateway opens its side at this baud (USB CDC ignores it)
    "tcp": (("gateway_port",), ()),
}
BUS_KEYS = {
    "id": KeySpec(STR, 'id = "rs485"', required=True),
    "description": KeySpec(STR, 'description = "what is wired to it"'),
    "uart": KeySpec(INT, "uart = 1", required=True),
    "tx": KeySpec(INT, "tx = 4", required=True),
    "rx": KeySpec(INT, "rx = 5", required=True),
    "de": KeySpec(INT, "de = 6"),
    "baud": KeySpec(INT, "baud = 9600", required=True),
    "framing": KeySpec(STR, 'framing = "8N1"'),
}

def check_board(scope: Scope, board: dict[str, Any], library: ProfileLibrary,
                board_ids: dict[str, int]) -> dict[str, Any]:
    """Check one board; returns its well-typed keys (the caller checks links across boards)."""
    good = check_table(scope, board, BOARD_KEYS, what="a [[board]]")
    if "id" in good:
        board_id = good["id"]
        check_topic_id(scope, "id", board_id, "board id")
        if board_id in RESERVED_NODE_IDS:
            scope.error("id", f'"{board_id}" is reserved in the MQTT topics',
                        f"use another id (not {', '.join(sorted(RESERVED_NODE_IDS))})")
        elif board_id in board_ids:
            scope.error("id", f'"{board_id}" is already the id of the board at line {board_ids[board_id]}',
                        "give every board its own id")
        else:
            board_ids[board_id] = scope.line()
    btype = None
    if "type" in good:
        btype = BOARD_TYPES.get(good["type"])
        if btype is None:
            guess = did_you_mean(good["type"], BOARD_TYPES)
            scope.error("type", f'"{good["type"]}" is not a board type citynerve knows',
                        f"did you mean {guess}?" if guess else f"use {', '.join(BOARD_TYPES)}")
    check_range(scope, good, "interval_s", *INTERVAL_S, "whole seconds")
    state = BoardState(scope, btype)
    if "link" in good:
        check_link(state, scope.child("link", "link."), good["link"])
    for index, bus in enumerate(good.get("bus", [])):
        check_bus(state, index, bus)
    for index, device in enumerate(good.get("device", [])):
        check_device(state, index, device, library)
    unresolved = state.bus_refs - set(state.buses)
    for bus in state.buses.values():
        # A device whose bus is misspelt (or whose profile is unknown) is already reported; the
        # bus it meant is not "unused".
        if bus.id not in state.bus_refs and not unresolved:
            bus.scope.warning((), "no device uses this bus",
                              "remove it, or add the device wired to it with bus = "
                              f'"{bus.id}"')
    check_bus_time(state.modbus)
    return good


def check_link(state: BoardState, scope: Scope, link: dict[str, Any]) -> None:
    good = check_table(scope, link, LINK_KEYS, what="a link")
    transport = good.get("transport")
    if transport is None:
        return
    if transport not in TRANSPORTS:
        scope.error("transport", f'"{transport}" is not a link transport',
                    f"use {', '.join(TRANSPORTS)}")
        return
    needed, optional = LINK_TRANSPORT_KEYS[transport]
    for key in link:
        if key in good and key != "transport" and key not in needed + optional:
            scope.error(key, f"does not apply to a {transport} link", "remove it")
    for key in needed:
        if key not in link:
            scope.error(key, f"missing (a {transport} link needs it)",
                        f"add {LINK_KEYS[key].example} to the link")
    port = good.get("gateway_port")
    if transport == "tcp":
        if state.type is not None and not state.type.wifi:
            scope.error("transport", f"the {state.type.label} has no Wi-Fi", 'use transport "uart" or "usb"')
        if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
            scope.error("gateway_port", f"{port!r} is not a TCP port",
                        "give the port the gateway listens on, e.g. gateway_port = 7700")
    elif port is not None and (not isinstance(port, str) or not port):
        scope.error("gateway_port", f"{port!r} is not a serial port",
                    'give the gateway\'s serial device, e.g. gateway_port = "/dev/ttyACM0"')
    if "baud" in good and good["baud"] <= 0:
        scope.error("baud", f"{good['baud']} is not a baud rate", "use e.g. baud = 115200")
    if transport != "uart":
        return
    check_framing(scope, good)
    uart = good.get("uart")
    uart_ok = uart is not None and claim_uart(state, scope, "uart", uart, "the link")
    for key, role, uart_role in (("tx", OUTPUT, "tx"), ("rx", INPUT, "rx")):
        if key in good:
            claim_pin(state, scope, key, good[key], role, f"link.{key}",
                      uart=uart if uart_ok else None, uart_role=uart_role)


def check_bus(state: BoardState, index: int, bus: dict[str, Any]) -> None:
    bus_id = bus.get("id")
    name = bus_id if isinstance(bus_id, str) and bus_id else f"#{index + 1}"
    scope = state.scope.child(("bus", index), f"bus {name}.")
    good = check_table(scope, bus, BUS_KEYS, what="a [[board.bus]]")
    if "id" in good:
        if not good["id"]:
            scope.error("id", "is empty", "name the bus, e.g. id = \"rs485\"")
        elif good["id"] in state.buses:
            other = state.buses[good["id"]].scope.line()
            scope.error("id", f'"{good["id"]}" is already the id of the bus at line {other}',
                        "give every bus of a board its own id")
    if "baud" in good and good["baud"] <= 0:
        scope.error("baud", f"{good['baud']} is not a baud rate", "use the devices' rate, e.g. baud = 9600")
    framing = check_framing(scope, good)
    uart = good.get("uart")
    uart_ok = uart is not None and claim_uart(state, scope, "uart", uart, f"bus {name}")
    for key, role, uart_role in (("tx", OUTPUT, "tx"), ("rx", INPUT, "rx"), ("de", OUTPUT, None)):
        if key in good:
            claim_pin(state, scope, key, good[key], role, f"bus {name}.{key}",
                      uart=uart if uart_ok else None, uart_role=uart_role)
    if "id" in good and good["id"] and good["id"] not in state.buses:
        baud = good["baud"] if good.get("baud", 0) > 0 else None
        state.buses[good["id"]] = BusInfo(good["id"], scope, baud, framing)

