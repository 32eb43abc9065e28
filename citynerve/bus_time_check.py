"""Does each Modbus bus's poll cycle fit its shortest poll interval at its baud rate?

The arithmetic is the gateway's poll planner's (gateway/poll_plan.py plan_bus: each device's
registers merged into the fewest reads by protocols/modbus_plan.py, every read a request, a reply,
two t3.5 gaps and the device's turnaround). A node's Modbus master polls the same way, so the same
plan tells whether a node's bus can keep up; a cycle that cannot is reported at the poll_ms of the
device that would drift, with the shortfall in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from citynerve.profile_check import FRAMINGS
from citynerve.table_checks import Scope
from gateway.modbus_errors import PollPlanError, PollPlanTooSlowError
from gateway.poll_plan import PolledDevice, SerialBus, plan_bus

# The node's master has its own reply timeout; the planner's check of a read against the
# gateway's timeout does not apply to it, so it is given one no read can reach.
_NO_TIMEOUT_S = 3600.0


class _Bus(Protocol):
    id: str
    scope: Scope
    baud: int | None
    framing: str


@dataclass(frozen=True)
class ModbusOnBus:
    """A Modbus device that passed its own checks, on the bus it is wired to."""

    id: str
    scope: Scope
    bus: _Bus
    address: int
    profile: Mapping[str, Any]
    poll_ms: int
    poll_ms_given: bool
    in_plan: bool = True  # False: something else is wrong with it, so it is left out of the plan


def check_bus_time(devices: Sequence[ModbusOnBus]) -> None:
    """Report every bus whose poll cycle is longer than its shortest poll interval."""
    buses: dict[int, list[ModbusOnBus]] = {}
    for device in devices:
        if device.in_plan:
            buses.setdefault(id(device.bus), []).append(device)
    for on_bus in buses.values():
        bus = on_bus[0].bus
        if bus.baud is None or bus.framing not in FRAMINGS:
            continue  # already reported at the bus
        serial = SerialBus(id=bus.id, port=f"bus {bus.id}", baud=bus.baud, framing=bus.framing,
                           timeout_s=_NO_TIMEOUT_S)
        polled = [PolledDevice(id=d.id, address=d.address, profile=d.profile, poll_ms=d.poll_ms)
                  for d in on_bus]
        try:
            plan_bus(serial, polled)
        except PollPlanTooSlowError as exc:
            slow = next(d for d in on_bus if d.id == exc.device)
            others = [d for d in exc.devices if d != exc.device]
            what = (f"{exc.interval_ms:g} ms is too short for bus \"{bus.id}\" at {serial.line}: one "
                    f"poll of {exc.device}" + (f" and {', '.join(others)}" if others else "")
                    + f" takes {exc.needed_ms:.1f} ms on the wire, {exc.shortfall_ms:.1f} ms more")
            fix = (f"{'set' if slow.poll_ms_given else 'add'} poll_ms = {math.ceil(exc.needed_ms)} "
                   f"or more, raise the bus baud rate or move a device to another bus")
            if not slow.poll_ms_given:
                what += f" (the default poll interval of {slow.profile.get('profile', '?')})"
            slow.scope.error("poll_ms", what, fix)
        except PollPlanError as exc:  # the device checks should have caught it; say it anyway
            bus.scope.error((), exc.reason, "correct the bus or its devices")
