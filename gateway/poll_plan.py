"""Poll plans: for each bus, the fewest read requests per device and the wire time of one cycle.

A device's profile says which registers to read and how the device wants to be asked (its quirks):
`max_registers_per_request`, `one_register_per_request`, `max_gap` (unwanted registers a read may
span to merge two entries; an int or a {table: int} dict, off by default because some devices
answer unmapped registers with exception 02), `turnaround_ms` (the device's think time before it
answers), `bauds` and `framings` it supports, `any_address` (answers 0xFE, SenseAir S8). The
merging itself is protocols.modbus_plan's, shared with the node's firmware.

On a serial bus the cycle time is every device's reads once, each a request, a reply, two t3.5
gaps and the device's turnaround (REFERENCE.md §1). Every device is due at the start of a cycle, so
the cycle must fit the shortest poll interval on the bus or that device drifts: plan_bus refuses
such a plan and says by how much. A Modbus TCP bus has no wire budget to check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.modbus_errors import ModbusPollerError, PollPlanError, PollPlanTooSlowError
from gateway.register_values import RegisterSpec, StatusSpec, profile_registers, profile_status
from protocols.modbus_plan import ModbusPlanError, PlannedRead, ReadPlan, plan_reads
from protocols.modbus_plan_time import plan_bus_time_us
from protocols.modbus_rtu import ANY_ADDRESS, MAX_UNIT, char_bits, transaction_time_us

_REQUEST_LENGTH = 8  # unit, function, address, quantity, CRC: every read request


@dataclass(frozen=True, kw_only=True)
class SerialBus:
    """Modbus RTU on a serial port (RS-485 adapter, UART): `framing` is 8E1, 8N1, 8N2 or 8O1;
    `timeout_s` is how long a request waits for its reply. `apply_framing` False opens the port
    without the framing's parity and stop bits: for a virtual wire (hil/wire.py), whose pty cannot
    take parity (Linux refuses even parity on a pty) and which keeps the framing's timing itself."""

    id: str
    port: str
    baud: int
    framing: str = "8E1"
    timeout_s: float = 0.5
    apply_framing: bool = True

    @property
    def line(self) -> str:
        return f"{self.baud} {self.framing.upper()}"


@dataclass(frozen=True, kw_only=True)
class TcpBus:
    """Modbus TCP to `host`:`port` (a device or a TCP-to-RTU gateway; units are its unit ids)."""

    id: str
    host: str
    port: int = 502
    timeout_s: float = 1.0

    @property
    def line(self) -> str:
        return f"tcp {self.host}:{self.port}"


Bus = SerialBus | TcpBus


@dataclass(frozen=True, kw_only=True)
class PolledDevice:
    """A device wired to the gateway: its id (stream prefix), Modbus address, profile (the parsed
    JSON) and poll interval in milliseconds."""

    id: str
    address: int
    profile: Mapping[str, Any]
    poll_ms: float

    @property
    def profile_name(self) -> str:
        return str(self.profile.get("profile", "?"))


@dataclass(frozen=True)
class DevicePlan:
    """One device's reads: `read_plan.wanted[i]` is `registers[i]`'s span; `bus_time_us` is one
    poll's wire time including the turnaround of every request (None on Modbus TCP)."""

    device: PolledDevice
    registers: tuple[RegisterSpec, ...]
    status: StatusSpec | None
    read_plan: ReadPlan
    turnaround_us: float
    bus_time_us: float | None

    @property
    def reads(self) -> list[PlannedRead]:
        return list(self.read_plan.reads)

    @property
    def request_count(self) -> int:
        return len(self.read_plan.reads)

    @property
    def interval_s(self) -> float:
        return self.device.poll_ms / 1000.0


@dataclass(frozen=True)
class BusPlan:
    """Every device of one bus, in the order given; `cycle_us` is one poll of each (serial only)."""

    bus: Bus
    devices: tuple[DevicePlan, ...]
    cycle_us: float | None

    @property
    def request_count(self) -> int:
        """Requests in one cycle (every device polled once)."""
        return sum(d.request_count for d in self.devices)

    @property
    def cycle_ms(self) -> float | None:
        return None if self.cycle_us is None else self.cycle_us / 1000.0

    def device(self, device_id: str) -> DevicePlan:
        for plan in self.devices:
            if plan.device.id == device_id:
                return plan
        raise KeyError(f"bus {self.bus.id} has no device {device_id}")


def _quirk_int(device: PolledDevice, bus: Bus, key: str) -> Any:
    value = device.profile.get(key)
    if value is None:
        return None
    values = value.values() if isinstance(value, Mapping) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise PollPlanError(bus.id, f"device {device.id} (profile {device.profile_name}): {key} "
                                    f"{value!r} must be an int >= 0 or a {{table: int}} object")
    return value


def _max_quantity(device: PolledDevice, bus: Bus) -> Any:
    per_request = _quirk_int(device, bus, "max_registers_per_request")
    if per_request == 0:
        raise PollPlanError(bus.id, f"device {device.id} (profile {device.profile_name}): "
                                    f"max_registers_per_request 0 would read nothing")
    if per_request is None or isinstance(per_request, Mapping):
        return per_request
    # The quirk is about registers; bit tables keep the spec's limit.
    return {"holding": per_request, "input": per_request}


def _check_line(device: PolledDevice, bus: SerialBus) -> None:
    bauds = device.profile.get("bauds")
    if bauds and bus.baud not in bauds:
        raise PollPlanError(bus.id, f"device {device.id} (profile {device.profile_name}) does not "
                                    f"speak {bus.baud} baud (it lists {', '.join(map(str, bauds))}): "
                                    f"set the bus to one of those or reconfigure the device")
    framings = device.profile.get("framings")
    if framings and bus.framing.upper() not in [str(f).upper() for f in framings]:
        raise PollPlanError(bus.id, f"device {device.id} (profile {device.profile_name}) does not "
                                    f"speak {bus.framing} (it lists {', '.join(framings)}): set the "
                                    f"bus framing to one of those")


def plan_device(device: PolledDevice, bus: Bus) -> DevicePlan:
    """The read plan and wire time of one device on `bus`; PollPlanError names what is wrong."""
    where = f"device {device.id} (profile {device.profile_name})"
    if not isinstance(device.poll_ms, (int, float)) or device.poll_ms <= 0:
        raise PollPlanError(bus.id, f"{where}: poll_ms {device.poll_ms!r} must be a positive "
                                    f"number of milliseconds")
    any_address = bool(device.profile.get("any_address", False))
    if not (1 <= device.address <= MAX_UNIT or (any_address and device.address == ANY_ADDRESS)):
        raise PollPlanError(bus.id, f"{where}: address {device.address} must be 1..{MAX_UNIT}"
                                    + (" or 254" if any_address else ""))
    try:
        registers = profile_registers(device.profile)
        status = profile_status(device.profile, registers)
    except ModbusPollerError as exc:
        raise PollPlanError(bus.id, f"{where}: {exc.reason}") from exc
    turnaround_ms = device.profile.get("turnaround_ms", 0) or 0
    if not isinstance(turnaround_ms, (int, float)) or turnaround_ms < 0:
        raise PollPlanError(bus.id, f"{where}: turnaround_ms {turnaround_ms!r} must be >= 0")
    try:
        read_plan = plan_reads(
            [(r.table, r.address, r.count) for r in registers],
            max_gap=_quirk_int(device, bus, "max_gap") or 0,
            max_quantity=_max_quantity(device, bus),
            one_register_per_request=bool(device.profile.get("one_register_per_request", False)),
        )
    except ModbusPlanError as exc:
        raise PollPlanError(bus.id, f"{where}: {exc}") from exc
    turnaround_us = turnaround_ms * 1000.0
    bus_time_us = None
    if isinstance(bus, SerialBus):
        _check_line(device, bus)
        bus_time_us = plan_bus_time_us(read_plan, bus.baud, bus.framing, turnaround_us)
        longest = max(transaction_time_us(_REQUEST_LENGTH, r.response_length(), bus.baud,
                                          bus.framing, turnaround_us) for r in read_plan.reads)
        if longest > bus.timeout_s * 1e6:
            raise PollPlanError(bus.id, f"{where}: its longest read takes {longest / 1000:.1f} ms "
                                        f"on the wire, longer than the {bus.timeout_s * 1000:g} ms "
                                        f"reply timeout: raise timeout_s")
    return DevicePlan(device, registers, status, read_plan, turnaround_us, bus_time_us)


def plan_bus(bus: Bus, devices: Sequence[PolledDevice]) -> BusPlan:
    """The poll plan of `devices` on `bus`, refused (PollPlanError) when it cannot work: duplicate
    device ids or addresses, a device that does not speak the bus's line, or a cycle slower than
    the shortest poll interval (PollPlanTooSlowError, saying by how much)."""
    if isinstance(bus, SerialBus):
        if not isinstance(bus.baud, int) or bus.baud <= 0:
            raise PollPlanError(bus.id, f"baud {bus.baud!r} must be a positive int")
        try:
            char_bits(bus.framing)
        except ValueError as exc:
            raise PollPlanError(bus.id, str(exc)) from exc
    if not bus.timeout_s > 0:
        raise PollPlanError(bus.id, f"timeout_s {bus.timeout_s!r} must be a positive number")
    if not devices:
        raise PollPlanError(bus.id, "has no devices to poll")
    ids: set[str] = set()
    addresses: dict[int, str] = {}
    for device in devices:
        if device.id in ids:
            raise PollPlanError(bus.id, f"device id {device.id} appears twice")
        ids.add(device.id)
        if device.address in addresses:
            raise PollPlanError(bus.id, f"devices {addresses[device.address]} and {device.id} "
                                        f"share address {device.address}: give each its own")
        addresses[device.address] = device.id
    plans = tuple(plan_device(d, bus) for d in devices)
    if not isinstance(bus, SerialBus):
        return BusPlan(bus, plans, None)
    cycle_us = sum(p.bus_time_us or 0.0 for p in plans)
    shortest = min(plans, key=lambda p: p.device.poll_ms)
    if cycle_us > shortest.device.poll_ms * 1000.0:
        raise PollPlanTooSlowError(
            bus.id, line=bus.line, needed_ms=cycle_us / 1000.0,
            interval_ms=shortest.device.poll_ms, device=shortest.device.id,
            devices=[p.device.id for p in plans])
    return BusPlan(bus, plans, cycle_us)
