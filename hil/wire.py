"""Virtual serial wires: two pseudo-terminals joined by a task that keeps real line timing and faults.

Each end is a pty whose slave path (`wire.a_path`, `wire.b_path`, e.g. /dev/pts/7) a program opens
with pyserial, pymodbus or mpremote exactly like /dev/ttyUSB0; the wire holds the masters. What the
program at A writes, the program at B reads one character time per byte later, through the fault
model of `hil.faults.Line`.

    async with VirtualWire(baud=19200, framing="8E1") as wire:
        ...  # open wire.a_path and wire.b_path
        wire.set_faults(FaultSettings(bit_error_rate=1e-4))
        wire.unplug(); wire.replug()

    with VirtualWire.running_in_thread(baud=9600) as wire:  # for blocking callers
        ...

Like a real port, a closed end hears nothing: bytes due to it are counted lost, never queued for
the next program that opens it, and the wire simply waits for the port to be opened again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import functools
import math
import os
import select
import struct
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Self, TypeVar

from hil.faults import (
    DIRECTIONS,
    Direction,
    FaultEvent,
    FaultSettings,
    Framing,
    Line,
    LineCounters,
    WireConfigError,
    WireError,
)

__all__ = [
    "Direction", "FaultEvent", "FaultSettings", "Framing", "LineCounters", "VirtualWire",
    "WireActivity", "WireConfigError", "WireError", "WireStateError", "WireThread",
    "WireTimeoutError",
]

End = Literal["a", "b"]
Which = Literal["a_to_b", "b_to_a", "both"]
T = TypeVar("T")

# While nobody has an end open, the master only reports POLLHUP, and opening the slave raises no
# event: look again this often. Bytes a program writes in the meantime wait in the pty, not lost.
REOPEN_POLL_S = 0.002
READ_CHUNK = 4096


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_TFD_TIMER_ABSTIME = 1  # linux/timerfd.h


def _libc_timerfd() -> Any:
    """libc, when it has timerfd_create (Linux); None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                         ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc_timerfd() if hasattr(time, "CLOCK_MONOTONIC") else None


class _DeliveryTimer:
    """A one-shot timer at an absolute event-loop time, to the microsecond. asyncio's call_at
    waits in epoll, whose timeout is whole milliseconds (CPython rounds it up), so a byte due
    95 µs from now at 115200 baud was handed over up to a millisecond late: bench/modbus_rate.py
    measured 0.35 ms (115200) to 0.8 ms (9600) of lateness at the end of every frame, time the
    emulated line does not have. On Linux a timerfd on CLOCK_MONOTONIC (the loop's clock) makes
    epoll itself wake at the deadline; elsewhere this falls back to call_at."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self.when: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        if _LIBC is not None:
            # CLOCK_MONOTONIC: the clock of time.monotonic(), which the event loop's time() reads.
            fd = _LIBC.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._fired)

    def arm(self, when: float) -> None:
        if when == self.when:
            return
        self.when = when
        if self._fd < 0:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._run)
            return
        # Rounded up, so the loop's clock has reached `when` when it fires; an all-zero time would
        # disarm the timer, a past one fires at once.
        ns = max(1, math.ceil(when * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        if _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def disarm(self) -> None:
        if self.when is None:
            return
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            spec = _Itimerspec()
            _LIBC.timerfd_settime(self._fd, 0, ctypes.byref(spec), None)
            self._drain()

    def close(self) -> None:
        self.disarm()
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _drain(self) -> bool:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return False
        return True

    def _fired(self) -> None:
        if self._drain() and self.when is not None:
            self._run()

    def _run(self) -> None:
        self._handle = None
        self.when = None
        self._callback()


class WireActivity(NamedTuple):
    """One step of the line, for timing studies: at `t` (monotonic seconds) the wire read `size`
    bytes a program had written ("sent"), or handed `size` bytes to the receiving program
    ("received"); for "received", `due` is when the last of them finished on the line (t - due is
    the emulator's own lateness), for "sent" it is `t`."""

    t: float
    direction: Direction
    kind: Literal["sent", "received"]
    size: int
    due: float


class WireStateError(WireError):
    """The wire was used outside its lifetime; `state` says which ("not started", "closed")."""

    def __init__(self, state: str, action: str) -> None:
        self.state = state
        self.action = action
        super().__init__(f"virtual wire is {state}: cannot {action}")


class WireTimeoutError(WireError):
    """A wait on the wire did not end in time; `timeout` is how long it waited, in seconds."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        super().__init__(f"virtual wire did not become {what} within {timeout} s")


class _PtyEnd:
    """One end: a pty master, watching whether a program has the slave open."""

    def __init__(
        self,
        name: End,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_written: Callable[[int], None],
        on_state: Callable[[End, bool, bytes], None],
    ) -> None:
        self.name = name
        self._loop = loop
        self._on_data = on_data
        self._on_written = on_written
        self._on_state = on_state
        master, slave = os.openpty()
        try:
            self.path = os.ttyname(slave)
            tty.setraw(slave)  # persists on the pty across opens: no byte is ever translated
            os.set_blocking(master, False)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # hold only the master, so a program closing the port gives us EIO
        self.master = master
        self.is_open = False
        self._backlog = bytearray()
        self._poll_handle: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._watch_for_open()

    def refresh(self) -> bool:
        """Catch an open the poll has not seen yet, so bytes due now are not wrongly lost."""
        if not self.is_open and not self._closed and not self._slave_closed():
            self._opened()
        return self.is_open

    def write(self, data: bytes) -> bool:
        """Hand bytes to the program; False when its port is closed (the bytes go nowhere).
        Bytes the kernel takes are reported through `on_written`."""
        if not self.refresh():
            return False
        if self._backlog:
            self._backlog += data
            return True
        try:
            n = os.write(self.master, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._port_closed()
            return False
        if n:
            self._on_written(n)
        if n < len(data):  # the program is slow to read: keep order, flush when it drains
            self._backlog += data[n:]
            self._loop.add_writer(self.master, self._flush)
        return True

    def pending_input(self) -> int:
        """Bytes the program wrote that the wire has not read yet."""
        raw = fcntl.ioctl(self.master, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0]) + len(self._backlog)

    def close(self) -> None:
        self._closed = True
        if self._poll_handle is not None:
            self._poll_handle.cancel()
        self._loop.remove_reader(self.master)
        self._loop.remove_writer(self.master)
        os.close(self.master)

    def _slave_closed(self) -> bool:
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))

    def _watch_for_open(self) -> None:
        self._poll_handle = None
        if self._closed:
            return
        if self._slave_closed():
            self._poll_handle = self._loop.call_later(REOPEN_POLL_S, self._watch_for_open)
        else:
            self._opened()

    def _opened(self) -> None:
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        self.is_open = True
        self._loop.add_reader(self.master, self._readable)
        self._on_state(self.name, True, b"")

    def _readable(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._port_closed()  # EIO comes only after everything the program wrote was read
            return
        if data:
            self._on_data(data)

    def _flush(self) -> None:
        try:
            n = os.write(self.master, self._backlog)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._port_closed()
            return
        del self._backlog[:n]
        self._on_written(n)
        if not self._backlog:
            self._loop.remove_writer(self.master)

    def _port_closed(self) -> None:
        self.is_open = False
        self._loop.remove_reader(self.master)
        self._loop.remove_writer(self.master)
        lost = bytes(self._backlog)
        self._backlog.clear()
        self._discard_unread()
        self._on_state(self.name, False, lost)
        self._watch_for_open()

    def _discard_unread(self) -> None:
        """Throw away what the closed program never read: a real port's buffers die with its
        close, but a pty keeps them for the next opener (a flush on the master does not reach
        them), so flush them from a short-lived slave fd of our own."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            termios.tcflush(fd, termios.TCIFLUSH)
        finally:
            os.close(fd)


class VirtualWire:
    """Two pty ends joined by a timed, fault-injecting line; use `async with`."""

    def __init__(
        self,
        *,
        baud: int | None,
        framing: str = "8N1",
        faults: FaultSettings | None = None,
        faults_b_to_a: FaultSettings | None = None,
        half_duplex: bool = False,
        seed: int = 0,
        log: list[FaultEvent] | None = None,
        activity: list[WireActivity] | None = None,
    ) -> None:
        """`baud` None makes an untimed wire; `faults` apply to both directions unless
        `faults_b_to_a` is given; `half_duplex` makes it an RS-485 pair where simultaneous talkers
        garble each other (no local echo, as with most adapters); `log` receives every fault
        applied (ground truth, monotonic-clock times); `activity` receives every chunk read from
        and handed to the programs (WireActivity), for timing studies such as bench/modbus_rate.py."""
        self.framing = Framing.parse(framing)
        self.baud = baud
        self.char_time = self.framing.char_time(baud)
        self.half_duplex = half_duplex
        self.log = log
        self.activity = activity
        ab = faults or FaultSettings()
        ba = faults_b_to_a or ab
        self._lines: dict[Direction, Line] = {
            d: Line(direction=d, char_time=self.char_time, data_bits=self.framing.data_bits,
                    settings=s, seed=seed, log=log)
            for d, s in zip(DIRECTIONS, (ab, ba))
        }
        if half_duplex:
            self._lines["a_to_b"].peer = self._lines["b_to_a"]
            self._lines["b_to_a"].peer = self._lines["a_to_b"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ends: dict[End, _PtyEnd] = {}
        self._timers: dict[Direction, _DeliveryTimer] = {}
        self._state = "not started"

    @classmethod
    def running_in_thread(cls, **options: Any) -> WireThread:
        """A wire served by an event loop in a background thread, for blocking callers; `options`
        are VirtualWire's keywords. Use as `with VirtualWire.running_in_thread(baud=9600) as w:`."""
        return WireThread(cls(**options))

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._state != "not started":
            raise WireStateError(self._state, "start again")
        self._loop = asyncio.get_running_loop()
        try:
            plan: tuple[tuple[End, Direction, Direction], ...] = (("a", "a_to_b", "b_to_a"), ("b", "b_to_a", "a_to_b"))
            for name, sent, received in plan:
                self._ends[name] = _PtyEnd(name, self._loop, self._feeder(sent),
                                           self._lines[received].count_delivered, self._port_state)
            for d in DIRECTIONS:
                self._timers[d] = _DeliveryTimer(self._loop, functools.partial(self._deliver, d))
        except BaseException:
            for end in self._ends.values():
                end.close()
            for timer in self._timers.values():
                timer.close()
            raise
        self._state = "running"
        for end in self._ends.values():
            end.start()

    async def close(self) -> None:
        """Stop the line and close both masters; bytes still in flight are discarded."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        for timer in self._timers.values():
            timer.close()
        for end in self._ends.values():
            end.close()

    @property
    def a_path(self) -> str:
        return self._end("a", "give end a's path").path

    @property
    def b_path(self) -> str:
        return self._end("b", "give end b's path").path

    # -- faults and state (call from the wire's event loop; WireThread forwards for other threads)

    def set_faults(self, settings: FaultSettings, *, direction: Which = "both") -> None:
        """Change the per-byte fault probabilities for bytes written from now on."""
        now = self._now()
        for line in self._select(direction):
            line.set_settings(settings, now=now)

    def unplug(self, *, duration: float | None = None) -> None:
        """Pull the cable: nothing crosses either way until `replug()` or `duration` seconds."""
        now = self._now()
        until = math.inf if duration is None else now + duration
        for line in self._lines.values():
            line.unplug(now, until)

    def replug(self) -> None:
        now = self._now()
        for line in self._lines.values():
            line.replug(now)

    def stick(self, *, direction: Which = "both", duration: float | None = None, value: int | None = None) -> None:
        """Jam the line: the receiver gets nothing, or `value` repeated at the character rate,
        until `unstick()` or `duration` seconds."""
        now = self._now()
        until = math.inf if duration is None else now + duration
        for line in self._select(direction):
            line.stick(now, until, value)
            self._reschedule(line.direction)

    def unstick(self, *, direction: Which = "both") -> None:
        now = self._now()
        for line in self._select(direction):
            line.unstick(now)

    def unplugged(self) -> bool:
        return self._lines["a_to_b"].unplugged(self._now())

    def counters(self, direction: Direction) -> LineCounters:
        """A snapshot of one direction's counters."""
        if direction not in self._lines:
            raise WireConfigError("direction", direction, "must be 'a_to_b' or 'b_to_a'")
        return self._lines[direction].counters.copy()

    def port_open(self, end: End) -> bool:
        """Whether a program has end `end` ("a" or "b") open."""
        return self._end(end, "tell whether a port is open").refresh()

    def idle(self) -> bool:
        """Nothing is in flight: every byte the wire has seen was received, lost or dropped, and
        neither master has unread input. The kernel moves a program's write to the master side a
        moment later (a work queue), so wait for the expected `bytes_in` first when it matters."""
        if self._state != "running":
            return True
        return not any(line.busy() for line in self._lines.values()) and not any(
            end.pending_input() for end in self._ends.values())

    async def wait_idle(self, *, timeout: float = 5.0) -> None:
        """Wait until `idle()`, polling: raises WireTimeoutError after `timeout` seconds."""
        deadline = self._now() + timeout
        while not self.idle():
            if self._now() > deadline:
                raise WireTimeoutError("idle", timeout)
            await asyncio.sleep(REOPEN_POLL_S)

    # -- internals -----------------------------------------------------------------------------

    def _end(self, name: End, action: str) -> _PtyEnd:
        if self._state != "running":
            raise WireStateError(self._state, action)
        if name not in self._ends:
            raise WireConfigError("end", name, "must be 'a' or 'b'")
        return self._ends[name]

    def _select(self, direction: Which) -> list[Line]:
        if direction == "both":
            return list(self._lines.values())
        if direction not in self._lines:
            raise WireConfigError("direction", direction, "must be 'a_to_b', 'b_to_a' or 'both'")
        return [self._lines[direction]]

    def _now(self) -> float:
        # The event loop's clock is time.monotonic(); before start, read that directly.
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _feeder(self, direction: Direction) -> Callable[[bytes], None]:
        line = self._lines[direction]

        def feed(data: bytes) -> None:
            now = self._now()
            line.feed(data, now)
            if self.activity is not None:
                self.activity.append(WireActivity(now, direction, "sent", len(data), now))
            self._reschedule(direction)
        return feed

    def _reschedule(self, direction: Direction) -> None:
        if self._state != "running":
            return
        deadline = self._lines[direction].next_deadline()
        timer = self._timers[direction]
        if deadline is None:
            timer.disarm()
        else:
            timer.arm(deadline)

    def _deliver(self, direction: Direction) -> None:
        line = self._lines[direction]
        now = self._now()
        data = line.take_due(now)
        if data:
            end = self._ends["b" if direction == "a_to_b" else "a"]
            if not end.write(data):
                line.count_lost_closed(data, now, end.name)
            elif self.activity is not None:
                self.activity.append(WireActivity(now, direction, "received", len(data), line.last_due))
        self._reschedule(direction)

    def _port_state(self, name: End, is_open: bool, lost: bytes) -> None:
        now = self._now()
        if self.log is not None:
            self.log.append(FaultEvent(now, name, "port_open" if is_open else "port_closed", -1, ""))
        if lost:  # bytes still waiting for a slow reader when it closed its port
            self._lines["a_to_b" if name == "b" else "b_to_a"].count_lost_closed(lost, now, name)


class WireThread:
    """A VirtualWire served by its own event loop in a background thread. Its methods are the
    wire's, forwarded to that loop, so blocking code (pyserial, subprocesses) can drive it."""

    def __init__(self, wire: VirtualWire, *, start_timeout: float = 10.0) -> None:
        self.wire = wire
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="virtual-wire", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self._ready.result(timeout=self._start_timeout)
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    @property
    def a_path(self) -> str:
        return self._call(lambda: self.wire.a_path)

    @property
    def b_path(self) -> str:
        return self._call(lambda: self.wire.b_path)

    @property
    def log(self) -> list[FaultEvent] | None:
        return self.wire.log

    def set_faults(self, settings: FaultSettings, *, direction: Which = "both") -> None:
        self._call(lambda: self.wire.set_faults(settings, direction=direction))

    def unplug(self, *, duration: float | None = None) -> None:
        self._call(lambda: self.wire.unplug(duration=duration))

    def replug(self) -> None:
        self._call(self.wire.replug)

    def stick(self, *, direction: Which = "both", duration: float | None = None, value: int | None = None) -> None:
        self._call(lambda: self.wire.stick(direction=direction, duration=duration, value=value))

    def unstick(self, *, direction: Which = "both") -> None:
        self._call(lambda: self.wire.unstick(direction=direction))

    def unplugged(self) -> bool:
        return self._call(self.wire.unplugged)

    def counters(self, direction: Direction) -> LineCounters:
        """Also readable after the thread has stopped, for accounting at the end of a run."""
        return self._call(lambda: self.wire.counters(direction))

    def port_open(self, end: End) -> bool:
        return self._call(lambda: self.wire.port_open(end))

    def idle(self) -> bool:
        return self._call(self.wire.idle)

    def wait_idle(self, *, timeout: float = 5.0) -> None:
        future = asyncio.run_coroutine_threadsafe(self.wire.wait_idle(timeout=timeout), self._running_loop())
        future.result(timeout + 5.0)

    def wait_until(self, predicate: Callable[[WireThread], bool], *, timeout: float = 5.0, what: str = "ready") -> None:
        """Poll `predicate(self)` until it holds; raises WireTimeoutError naming `what`."""
        event = threading.Event()
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise WireTimeoutError(what, timeout)
            event.wait(REOPEN_POLL_S)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or not self._thread.is_alive():
            raise WireStateError("not running in its thread", "wait for it")
        return self._loop

    def _call(self, fn: Callable[[], T], *, timeout: float = 10.0) -> T:
        """Run `fn` on the wire's loop and hand its result or exception to this thread; once the
        thread has ended nothing else touches the wire, so run it here (the wire says if closed)."""
        if self._thread.ident is not None and not self._thread.is_alive():
            return fn()
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                result.set_exception(exc)
        self._running_loop().call_soon_threadsafe(run)
        return result.result(timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self.wire:
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            else:
                raise

    def _shutdown(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already closed
                pass
        if self._thread.ident is not None:  # it was started
            self._thread.join(timeout=10.0)

