"""Emulated field devices for the harness, each with a ground-truth log of what it sent.

UART devices serve their byte stream on a loopback TCP port, the address the host HAL's Uart
connects to (the board config's host["uarts"][bus_id]). `UartDeviceServer` is that shared part:
one client at a time (a reconnecting node replaces the old connection), a feed of the bytes the
node writes, a paced task for unprompted output, the log, and the fault switches every frame
device shares: inject() a damaged frame before the next good one, go_silent() / resume().
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["INJECTIONS", "TruthEntry", "UartDeviceServer"]

# What inject() can put on the line ahead of the next good frame.
INJECTIONS = ("bad_checksum", "truncated", "garbage")


@dataclass
class TruthEntry:
    """One thing the device did or saw: `kind` says what ("frame", "bad_checksum", "command", ...),
    `data` the bytes on the wire, `info` the decoded meaning (values, command, mode)."""

    t: float
    kind: str
    data: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)


class UartDeviceServer:
    """Loopback TCP serving for an emulated UART device; subclasses implement `on_bytes` (what the
    node wrote) and `on_period` (called every `period_s` while a node is connected)."""

    def __init__(self, *, period_s: float, host: str = "127.0.0.1", seed: int = 1) -> None:
        self.period_s = period_s
        self.host = host
        self.silent = False
        self._injections: deque[str] = deque()
        self._rng = random.Random(seed)
        self.log: list[TruthEntry] = []
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.connections = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen on a free loopback port; returns "host:port" for host["uarts"]."""
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self._spawn(self._pacer())
        return self.address

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return "%s:%d" % (self.host, self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> "UartDeviceServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the log -----------------------------------------------------------------------------

    def record(self, kind: str, data: bytes = b"", **info: Any) -> TruthEntry:
        entry = TruthEntry(time.monotonic(), kind, bytes(data), info)
        self.log.append(entry)
        self._changed.set()
        return entry

    def entries(self, kind: str) -> list[TruthEntry]:
        return [e for e in self.log if e.kind == kind]

    async def wait_until(self, predicate: Any, timeout: float = 20.0) -> None:
        """Wait until predicate() is true, re-checking whenever the log grows."""
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    # -- faults ------------------------------------------------------------------------------

    def inject(self, kind: str, count: int = 1) -> None:
        """Send a damaged frame (`kind` in INJECTIONS) ahead of each of the next `count` frames."""
        if kind not in INJECTIONS:
            raise ValueError(f"unknown injection {kind!r}: use one of {INJECTIONS}")
        self._injections.extend([kind] * count)

    @property
    def pending_injections(self) -> int:
        return len(self._injections)

    def go_silent(self) -> None:
        """Stop sending anything (a dead sensor or a broken TX wire) until resume()."""
        self.silent = True
        self.record("silent")

    def resume(self) -> None:
        self.silent = False
        self.record("resume")

    def take_injection(self) -> str | None:
        return self._injections.popleft() if self._injections else None

    def garbage(self, avoid: int) -> bytes:
        """1..40 random bytes, none equal to `avoid` (the frame's first byte), so they cannot
        pass for a frame."""
        return bytes(b if b != avoid else b ^ 0xFF
                     for b in self._rng.randbytes(self._rng.randint(1, 40)))

    # -- I/O ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def send(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        self.connections += 1
        self.record("connect")
        try:
            while True:
                data = await reader.read(256)
                if not data:
                    break
                self.on_bytes(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self.record("disconnect")
            writer.close()

    async def _pacer(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += self.period_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            if self._writer is not None:
                self.on_period()

    def on_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def on_period(self) -> None:
        raise NotImplementedError
