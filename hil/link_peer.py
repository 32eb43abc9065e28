"""A small gateway for the firmware link tests, built only from protocols/ (LinkFrameDecoder,
encode_frame, link_messages): it serves the node link on a loopback TCP port, records every frame it
receives and acknowledges them the way the real gateway must, or not, as the test says.

Acknowledgement follows the node link's contract (firmware/link_client.py, "Numbering"): ACK.seq is
the highest seq s of the node's current boot such that every seq <= s was accepted or is below a
frame's "lo" (given up by the node). ack_mode:

    "auto"      accept and acknowledge every frame (the ACK echoes the tick of the frame that
                triggered it, or of the last frame that had one, and carries the host's UTC ms)
    "withhold"  accept and record, but send no ACK (send_ack() sends one on demand)
    "drop"      behave as if the frame never arrived (recorded with dropped=True, nothing else)

Besides: send CMDs and wait for their RESULT, send raw bytes (garbage, corrupted frames), drop the
connection. The node's ticks are the host's CLOCK_MONOTONIC in ms modulo 2**30 (firmware/hal_host.py),
so host_tick() is the node's tick now.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols.link_frame import (
    ACK,
    CMD,
    DATA,
    HEALTH,
    HELLO,
    RESULT,
    LinkFrame,
    LinkFrameDecoder,
    LinkFrameError,
    encode_frame,
)
from protocols.link_messages import LinkMessageError, decode_message, encode_message
from protocols.ticks import TICKS_PERIOD, ticks_add

NODE_TYPES = (HELLO, DATA, RESULT, HEALTH)  # what a node sends


def host_tick() -> int:
    """The node's ticks_ms now (host HAL: monotonic ms modulo 2**30)."""
    return (time.monotonic_ns() // 1_000_000) & (TICKS_PERIOD - 1)


def utc_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Received:
    conn: int  # 1 for the first connection, 2 for the next, ...
    type: int
    seq: int
    message: dict | None  # None when the payload did not decode
    payload: bytes
    new: bool  # the first accepted copy of this seq (the gateway would spool it)
    dropped: bool  # ack_mode was "drop": the peer pretended not to see it


class LinkPeer:
    def __init__(self, *, ack_mode: str = "auto") -> None:
        self.ack_mode = ack_mode
        self.frames: list[Received] = []
        self.errors: list[LinkFrameError | LinkMessageError] = []
        self.acks: list[dict[str, int]] = []
        self.results: dict[int, dict] = {}
        self.connections = 0
        self.boot: int | None = None
        self.floor = 0  # every seq <= floor of this boot is accepted or given up
        self._accepted: set[int] = set()
        self._pending: set[int] = set()  # accepted above floor
        self._last_tick = 0
        self._cmd_id = 0
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.base_events.Server | None = None
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> LinkPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def address(self) -> str:
        assert self._server is not None
        return "127.0.0.1:%d" % self._server.sockets[0].getsockname()[1]

    # -- what arrived -------------------------------------------------------------------------------

    def of_type(self, frame_type: int, *, conn: int | None = None, new: bool | None = None,
                dropped: bool = False) -> list[Received]:
        return [r for r in self.frames if r.type == frame_type and r.dropped == dropped
                and (conn is None or r.conn == conn) and (new is None or r.new == new)]

    def data_messages(self) -> list[tuple[int, dict]]:
        """(seq, message) of every accepted DATA frame, first copies, in seq order."""
        return sorted((r.seq, r.message) for r in self.of_type(DATA, new=True) if r.message)

    def readings(self, frames: list[Received] | None = None) -> list[tuple]:
        """Every reading in `frames` (default: accepted DATA) in frame order, as
        ("s", sid, tick, value, fault, detail) and ("e", tick, code, param); tick = t0 + dt."""
        if frames is None:
            messages = [m for _, m in self.data_messages()]
        else:
            messages = [r.message for r in sorted(frames, key=lambda r: r.seq) if r.message]
        out: list[tuple] = []
        for m in messages:
            f = m.get("f", [])
            faults = {f[i]: (f[i + 1], f[i + 2]) for i in range(0, len(f), 3)}
            for n in range(len(m["m"]) // 3):
                sid, dt, value = m["m"][3 * n:3 * n + 3]
                fault, detail = faults.get(n, (None, None))
                out.append(("s", sid, ticks_add(m["t0"], dt), value, fault, detail))
            e = m.get("e", [])
            for i in range(0, len(e), 3):
                out.append(("e", ticks_add(m["t0"], e[i]), e[i + 1], e[i + 2]))
        return out

    async def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        """Wait until predicate() is truthy (re-checked whenever something arrives); returns it."""
        async def check() -> Any:
            async with self._changed:
                await self._changed.wait_for(predicate)
                return predicate()

        try:
            return await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            kinds = [(r.conn, r.type, r.seq, r.dropped) for r in self.frames[-20:]]
            raise AssertionError(f"timed out waiting for {what}; last frames (conn, type, seq, "
                                 f"dropped): {kinds}; link errors: {self.errors[-5:]}") from None

    # -- sending ------------------------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None, "no node is connected"
        self._writer.write(data)
        await self._writer.drain()

    def send_ack(self, seq: int | None = None, tick: int | None = None) -> None:
        """An ACK now: cumulative to the floor unless `seq` says otherwise."""
        message = {"seq": self.floor if seq is None else seq, "utc": utc_ms(),
                   "tick": self._last_tick if tick is None else tick}
        self.acks.append(message)
        self._write(encode_frame(ACK, 0, encode_message(ACK, message)))

    def send_command(self, op: str, args: dict | None = None) -> int:
        self._cmd_id += 1
        message = {"id": self._cmd_id, "op": op, "args": args or {}}
        self._write(encode_frame(CMD, self._cmd_id, encode_message(CMD, message)))
        return self._cmd_id

    async def command(self, op: str, args: dict | None = None, timeout: float = 30.0) -> dict:
        """Send a CMD and return the RESULT message that answers it."""
        cid = self.send_command(op, args)
        return await self.wait_for(lambda: self.results.get(cid), f"the RESULT of {op}", timeout)

    async def disconnect(self) -> None:
        """Close the node's connection (it must reconnect)."""
        writer, self._writer = self._writer, None
        assert writer is not None, "no node is connected"
        writer.close()
        await writer.wait_closed()

    def _write(self, data: bytes) -> None:
        assert self._writer is not None, "no node is connected"
        self._writer.write(data)

    # -- serving ------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self._writer is not None:
            self._writer.close()
        self.connections += 1
        conn = self.connections
        self._writer = writer
        decoder = LinkFrameDecoder()
        try:
            while data := await reader.read(4096):
                for item in decoder.feed(data):
                    if isinstance(item, LinkFrameError):
                        self.errors.append(item)
                    else:
                        self._on_frame(conn, item)
                async with self._changed:
                    self._changed.notify_all()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
            async with self._changed:
                self._changed.notify_all()

    def _on_frame(self, conn: int, frame: LinkFrame) -> None:
        message = None
        try:
            message = decode_message(frame.type, frame.payload)
        except LinkMessageError as exc:
            self.errors.append(exc)
        if self.ack_mode == "drop" or message is None or frame.type not in NODE_TYPES:
            self.frames.append(Received(conn, frame.type, frame.seq, message, frame.payload,
                                        False, self.ack_mode == "drop"))
            return
        if frame.type == HELLO and message["boot"] != self.boot:
            self.boot = message["boot"]
            self.floor = 0
            self._accepted = set()
            self._pending = set()
        new = frame.seq not in self._accepted
        self._accepted.add(frame.seq)
        if frame.seq > self.floor:
            self._pending.add(frame.seq)
        lo = message.get("lo")
        if isinstance(lo, int) and lo - 1 > self.floor:
            self.floor = lo - 1
        while self.floor + 1 in self._pending:
            self.floor += 1
        self._pending = {s for s in self._pending if s > self.floor}
        self.frames.append(Received(conn, frame.type, frame.seq, message, frame.payload, new, False))
        if frame.type == RESULT and new:
            self.results[message["id"]] = message
        if isinstance(message.get("tick"), int):
            self._last_tick = message["tick"]
        if self.ack_mode == "auto":
            self.send_ack()
