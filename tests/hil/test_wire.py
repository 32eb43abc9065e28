"""The virtual serial wire: the sans-IO line model with injected time, then real ptys with pyserial,
raw fds and pymodbus on the slave paths."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import serial

from hil.faults import FaultEvent, FaultSettings, Framing, Line, WireConfigError
from hil.wire import VirtualWire, WireActivity, WireStateError, WireThread

ALL_BYTES = bytes(range(256))


def drain(line: Line, until: float = 1e9) -> bytes:
    return line.take_due(until)


# -- the line model, time given by the test ----------------------------------------------------


@pytest.mark.parametrize(("text", "bits"), [("8N1", 10), ("8E1", 11), ("8O1", 11), ("8N2", 11), ("7E1", 10)])
def test_framing_bits_per_char(text: str, bits: int) -> None:
    framing = Framing.parse(text)
    assert framing.bits_per_char == bits
    assert framing.char_time(9600) == pytest.approx(bits / 9600)


@pytest.mark.parametrize(("key", "make"), [
    ("framing", lambda: Framing.parse("9X1")),
    ("baud", lambda: Framing.parse("8N1").char_time(0)),
    ("bit_error_rate", lambda: FaultSettings(bit_error_rate=1.5)),
    ("drop_rate", lambda: FaultSettings(drop_rate=-0.1)),
])
def test_bad_settings_name_the_key(key: str, make: Callable[[], object]) -> None:
    with pytest.raises(WireConfigError) as info:
        make()
    assert info.value.key == key and key in str(info.value)


def test_bytes_leave_one_char_time_apart_on_absolute_deadlines() -> None:
    ct = 10 / 9600
    line = Line(direction="a_to_b", char_time=ct)
    line.feed(b"abcdefgh", now=0.0)
    assert line.next_deadline() == pytest.approx(ct)
    assert line.take_due(0.999 * ct) == b""  # never early
    assert line.take_due(3 * ct + 1e-9) == b"abc"
    # A late event loop gets a burst of everything due, and the rest stays on the original grid.
    assert line.take_due(6.5 * ct) == b"def"
    assert line.next_deadline() == pytest.approx(7 * ct)
    assert drain(line) == b"gh"
    assert line.next_deadline() is None


def test_input_gap_is_preserved_for_modbus_t35() -> None:
    ct = 11 / 19200
    line = Line(direction="a_to_b", char_time=ct)
    line.feed(b"\x01\x03\x00\x00\x00\x0a\xc5\xcd", now=0.0)
    gap_start = 8 * ct
    line.feed(b"\x01\x03", now=gap_start + 5 * ct)  # 5 character times of silence on the input
    times = []
    t = 0.0
    while (deadline := line.next_deadline()) is not None:
        t = deadline
        assert len(line.take_due(t)) == 1
        times.append(t)
    assert times[8] - times[7] == pytest.approx(6 * ct)  # 5 silent + its own character
    assert all(b - a == pytest.approx(ct) for a, b in itertools.pairwise(times[:8]))


@pytest.mark.parametrize(("framing", "rate"), [("8N1", 960.0), ("8E1", 9600 / 11)])
def test_throughput_matches_the_physical_rate(framing: str, rate: float) -> None:
    line = Line(direction="a_to_b", char_time=Framing.parse(framing).char_time(9600))
    line.feed(bytes(1000), now=0.0)
    assert len(line.take_due(1.0)) == int(rate)


def test_untimed_line_delivers_at_once() -> None:
    line = Line(direction="a_to_b", char_time=None)
    line.feed(ALL_BYTES, now=5.0)
    assert line.next_deadline() == 5.0
    assert line.take_due(5.0) == ALL_BYTES


def test_bit_errors_follow_the_rate_and_reproduce_with_the_seed() -> None:
    p, n = 0.01, 50_000
    data = bytes(i % 256 for i in range(n))
    outputs = []
    for seed in (7, 7, 8):
        line = Line(direction="a_to_b", char_time=None, settings=FaultSettings(bit_error_rate=p), seed=seed)
        line.feed(data, now=0.0)
        out = drain(line)
        flipped = sum((x ^ y).bit_count() for x, y in zip(data, out))
        assert flipped == line.counters.bits_flipped
        expected, sigma = 8 * n * p, (8 * n * p * (1 - p)) ** 0.5
        assert abs(flipped - expected) < 5 * sigma
        outputs.append(out)
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]


def test_drop_and_duplicate_are_counted_and_logged() -> None:
    log: list[FaultEvent] = []
    line = Line(direction="b_to_a", char_time=None, seed=1, log=log,
                settings=FaultSettings(drop_rate=0.1, duplicate_rate=0.1))
    data = bytes(range(200)) * 10
    line.feed(data, now=0.0)
    out = drain(line)
    c = line.counters
    assert 100 < c.bytes_dropped < 300 and 100 < c.bytes_duplicated < 300
    assert len(out) == len(data) - c.bytes_dropped + c.bytes_duplicated
    dropped = {e.offset for e in log if e.kind == "drop"}
    duplicated = {e.offset for e in log if e.kind == "duplicate"}
    assert len(dropped) == c.bytes_dropped and len(duplicated) == c.bytes_duplicated
    # The log explains the output exactly: rebuild it from the input and the ground truth.
    rebuilt = bytearray()
    for i, byte in enumerate(data):
        if i not in dropped:
            rebuilt += bytes([byte]) * (2 if i in duplicated else 1)
    assert bytes(rebuilt) == out


def test_stuck_line_swallows_then_babbles() -> None:
    ct = 0.001
    line = Line(direction="a_to_b", char_time=ct)
    line.stick(0.0, until=0.0105)
    line.feed(b"12345", now=0.0)
    line.feed(b"after", now=0.02)
    assert drain(line) == b"after"
    assert line.counters.bytes_lost_stuck == 5
    line.stick(0.1, until=0.1055, value=0x00)
    line.feed(b"xy", now=0.1)
    assert drain(line) == b"\x00" * 5
    assert line.counters.bytes_stuck_injected == 5 and line.counters.bytes_lost_stuck == 7
    with pytest.raises(WireConfigError):
        Line(direction="a_to_b", char_time=None).stick(0.0, value=0)


def test_unplug_loses_bytes_finishing_while_unplugged() -> None:
    ct = 0.001
    line = Line(direction="a_to_b", char_time=ct)
    line.feed(b"abcd", now=0.0)  # finish at 1, 2, 3, 4 ms
    line.unplug(0.0025)
    line.replug(0.0035)
    assert drain(line) == b"abd"
    assert line.counters.bytes_lost_unplugged == 1


def test_half_duplex_talkers_collide() -> None:
    ct = 0.001
    ab = Line(direction="a_to_b", char_time=ct, seed=3)
    ba = Line(direction="b_to_a", char_time=ct, seed=3)
    ab.peer, ba.peer = ba, ab
    ab.feed(b"\x55" * 10, now=0.0)
    ba.feed(b"\xaa" * 3, now=0.0045)  # overlaps characters 5..8 of the other direction
    out_ab, out_ba = drain(ab), drain(ba)
    assert ab.counters.bytes_collided == 4 and ba.counters.bytes_collided == 3
    assert out_ab[:4] == b"\x55" * 4 and out_ab[8:] == b"\x55" * 2
    assert all(b != 0x55 for b in out_ab[4:8]) and all(b != 0xAA for b in out_ba)
    ab.feed(b"\x55", now=0.1)
    assert drain(ab) == b"\x55"  # silence on the other side: no collision


# -- real pseudo-terminals ---------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_serial(path: str, baud: int, timeout: float = 2.0) -> serial.Serial:
    return serial.Serial(path, baudrate=baud, timeout=timeout)


def read_exact(port: serial.Serial, n: int, timeout: float = 5.0) -> bytes:
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += port.read(n - len(got))
    return bytes(got)


def read_raw_fd(fd: int, n: int, timeout: float = 5.0) -> bytes:
    import select
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n and (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, n - len(got))
    return bytes(got)


def settle(wire: WireThread, direction: str, bytes_in: int) -> None:
    """Wait until the wire has read `bytes_in` bytes in `direction` and has none in flight (the
    kernel hands a pty write to the master side asynchronously, so idle() alone could be early)."""
    wire.wait_until(lambda w: w.counters(direction).bytes_in == bytes_in, what=f"{bytes_in} bytes in")
    wire.wait_idle()


@pytest.fixture
def wired(request: pytest.FixtureRequest) -> Iterator[tuple[WireThread, serial.Serial, serial.Serial]]:
    """A threaded wire with pyserial open on both ends; options from the test's parameter."""
    options = dict(getattr(request, "param", {"baud": None}))
    baud = options.get("baud") or 115200
    with VirtualWire.running_in_thread(**options) as wire:
        a = open_serial(wire.a_path, baud)
        try:
            b = open_serial(wire.b_path, baud)
            try:
                wire.wait_until(lambda w: w.port_open("a") and w.port_open("b"), what="open at both ends")
                yield wire, a, b
            finally:
                b.close()
        finally:
            a.close()


@pytest.mark.parametrize("baud", [None, 115200])
def test_every_byte_value_crosses_both_ways_untranslated(baud: int | None) -> None:
    with VirtualWire.running_in_thread(baud=baud) as wire:
        a = open_serial(wire.a_path, baud or 115200)
        b = os.open(wire.b_path, os.O_RDWR | os.O_NOCTTY)  # no pyserial here: the wire's raw mode
        try:
            wire.wait_until(lambda w: w.port_open("a") and w.port_open("b"))
            a.write(ALL_BYTES * 2)
            assert read_raw_fd(b, 512) == ALL_BYTES * 2
            os.write(b, ALL_BYTES[::-1])
            assert read_exact(a, 256) == ALL_BYTES[::-1]
            assert wire.counters("a_to_b").bytes_out == 512 and wire.counters("b_to_a").bytes_out == 256
        finally:
            os.close(b)
            a.close()


@pytest.mark.parametrize("baud", [9600, 115200])
def test_achieved_rate_is_the_physical_one(baud: int) -> None:
    """Correctness of the emulator, not a benchmark: never faster than the line, and within 15 %."""
    char_time = 10 / baud
    n = int(0.8 / char_time)
    with VirtualWire.running_in_thread(baud=baud) as wire:
        a, b = open_serial(wire.a_path, baud), open_serial(wire.b_path, baud)
        try:
            wire.wait_until(lambda w: w.port_open("a") and w.port_open("b"))
            start = time.monotonic()
            a.write(bytes(n))
            got = read_exact(b, n, timeout=10)
            elapsed = time.monotonic() - start
        finally:
            a.close()
            b.close()
    assert len(got) == n
    assert elapsed >= n * char_time * 0.999
    assert elapsed <= n * char_time * 1.15


@pytest.mark.parametrize("wired", [{"baud": None, "seed": 11}], indirect=True)
def test_faults_change_while_running_and_are_counted(wired: tuple[WireThread, serial.Serial, serial.Serial]) -> None:
    wire, a, b = wired
    data = bytes(range(256)) * 8
    wire.set_faults(FaultSettings(bit_error_rate=0.02), direction="a_to_b")
    a.write(data)
    got = read_exact(b, len(data))
    flips = sum((x ^ y).bit_count() for x, y in zip(data, got))
    assert flips == wire.counters("a_to_b").bits_flipped > 0
    b.write(data)  # the other direction was left clean
    assert read_exact(a, len(data)) == data

    wire.set_faults(FaultSettings(drop_rate=0.05), direction="both")
    a.write(data)
    settle(wire, "a_to_b", 2 * len(data))
    c = wire.counters("a_to_b")
    assert c.bytes_dropped > 0
    assert len(read_exact(b, len(data) - c.bytes_dropped)) == len(data) - c.bytes_dropped

    wire.set_faults(FaultSettings(duplicate_rate=0.05), direction="b_to_a")
    b.write(data)
    settle(wire, "b_to_a", 2 * len(data))
    c = wire.counters("b_to_a")
    assert c.bytes_duplicated > 0
    assert len(read_exact(a, len(data) + c.bytes_duplicated)) == len(data) + c.bytes_duplicated
    for direction in ("a_to_b", "b_to_a"):
        c = wire.counters(direction)
        assert c.bytes_in + c.bytes_duplicated == c.bytes_out + c.bytes_dropped


@pytest.mark.parametrize("wired", [{"baud": 115200}], indirect=True)
def test_stuck_line_then_recovery(wired: tuple[WireThread, serial.Serial, serial.Serial]) -> None:
    wire, a, b = wired
    wire.stick(direction="a_to_b")
    a.write(b"swallowed")
    wire.wait_until(lambda w: w.counters("a_to_b").bytes_lost_stuck == 9, what="stuck loss counted")
    b.write(b"other way")  # only one direction is stuck
    assert read_exact(a, 9) == b"other way"
    wire.unstick(direction="a_to_b")
    wire.stick(direction="a_to_b", duration=0.01, value=0x00)  # a line stuck low babbles zeros
    wire.wait_idle()
    babble = wire.counters("a_to_b").bytes_stuck_injected
    assert babble > 0 and read_exact(b, babble) == bytes(babble)
    a.write(b"clean")
    assert read_exact(b, 5) == b"clean"


@pytest.mark.parametrize("wired", [{"baud": 19200, "log": []}], indirect=True)
def test_unplug_loses_data_both_ways_and_replug_restores(wired: tuple[WireThread, serial.Serial, serial.Serial]) -> None:
    wire, a, b = wired
    wire.unplug()
    a.write(b"lost-a")
    b.write(b"lost-b!")
    wire.wait_until(lambda w: w.counters("a_to_b").bytes_lost_unplugged == 6
                    and w.counters("b_to_a").bytes_lost_unplugged == 7, what="unplugged losses counted")
    wire.replug()
    a.write(b"back")
    assert read_exact(b, 4) == b"back"  # nothing from the unplugged time came first
    b.write(b"ok")
    assert read_exact(a, 2) == b"ok"
    kinds = [e.kind for e in wire.log if e.where == "a_to_b"]
    assert kinds.count("lost_unplugged") == 6 and "unplug" in kinds and "replug" in kinds


@pytest.mark.parametrize("wired", [{"baud": 115200}], indirect=True)
def test_program_closing_and_reopening_its_port(wired: tuple[WireThread, serial.Serial, serial.Serial]) -> None:
    wire, a, b = wired
    a.write(b"first")
    assert read_exact(b, 5) == b"first"
    b.close()
    wire.wait_until(lambda w: not w.port_open("b"), what="end b closed")
    a.write(b"nobody listens")
    wire.wait_until(lambda w: w.counters("a_to_b").bytes_lost_closed == 14, what="closed-port loss counted")
    b.open()
    wire.wait_until(lambda w: w.port_open("b"), what="end b reopened")
    a.write(b"second")
    assert read_exact(b, 6) == b"second"  # and not the bytes sent while it was closed
    b.write(b"reply")
    assert read_exact(a, 5) == b"reply"


def test_half_duplex_wire_garbles_simultaneous_talkers() -> None:
    with VirtualWire.running_in_thread(baud=9600, half_duplex=True) as wire:
        a, b = open_serial(wire.a_path, 9600), open_serial(wire.b_path, 9600)
        try:
            wire.wait_until(lambda w: w.port_open("a") and w.port_open("b"))
            a.write(b"\x55" * 50)
            b.write(b"\xaa" * 50)
            got_b, got_a = read_exact(b, 50), read_exact(a, 50)
        finally:
            a.close()
            b.close()
        assert wire.counters("a_to_b").bytes_collided > 0 and wire.counters("b_to_a").bytes_collided > 0
        assert got_b != b"\x55" * 50 and got_a != b"\xaa" * 50


def test_threaded_wire_leaks_no_fd_or_thread() -> None:
    fds, threads = open_fds(), threading.active_count()
    with VirtualWire.running_in_thread(baud=9600) as wire:
        assert os.path.exists(wire.a_path) and os.path.exists(wire.b_path)
        a = open_serial(wire.a_path, 9600)
        a.write(b"in flight when the wire closes")
        a.close()
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert wire.counters("a_to_b").bytes_in >= 0  # still readable for accounting
    with pytest.raises(WireStateError):
        _ = wire.a_path


def test_bad_options_fail_before_any_thread_starts() -> None:
    threads = threading.active_count()
    with pytest.raises(WireConfigError) as info:
        VirtualWire.running_in_thread(baud=9600, framing="8X1")
    assert info.value.key == "framing" and threading.active_count() == threads


async def test_async_wire_closes_cleanly_and_refuses_use_after() -> None:
    fds = open_fds()
    tasks = len(asyncio.all_tasks())
    async with VirtualWire(baud=None) as wire:
        b = os.open(wire.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        a = os.open(wire.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            got = bytearray()
            arrived = asyncio.Event()

            def readable() -> None:
                got.extend(os.read(b, 4096))
                if len(got) >= 3:
                    arrived.set()
            asyncio.get_running_loop().add_reader(b, readable)
            os.write(a, b"\x00\r\n")
            await asyncio.wait_for(arrived.wait(), 5)
            asyncio.get_running_loop().remove_reader(b)
            assert bytes(got) == b"\x00\r\n"
        finally:
            os.close(a)
            os.close(b)
    assert open_fds() == fds and len(asyncio.all_tasks()) == tasks
    with pytest.raises(WireStateError):
        _ = wire.a_path


async def test_activity_record_shows_every_chunk_never_early_and_timers_close() -> None:
    fds = open_fds()
    record: list[WireActivity] = []
    frame = bytes.fromhex("01 03 00 00 00 0A C5 CD")
    async with VirtualWire(baud=115200, framing="8E1", activity=record) as wire:
        a = os.open(wire.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        b = os.open(wire.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            got = bytearray()
            arrived = asyncio.Event()

            def readable() -> None:
                got.extend(os.read(b, 4096))
                if len(got) >= 2 * len(frame):
                    arrived.set()
            asyncio.get_running_loop().add_reader(b, readable)
            os.write(a, frame)
            await wire.wait_idle()
            os.write(a, frame)  # a second frame after a silence
            await asyncio.wait_for(arrived.wait(), 5)
            asyncio.get_running_loop().remove_reader(b)
        finally:
            os.close(a)
            os.close(b)
    assert bytes(got) == 2 * frame
    sent = [r for r in record if r.kind == "sent"]
    received = [r for r in record if r.kind == "received"]
    assert {r.direction for r in record} == {"a_to_b"}
    assert sum(r.size for r in sent) == sum(r.size for r in received) == 2 * len(frame)
    char = 11 / 115200
    # Each byte is handed over when its character has finished, never before; the frame's last
    # byte is due exactly len(frame) characters after the wire read the frame.
    assert all(r.t >= r.due for r in received)
    first_end = next(r for r in received if r.due >= sent[0].t + len(frame) * char - 1e-9)
    assert first_end.due == pytest.approx(sent[0].t + len(frame) * char)
    assert open_fds() == fds  # the ptys and the delivery timers are closed


async def test_pymodbus_client_and_server_read_registers_through_the_wire() -> None:
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xBEEF, 0]
    device = SimDevice(id=1, simdata=[SimData(address=0, values=values, datatype=DataType.REGISTERS)])
    async with VirtualWire(baud=19200) as wire:
        server = ModbusSerialServer(device, port=wire.b_path, baudrate=19200)
        await server.serve_forever(background=True)
        client = AsyncModbusSerialClient(wire.a_path, baudrate=19200, timeout=2, retries=1, reconnect_delay=0)
        try:
            assert await client.connect()
            for _ in range(3):
                reply = await client.read_holding_registers(0, count=10, device_id=1)
                assert not reply.isError() and reply.registers == values[:10]
            reply = await client.read_holding_registers(10, count=1, device_id=1)
            assert reply.registers == [0xBEEF]
        finally:
            client.close()
            await server.shutdown()
        # Four 8-byte requests and their 25- and 7-byte replies, all counted by the wire.
        assert wire.counters("a_to_b").bytes_out == 4 * 8
        assert wire.counters("b_to_a").bytes_out == 3 * 25 + 7
