"""The `host` HAL backend: the firmware in the test harness, under CPython or the MicroPython VM.

UART buses and the node link are TCP connections to the harness on loopback (the harness joins
them to its timed virtual wires and emulated devices); input pins are driven, and output pins
reported, over one line-based control connection:

  harness -> node   "E <pin> <level> <t_us>\n"   an input edge at host-monotonic time t_us
  node -> harness   "O <pin> <value>\n"          an output pin changed
                    "R <reason>\n"               the node is about to reset

Ticks come from the host's monotonic clock (CLOCK_MONOTONIC, which Node's hrtime also reads), so
the harness can timestamp edges in the node's own time base. Under the MicroPython VM the I/O goes
through `hostbridge`, a JS module that hil/micropython/run.mjs (and board.mjs) registers; under
CPython it uses asyncio sockets. `configure()` must be called with the board config's "host" section first.
"""

import asyncio
import gc
import sys
import time
from binascii import hexlify

from protocols.ticks import TICKS_PERIOD
from protocols.ticks import ticks_add as ticks_add  # noqa: F401 - part of the HAL interface
from protocols.ticks import ticks_diff as ticks_diff  # noqa: F401

try:
    import hostbridge  # only inside the MicroPython VM run by the harness
except ImportError:
    hostbridge = None

NAME = "host"
# hal_machine's link of last resort on a Pico; the harness's node opens _host["link"] whatever the
# link says, so this only names the link in the node's report.
SAFE_LINK = {"transport": "uart", "uart": 0, "tx": 0, "rx": 1, "baud": 115200}
RESET_EXIT_CODE = 75  # the harness restarts a node that exits with this code: a reboot
_MASK = TICKS_PERIOD - 1
_host = {"uarts": {}, "link": None, "control": None, "fs_root": ".", "uid": "host"}
_control = None
_io = [0, 0]  # reads and writes through the connections (the heap probe reports them)
_pins = {}  # pin number -> (queue, flag, index)


def configure(host_section):
    _host.update(host_section)


def _monotonic_us():
    if hostbridge is not None:
        return int(hostbridge.monotonic_us())
    return time.monotonic_ns() // 1000


def _js_ticks(divisor):
    """Under the VM: a JS function returning the host's monotonic clock (process.hrtime, the
    clock hostbridge.monotonic_us reads) in units of `divisor` ns, already wrapped to the ticks
    period, so it crosses into Python as a small int. hostbridge.monotonic_us's decimal string
    allocated ~110 bytes per call (the string, the big int, the masked big int); the firmware
    reads its clock ~400 times a second on the cabinet node, which a board does for nothing.
    None when the VM has no `js` module (then ticks come from monotonic_us)."""
    if hostbridge is None:
        return None
    try:
        import js

        return js.Function("return Number((process.hrtime.bigint() / %dn) & %dn)" % (divisor, _MASK))
    except Exception:  # noqa: BLE001 - any VM without the js module or Function: the slow path
        return None


_js_us = _js_ticks(1000)
_js_ms = _js_ticks(1000000)


def ticks_us():
    if _js_us is not None:
        return _js_us()
    return _monotonic_us() & _MASK


def ticks_ms():
    if _js_ms is not None:
        return _js_ms()
    return (_monotonic_us() // 1000) & _MASK


class Flag:
    """asyncio.Event stands in for ThreadSafeFlag: the VM's asyncio has no ThreadSafeFlag, and host
    'interrupts' are delivered from the event loop anyway."""

    def __init__(self):
        self._event = asyncio.Event()

    def set(self):
        self._event.set()

    async def wait(self):
        await self._event.wait()
        self._event.clear()


class _Connection:
    """A byte stream to a loopback TCP address, through asyncio (CPython) or hostbridge (VM)."""

    def __init__(self, address):
        self.address = address
        self._reader = self._writer = self._js = None
        self._js_read = self._js_write = None

    async def open(self):
        host, port = self.address.rsplit(":", 1)
        if hostbridge is not None:
            self._js = await hostbridge.connect(host, int(port))
            # Looked up once: each lookup of a JS method makes a new proxy object in the heap.
            self._js_read = self._js.read
            self._js_write = self._js.write
        else:
            self._reader, self._writer = await asyncio.open_connection(host, int(port))
        return self

    async def read(self, max_bytes=256):
        _io[0] += 1
        if self._js is not None:
            data = bytes(await self._js_read(max_bytes))
        else:
            data = await self._reader.read(max_bytes)
        if not data:
            raise OSError("connection to %s closed" % self.address)
        return data

    async def write(self, data):
        _io[1] += 1
        if self._js is not None:
            # As a hex string: a str crosses into JS by value, a bytes object as a proxy that the
            # VM keeps in its heap until JS finalizes it, which grew the heap ~60 B a write.
            self._js_write(hexlify(data).decode())
        else:
            self._writer.write(bytes(data))
            await self._writer.drain()

    def close(self):
        if self._js is not None:
            self._js.close()
        elif self._writer is not None:
            self._writer.close()


class Uart:
    """A bus of the board config, joined by the harness to a virtual wire."""

    def __init__(self, bus):
        address = _host["uarts"].get(bus["id"])
        if address is None:
            raise OSError("the harness gave no address for bus %r" % bus["id"])
        self.bus = bus
        self._conn = _Connection(address)
        self._opened = False
        self._opening = asyncio.Lock()  # a first read and a first write must share one connection
        self._pending = b""

    async def _ensure(self):
        if not self._opened:
            async with self._opening:
                if not self._opened:
                    await self._conn.open()
                    self._opened = True

    async def read(self, max_bytes=256):
        if not self._opened:  # tested here: a coroutine call per read costs a frame in the heap
            await self._ensure()
        if self._pending:
            data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return data
        data = await self._conn.read(max_bytes)
        if len(data) > max_bytes:
            data, self._pending = data[:max_bytes], data[max_bytes:]
        return data

    async def write(self, data):
        if not self._opened:
            await self._ensure()
        await self._conn.write(data)

    def discard_input(self):
        self._pending = b""

    def close(self):
        self._conn.close()


async def open_link(link):
    conn = _Connection(_host["link"])
    return await conn.open()


async def start():
    """Connect the control channel and start delivering pin edges (and the heap probe, when the
    host section asks for one)."""
    global _control
    if _host.get("control") and _control is None:
        _control = await _Connection(_host["control"]).open()
        asyncio.create_task(_control_reader())
    if _host.get("heap_probe_ms") and hasattr(gc, "mem_alloc"):
        asyncio.create_task(_heap_probe(_host["heap_probe_ms"], _host.get("heap_probe_report_s", 2),
                                        _host.get("heap_probe_settle_s", 10)))


async def _heap_probe(period_ms, report_s, settle_s=10, live_every=5):
    """For bench/firmware_footprint.py: the heap as allocated, garbage included, which the app's
    watch_heap (live heap right after a collection) does not see. Every period_ms, without
    collecting: the largest gc.mem_alloc() seen, and the sum of its rises (what was allocated
    between samples: a lower bound of the allocation rate, since a collection between two samples
    hides what was allocated before it). Every live_every-th sample it collects first instead,
    and keeps the peak of that live heap from settle_s after it started (the running node, past
    the boot's module loading). Reported with the bridge I/O counts as one line,
    "[hal] heap probe ...", every report_s."""
    last = peak = gc.mem_alloc()
    steady = -1
    grown = 0
    start = ticks_ms()
    every = max(1, report_s * 1000 // period_ms)
    n = 0
    while True:
        await asyncio.sleep(period_ms / 1000)
        n += 1
        used = gc.mem_alloc()
        if used > last:
            grown += used - last
        if used > peak:
            peak = used
        if n % live_every == 0:
            gc.collect()
            used = gc.mem_alloc()
            if used > steady and ticks_diff(ticks_ms(), start) >= settle_s * 1000:
                steady = used
        last = used
        if n % every == 0:
            print("[hal] heap probe: seen_peak=%d allocated=%d ms=%d reads=%d writes=%d steady_live=%d"
                  % (peak, grown, ticks_diff(ticks_ms(), start), _io[0], _io[1], steady))


async def _control_reader():
    buf = b""
    while True:
        buf += await _control.read(512)
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.split()
            if len(parts) == 4 and parts[0] == b"E":
                entry = _pins.get(int(parts[1]))
                if entry is not None:
                    queue, flag, index = entry
                    queue.push(index, int(parts[2]), int(parts[3]) & _MASK)
                    flag.set()


class InputPins:
    def __init__(self, pins, queue, flag):
        for index, pin in enumerate(pins):
            _pins[pin] = (queue, flag, index)


class OutputPin:
    def __init__(self, pin):
        self.pin = pin
        self._value = 0

    def value(self, v=None):
        if v is None:
            return self._value
        self._value = 1 if v else 0
        if _control is not None:
            asyncio.create_task(_control.write(("O %d %d\n" % (self.pin, self._value)).encode()))


class Watchdog:
    """Resets the node (exits with RESET_EXIT_CODE) when not fed within timeout_ms, like the WDT."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self._fed = ticks_ms()
        asyncio.create_task(self._watch())

    def feed(self):
        self._fed = ticks_ms()

    async def _watch(self):
        while True:
            await asyncio.sleep(self.timeout_ms / 4000)
            if ticks_diff(ticks_ms(), self._fed) > self.timeout_ms:
                reset("watchdog")


def unique_id():
    return str(_host.get("uid", "host")).encode()


def random_u32():
    if hostbridge is not None:
        return int(hostbridge.random_u32())
    import os

    return int.from_bytes(os.urandom(4), "big")


def mem_free():
    return gc.mem_free() if hasattr(gc, "mem_free") else None


def mem_alloc():
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else None


def collect():
    gc.collect()


def _path(path):
    return _host["fs_root"].rstrip("/") + "/" + path.lstrip("/")


def read_file(path):
    if hostbridge is not None:
        data = hostbridge.read_file(path)
        return None if data is None else bytes(data)
    try:
        with open(_path(path), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def write_file(path, data):
    if hostbridge is not None:
        hostbridge.write_file(path, hexlify(data).decode())  # hex: see _Connection.write
        return
    tmp = _path(path) + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    import os

    os.rename(tmp, _path(path))


def reset(reason="reset"):
    """Reboot: the harness sees the exit code and starts the node again (a new boot id)."""
    sys.stdout.write("[hal] reset: %s\n" % reason)
    if hostbridge is not None:
        hostbridge.exit(RESET_EXIT_CODE)
    import os

    try:
        sys.stdout.flush()
    except AttributeError:
        pass
    os._exit(RESET_EXIT_CODE)
