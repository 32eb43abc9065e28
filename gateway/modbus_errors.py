"""The Modbus poller's error hierarchy: each error names the place and says what to do, in a sentence.

ModbusPollerError      anything the poller cannot do; `reason` is the sentence
  ProfileError         a device profile's register map cannot be read (`profile`, `register`, `key`)
  PollPlanError        a bus's poll plan cannot work (`bus`): duplicate ids or addresses, a baud
                       rate or framing the device does not list, a profile with no registers
    PollPlanTooSlowError  one poll cycle needs more bus time than the shortest poll interval
                       (`needed_ms`, `interval_ms`, `device`, `devices`)
"""

from __future__ import annotations

from collections.abc import Sequence


class ModbusPollerError(Exception):
    """The Modbus poller could not do what was asked; `reason` is one sentence saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ProfileError(ModbusPollerError):
    """Register `register` of profile `profile` has a `key` the poller cannot honour."""

    def __init__(self, profile: str, register: str | None, key: str | None, problem: str) -> None:
        self.profile = profile
        self.register = register
        self.key = key
        where = f"profile {profile}"
        if register is not None:
            where += f", register {register}"
        if key is not None:
            where += f", key {key}"
        super().__init__(f"{where}: {problem}")


class PollPlanError(ModbusPollerError):
    """The poll plan of bus `bus` cannot work as configured."""

    def __init__(self, bus: str, problem: str) -> None:
        self.bus = bus
        super().__init__(f"bus {bus}: {problem}")


class PollPlanTooSlowError(PollPlanError):
    """One poll cycle of every device on the bus takes `needed_ms` of wire time, more than the
    `interval_ms` poll interval of `device`, the shortest on the bus."""

    def __init__(
        self,
        bus: str,
        *,
        line: str,
        needed_ms: float,
        interval_ms: float,
        device: str,
        devices: Sequence[str],
    ) -> None:
        self.bus = bus
        self.needed_ms = needed_ms
        self.interval_ms = interval_ms
        self.device = device
        self.devices = tuple(devices)
        self.shortfall_ms = needed_ms - interval_ms
        ModbusPollerError.__init__(
            self,
            f"bus {bus} at {line} needs {needed_ms:.1f} ms per cycle for devices "
            f"{', '.join(self.devices)}; the {interval_ms:g} ms poll interval of {device} leaves "
            f"{self.shortfall_ms:.1f} ms too little: raise the baud rate, lengthen the interval "
            f"or move a device to another bus",
        )
