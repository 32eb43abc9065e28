"""Node-side link frames for the gateway benchmarks: encode a node's HELLO and DATA frames ahead of
time (protocols/ only, as a node would), and replay them to a gateway over TCP.

    table = stream_table(streams)
    frames = data_frames(readings, table, per_frame=100)      # [(seq, bytes)], seqs from 2
    async with TcpNode("bench", table, host, port) as node:     # sends HELLO, waits for its ACK
        await node.send_all(frames)                            # returns once all are ACKed

A benchmark node is not a firmware node: it never resends (loopback loses nothing) and does not
keep a ring; it sends, reads ACKs and keeps count. Everything it sends is valid for the gateway's
session (HELLO first, seqs in order, ticks of one boot).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.link_frame import ACK, DATA, HEALTH, HELLO, LinkFrameDecoder, LinkFrameError, encode_frame  # noqa: E402
from protocols.link_messages import decode_message, encode_message  # noqa: E402
from protocols.ticks import TICKS_PERIOD  # noqa: E402

__all__ = ["MAX_PAYLOAD", "TcpNode", "data_frame", "data_frames", "health_frame", "host_tick",
           "stream_table"]

MAX_PAYLOAD = 4096  # gateway/node_link.py MAX_PAYLOAD


def host_tick() -> int:
    return (time.monotonic_ns() // 1_000_000) & (TICKS_PERIOD - 1)


def stream_table(streams: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """HELLO's stream table [[sid, name, unit, kind, dec], ...] from (name, unit, kind, dec)."""
    return [[sid, *s] for sid, s in enumerate(streams)]


def data_frame(seq: int, tick: int, t0: int, measurements: Sequence[tuple[int, int, Any]],
               events: Sequence[tuple[int, int, int]] = ()) -> bytes:
    """One DATA frame: measurements (sid, dt ms after t0, value), events (dt, code, param)."""
    message: dict[str, Any] = {"tick": tick, "t0": t0,
                               "m": [x for m in measurements for x in m]}
    if events:
        message["e"] = [x for e in events for x in e]
    return encode_frame(DATA, seq, encode_message(DATA, message), MAX_PAYLOAD)


def health_frame(seq: int, tick: int, uptime_ms: int) -> bytes:
    message = {"tick": tick, "uptime_ms": uptime_ms, "heap_free": 21_000, "heap_min": 17_500,
               "dev": {"dev1": {"frames": uptime_ms // 1000, "timeouts": 0}},
               "loss": {"ring_overflow": 0, "outbox_dropped": 0, "resent": 0}}
    return encode_frame(HEALTH, seq, encode_message(HEALTH, message), MAX_PAYLOAD)


def data_frames(readings: Sequence[tuple[str, Any, Any]], table: Sequence[Sequence[Any]], *,
                per_frame: int, first_seq: int = 2, tick0: int = 0,
                ms_per_reading: int = 1) -> list[tuple[int, bytes]]:
    """Frames of `per_frame` readings each. A reading is ("m", stream name, value) or
    ("e", code, param); reading i is stamped tick0 + i * ms_per_reading."""
    sid = {entry[1]: entry[0] for entry in table}
    out = []
    seq = first_seq
    for start in range(0, len(readings), per_frame):
        chunk = readings[start:start + per_frame]
        t0 = (tick0 + start * ms_per_reading) & (TICKS_PERIOD - 1)
        m, e = [], []
        for i, (kind, a, b) in enumerate(chunk):
            dt = i * ms_per_reading
            if kind == "m":
                m.append((sid[a], dt, b))
            else:
                e.append((dt, a, b))
        tick = (t0 + (len(chunk) - 1) * ms_per_reading) & (TICKS_PERIOD - 1)
        out.append((seq, data_frame(seq, tick, t0, m, e)))
        seq += 1
    return out


class TcpNode:
    """A node on a TCP link: HELLO (seq 1) on connect, then whatever it is given to send."""

    def __init__(self, node: str, table: Sequence[Sequence[Any]], host: str, port: int, *,
                 boot: int | None = None) -> None:
        self.node = node
        self.table = [list(t) for t in table]
        self.host, self.port = host, port
        self.boot = random.randrange(1 << 32) if boot is None else boot
        self.acked = 0
        self.sent_bytes = 0
        self._acked_event = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.create_task(self._read())
        hello = {"node": self.node, "fw": "bench-1", "cfg": "bench", "boot": self.boot,
                 "tick": host_tick(), "streams": self.table, "errors": [],
                 "lo": 1}  # seqs start at 1 in a boot: nothing below it to wait for
        await self.write(b"\x00" + encode_frame(HELLO, 1, encode_message(HELLO, hello), MAX_PAYLOAD))
        await self.wait_acked(1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        self.sent_bytes += len(data)
        await self._writer.drain()

    async def wait_acked(self, seq: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while self.acked < seq:
                self._acked_event.clear()
                await self._acked_event.wait()

    async def send_all(self, frames: Sequence[tuple[int, bytes]], *, chunk: int = 64 * 1024) -> None:
        """Write every frame as fast as the gateway reads, then wait for the ACK of the last."""
        blob = b"".join(f for _, f in frames)
        for start in range(0, len(blob), chunk):
            await self.write(blob[start:start + chunk])
        if frames:
            await self.wait_acked(frames[-1][0], timeout=600)

    async def _read(self) -> None:
        assert self._reader is not None
        decoder = LinkFrameDecoder(MAX_PAYLOAD)
        while data := await self._reader.read(65536):
            for item in decoder.feed(data):
                if isinstance(item, LinkFrameError) or item.type != ACK:
                    continue
                seq = decode_message(ACK, item.payload)["seq"]
                if seq > self.acked:
                    self.acked = seq
                    self._acked_event.set()
