"""One Modbus bus at work: its pymodbus client, its devices' schedule, backoff and counters, and
the samples each poll yields (the machinery behind gateway.modbus_poller.ModbusPoller).

One pymodbus client per bus (RTU over a serial port, or Modbus TCP); a bus is one conversation at a
time, so its devices take turns. Each device is due on its own grid (start + k · interval): a late
poll does not push the next one back (no drift), and a poll more than a whole interval late skips
the missed slots (counted as overruns) instead of bursting.

Quality travels with every sample (DESIGN.md "Quality"): a read answered with an exception gives
modbus_fault(code), no answer FAULT_TIMEOUT, a garbled answer FAULT_CHECKSUM or FAULT_FRAMING, a
device in backoff or a bus that cannot connect FAULT_UNAVAILABLE; then the value is None, never a
number. A poll stops at its first unanswered read (the rest of its reads are FAULT_UNAVAILABLE), so
a dead unit costs the bus one timeout per attempt, and per-device backoff (poll_backoff.py) makes
the attempts rare. Times are UTC milliseconds from the gateway's clock, taken at each response.

pymodbus drops a reply whose CRC fails and then times out; its `trace_packet` hook shows us the
bytes that did arrive, so a reply that came but was garbled is told apart from silence. It also
sends the next request the moment a reply is in, so on a serial bus the runner keeps t3.5 of
silence between transactions itself. A reply arriving after its timeout cannot pass for the next
request's: pymodbus checks the unit and the runner checks the register count.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gateway.poll_backoff import BackoffPolicy, DeviceBackoff
from gateway.poll_plan import Bus, BusPlan, DevicePlan, SerialBus
from gateway.register_values import Value, decode_channels, status_fault
from protocols.batch_codes import (
    FAULT_CHECKSUM, FAULT_FRAMING, FAULT_SENSOR, FAULT_TIMEOUT, FAULT_UNAVAILABLE, modbus_fault)
from protocols.crc import crc16_modbus
from protocols.modbus_plan import PlannedRead
from protocols.modbus_rtu import t35_us

log = logging.getLogger(__name__)

_EXCEPTION_LENGTH = 5  # unit, function | 0x80, code, CRC


class Sample(NamedTuple):
    """One reading: a number and fault None, or value None and the fault code that says why."""

    device: str
    stream: str
    utc_ms: int
    value: Value | None
    fault: int | None


@dataclass
class DeviceCounters:
    """Health of one device. Request outcomes: ok (data), exceptions, timeouts, crc_errors,
    framing_errors, connection_errors. Polls: polls attempted, skipped (backoff), overruns (slots
    missed because the bus was busy). State: in_backoff, backoff_s, consecutive_failures and
    backoffs (times it went into backoff)."""

    requests: int = 0
    ok: int = 0
    exceptions: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    framing_errors: int = 0
    connection_errors: int = 0
    polls: int = 0
    skipped: int = 0
    overruns: int = 0
    in_backoff: bool = False
    backoff_s: float = 0.0
    consecutive_failures: int = 0
    backoffs: int = 0


@dataclass
class _ReadResult:
    values: list[int] | None
    fault: int | None
    utc_ms: int
    answered: bool  # the device answered, with data or an exception: it is alive


@dataclass
class DeviceState:
    plan: DevicePlan
    backoff: DeviceBackoff
    counters: DeviceCounters = field(default_factory=DeviceCounters)


class _ReplyWatch:
    """The bytes pymodbus received since the last request (its trace_packet hook), to name why a
    request that raised ModbusIOException failed."""

    def __init__(self, *, rtu: bool) -> None:
        self.rtu = rtu
        self.first = b""

    def arm(self) -> None:
        self.first = b""

    def trace_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus passes its whole unconsumed receive buffer, growing as bytes arrive, and empties
        # it when its framer throws a frame away; keep the first reply's bytes.
        if not sending and data and (not self.first or data.startswith(self.first)):
            self.first = bytes(data)
        return data

    def fault(self, read: PlannedRead) -> int:
        rx = self.first
        if not rx:
            return FAULT_TIMEOUT
        if not self.rtu or len(rx) < 2:
            return FAULT_FRAMING
        length = _EXCEPTION_LENGTH if rx[1] == read.function | 0x80 else read.response_length()
        if len(rx) >= length and crc16_modbus(rx[:length]) != 0:
            return FAULT_CHECKSUM
        return FAULT_FRAMING


def _client(bus: Bus, watch: _ReplyWatch) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
    # retries=0: one request is one attempt, so a dead unit costs one timeout; backoff retries.
    # reconnect_delay=0: no background reconnect loop; a request on a closed link reconnects.
    if isinstance(bus, SerialBus):
        framing = bus.framing.upper() if bus.apply_framing else "8N1"
        return AsyncModbusSerialClient(
            bus.port, baudrate=bus.baud, bytesize=8, parity=framing[1], stopbits=int(framing[2]),
            timeout=bus.timeout_s, retries=0, reconnect_delay=0, name=bus.id,
            trace_packet=watch.trace_packet)
    return AsyncModbusTcpClient(
        bus.host, port=bus.port, timeout=bus.timeout_s, retries=0, reconnect_delay=0,
        name=bus.id, trace_packet=watch.trace_packet)


def _utc_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


class BusRunner:
    """One bus: its client, its devices' states and the schedule that takes them in turn."""

    def __init__(self, plan: BusPlan, *, backoff: BackoffPolicy, clock: Callable[[], float]) -> None:
        self.plan = plan
        self.clock = clock
        self.watch = _ReplyWatch(rtu=isinstance(plan.bus, SerialBus))
        self.client = _client(plan.bus, self.watch)
        self.lock = asyncio.Lock()  # one conversation on the bus at a time
        self.states = [DeviceState(p, DeviceBackoff(backoff)) for p in plan.devices]
        # Modbus serial line spec §2.5.1.1: frames are separated by t3.5 of silence, and pymodbus
        # sends a request as soon as the previous reply is in; keep the gap ourselves (the plan's
        # bus time already counts it).
        bus = plan.bus
        self.gap_s = t35_us(bus.baud, bus.framing) / 1e6 if isinstance(bus, SerialBus) else 0.0
        self.quiet_from = 0.0

    async def connect(self) -> None:
        if not await self.client.connect():
            # Not fatal: every request retries the connection and reports FAULT_UNAVAILABLE.
            log.warning("modbus bus %s (%s) did not connect; polls will retry", self.plan.bus.id,
                        self.plan.bus.line)

    def close(self) -> None:
        self.client.close()

    async def run(self, stop: asyncio.Event, emit: Callable[[list[Sample]], None]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        due = [(start, i) for i in range(len(self.states))]
        heapq.heapify(due)
        while not stop.is_set():
            when, i = due[0]
            delay = when - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                continue
            heapq.heappop(due)
            state = self.states[i]
            emit(await self.poll(state, force=False))
            interval = state.plan.interval_s
            when += interval
            behind = loop.time() - when
            if behind >= interval:  # a whole slot missed: skip it rather than burst
                missed = int(behind // interval)
                when += missed * interval
                state.counters.overruns += missed
            heapq.heappush(due, (when, i))

    async def poll(self, state: DeviceState, *, force: bool) -> list[Sample]:
        async with self.lock:
            loop = asyncio.get_running_loop()
            if not force and state.backoff.should_skip(loop.time()):
                state.counters.skipped += 1
                utc = _utc_ms(self.clock)
                return self._samples(state, [
                    _ReadResult(None, FAULT_UNAVAILABLE, utc, False) for _ in state.plan.reads])
            state.counters.polls += 1
            results: list[_ReadResult] = []
            for read in state.plan.reads:
                if results and not results[-1].answered:
                    # The unit did not answer: spend no more timeouts on it this poll.
                    results.append(_ReadResult(None, FAULT_UNAVAILABLE, results[-1].utc_ms, False))
                else:
                    results.append(await self._read(state, read))
            device = state.plan.device
            if any(r.answered for r in results):
                if state.backoff.succeeded():
                    log.info("modbus device %s on bus %s answers again", device.id,
                             self.plan.bus.id)
            elif state.backoff.failed(loop.time()):
                log.warning("modbus device %s (address %d) on bus %s did not answer %d polls in a "
                            "row: polling it every %.1f s at most until it does", device.id,
                            device.address, self.plan.bus.id, state.backoff.consecutive_failures,
                            state.backoff.window_s)
            return self._samples(state, results)

    def _call(self, read: PlannedRead, unit: int) -> Awaitable[ModbusPDU]:
        c = self.client
        fn = {"coil": c.read_coils, "discrete": c.read_discrete_inputs,
              "holding": c.read_holding_registers, "input": c.read_input_registers}[read.table]
        return fn(read.start, count=read.count, device_id=unit)

    async def _read(self, state: DeviceState, read: PlannedRead) -> _ReadResult:
        loop = asyncio.get_running_loop()
        wait = self.quiet_from - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            return await self._exchange(state, read)
        finally:
            self.quiet_from = loop.time() + self.gap_s

    async def _exchange(self, state: DeviceState, read: PlannedRead) -> _ReadResult:
        counters = state.counters
        counters.requests += 1
        self.watch.arm()
        try:
            reply = await self._call(read, state.plan.device.address)
        except ConnectionException:
            counters.connection_errors += 1
            return _ReadResult(None, FAULT_UNAVAILABLE, _utc_ms(self.clock), False)
        except ModbusIOException:
            fault = self.watch.fault(read)
            if fault == FAULT_TIMEOUT:
                counters.timeouts += 1
            elif fault == FAULT_CHECKSUM:
                counters.crc_errors += 1
            else:
                counters.framing_errors += 1
            return _ReadResult(None, fault, _utc_ms(self.clock), False)
        except ModbusException:  # a reply pymodbus could not make sense of
            counters.framing_errors += 1
            return _ReadResult(None, FAULT_FRAMING, _utc_ms(self.clock), False)
        utc = _utc_ms(self.clock)
        if reply.isError():
            code = getattr(reply, "exception_code", 0)
            if isinstance(code, int) and 1 <= code <= 0xFF:
                counters.exceptions += 1
                return _ReadResult(None, modbus_fault(code), utc, True)
            counters.framing_errors += 1
            return _ReadResult(None, FAULT_FRAMING, utc, True)
        if read.table in ("coil", "discrete"):
            values = [1 if b else 0 for b in (reply.bits or [])[:read.count]]
        else:
            values = list(reply.registers or [])
        if len(values) != read.count:
            counters.framing_errors += 1
            return _ReadResult(None, FAULT_FRAMING, utc, True)
        counters.ok += 1
        return _ReadResult(values, None, utc, True)

    def _samples(self, state: DeviceState, results: list[_ReadResult]) -> list[Sample]:
        plan = state.plan
        device = plan.device.id
        words_of = plan.read_plan.extract([r.values for r in results])
        sensor_fault = None
        status_register = None
        if plan.status is not None:
            status_register = plan.status.register
            words = words_of[plan.registers.index(status_register)]
            if words is not None:  # an unreadable status says nothing about the values
                sensor_fault, _bits = status_fault(plan.status, words)
        out: list[Sample] = []
        for i, spec in enumerate(plan.registers):
            used = [results[read_index] for read_index, _, _ in plan.read_plan.segments(i)]
            utc = max(r.utc_ms for r in used)
            words = words_of[i]
            names = spec.stream_names(device)
            if words is None:
                fault = next(r.fault for r in used if r.values is None)
                out.extend(Sample(device, name, utc, None, fault) for name in names)
                continue
            for name, (value, fault) in zip(names, decode_channels(spec, words)):
                if sensor_fault is not None and spec is not status_register and fault is None:
                    value, fault = None, FAULT_SENSOR
                out.append(Sample(device, name, utc, value, fault))
        return out
