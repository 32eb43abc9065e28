"""hil.uart_bridge.UartBridge: bytes both ways between one TCP client and a serial device (the end
of a real VirtualWire here, with a raw fd on the other end as the device), a new client replacing
the old, nothing leaking when it closes. The Modbus tests in tests/firmware/ use it under load."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import AsyncIterator

import pytest

from hil.uart_bridge import UartBridge, UartBridgeError
from hil.wire import VirtualWire


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Device:
    """The far end of the wire, opened raw and non-blocking, read through the event loop."""

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

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            while len(self.got) < n:
                self._more.clear()
                await self._more.wait()
        data, self.got[:] = bytes(self.got[:n]), self.got[n:]
        return data

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


@pytest.fixture
async def rig() -> AsyncIterator[tuple[VirtualWire, UartBridge, Device]]:
    async with VirtualWire(baud=115200, framing="8E1") as wire, \
            UartBridge(wire.a_path, baud=115200, framing="8E1") as bridge:
        device = Device(wire.b_path)
        try:
            yield wire, bridge, device
        finally:
            device.close()


async def test_bytes_cross_both_ways(rig: tuple[VirtualWire, UartBridge, Device]) -> None:
    wire, bridge, device = rig
    assert bridge.address.startswith("127.0.0.1:")
    reader, writer = await connect(bridge.address)
    try:
        payload = bytes(range(256))  # every byte value, untranslated (raw mode on both sides)
        writer.write(payload)
        await writer.drain()
        assert await device.read_exactly(len(payload)) == payload
        device.write(b"\x00\r\n\x11\x13\xff")
        async with asyncio.timeout(5):
            assert await reader.readexactly(6) == b"\x00\r\n\x11\x13\xff"
    finally:
        writer.close()
    assert bridge.counters.to_serial == 256 and bridge.counters.from_serial == 6
    assert wire.counters("a_to_b").bytes_out == 256  # it really crossed the timed wire


async def test_a_new_client_replaces_the_old_and_stale_input_is_dropped(
        rig: tuple[VirtualWire, UartBridge, Device]) -> None:
    wire, bridge, device = rig
    r1, w1 = await connect(bridge.address)
    w1.write(b"one")
    await w1.drain()
    assert await device.read_exactly(3) == b"one"
    r2, w2 = await connect(bridge.address)
    try:
        async with asyncio.timeout(5):
            assert await r1.read() == b""  # the old client is closed
        w2.write(b"two")
        await w2.drain()
        assert await device.read_exactly(3) == b"two"
        device.write(b"hi")
        async with asyncio.timeout(5):
            assert await r2.readexactly(2) == b"hi"
    finally:
        w1.close()
        w2.close()
    # No client: what the device says now is dropped, never handed to the next client.
    async with asyncio.timeout(5):
        while bridge.connected:
            await asyncio.sleep(0.005)
    device.write(b"lost")
    async with asyncio.timeout(5):
        while bridge.counters.dropped_no_client < 4:
            await asyncio.sleep(0.005)
    r3, w3 = await connect(bridge.address)
    try:
        device.write(b"new")
        async with asyncio.timeout(5):
            assert await r3.readexactly(3) == b"new"
    finally:
        w3.close()
    assert bridge.counters.connections == 3


async def test_close_leaves_nothing_behind() -> None:
    fds = open_fds()
    tasks = len(asyncio.all_tasks())
    async with VirtualWire(baud=None) as wire:
        async with UartBridge(wire.a_path) as bridge:
            reader, writer = await connect(bridge.address)
            writer.write(b"x")
            await writer.drain()
            async with asyncio.timeout(5):
                while bridge.counters.to_serial < 1:
                    await asyncio.sleep(0.005)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closing the bridge closed the client
        writer.close()
        await writer.wait_closed()
    assert open_fds() == fds
    assert len(asyncio.all_tasks()) == tasks


async def test_survives_its_wire_closing_first() -> None:
    wire = VirtualWire(baud=None)
    await wire.start()
    async with UartBridge(wire.a_path) as bridge:
        await wire.close()  # the pty's master goes: reads on our end fail with EIO
        async with asyncio.timeout(5):
            while bridge.counters.serial_errors < 1:
                await asyncio.sleep(0.005)


async def test_errors_name_the_port() -> None:
    with pytest.raises(UartBridgeError, match="/nonexistent/tty"):
        async with UartBridge("/nonexistent/tty"):
            pass
    async with VirtualWire(baud=None) as wire:
        with pytest.raises(ValueError, match="framing"):
            async with UartBridge(wire.a_path, framing="7E1"):
                pass
        with pytest.raises(ValueError, match="baud"):
            async with UartBridge(wire.a_path, baud=12345):
                pass
