"""hil.emulators.modbus_devices against a real pymodbus client, over Modbus TCP on loopback and over
a VirtualWire pty pair at 9600 and 19200 baud: registers laid out as the profiles say, the S8
answering 0xFE (byte for byte the REFERENCE.md §4 vectors), turnaround delay, injected exceptions,
dead units that really stay silent, and the loop card's presence and counters."""

from __future__ import annotations

import asyncio
import os
import struct
import time
import tty
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from firmware.register_decode import decode, decode_channels
from hil.emulators.ground_truth import GroundTruthLog, ManualClock, read_truth
from hil.emulators.modbus_devices import (
    GenericModbusSensor,
    LoopCard,
    ModbusDeviceServer,
    ProfileLayoutError,
    SenseAirS8,
    ServerError,
    encode_value,
    load_profile,
)
from hil.wire import VirtualWire

SILENCE_S = 0.3  # how long a client waits for a reply that must never come


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def truth(clock: ManualClock) -> GroundTruthLog:
    return GroundTruthLog(clock=clock)


async def tcp_client(server: ModbusDeviceServer, timeout: float = 2.0) -> AsyncModbusTcpClient:
    host, port = server.address.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=timeout, retries=0)
    assert await client.connect()
    return client


def f32_little_words(words: Sequence[int]) -> float:
    """The generic sensor profile's float: big-endian bytes, low word first (independent decode)."""
    return float(struct.unpack(">f", struct.pack(">HH", words[1], words[0]))[0])


# -- layout ---------------------------------------------------------------------------------------

async def test_generic_sensor_registers_match_its_profile(clock: ManualClock, truth: GroundTruthLog) -> None:
    sensor = GenericModbusSensor(values={"temperature_c": [(0, 21.37), (30, -4.5)], "humidity_pct": 45.37},
                                 unit=7, clock=clock, truth=truth)
    async with ModbusDeviceServer([sensor]) as server:
        client = await tcp_client(server)
        try:
            reply = await client.read_holding_registers(0, count=5, device_id=7)
            assert not reply.isError()
            assert f32_little_words(reply.registers[0:2]) == pytest.approx(21.37, abs=1e-5)
            assert reply.registers[2:4] == [0, 0]  # the gap inside the map reads 0
            assert reply.registers[4] == 454  # 45.37 % at scale 0.1
            clock.advance(30)
            reply = await client.read_holding_registers(0, count=2, device_id=7)
            assert f32_little_words(reply.registers) == -4.5
            beyond = await client.read_holding_registers(4, count=2, device_id=7)
            assert beyond.isError() and beyond.exception_code == 2  # past the map
            inputs = await client.read_input_registers(0, count=1, device_id=7)
            assert inputs.isError() and inputs.exception_code == 2  # no input table at all
        finally:
            client.close()
    served = truth.records(sensor.source, "served")
    assert [r["values"] for r in served] == [
        {"temperature_c": pytest.approx(21.37, abs=1e-5), "humidity_pct": 45.4},
        {"temperature_c": -4.5}]
    assert [r["t_us"] for r in served] == [clock.now_us() - 30_000_000, clock.now_us()]
    assert [r["code"] for r in truth.records(sensor.source, "exception")] == [2, 2]


async def test_every_register_type_round_trips_through_the_profile_decoder(truth: GroundTruthLog) -> None:
    """The scattered test profile has u16/i16/u32/i32/f32, both byte and word orders and a
    multi-channel counter; firmware/register_decode.py (an independent decoder) reads them back."""
    values: dict[str, Any] = {"temperature_c": 23.5, "humidity_pct": 61.2, "pressure_hpa": 1013.25, "offset_c": -1.5,
              "wind_dir_deg": 270, "rain_mm": 12.3, "energy_wh": -123456, "firmware_build": 0x0102,
              "co2_ppm": 612, "lane_count": [1, 2, 65535, 7], "uptime_s": 259200}
    sensor = GenericModbusSensor(values=values, profile="test-scattered-sensor", unit=9, truth=truth)
    profile = load_profile("test-scattered-sensor")
    async with ModbusDeviceServer([sensor]) as server:
        client = await tcp_client(server)
        try:
            for entry in profile["registers"]:
                size = (2 if entry["type"] in ("u32", "i32", "f32") else 1) * entry.get("channels", 1)
                read = client.read_input_registers if entry["table"] == "input" else client.read_holding_registers
                reply = await read(entry["address"], count=size, device_id=9)
                assert not reply.isError(), entry["name"]
                if "channels" in entry:
                    assert decode_channels(entry, reply.registers) == values[entry["name"]]
                elif entry.get("role") == "status":
                    assert reply.registers == [0]
                else:
                    value, fault, _ = decode(entry, reply.registers)
                    assert fault == 0 and value == pytest.approx(values[entry["name"]]), entry["name"]
        finally:
            client.close()


def test_encode_saturates_and_reports_what_it_represents() -> None:
    entry = {"type": "u16", "scale": 0.1}
    assert encode_value(entry, 7000.0) == ([0xFFFF], 6553.5)  # clamped like a device would
    assert encode_value({"type": "i16"}, -2) == ([0xFFFE], -2)
    assert encode_value({"type": "u32", "word_order": "little"}, 0x12345678) == ([0x5678, 0x1234], 0x12345678)
    assert encode_value({"type": "u16", "byte_order": "little"}, 0x0102) == ([0x0201], 0x0102)


def test_layout_errors_name_the_profile_and_key() -> None:
    profile = load_profile("generic-modbus-sensor")
    profile["registers"].append({"name": "dup", "table": "holding", "address": 1, "type": "u16"})
    with pytest.raises(ProfileLayoutError) as err:
        GenericModbusSensor(values={}, profile=profile)
    assert (err.value.profile, err.value.key) == ("generic-modbus-sensor", "registers.dup")
    with pytest.raises(ProfileLayoutError) as err:
        GenericModbusSensor(values={"temprature_c": 1})
    assert err.value.key == "values"
    with pytest.raises(ServerError):
        ModbusDeviceServer([SenseAirS8(), SenseAirS8(unit=5)])  # two units both answering 0xFE


# -- SenseAir S8 on a 9600 baud wire -------------------------------------------------------------

class RawPort:
    """A master's end of the wire opened raw, to put REFERENCE.md's exact frames on the line."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.got = bytearray()
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            self.got += os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self._more.set()

    async def transact(self, frame: bytes, reply_len: int, timeout: float = 3.0) -> bytes:
        self.got.clear()
        os.write(self.fd, frame)
        async with asyncio.timeout(timeout):
            while len(self.got) < reply_len:
                self._more.clear()
                await self._more.wait()
        return bytes(self.got)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def s8_wire(truth: GroundTruthLog) -> AsyncIterator[tuple[SenseAirS8, VirtualWire]]:
    s8 = SenseAirS8(co2=400, truth=truth)
    async with VirtualWire(baud=9600, framing="8N1") as wire, \
            ModbusDeviceServer([s8], port=wire.b_path, baud=9600):
        yield s8, wire


async def test_s8_answers_any_address_with_the_reference_frames(s8_wire: tuple[SenseAirS8, VirtualWire]) -> None:
    s8, wire = s8_wire
    port = RawPort(wire.a_path)
    try:
        assert await port.transact(bytes.fromhex("FE 04 00 03 00 01 D5 C5"), 7) == bytes.fromhex("FE 04 02 01 90 AC D8")
        s8.set_meter_status(1 << 5)  # out of range
        reply = await port.transact(bytes.fromhex("FE 04 00 00 00 04 E5 C6"), 13)
        assert reply[:11] == bytes.fromhex("FE 04 08 00 20 00 00 00 00 01 90")
        calibrate = bytes.fromhex("FE 06 00 01 7C 06 6C C7")
        assert await port.transact(calibrate, 8) == calibrate  # a write is echoed
    finally:
        port.close()
    assert s8.holding[0] & (1 << 5)  # HR1: background calibration acknowledged
    served = s8.truth.records("s8", "served")
    assert [(r["unit"], r["values"]) for r in served] == [
        (0xFE, {"co2_ppm": 400}), (0xFE, {"meter_status": 32, "co2_ppm": 400})]
    assert [r["command"] for r in s8.truth.records("s8", "command")] == ["background_calibration"]


async def test_s8_own_address_through_pymodbus_and_turnaround(s8_wire: tuple[SenseAirS8, VirtualWire]) -> None:
    s8, wire = s8_wire
    client = AsyncModbusSerialClient(wire.a_path, baudrate=9600, timeout=2, retries=0)
    assert await client.connect()
    try:
        s8.turnaround_s = 0.25
        started = time.monotonic()
        reply = await client.read_input_registers(3, count=1, device_id=0x68)
        assert time.monotonic() - started >= 0.25  # the unit waited before it answered
        assert reply.registers == [400] and reply.dev_id == 0x68
        reply = await client.read_input_registers(28, count=3, device_id=0x68)
        assert reply.registers == [0x0103, 0x00A1, 0xB2C3]  # firmware and sensor id (IR29-31)
        s8.turnaround_s = 0
        too_many = await client.read_input_registers(0, count=9, device_id=0x68)
        assert too_many.isError() and too_many.exception_code == 3  # the profile allows 8 a read
    finally:
        client.close()


# -- exceptions, silence, ordering over TCP --------------------------------------------------------

@pytest.fixture
async def bus(clock: ManualClock, truth: GroundTruthLog) -> AsyncIterator[tuple[ModbusDeviceServer, SenseAirS8, GenericModbusSensor]]:
    s8 = SenseAirS8(co2=[(0, 420), (60, 900)], clock=clock, truth=truth, turnaround_s=0)
    sensor = GenericModbusSensor(values={"temperature_c": 20.0, "humidity_pct": 50.0}, unit=2,
                                 clock=clock, truth=truth, turnaround_s=0)
    async with ModbusDeviceServer([s8, sensor]) as server:
        yield server, s8, sensor


async def test_injected_exceptions_by_register_count_and_time(bus: tuple[ModbusDeviceServer, SenseAirS8, GenericModbusSensor],
                                                              clock: ManualClock, truth: GroundTruthLog) -> None:
    server, s8, sensor = bus
    client = await tcp_client(server)
    try:
        s8.inject_exception(4, table="input", address=3, replies=2)
        for _ in range(2):
            reply = await client.read_input_registers(0, count=4, device_id=0x68)
            assert reply.isError() and reply.exception_code == 4
        status_only = await client.read_input_registers(0, count=1, device_id=0x68)
        assert status_only.registers == [0]  # the rule only hits reads touching IR4
        assert (await client.read_input_registers(3, count=1, device_id=0x68)).registers == [420]
        sensor.inject_exception(6, duration_s=5)
        assert (await client.read_holding_registers(4, count=1, device_id=2)).exception_code == 6
        clock.advance(5)
        assert (await client.read_holding_registers(4, count=1, device_id=2)).registers == [500]
        clock.advance(55)
        assert (await client.read_input_registers(3, count=1, device_id=0x68)).registers == [900]
        s8.inject_exception(3)
        assert (await client.read_input_registers(3, count=1, device_id=0xFE)).exception_code == 3
        s8.clear_exceptions()
        assert (await client.read_input_registers(3, count=1, device_id=0xFE)).registers == [900]
    finally:
        client.close()
    injected = [(r.source, r["code"]) for r in truth.records(kind="exception") if r["injected"]]
    assert injected == [("s8", 4), ("s8", 4), (sensor.source, 6), ("s8", 3)]


async def test_dead_and_unknown_units_stay_silent(bus: tuple[ModbusDeviceServer, SenseAirS8, GenericModbusSensor],
                                                  truth: GroundTruthLog) -> None:
    server, s8, _sensor = bus
    quiet = await tcp_client(server, timeout=SILENCE_S)  # for the replies that must not come
    client = await tcp_client(server)
    try:
        s8.go_silent()
        with pytest.raises(ModbusIOException):
            await quiet.read_input_registers(3, count=1, device_id=0x68)
        with pytest.raises(ModbusIOException):
            await quiet.read_input_registers(3, count=1, device_id=0xFE)
        # The other unit on the bus is unaffected; a unit nobody has gets no exception 04.
        assert (await client.read_holding_registers(4, count=1, device_id=2)).registers == [500]
        with pytest.raises(ModbusIOException):
            await quiet.read_holding_registers(0, count=1, device_id=33)
        assert server.unanswered == 1
        s8.resume()
        assert (await client.read_input_registers(3, count=1, device_id=0x68)).registers == [420]
    finally:
        quiet.close()
        client.close()
    assert [r["unit"] for r in truth.records("s8", "silent")] == [0x68, 0xFE]
    assert len(truth.records("s8", "served")) == 1


async def test_turnaround_orders_replies(clock: ManualClock, truth: GroundTruthLog) -> None:
    slow = GenericModbusSensor(values={"humidity_pct": 10}, unit=1, truth=truth, clock=clock, turnaround_s=0.4)
    fast = GenericModbusSensor(values={"humidity_pct": 20}, unit=2, truth=truth, clock=clock, turnaround_s=0)
    async with ModbusDeviceServer([slow, fast]) as server:
        a, b = await tcp_client(server), await tcp_client(server)
        try:
            done: list[int] = []

            async def read(client: AsyncModbusTcpClient, unit: int) -> None:
                await client.read_holding_registers(4, count=1, device_id=unit)
                done.append(unit)

            await asyncio.gather(read(a, 1), read(b, 2))
            assert done == [2, 1]  # asked together, the unit without turnaround answered first
        finally:
            a.close()
            b.close()


# -- loop card, and a shared RTU bus at 19200 8E1 ----------------------------------------------

async def test_loop_card_on_an_rtu_bus_with_a_sensor(clock: ManualClock, truth: GroundTruthLog, tmp_path: os.PathLike[str]) -> None:
    log_path = os.path.join(str(tmp_path), "truth.jsonl")
    with GroundTruthLog(log_path, clock=clock) as file_truth:
        card = LoopCard(unit=4, clock=clock, truth=file_truth, turnaround_s=0.005)
        sensor = GenericModbusSensor(values={"temperature_c": 18.25, "humidity_pct": 33.3}, unit=5,
                                     clock=clock, truth=file_truth)
        t = clock.now_us()
        for k in range(3):  # three vehicles over channel 1, one still present at the read
            card.schedule_presence(1, True, t + k * 2_000_000)
            card.schedule_presence(1, False, t + k * 2_000_000 + 400_000)
        card.schedule_presence(3, True, t + 4_100_000)
        card.counts[7] = 65535  # about to wrap
        card.schedule_presence(8, True, t + 1_000_000)
        card.set_fault(6, True)
        async with VirtualWire(baud=19200, framing="8E1") as wire, \
                ModbusDeviceServer([card, sensor], port=wire.b_path, baud=19200):
            # One port, one client: its timeout must outlast a loaded machine and bounds the silence.
            client = AsyncModbusSerialClient(wire.a_path, baudrate=19200, timeout=1.0, retries=0)
            assert await client.connect()
            try:
                clock.advance(4.2)
                reply = await client.read_input_registers(0, count=24, device_id=4)
                presence, fault, counts = reply.registers[0], reply.registers[1], reply.registers[16:24]
                assert presence == 0b10000101 and fault == 0b00100000
                assert counts == [3, 0, 1, 0, 0, 0, 0, 0]  # channel 8's counter wrapped to 0
                temp = await client.read_holding_registers(0, count=2, device_id=5)
                assert f32_little_words(temp.registers) == 18.25
                card.go_silent()
                before = wire.counters("b_to_a").bytes_in
                with pytest.raises(ModbusIOException):
                    await client.read_input_registers(0, count=1, device_id=4)
                assert wire.counters("b_to_a").bytes_in == before  # not one byte went back
                assert (await client.read_holding_registers(4, count=1, device_id=5)).registers == [333]
            finally:
                client.close()
    records = read_truth(log_path)
    presence_log = [(r.fields["channel"], r.fields["on"]) for r in records if r.kind == "presence"]
    assert presence_log == [(1, True), (1, False), (8, True), (1, True), (1, False), (1, True), (3, True)]
    assert [r.kind for r in records if r.source == "loop_card"][-2:] == ["fault", "silent"]
    assert all(r.t_utc_ms == clock.utc_ms(r.fields["t_us"]) for r in records)
