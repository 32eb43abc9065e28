"""What the parts of one board have claimed: its pins and UARTs (each usable once, and only if the
board type has it), its buses and their users, its device ids and Modbus devices; and the small
value checks the board and device checks share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from citynerve.board_types import OUTPUT, BoardType
from citynerve.bus_time_check import ModbusOnBus
from citynerve.profile_check import FRAMINGS
from citynerve.table_checks import Scope

INTERVAL_S = (5, 3600)  # firmware/config.py refuses interval_s outside this


@dataclass
class _Claim:
    label: str
    line: int


@dataclass
class BusInfo:
    id: str
    scope: Scope
    baud: int | None
    framing: str
    users: list[tuple[str, str, Scope]] = field(default_factory=list)  # (device id, interface, scope)


@dataclass
class BoardState:
    """What one board's parts have claimed so far."""

    scope: Scope
    type: BoardType | None
    pins: dict[int, _Claim] = field(default_factory=dict)
    uarts: dict[int, _Claim] = field(default_factory=dict)
    buses: dict[str, BusInfo] = field(default_factory=dict)
    device_ids: dict[str, int] = field(default_factory=dict)
    bus_refs: set[str] = field(default_factory=set)  # every bus name a device gives, found or not
    modbus: list[ModbusOnBus] = field(default_factory=list)


def _pins_phrase(btype: BoardType, pins: frozenset[int]) -> str:
    names = [btype.pin_name(p) for p in sorted(pins)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def claim_pin(state: BoardState, scope: Scope, key: str | tuple[str | int, ...], pin: int,
              role: str, label: str, *, uart: int | None = None, uart_role: str | None = None) -> None:
    """Check `pin` exists on the board for `role` (and for a UART's TX/RX) and is not taken."""
    btype = state.type
    if btype is not None:
        problem = btype.pin_problem(pin, role) if pin >= 0 else f"pin {pin} does not exist"
        if problem is not None:
            fix = f"pick another pin: the {btype.label} has {btype.usable_pins(role)}"
            if role == OUTPUT and pin in btype.input_only:
                fix = "pick a pin that can drive an output (not " + ", ".join(
                    btype.pin_name(p) for p in sorted(btype.input_only)) + ")"
            scope.error(key, problem, fix)
            return
        if uart is not None and uart_role is not None and uart in btype.uarts:
            allowed = btype.uart_pins(uart, uart_role)
            if allowed is not None and pin not in allowed:
                scope.error(key, f"UART {uart} cannot use {btype.pin_name(pin)} as "
                                 f"{uart_role.upper()} on the {btype.label}",
                            f"use {_pins_phrase(btype, allowed)}")
                return
    taken = state.pins.get(pin)
    name = btype.pin_name(pin) if btype is not None else f"pin {pin}"
    if taken is not None:
        scope.error(key, f"{name} is already used by {taken.label} (line {taken.line})",
                    "give each its own pin")
        return
    state.pins[pin] = _Claim(label, scope.line(key))


def claim_uart(state: BoardState, scope: Scope, key: str, uart: int, label: str) -> bool:
    """Check the board has UART `uart` and nothing else uses it; False when it cannot be used."""
    btype = state.type
    if btype is not None and uart not in btype.uarts:
        scope.error(key, f"the {btype.label} has no UART {uart}",
                    f"use UART {' or '.join(map(str, btype.uarts))}")
        return False
    taken = state.uarts.get(uart)
    if taken is not None:
        scope.error(key, f"UART {uart} is already used by {taken.label} (line {taken.line})",
                    "give each bus and the link a UART of its own")
        return False
    state.uarts[uart] = _Claim(label, scope.line(key))
    if btype is not None and uart == btype.repl_uart:
        scope.warning(key, f"UART {uart} is MicroPython's REPL on the {btype.label}: boot messages "
                           f"and the REPL will talk on this line",
                      f"use UART {' or '.join(str(u) for u in btype.uarts if u != uart)}")
    return True


def check_framing(scope: Scope, good: dict[str, Any]) -> str:
    framing = good.get("framing", "8N1")
    if framing not in FRAMINGS:
        fix = f"use {', '.join(FRAMINGS)}"
        if framing.upper() in FRAMINGS:
            fix = f'write "{framing.upper()}" (in capitals)'
        scope.error("framing", f'"{framing}" is not a framing the node can set', fix)
    return framing


def check_positive(scope: Scope, good: dict[str, Any], key: str, unit: str, *, zero: bool = False) -> None:
    value = good.get(key)
    if value is not None and (value < 0 or (value == 0 and not zero)):
        shown = f"{value} {unit}".strip()
        scope.error(key, f"{shown} is {'negative' if zero else 'not positive'}",
                    f"use a value {'>= 0' if zero else '> 0'}")


def check_range(scope: Scope, good: dict[str, Any], key: str, low: int, high: int, what: str) -> None:
    if key in good and not low <= good[key] <= high:
        scope.error(key, f"{good[key]} is outside {low}..{high}", f"use {what} in {low}..{high}")


