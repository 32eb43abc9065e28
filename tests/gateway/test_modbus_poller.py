"""The gateway's Modbus poller against pymodbus servers: Modbus TCP on loopback, and RTU through a
timed virtual wire (hil/wire.py, 19200 8E1). The servers count the requests they receive (their
trace_pdu hook) and play dead units by not answering, or corrupt replies on their way out."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.modbus_errors import ModbusPollerError
from gateway.modbus_poller import ModbusPoller, Sample
from gateway.poll_backoff import BackoffPolicy
from gateway.poll_plan import BusPlan, PolledDevice, SerialBus, TcpBus, plan_bus
from hil.wire import VirtualWire
from protocols.batch_codes import (
    FAULT_CHECKSUM, FAULT_FRAMING, FAULT_OUT_OF_RANGE, FAULT_SENSOR, FAULT_TIMEOUT,
    FAULT_UNAVAILABLE, modbus_fault)

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
SCATTERED = json.loads((PROFILES / "test-scattered-sensor.json").read_text())
GENERIC = json.loads((PROFILES / "generic-modbus-sensor.json").read_text())
SCATTERED_READS = 7  # tests/gateway/test_poll_plan.py shows which


def words(fmt: str, value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(fmt, value)))


# What the scattered sensor holds, encoded here with struct (not with the code under test), and
# what each stream must decode to. 0xDEAD sits in the gaps the planner reads across.
HOLDING = {
    0: words(">f", 21.53125)[1], 1: words(">f", 21.53125)[0],  # f32, low word first
    2: 523,  # humidity ×0.1
    10: 1, 11: 35789,  # u32 101325 ×0.01
    12: 0xDEAD, 13: 0xFFF1, 14: 0xDEAD, 15: 0xDEAD,  # i16 −15 ×0.1
    16: 270, 19: 1234,
    40: words(">i", -123456)[0], 41: words(">i", -123456)[1],
    42: 0x0201,  # bytes swapped: 0x0102
}
INPUTS = {0: 0, 1: 0xDEAD, 2: 0xDEAD, 3: 412, 50: 3, 51: 0, 52: 7, 53: 65535, 100: 3, 101: 62592}
EXPECTED = {
    "temperature_c": 21.53, "humidity_pct": 52.3, "pressure_hpa": 1013.25, "offset_c": -1.5,
    "wind_dir_deg": 270, "rain_mm": 123.4, "energy_wh": -123456, "firmware_build": 0x0102,
    "meter_status": 0, "co2_ppm": 412, "lane_count/1": 3, "lane_count/2": 0, "lane_count/3": 7,
    "lane_count/4": 65535, "uptime_s": 259200,
}
STREAMS = len(EXPECTED)


def _runs(cells: dict[int, Any]) -> list[tuple[int, list[Any]]]:
    out: list[tuple[int, list[Any]]] = []
    for address in sorted(cells):
        if out and out[-1][0] + len(out[-1][1]) == address:
            out[-1][1].append(cells[address])
        else:
            out.append((address, [cells[address]]))
    return out


def sim_device(unit: int, *, holding: dict[int, int] | None = None,
               inputs: dict[int, int] | None = None, coils: dict[int, bool] | None = None,
               discrete: dict[int, bool] | None = None) -> SimDevice:
    """A pymodbus simulator device with separate tables; addresses not given are unmapped
    (exception 02). Each table needs one block, so an empty one gets a far-away dummy."""
    def bits(cells: dict[int, bool] | None) -> list[SimData]:
        runs = _runs(cells or {60000: False})
        return [SimData(address=a, values=v, datatype=DataType.BITS) for a, v in runs]

    def registers(cells: dict[int, int] | None) -> list[SimData]:
        runs = _runs(cells or {60000: 0})
        return [SimData(address=a, values=v, datatype=DataType.REGISTERS) for a, v in runs]
    return SimDevice(id=unit, simdata=(bits(coils), bits(discrete), registers(holding),
                                       registers(inputs)))


@dataclass
class ServerLog:
    """The requests a server received, by unit; units in `dead` are never answered."""

    dead: set[int] = field(default_factory=set)
    requests: Counter[int] = field(default_factory=Counter)

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.requests[pdu.dev_id] += 1
            if pdu.dev_id in self.dead:
                return None  # type: ignore[return-value]  # pymodbus then sends nothing
        return pdu


@asynccontextmanager
async def tcp_server(devices: list[SimDevice], log: ServerLog) -> AsyncIterator[int]:
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0), trace_pdu=log.trace_pdu)
    await server.serve_forever(background=True)
    try:
        yield server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


@asynccontextmanager
async def rtu_wire(devices: list[SimDevice], log: ServerLog, *, baud: int = 19200,
                   framing: str = "8E1",
                   trace_packet: Callable[[bool, bytes], bytes] | None = None,
                   ) -> AsyncIterator[VirtualWire]:
    async with VirtualWire(baud=baud, framing=framing) as wire:
        # The wire keeps the framing's timing; its ptys take no parity (SerialBus.apply_framing).
        server = ModbusSerialServer(devices, port=wire.b_path, baudrate=baud,
                                    trace_pdu=log.trace_pdu, trace_packet=trace_packet)
        await server.serve_forever(background=True)
        try:
            yield wire
        finally:
            await server.shutdown()


def scattered(name: str = "s1", address: int = 1, poll_ms: float = 1000) -> PolledDevice:
    return PolledDevice(id=name, address=address, profile=SCATTERED, poll_ms=poll_ms)


def values(samples: list[Sample], device: str = "s1") -> dict[str, Any]:
    prefix = device + "/"
    return {s.stream.removeprefix(prefix): s.value for s in samples if s.device == device}


def faults(samples: list[Sample], device: str = "s1") -> dict[str, int | None]:
    prefix = device + "/"
    return {s.stream.removeprefix(prefix): s.fault for s in samples if s.device == device}


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# --- Modbus TCP ----------------------------------------------------------------------------------

async def test_tcp_one_poll_is_the_planned_request_count_and_decodes_exactly() -> None:
    log = ServerLog()
    async with tcp_server([sim_device(1, holding=HOLDING, inputs=INPUTS)], log) as port:
        plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port), [scattered()])
        assert plan.request_count == SCATTERED_READS
        async with ModbusPoller([plan], schedule=False) as poller:
            before = time.time()
            samples = await poller.poll_once("s1")
            after = time.time()
            assert log.requests[1] == SCATTERED_READS
            again = await poller.poll_once("s1")
        assert log.requests[1] == 2 * SCATTERED_READS
    assert values(samples) == EXPECTED == values(again)
    assert set(faults(samples).values()) == {None}
    assert [s.stream for s in samples][:2] == ["s1/temperature_c", "s1/humidity_pct"]
    assert all(int(before * 1000) <= s.utc_ms <= int(after * 1000) + 1 for s in samples)
    counters = poller.counters()["s1"]
    assert (counters.requests, counters.ok, counters.polls) == (14, 14, 2)
    assert counters.timeouts == counters.exceptions == counters.skipped == 0


async def test_tcp_schedule_runs_whole_cycles_into_the_queue() -> None:
    log = ServerLog()
    async with tcp_server([sim_device(1, holding=HOLDING, inputs=INPUTS),
                           sim_device(2, holding=HOLDING, inputs=INPUTS)], log) as port:
        plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port),
                        [scattered("s1", 1, poll_ms=50), scattered("s2", 2, poll_ms=80)])
        async with ModbusPoller([plan]) as poller:
            await wait_for(lambda: min(c.polls for c in poller.counters().values()) >= 4,
                           what="4 polls of each device")
        counters = poller.counters()
    got: list[Sample] = []
    while not poller.samples.empty():
        got.append(poller.samples.get_nowait())
    for unit, name in ((1, "s1"), (2, "s2")):
        polls = counters[name].polls
        assert polls >= 4 and counters[name].requests == polls * SCATTERED_READS == log.requests[unit]
        assert sum(s.device == name for s in got) == polls * STREAMS
        assert values(got, name) == EXPECTED
    assert poller.dropped_samples == 0


async def test_unmapped_registers_answer_with_an_exception_fault_never_a_number() -> None:
    log = ServerLog()
    holding = {a: v for a, v in HOLDING.items() if a < 40}  # 40..42 unmapped: exception 02
    async with tcp_server([sim_device(1, holding=holding, inputs=INPUTS)], log) as port:
        plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port), [scattered()])
        async with ModbusPoller([plan], schedule=False) as poller:
            samples = await poller.poll_once("s1")
    got = faults(samples)
    assert got.pop("energy_wh") == got.pop("firmware_build") == modbus_fault(2) == 0x102
    assert set(got.values()) == {None}
    assert values(samples)["energy_wh"] is None and values(samples)["co2_ppm"] == 412
    counters = poller.counters()["s1"]
    assert (counters.exceptions, counters.ok, counters.requests) == (1, 6, 7)
    assert not counters.in_backoff and counters.consecutive_failures == 0  # it answered


async def test_status_bits_and_ranges_turn_values_into_faults() -> None:
    log = ServerLog()
    bad_humidity = {**HOLDING, 2: 1500}  # 150.0 % is outside 0..100
    fatal = {**INPUTS, 0: 0x0001}  # meter status bit 0: fatal
    async with tcp_server([sim_device(1, holding=bad_humidity, inputs=INPUTS),
                           sim_device(2, holding=HOLDING, inputs=fatal)], log) as port:
        plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port),
                        [scattered("s1", 1), scattered("s2", 2)])
        async with ModbusPoller([plan], schedule=False) as poller:
            ranged = await poller.poll_once("s1")
            faulted = await poller.poll_once("s2")
    assert faults(ranged)["humidity_pct"] == FAULT_OUT_OF_RANGE and values(ranged)["humidity_pct"] is None
    assert {k: v for k, v in values(ranged).items() if k != "humidity_pct"} == {
        k: v for k, v in EXPECTED.items() if k != "humidity_pct"}
    status = faults(faulted, "s2")
    assert status.pop("meter_status") is None and values(faulted, "s2")["meter_status"] == 1
    assert set(status.values()) == {FAULT_SENSOR}
    assert [v for k, v in values(faulted, "s2").items() if k != "meter_status"] == [None] * 14


async def test_coils_and_discrete_inputs_read_as_zero_and_one() -> None:
    profile = {"profile": "switches", "max_gap": 8, "registers": [
        {"name": "relay", "table": "coil", "address": 3, "channels": 2},
        {"name": "door_open", "table": "discrete", "address": 9, "type": "bool"},
        {"name": "tamper", "table": "discrete", "address": 12}]}
    log = ServerLog()
    device = sim_device(4, coils={a: a == 4 for a in range(16)},
                        discrete={a: a in (9, 11) for a in range(16)})
    async with tcp_server([device], log) as port:
        plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port),
                        [PolledDevice(id="sw", address=4, profile=profile, poll_ms=1000)])
        assert [tuple(r) for r in plan.devices[0].reads] == [("coil", 3, 2), ("discrete", 9, 4)]
        async with ModbusPoller([plan], schedule=False) as poller:
            samples = await poller.poll_once("sw")
    assert values(samples, "sw") == {"relay/1": 0, "relay/2": 1, "door_open": 1, "tamper": 0}
    assert log.requests[4] == 2


async def test_a_bus_that_cannot_connect_reports_unavailable_and_backs_off() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=port, timeout_s=0.2),
                    [scattered(poll_ms=20)])
    got: list[Sample] = []
    policy = BackoffPolicy(failures=2, initial_s=10.0, max_s=10.0)
    async with ModbusPoller([plan], sink=got.append, backoff=policy) as poller:
        await wait_for(lambda: poller.counters()["s1"].skipped >= 2, what="skipped polls")
    counters = poller.counters()["s1"]
    assert counters.connection_errors == counters.polls == 2 and counters.in_backoff
    assert got and all(s.value is None and s.fault == FAULT_UNAVAILABLE for s in got)


async def test_poller_lifecycle_errors_name_the_problem() -> None:
    plan = plan_bus(TcpBus(id="plc", host="127.0.0.1", port=1), [scattered()])
    other = plan_bus(TcpBus(id="plc2", host="127.0.0.1", port=1), [scattered()])
    with pytest.raises(ModbusPollerError, match="device id s1 is on bus plc and bus plc2"):
        ModbusPoller([plan, other])
    poller = ModbusPoller([plan], schedule=False)
    with pytest.raises(ModbusPollerError, match="not started"):
        await poller.poll_once("s1")
    async with poller:
        with pytest.raises(ModbusPollerError, match="no polled device nope"):
            await poller.poll_once("nope")
    with pytest.raises(ModbusPollerError, match="closed"):
        await poller.start()


# --- Modbus RTU over a timed virtual wire --------------------------------------------------------

def rtu_plan(wire: VirtualWire, devices: list[PolledDevice], timeout_s: float = 0.3) -> BusPlan:
    return plan_bus(SerialBus(id="rs485", port=wire.a_path, baud=19200, framing="8E1",
                              timeout_s=timeout_s, apply_framing=False), devices)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_rtu_poll_sends_exactly_the_planned_requests_over_the_wire() -> None:
    log = ServerLog()
    fds = open_fds()
    async with rtu_wire([sim_device(1, holding=HOLDING, inputs=INPUTS)], log) as wire:
        plan = rtu_plan(wire, [scattered()])
        async with ModbusPoller([plan], schedule=False) as poller:
            first = await poller.poll_once("s1")
            second = await poller.poll_once("s1")
        await wire.wait_idle()
        sent, received = wire.counters("a_to_b"), wire.counters("b_to_a")
    reads = plan.devices[0].reads
    assert log.requests[1] == 2 * len(reads) == 2 * SCATTERED_READS
    assert sent.bytes_out == 2 * 8 * len(reads)
    assert received.bytes_out == 2 * sum(r.response_length() for r in reads)
    assert values(first) == values(second) == EXPECTED
    assert open_fds() == fds  # the poller's port, the server's and the wire's ptys all closed


async def test_rtu_dead_unit_backs_off_and_the_live_device_keeps_its_schedule() -> None:
    log = ServerLog(dead={7})
    live_ms, timeout_s = 300, 0.2
    got: list[Sample] = []
    policy = BackoffPolicy(failures=2, initial_s=0.6, max_s=1.2)
    async with rtu_wire([sim_device(1, holding=HOLDING, inputs=INPUTS)], log) as wire:
        dead = PolledDevice(id="dead", address=7, profile=GENERIC, poll_ms=live_ms)
        plan = rtu_plan(wire, [scattered("s1", 1, poll_ms=live_ms), dead], timeout_s=timeout_s)
        assert plan.cycle_ms is not None and plan.cycle_ms < live_ms  # the plan fits when both answer
        async with ModbusPoller([plan], sink=got.append, backoff=policy) as poller:
            await wait_for(lambda: poller.counters()["s1"].polls >= 7, what="7 live polls")
        counters = poller.counters()
    live, dead_c = counters["s1"], counters["dead"]
    # The dead unit: one timeout per attempt (a poll stops at its first silent read), into
    # backoff after two, then skipped polls reported unavailable; never a number.
    assert dead_c.backoffs == 1 and dead_c.in_backoff and dead_c.skipped >= 2
    assert dead_c.timeouts == dead_c.polls == dead_c.requests and dead_c.ok == 0
    assert dead_c.polls < live.polls - 2
    dead_samples = [s for s in got if s.device == "dead"]
    assert all(s.value is None for s in dead_samples)
    assert {s.fault for s in dead_samples} == {FAULT_TIMEOUT, FAULT_UNAVAILABLE}
    # The live device: every request answered, every sample a number, on its grid.
    assert live.requests == live.ok == live.polls * SCATTERED_READS == log.requests[1]
    assert log.requests[7] == dead_c.requests
    times = [s.utc_ms for s in got if s.stream == "s1/co2_ppm"]
    assert all(s.fault is None for s in got if s.device == "s1")
    gaps = [b - a for a, b in zip(times, times[1:])]
    # 150 ms is scheduling slack for a loaded 2-core CI machine, not a performance claim.
    assert max(gaps) <= live_ms + timeout_s * 1000 + 150, gaps
    # On its grid, not drifting: n polls span n - 1 intervals (the last perhaps one timeout late).
    assert times[-1] - times[0] <= (len(times) - 1) * live_ms + timeout_s * 1000 + 150, gaps


async def test_rtu_corrupt_and_truncated_replies_are_checksum_and_framing_faults() -> None:
    mode = {"reply": "corrupt"}

    def damage(sending: bool, packet: bytes) -> bytes:
        if not sending or mode["reply"] == "intact":
            return packet
        if mode["reply"] == "corrupt":
            return packet[:-1] + bytes([packet[-1] ^ 0x5A])  # CRC high byte wrong
        return packet[:-3]  # truncated: the client waits for bytes that never come

    log = ServerLog()
    async with rtu_wire([sim_device(1, holding=HOLDING, inputs=INPUTS)], log,
                        trace_packet=damage) as wire:
        plan = rtu_plan(wire, [scattered()], timeout_s=0.15)
        async with ModbusPoller([plan], schedule=False) as poller:
            corrupt = await poller.poll_once("s1")
            await wire.wait_idle()
            mode["reply"] = "truncated"
            truncated = await poller.poll_once("s1")
            await wire.wait_idle()
            mode["reply"] = "intact"
            intact = await poller.poll_once("s1")
    first_read = ["temperature_c", "humidity_pct"]
    for samples, fault in ((corrupt, FAULT_CHECKSUM), (truncated, FAULT_FRAMING)):
        got = faults(samples)
        assert [got[k] for k in first_read] == [fault, fault]
        # A poll stops at the first read the unit did not answer cleanly.
        assert {v for k, v in got.items() if k not in first_read} == {FAULT_UNAVAILABLE}
        assert all(s.value is None for s in samples)
    assert values(intact) == EXPECTED
    counters = poller.counters()["s1"]
    assert (counters.crc_errors, counters.framing_errors, counters.timeouts) == (1, 1, 0)
    assert counters.ok == SCATTERED_READS and counters.requests == SCATTERED_READS + 2
