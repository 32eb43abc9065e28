"""The `machine` HAL backend: a real ESP32 or Raspberry Pi Pico (RP2040) on stock MicroPython.

Not exercised by the harness (no board here); kept small and literal so a reader can check it
against the MicroPython docs for machine.UART, machine.Pin.irq and machine.WDT.
"""

import asyncio
import gc
import os
import sys
import time

import machine
from machine import UART, WDT, Pin

NAME = "machine"
ticks_ms = time.ticks_ms
ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add
# How late a loop edge may reach the presence task's queue after its own timestamp
# (firmware/drivers/loop_presence.py): InputPins' hard IRQ stamps and queues an edge in one handler
# that the task cannot interleave with, and the task reads its clock before draining the queue, so
# an edge stamped before that read is already queued. 2 ms is margin for IRQ latency, not a need;
# the 50 ms default is for the harness, whose edges come over a control channel.
EDGE_LAG_US = 2000

# The link of last resort (firmware/safe_boot.py safe_link): a node whose /config.json and
# /link.json are both unusable opens UART 0 at 115200 baud 8N1 on the port's default UART 0 pins,
# so it can still tell a gateway why it is not running. A Pico: GP0 (TX) / GP1 (RX), where the
# demo's boards wire their link. An ESP32: GPIO1 / GPIO3, its USB-serial bridge (the REPL's UART,
# so console lines come out between the frames; the gateway's decoder skips them).
if sys.platform == "esp32":
    SAFE_LINK = {"transport": "uart", "uart": 0, "tx": 1, "rx": 3, "baud": 115200}
else:
    SAFE_LINK = {"transport": "uart", "uart": 0, "tx": 0, "rx": 1, "baud": 115200}

# framing string -> (parity for machine.UART: None, 0 even, 1 odd; stop bits)
_FRAMING = {"8N1": (None, 1), "8E1": (0, 1), "8O1": (1, 1), "8N2": (None, 2)}


# Safe to set from a hard interrupt handler; wait() clears it, as the HAL's Flag does.
Flag = asyncio.ThreadSafeFlag


class Uart:
    def __init__(self, bus):
        parity, stop = _FRAMING[bus.get("framing", "8N1")]
        self.bus = bus
        self._uart = UART(bus["uart"], baudrate=bus["baud"], bits=8, parity=parity, stop=stop,
                          tx=Pin(bus["tx"]), rx=Pin(bus["rx"]), timeout=0, rxbuf=512)
        # RS-485 half duplex: the transceiver drives the bus only while DE is high.
        self._de = Pin(bus["de"], Pin.OUT, value=0) if bus.get("de") is not None else None
        self._reader = asyncio.StreamReader(self._uart)
        self._writer = asyncio.StreamWriter(self._uart, {})

    async def read(self, max_bytes=256):
        return await self._reader.read(max_bytes)

    async def write(self, data):
        if self._de is not None:
            self._de.value(1)
        self._writer.write(data)
        await self._writer.drain()
        # drain() returns when the FIFO accepted the bytes, not when they left: release DE only
        # after the last stop bit, or the slave's reply collides with our own tail.
        while not self._uart.txdone():
            await asyncio.sleep_ms(0)
        if self._de is not None:
            self._de.value(0)

    def discard_input(self):
        while self._uart.any():
            self._uart.read()

    def close(self):
        self._uart.deinit()


async def open_link(link):
    transport = link.get("transport", "uart")
    if transport == "uart":
        return Uart({"id": "link", "uart": link["uart"], "baud": link["baud"], "tx": link["tx"],
                     "rx": link["rx"], "framing": link.get("framing", "8N1")})
    if transport == "tcp":
        from firmware.wifi import connect_wifi

        host = await connect_wifi(link)
        reader, writer = await asyncio.open_connection(host, link["gateway_port"])
        return _StreamLink(reader, writer)
    raise ValueError("link transport %r is not supported on this board" % transport)


class _StreamLink:
    def __init__(self, reader, writer):
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes=256):
        data = await self._reader.read(max_bytes)
        if not data:
            raise OSError("link closed")
        return data

    async def write(self, data):
        self._writer.write(data)
        await self._writer.drain()

    def close(self):
        self._writer.close()


async def start():
    return None


class InputPins:
    def __init__(self, pins, queue, flag):
        self._pins = []
        for index, number in enumerate(pins):
            pin = Pin(number, Pin.IN, Pin.PULL_UP)
            pin.irq(self._handler(index, pin, queue, flag), Pin.IRQ_RISING | Pin.IRQ_FALLING, hard=True)
            self._pins.append(pin)

    @staticmethod
    def _handler(index, pin, queue, flag):
        ticks = time.ticks_us

        # Runs in a hard IRQ: no allocation, just stamp the edge and wake the consumer task.
        def irq(_):
            queue.push(index, pin.value(), ticks())
            flag.set()

        return irq


def OutputPin(pin):  # noqa: N802 - the HAL's name; machine.Pin's value() is the HAL's value()
    return Pin(pin, Pin.OUT)


class Watchdog:
    def __init__(self, timeout_ms):
        # RP2040's watchdog tops out at 8388 ms.
        self._wdt = WDT(timeout=min(timeout_ms, 8300))

    def feed(self):
        self._wdt.feed()


unique_id = machine.unique_id
mem_free = gc.mem_free
mem_alloc = gc.mem_alloc
collect = gc.collect


def random_u32():
    return int.from_bytes(os.urandom(4), "big")


def read_file(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def write_file(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.rename(tmp, path)


def reset(reason="reset"):
    print("[hal] reset:", reason)
    time.sleep_ms(50)
    machine.reset()
