"""Join a TCP client on loopback to a serial device: how the host HAL's Uart (a TCP connection to
`host["uarts"][bus]`) reaches a device on a VirtualWire end or any other tty.

    async with VirtualWire(baud=19200, framing="8E1") as wire, \\
            UartBridge(wire.a_path, baud=19200, framing="8E1") as bridge:
        host = {"uarts": {"rs485": bridge.address}}   # "127.0.0.1:PORT"

One client at a time, like one node on one port: a new connection replaces the old one (a node
that reboots reconnects before the old socket is noticed dead), and serial input that arrives with
no client connected is dropped and counted, as a real UART's would be. The serial side is a raw fd
in raw mode (no byte is ever translated), opened for the bridge's whole life; the timing belongs
to whatever is behind it (the wire emulates the baud rate, the bridge adds only the TCP hop).
"""

from __future__ import annotations

import asyncio
import errno
import os
import termios
import tty
from dataclasses import dataclass
from typing import Self

__all__ = ["BridgeCounters", "UartBridge", "UartBridgeError"]

_PARITY = {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}
READ_CHUNK = 4096
SERIAL_RETRY_S = 0.05


class UartBridgeError(Exception):
    """The bridge cannot run: `path` and a one-sentence `reason`."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"uart bridge on {path}: {reason}")


@dataclass
class BridgeCounters:
    """Bytes each way, connections accepted, serial bytes dropped for want of a client, and
    times the serial side failed (EIO)."""

    to_serial: int = 0
    from_serial: int = 0
    connections: int = 0
    dropped_no_client: int = 0
    serial_errors: int = 0


def _configure(fd: int, baud: int, framing: str) -> None:
    """Raw mode, and the line settings a real port would get (a pty stores and ignores them)."""
    framing = framing.upper()
    if len(framing) != 3 or framing[0] != "8" or framing[1] not in _PARITY or framing[2] not in "12":
        raise ValueError(f"framing {framing!r} is not one of 8N1, 8N2, 8E1, 8O1")
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    cflag = attrs[2] & ~(termios.PARENB | termios.PARODD | termios.CSTOPB | termios.CSIZE)
    cflag |= termios.CS8 | _PARITY[framing[1]] | termios.CLOCAL | termios.CREAD
    if framing[2] == "2":
        cflag |= termios.CSTOPB
    attrs[2] = cflag
    speed = getattr(termios, f"B{baud}", None)
    if speed is None:
        raise ValueError(f"baud {baud} is not a standard termios speed")
    attrs[4] = attrs[5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class UartBridge:
    """A loopback TCP server relaying bytes both ways between one client and `serial_path`."""

    def __init__(self, serial_path: str, baud: int = 19200, framing: str = "8E1", *,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.serial_path = serial_path
        self.baud = baud
        self.framing = framing
        self.counters = BridgeCounters()
        self._host = host
        self._port = port
        self._fd: int | None = None
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._backlog = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        """"127.0.0.1:PORT", the form the host HAL's config takes."""
        if self._server is None:
            raise UartBridgeError(self.serial_path, "not started: use `async with UartBridge(...)`")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            fd = os.open(self.serial_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise UartBridgeError(self.serial_path, f"cannot open it ({exc.strerror})") from exc
        try:
            _configure(fd, self.baud, self.framing)
            termios.tcflush(fd, termios.TCIOFLUSH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._loop.add_reader(fd, self._serial_readable)
        try:
            self._server = await asyncio.start_server(self._on_client, self._host, self._port)
        except BaseException:
            self._close_fd()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_client()
        if self._client_task is not None:
            self._client_task.cancel()
            try:
                await self._client_task
            except (asyncio.CancelledError, ConnectionError):
                pass
            self._client_task = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._close_fd()

    # -- internals -----------------------------------------------------------------------------

    def _close_fd(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            os.close(self._fd)
            self._fd = None

    def _drop_client(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A new client replaces the old: the node behind the old socket is gone or rebooting.
        old = self._client_task
        self._drop_client()
        if old is not None:
            old.cancel()
        self._writer = writer
        self._client_task = asyncio.current_task()
        self.counters.connections += 1
        self._backlog.clear()
        if self._fd is not None:
            termios.tcflush(self._fd, termios.TCIFLUSH)  # what arrived before it is stale
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                self._to_serial(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._writer is writer:
                self._drop_client()
            else:
                writer.close()
            if self._client_task is asyncio.current_task():
                self._client_task = None

    def _to_serial(self, data: bytes) -> None:
        if self._fd is None:
            return
        self.counters.to_serial += len(data)
        if self._backlog:
            self._backlog += data
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._serial_gone()
            return
        if n < len(data):  # the line is slower than TCP: keep order, flush when it drains
            self._backlog += data[n:]
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        assert self._fd is not None and self._loop is not None
        try:
            n = os.write(self._fd, self._backlog)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._serial_gone()
            return
        del self._backlog[:n]
        if not self._backlog:
            self._loop.remove_writer(self._fd)

    def _serial_gone(self) -> None:
        """EIO or EOF: the far side of a pty went away (a wire closing). Stop watching the fd, which
        would otherwise report readable forever, and look again shortly, as a USB adapter that
        was pulled and plugged back in would need."""
        assert self._fd is not None and self._loop is not None
        self.counters.serial_errors += 1
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._backlog.clear()
        self._loop.call_later(SERIAL_RETRY_S, self._serial_retry)

    def _serial_retry(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.add_reader(self._fd, self._serial_readable)

    def _serial_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._serial_gone()
            return
        if not data:  # readable yet empty: a hangup (the pty's master closed)
            self._serial_gone()
            return
        self.counters.from_serial += len(data)
        if self.connected:
            assert self._writer is not None
            self._writer.write(data)
        else:
            self.counters.dropped_no_client += len(data)
