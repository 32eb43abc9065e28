"""Emulated Modbus field devices on pymodbus's server: SenseAir S8, a generic profile-driven sensor
and a loop detector card, with the register map laid out from each device's profile JSON.

    truth = GroundTruthLog(path, clock=clock)
    s8 = SenseAirS8(co2=[(0, 420), (60, 800)], clock=clock, truth=truth)
    async with VirtualWire(baud=9600, framing="8N1") as wire, \\
            ModbusDeviceServer([s8], port=wire.b_path, baud=9600):
        ...  # a master opens wire.a_path

A device model answers every request that reaches it through pymodbus's simulator `action=` hook
(the register blocks pymodbus holds are only a shape; values come from the model at reply time):
it waits its turnaround time, applies injected exceptions, refuses addresses outside its map with
exception 02 (gaps inside the map read as 0, as real devices commonly fill them, so a read planner
may merge across them) and reads longer than the profile's max_registers_per_request (or than one
register, with one_register_per_request) with exception 03, and logs every value it serves. A silent unit, an unknown unit and a
broadcast are dropped in the server's trace_pdu hook before pymodbus decides anything: pymodbus
would otherwise answer a missing unit with exception 04, where a real bus stays quiet.

Limits: a read starting beyond a table's block (the map plus one maximal request) gets pymodbus's
own exception 02 without turnaround; broadcasts (unit 0) are ignored rather than applied.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import heapq
import itertools
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.emulators.ground_truth import Clock, GroundTruthLog, MonotonicClock

__all__ = [
    "GenericModbusSensor", "LoopCard", "ModbusDevice", "ModbusDeviceServer", "ModbusEmulatorError",
    "ProfileLayoutError", "SenseAirS8", "Series", "ServerError", "encode_value", "load_profile",
    "series_value",
]

PROFILE_DIR = Path(__file__).resolve().parents[2] / "profiles"
ANY_ADDRESS = 0xFE  # REFERENCE.md §4: the S8 answers this as well as its own address
MAX_READ = 125  # registers in one read (Modbus application protocol, fc 03/04)
_WORDS = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}
_INT_RANGE = {"u16": (0, 0xFFFF), "i16": (-0x8000, 0x7FFF), "u32": (0, 0xFFFFFFFF),
              "i32": (-0x80000000, 0x7FFFFFFF)}
READ_FCS = (3, 4, 23)
_FC_TABLE = {3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding", 4: "input"}
TABLES = ("holding", "input")

Series = float | int | Sequence[tuple[float, float]] | Callable[[float], float]


class ModbusEmulatorError(Exception):
    """Base of the Modbus emulators' errors."""


class ProfileLayoutError(ModbusEmulatorError, ValueError):
    """A profile cannot be laid out as registers: `profile`, the `key` at fault and why."""

    def __init__(self, profile: str, key: str, reason: str) -> None:
        self.profile = profile
        self.key = key
        self.reason = reason
        super().__init__(f"profile {profile}, {key}: {reason}")


class ServerError(ModbusEmulatorError):
    """The device server cannot run: `where` (port or unit) and a one-sentence `reason`."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"modbus device server on {where}: {reason}")


def load_profile(profile: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A profile as a dict: given as one, as a path, or as a name in profiles/ ("senseair-s8")."""
    if isinstance(profile, Mapping):
        return dict(profile)
    path = Path(profile)
    if not path.suffix:
        path = PROFILE_DIR / f"{profile}.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ProfileLayoutError(str(profile), "file", f"cannot be read as JSON ({exc})") from exc


def series_value(series: Series, t_s: float) -> float:
    """A series' value at `t_s` seconds: a constant, a callable of t, or (t, value) points held
    from each point to the next (the first value before it starts)."""
    if isinstance(series, (int, float)):
        return series
    if callable(series):
        return series(t_s)
    points = list(series)
    if not points:
        raise ValueError("a value series needs at least one (t, value) point")
    times = [p[0] for p in points]
    return points[max(0, bisect.bisect_right(times, t_s) - 1)][1]


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def encode_value(entry: Mapping[str, Any], value: float) -> tuple[list[int], float | int]:
    """The register words that carry `value` for a profile entry (type, scale, byte and word
    order), and the number they really represent after quantising. Integers saturate at their
    type's range, as a device clamps an out-of-range reading."""
    kind = entry.get("type", "u16")
    if kind == "f32":
        packed = struct.pack(">f", float(value))
        hi, lo = struct.unpack(">HH", packed)
        words = [hi, lo]
        represented: float | int = struct.unpack(">f", packed)[0]
    else:
        scale = entry.get("scale", 1)
        low, high = _INT_RANGE[kind]
        raw = min(high, max(low, round(value / scale)))
        represented = raw if scale == 1 else round(raw * scale, 10)
        raw &= 0xFFFFFFFF if _WORDS[kind] == 2 else 0xFFFF
        words = [raw >> 16, raw & 0xFFFF] if _WORDS[kind] == 2 else [raw]
    if len(words) == 2 and entry.get("word_order", "big") == "little":
        words.reverse()
    if entry.get("byte_order", "big") == "little":
        words = [_swap(w) for w in words]
    return words, represented


@dataclass
class _InjectedException:
    code: int
    table: str | None
    address: int | None
    until_us: int | None
    replies_left: int | None

    def matches(self, table: str, address: int, count: int, now_us: int) -> bool:
        if self.until_us is not None and now_us >= self.until_us:
            return False
        if self.table is not None and self.table != table:
            return False
        return self.address is None or address <= self.address < address + count


class ModbusDevice:
    """One emulated unit, its register map laid out from its profile. Subclasses give each
    profile register's live value (`value_of`) and any registers the profile leaves out
    (`extra_words`); writes are refused (exception 02) unless `write_words` is overridden."""

    def __init__(
        self,
        *,
        profile: str | Path | Mapping[str, Any],
        unit: int,
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        source: str | None = None,
        turnaround_s: float | None = None,
        any_address: bool | None = None,
    ) -> None:
        self.profile = load_profile(profile)
        self.name = str(self.profile.get("profile", "?"))
        if not 1 <= unit <= 247:
            raise ProfileLayoutError(self.name, "unit", f"{unit} is not a device address 1..247")
        self.unit = unit
        self.clock: Clock = clock if clock is not None else (truth.clock if truth is not None else MonotonicClock())
        self.truth = truth if truth is not None else GroundTruthLog(clock=self.clock)
        self.source = source or f"{self.name}@{unit}"
        # The profile owns the device's timing quirks (DESIGN.md): its turnaround unless overridden.
        self.turnaround_s = (self.profile.get("turnaround_ms", 0) / 1000 if turnaround_s is None
                             else turnaround_s)
        self.any_address = bool(self.profile.get("any_address", False) if any_address is None
                                else any_address)
        self.max_registers = (1 if self.profile.get("one_register_per_request")
                              else int(self.profile.get("max_registers_per_request", MAX_READ)))
        self.t0_us = self.clock.now_us()
        self.entries: list[dict[str, Any]] = []
        self._span: dict[str, tuple[int, int]] = {}
        self._layout()
        self._exceptions: list[_InjectedException] = []
        self._silent_until: int | None = None  # -1 = until resume()
        self.requests = 0

    # -- layout ------------------------------------------------------------------------------

    def _layout(self) -> None:
        used: dict[str, dict[int, str]] = {t: {} for t in TABLES}
        for entry in self.profile.get("registers", ()):
            name = str(entry.get("name", "?"))
            table, kind = entry.get("table", "holding"), entry.get("type", "u16")
            if table not in TABLES:
                raise ProfileLayoutError(self.name, f"registers.{name}.table", f"{table!r} is not holding or input")
            if kind not in _WORDS:
                raise ProfileLayoutError(self.name, f"registers.{name}.type", f"{kind!r} is not one of {sorted(_WORDS)}")
            start = int(entry["address"])
            for a in range(start, start + _WORDS[kind] * int(entry.get("channels", 1))):
                if a in used[table]:
                    raise ProfileLayoutError(self.name, f"registers.{name}",
                                             f"{table} register {a} is also {used[table][a]}")
                used[table][a] = name
            self.entries.append(dict(entry))
        for command in self.profile.get("commands", {}).values():
            used[command.get("table", "holding")].setdefault(int(command["address"]), "command")
        for table in TABLES:
            addresses = list(used[table]) + list(self.extra_addresses(table))
            if addresses:
                self._span[table] = (min(addresses), max(addresses))

    def simdata(self) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
        """pymodbus blocks (coils, discrete inputs, holding, input): each register table covers its
        map plus one maximal read, so every read that starts in the map reaches the action hook."""
        def registers(table: str) -> list[SimData]:
            hi = self._span.get(table, (0, 0))[1]
            return [SimData(address=0, count=hi + MAX_READ, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        return bits, list(bits), registers("holding"), registers("input")

    @property
    def units(self) -> tuple[int, ...]:
        """The addresses this device answers."""
        return (self.unit, ANY_ADDRESS) if self.any_address else (self.unit,)

    # -- what subclasses provide -------------------------------------------------------------

    def value_of(self, entry: Mapping[str, Any], channel: int, now_us: int) -> float:
        """The live value of a profile register (channel 0 unless the entry has channels)."""
        return 0

    def extra_addresses(self, table: str) -> tuple[int, ...]:
        """Registers the device has beyond its profile's (fixed when the map is laid out)."""
        return ()

    def extra_words(self, table: str, now_us: int) -> dict[int, int]:
        """The live words of extra_addresses(), address -> word."""
        return {}

    def write_words(self, table: str, address: int, values: list[int], now_us: int) -> int | None:
        """Apply a write; an exception code refuses it."""
        return int(ExcCodes.ILLEGAL_ADDRESS)

    async def start(self) -> None:
        """Called by the server before it listens (background tasks start here)."""

    async def stop(self) -> None:
        """Called by the server after it stopped."""

    # -- reading the map ---------------------------------------------------------------------

    def t_s(self, now_us: int) -> float:
        """Seconds since the device was made: the time axis of its value series."""
        return (now_us - self.t0_us) / 1e6

    def table_words(self, table: str, now_us: int) -> tuple[dict[int, int], dict[str, Any]]:
        """Every mapped word of a table now, and each entry's represented value(s) by name."""
        words = dict(self.extra_words(table, now_us))
        values: dict[str, Any] = {}
        for entry in self.entries:
            if entry.get("table", "holding") != table:
                continue
            step = _WORDS[entry.get("type", "u16")]
            channels = int(entry.get("channels", 1))
            shown = []
            for ch in range(channels):
                w, represented = encode_value(entry, self.value_of(entry, ch, now_us))
                for i, word in enumerate(w):
                    words[int(entry["address"]) + ch * step + i] = word
                shown.append(represented)
            values[entry["name"]] = shown if "channels" in entry else shown[0]
        return words, values

    def _served_values(self, table: str, address: int, count: int, values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for entry in self.entries:
            start = int(entry["address"])
            size = _WORDS[entry.get("type", "u16")] * int(entry.get("channels", 1))
            if entry.get("table", "holding") == table and address <= start and start + size <= address + count:
                out[entry["name"]] = values[entry["name"]]
        return out

    # -- faults ------------------------------------------------------------------------------

    def inject_exception(self, code: int = 4, *, table: str | None = None, address: int | None = None,
                         duration_s: float | None = None, replies: int | None = None) -> None:
        """Answer requests with exception `code` (04 server device failure by default): only those
        to `table` / touching register `address` when given, for `duration_s` seconds or `replies`
        replies when given, else until clear_exceptions()."""
        ExcCodes(code)  # raises ValueError for a code Modbus does not define
        if table is not None and table not in TABLES:
            raise ValueError(f"table must be one of {TABLES}, not {table!r}")
        until = None if duration_s is None else self.clock.now_us() + round(duration_s * 1e6)
        self._exceptions.append(_InjectedException(code, table, address, until, replies))
        self.truth.record(self.source, "fault", fault="exception", code=code, table=table,
                          address=address, duration_s=duration_s, replies=replies)

    def clear_exceptions(self) -> None:
        self._exceptions.clear()
        self.truth.record(self.source, "fault", fault="exceptions_cleared")

    def go_silent(self, *, duration_s: float | None = None) -> None:
        """A dead unit: no reply at all, for `duration_s` seconds or until resume()."""
        self._silent_until = -1 if duration_s is None else self.clock.now_us() + round(duration_s * 1e6)
        self.truth.record(self.source, "fault", fault="silent", duration_s=duration_s)

    def resume(self) -> None:
        self._silent_until = None
        self.truth.record(self.source, "fault", fault="resumed")

    def silent(self) -> bool:
        until = self._silent_until
        return until is not None and (until == -1 or self.clock.now_us() < until)

    def _injected(self, table: str, address: int, count: int, now_us: int) -> int | None:
        for rule in self._exceptions:
            if rule.matches(table, address, count, now_us):
                if rule.replies_left is not None:
                    rule.replies_left -= 1
                    if rule.replies_left <= 0:
                        self._exceptions.remove(rule)
                return rule.code
        return None

    # -- serving (pymodbus's action hook) ----------------------------------------------------

    async def handle(self, unit: int, fc: int, start: int, address: int, count: int,
                     registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        """Answer one request: wait the turnaround, then fill `registers` or refuse."""
        now = self.clock.now_us()
        table = _FC_TABLE.get(fc)
        if set_values is None and fc not in READ_FCS and table is not None:
            # pymodbus reads back what a write just stored, to echo it: part of the same reply.
            words, _ = self.table_words(table, now)
            registers[address - start:address - start + count] = [
                words.get(a, 0) for a in range(address, address + count)]
            return None
        self.requests += 1
        if self.turnaround_s > 0:
            await asyncio.sleep(self.turnaround_s)
            now = self.clock.now_us()
        where = {"unit": unit, "fc": fc, "address": address, "count": count}
        if table is None:
            return self._refuse(ExcCodes.ILLEGAL_FUNCTION, now, where, injected=False)
        code = self._injected(table, address, count, now)
        if code is not None:
            return self._refuse(ExcCodes(code), now, where, injected=True)
        span = self._span.get(table)
        if span is None or address < span[0] or address + count - 1 > span[1]:
            return self._refuse(ExcCodes.ILLEGAL_ADDRESS, now, where, injected=False)
        if count > self.max_registers:  # the profile's per-request limit, as the device enforces it
            return self._refuse(ExcCodes.ILLEGAL_VALUE, now, where, injected=False)
        if set_values is not None:
            values = [int(v) for v in set_values]
            code = self.write_words(table, address, values, now)
            if code:
                return self._refuse(ExcCodes(code), now, where, injected=False)
            self.truth.record(self.source, "write", t_us=now, table=table, words=values, **where)
            return None
        words, named = self.table_words(table, now)
        out = [words.get(a, 0) for a in range(address, address + count)]
        registers[address - start:address - start + count] = out
        self.truth.record(self.source, "served", t_us=now, table=table, words=out,
                          values=self._served_values(table, address, count, named), **where)
        return None

    def _refuse(self, code: ExcCodes, now: int, where: dict[str, int], *, injected: bool) -> ExcCodes:
        self.truth.record(self.source, "exception", t_us=now, code=int(code), injected=injected, **where)
        return code


class GenericModbusSensor(ModbusDevice):
    """Any sensor profile's value registers (u16/i16/u32/i32/f32, scale, byte and word order) fed
    from series by register name; an entry with "channels" takes a list of one series a channel.
    A register without a series reads 0."""

    def __init__(
        self,
        *,
        values: Mapping[str, Series | Sequence[Series]],
        profile: str | Path | Mapping[str, Any] = "generic-modbus-sensor",
        unit: int = 1,
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        source: str | None = None,
        turnaround_s: float | None = None,
        any_address: bool | None = None,
    ) -> None:
        super().__init__(profile=profile, unit=unit, clock=clock, truth=truth, source=source,
                         turnaround_s=turnaround_s, any_address=any_address)
        names = {e["name"] for e in self.entries}
        unknown = set(values) - names
        if unknown:
            raise ProfileLayoutError(self.name, "values", f"no register named {sorted(unknown)}")
        self.values: dict[str, Any] = dict(values)

    def set_value(self, name: str, series: Series | Sequence[Series]) -> None:
        """Replace one register's series from now on."""
        if name not in {e["name"] for e in self.entries}:
            raise ProfileLayoutError(self.name, "values", f"no register named {name!r}")
        self.values[name] = series
        self.truth.record(self.source, "set", name=name)

    def value_of(self, entry: Mapping[str, Any], channel: int, now_us: int) -> float:
        series = self.values.get(entry["name"], 0)
        if "channels" in entry and isinstance(series, (list, tuple)):
            series = series[channel] if channel < len(series) else 0
        return series_value(series, self.t_s(now_us))


# SenseAir S8 registers its profile does not list (REFERENCE.md §4), PDU address = IRn/HRn - 1.
S8_ALARM_STATUS, S8_OUTPUT_STATUS, S8_PWM, S8_FIRMWARE, S8_SENSOR_ID = 1, 2, 21, 28, 29
S8_ACK, S8_COMMAND, S8_ABC_PERIOD = 0, 1, 31
S8_BACKGROUND_CALIBRATION = 0x7C06
S8_ACK_CALIBRATED = 1 << 5  # HR1 bit 5: background calibration done (unverified)
S8_PWM_FULL_SCALE = (2000, 0x3FFF)  # ppm at 100 % PWM, register value at 100 % (unverified)


class SenseAirS8(GenericModbusSensor):
    """SenseAir S8: CO₂ from a series on IR4, an injectable meter status on IR1, answering its own
    address and 0xFE; background calibration (HR2 = 0x7C06) sets the HR1 acknowledgement bit."""

    def __init__(
        self,
        *,
        co2: Series = 400,
        meter_status: int = 0,
        unit: int = 0x68,  # the S8's factory address (unverified); 0xFE reaches it anyway
        sensor_id: int = 0x00A1B2C3,
        firmware: int = 0x0103,
        profile: str | Path | Mapping[str, Any] = "senseair-s8",
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        source: str | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        self.holding = {S8_ACK: 0, S8_COMMAND: 0, S8_ABC_PERIOD: 180}
        self.sensor_id = sensor_id
        self.firmware = firmware
        super().__init__(values={"co2_ppm": co2, "meter_status": meter_status}, profile=profile,
                         unit=unit, clock=clock, truth=truth, source=source or "s8",
                         turnaround_s=turnaround_s)

    def set_meter_status(self, bits: int) -> None:
        """Set IR1's fault bits (0 fatal, 1 offset regulation, ... 6 memory)."""
        self.values["meter_status"] = bits & 0xFFFF
        self.truth.record(self.source, "status", meter_status=bits & 0xFFFF)

    def extra_addresses(self, table: str) -> tuple[int, ...]:
        if table == "holding":
            return (S8_ACK, S8_COMMAND, S8_ABC_PERIOD)
        return (S8_ALARM_STATUS, S8_OUTPUT_STATUS, S8_PWM, S8_FIRMWARE, S8_SENSOR_ID, S8_SENSOR_ID + 1)

    def extra_words(self, table: str, now_us: int) -> dict[int, int]:
        if table == "holding":
            return dict(self.holding)
        co2 = series_value(self.values.get("co2_ppm", 0), self.t_s(now_us))
        ppm, full = S8_PWM_FULL_SCALE
        return {S8_ALARM_STATUS: 0, S8_OUTPUT_STATUS: 0,
                S8_PWM: max(0, min(full, round(co2 * full / ppm))),
                S8_FIRMWARE: self.firmware,
                S8_SENSOR_ID: self.sensor_id >> 16, S8_SENSOR_ID + 1: self.sensor_id & 0xFFFF}

    def write_words(self, table: str, address: int, values: list[int], now_us: int) -> int | None:
        if table != "holding" or any(a not in self.holding for a in range(address, address + len(values))):
            return int(ExcCodes.ILLEGAL_ADDRESS)
        for a, v in zip(itertools.count(address), values):
            self.holding[a] = v
            if a == S8_COMMAND and v == S8_BACKGROUND_CALIBRATION:
                self.holding[S8_ACK] |= S8_ACK_CALIBRATED
                self.truth.record(self.source, "command", t_us=now_us, command="background_calibration")
            elif a == S8_COMMAND:
                self.truth.record(self.source, "command", t_us=now_us, command="unknown", value=v)
        return None


class LoopCard(ModbusDevice):
    """A loop detector card over Modbus: presence and fault bitmaps and per-channel counters.
    Presence edges are scheduled with their exact time (channels numbered from 1) and take
    effect when the card's clock reaches it, so a read sees exactly the presence of its instant."""

    def __init__(
        self,
        *,
        profile: str | Path | Mapping[str, Any] = "loop-card-modbus",
        unit: int = 1,
        clock: Clock | None = None,
        truth: GroundTruthLog | None = None,
        source: str | None = None,
        turnaround_s: float | None = None,
    ) -> None:
        super().__init__(profile=profile, unit=unit, clock=clock, truth=truth,
                         source=source or "loop_card", turnaround_s=turnaround_s)
        self.channels = int(self.profile.get("channels", 8))
        self.presence = 0
        self.faults = 0
        self.counts = [0] * self.channels
        self._pending: list[tuple[int, int, int, bool]] = []
        self._order = itertools.count()

    def schedule_presence(self, channel: int, on: bool, t_us: int | None = None) -> None:
        """Channel `channel` (1-based) goes on/off at `t_us` (default now)."""
        if not 1 <= channel <= self.channels:
            raise ValueError(f"{self.source}: channel {channel} is not 1..{self.channels}")
        t = self.clock.now_us() if t_us is None else t_us
        heapq.heappush(self._pending, (t, next(self._order), channel, bool(on)))

    def set_fault(self, channel: int, faulted: bool) -> None:
        """Raise or clear a channel's loop fault (open or shorted loop)."""
        bit = 1 << (channel - 1)
        self.faults = (self.faults | bit) if faulted else (self.faults & ~bit)
        self.truth.record(self.source, "fault", fault="loop", channel=channel, faulted=faulted)

    def reset_counters(self) -> None:
        """The card rebooted: counters restart from 0."""
        self.counts = [0] * self.channels
        self.truth.record(self.source, "fault", fault="counters_reset")

    def advance(self, now_us: int | None = None) -> None:
        """Apply the scheduled edges due by `now_us` (default now)."""
        now = self.clock.now_us() if now_us is None else now_us
        while self._pending and self._pending[0][0] <= now:
            t, _, channel, on = heapq.heappop(self._pending)
            bit = 1 << (channel - 1)
            if on and not self.presence & bit:
                self.counts[channel - 1] += 1
            self.presence = (self.presence | bit) if on else (self.presence & ~bit)
            self.truth.record(self.source, "presence", t_us=t, channel=channel, on=on,
                              count=self.counts[channel - 1])

    def value_of(self, entry: Mapping[str, Any], channel: int, now_us: int) -> float:
        self.advance(now_us)
        role = entry.get("role")
        if role == "channel_bitmap":
            return self.presence
        if role == "channel_fault_bitmap":
            return self.faults
        if role == "channel_counter":
            bits = 16 * _WORDS[entry.get("type", "u16")]
            return self.counts[channel] % (1 << bits) if channel < self.channels else 0
        return 0


class ModbusDeviceServer:
    """Serves emulated devices on one bus through pymodbus: RTU on a serial port (a VirtualWire
    end) when `port` is given, else Modbus TCP on loopback (`rtu_over_tcp` frames it RTU, as a
    node's host-HAL UART would carry it). Use `async with`; `address` is "127.0.0.1:PORT"."""

    def __init__(
        self,
        devices: Sequence[ModbusDevice],
        *,
        port: str | None = None,
        baud: int = 9600,
        framing: str = "8N1",
        host: str = "127.0.0.1",
        tcp_port: int = 0,
        rtu_over_tcp: bool = False,
    ) -> None:
        """`framing` is what the serial port is opened with: a pty refuses parity, so on a
        VirtualWire open 8N1 and let the wire keep the real framing's character time."""
        self.devices = list(devices)
        self.port = port
        self.baud = baud
        self.framing = framing.upper()
        self.host = host
        self.tcp_port = tcp_port
        self.rtu_over_tcp = rtu_over_tcp
        self.unanswered = 0  # requests to no unit of this bus (or broadcast): nobody replies
        self._by_unit: dict[int, ModbusDevice] = {}
        where = port or f"{host}:{tcp_port}"
        for device in self.devices:
            for unit in device.units:
                if unit in self._by_unit:
                    raise ServerError(where, f"unit {unit} is both {self._by_unit[unit].source} and {device.source}")
                self._by_unit[unit] = device
        if len(self.framing) != 3 or self.framing[1] not in "NEO" or self.framing[2] not in "12":
            raise ServerError(where, f"framing {framing!r} is not like 8N1, 8E1, 8O1 or 8N2")
        self._server: ModbusSerialServer | ModbusTcpServer | None = None

    @property
    def address(self) -> str:
        if self._server is None or self.port is not None:
            raise ServerError(self.port or self.host, "has no TCP address (serial, or not started)")
        host, port = self._server.transport.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
        return f"{host}:{port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        sims = [SimDevice(id=unit, simdata=device.simdata(),
                          action=functools.partial(device.handle, unit))
                for unit, device in sorted(self._by_unit.items())]
        for device in self.devices:
            await device.start()
        if self.port is not None:
            self._server = ModbusSerialServer(
                sims, port=self.port, baudrate=self.baud, bytesize=int(self.framing[0]),
                parity=self.framing[1], stopbits=int(self.framing[2]), trace_pdu=self._trace_pdu)
        else:
            self._server = ModbusTcpServer(
                sims, address=(self.host, self.tcp_port), trace_pdu=self._trace_pdu,
                framer=FramerType.RTU if self.rtu_over_tcp else FramerType.SOCKET)
        try:
            await self._server.serve_forever(background=True)
        except RuntimeError as exc:
            await self.close()
            raise ServerError(self.port or f"{self.host}:{self.tcp_port}", f"cannot listen ({exc})") from exc

    async def close(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        for device in self.devices:
            await device.stop()

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        # Returning None for a received request makes pymodbus drop it unanswered: a dead unit,
        # a unit nobody on this bus has, a broadcast.
        if sending:
            return pdu
        device = self._by_unit.get(pdu.dev_id)
        if device is None:
            self.unanswered += 1
            return None  # type: ignore[return-value]
        if device.silent():
            device.truth.record(device.source, "silent", unit=pdu.dev_id, fc=pdu.function_code,
                                address=getattr(pdu, "address", None), count=getattr(pdu, "count", None))
            return None  # type: ignore[return-value]
        return pdu
