"""The gateway's links to its nodes: serial ports and a TCP listener, frames in and ACK/CMD out.

    async with NodeLinks(config, sessions) as links:   # opens every link of boards.toml
        result = await links.command("cab-pico", "ping", {}, timeout=10)

Serial (uart, usb). One task per board keeps the board's gateway_port open (pyserial-asyncio-fast,
exclusive) and reopens it with a capped backoff when it fails or disappears (a USB adapter
unplugged). The port belongs to the board named in boards.toml; a HELLO naming another node is
refused (NodeSession counts it).

TCP (Wi-Fi nodes). One listener per configured port, bound to [gateway] tcp_bind (127.0.0.1 unless
configured otherwise). A connection is anonymous until its first HELLO names the node; a node that
boards.toml does not link over TCP on that port is refused and disconnected. A node that connects
again replaces its previous connection (a half-open one the node has given up on).

Each read goes through LinkFrameDecoder (garbage, bad CRCs and the like are counted and skipped,
never fatal) and the node frames of the read go to the node's NodeSession together, so the frames
of a burst share one spool commit and one ACK. Only node-to-gateway types are accepted; an ACK or
CMD from a node is counted in `unexpected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import serial
import serial_asyncio_fast

from gateway.config import GatewayConfig, NodeLink
from gateway.node_session import NodeSession, utc_now_ms
from protocols.link_frame import (
    CMD,
    DATA,
    HEALTH,
    HELLO,
    RESULT,
    LinkFrame,
    LinkFrameDecoder,
    LinkFrameError,
    LinkFrameValueError,
    encode_frame,
)
from protocols.link_messages import LinkMessageError, decode_message, encode_message

__all__ = [
    "CommandSendError",
    "CommandTimeoutError",
    "LinkCounters",
    "LinkError",
    "NodeLinks",
    "NodeNotConnectedError",
]

log = logging.getLogger("gateway.link")

# The largest payload any node may be configured to send (firmware link_client max_payload).
MAX_PAYLOAD = 4096
READ_SIZE = 4096
_NODE_TYPES = (HELLO, DATA, HEALTH, RESULT)
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
# A node says HELLO first on every connection; a TCP peer silent about who it is goes.
HELLO_TIMEOUT_S = 30.0


class LinkError(Exception):
    """Something the node links cannot do; names the node and says why in one sentence."""

    def __init__(self, node: str, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(f"node {node}: {reason}")


class NodeNotConnectedError(LinkError):
    """The node has no open link (or has not said HELLO on it yet)."""


class CommandTimeoutError(LinkError):
    """The node did not answer a command in time."""


class CommandSendError(LinkError):
    """The command could not be put in a frame or written to the link."""


@dataclass
class LinkCounters:
    """Per node (and, for anonymous TCP connections, per listening port)."""

    connects: int = 0
    disconnects: int = 0
    open_failures: int = 0
    bytes_in: int = 0
    frames_in: int = 0
    unexpected: int = 0  # ACK or CMD frames from a node
    before_hello: int = 0  # frames on a TCP connection before its first HELLO
    unknown_node: int = 0  # TCP HELLOs from nodes not linked over TCP on that port
    replaced: int = 0  # connections closed because the node connected again
    write_errors: int = 0
    handler_errors: int = 0
    rx: dict[str, int] = field(default_factory=dict)  # LinkFrameDecoder error kinds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Connection:
    """One open byte stream to one node (or to a TCP peer that has not said who it is)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 name: str, node: str | None, ms_per_byte: float) -> None:
        self.reader = reader
        self.writer = writer
        self.name = name
        self.node = node
        self.ms_per_byte = ms_per_byte
        self.decoder = LinkFrameDecoder(MAX_PAYLOAD)
        self._write_lock = asyncio.Lock()
        self.closed = False

    async def send(self, data: bytes) -> None:
        async with self._write_lock:
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()


class NodeLinks:
    """Every node link of `config`, frames handed to `sessions` (node id -> NodeSession)."""

    def __init__(self, config: GatewayConfig, sessions: Mapping[str, NodeSession]) -> None:
        self.config = config
        self.sessions = sessions
        self.counters: dict[str, LinkCounters] = {n.node: LinkCounters() for n in config.nodes}
        self.port_counters: dict[int, LinkCounters] = {}
        self._bound: dict[str, _Connection] = {}
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._addresses: dict[int, tuple[str, int]] = {}
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the TCP listeners (errors here are fatal: the port is taken) and the serial
        tasks (a missing serial port is retried for ever)."""
        try:
            for port in self.config.tcp_ports:
                allowed = {n.node for n in self.config.nodes if n.tcp_port == port}
                self.port_counters[port] = LinkCounters()
                server = await asyncio.start_server(
                    lambda r, w, p=port, a=allowed: self._spawn(self._tcp_client(r, w, p, a)),
                    host=self.config.tcp_bind, port=port,
                )
                self._servers.append(server)
                host, bound = server.sockets[0].getsockname()[:2]
                self._addresses[port] = (host, bound)
                log.info("link listening transport=tcp address=%s:%d nodes=%s", host, bound,
                         ",".join(sorted(allowed)))
        except OSError as error:
            await self.close()
            raise LinkError("-", f"cannot listen on {self.config.tcp_bind} for TCP nodes "
                                 f"({error.strerror}); free the port or change "
                                 "link.gateway_port / [gateway] tcp_bind") from None
        for link in self.config.nodes:
            if link.serial:
                self._spawn(self._serial(link))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop listening, close every connection and port."""
        self._closing = True
        for server in self._servers:
            server.close()
        for conn in list(self._bound.values()):
            conn.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()

    @property
    def tcp_addresses(self) -> dict[int, tuple[str, int]]:
        """Configured TCP port -> the (host, port) actually bound (port 0 gets a free one)."""
        return dict(self._addresses)

    def connected(self, node: str) -> bool:
        conn = self._bound.get(node)
        return conn is not None and not conn.closed

    # -- serial ------------------------------------------------------------------------------------

    async def _serial(self, link: NodeLink) -> None:
        counters = self.counters[link.node]
        backoff = _BACKOFF_MIN_S
        told = False
        assert link.serial_port is not None and link.baud is not None
        # 10 bits a character (8N1); the decoder never sees the line's framing anyway.
        ms_per_byte = 10_000.0 / link.baud
        while not self._closing:
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=link.serial_port, baudrate=link.baud, exclusive=True)
            except (OSError, serial.SerialException, ValueError) as error:
                counters.open_failures += 1
                if not told:
                    log.warning("link cannot open node=%s port=%s error=%s; retrying",
                                link.node, link.serial_port, error)
                    told = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            told = False
            backoff = _BACKOFF_MIN_S
            conn = _Connection(reader, writer, name=link.serial_port, node=link.node,
                               ms_per_byte=ms_per_byte)
            counters.connects += 1
            self._bound[link.node] = conn
            log.info("link open node=%s transport=%s port=%s baud=%d", link.node,
                     link.transport, link.serial_port, link.baud)
            try:
                await self._serve(conn, counters)
            finally:
                if self._bound.get(link.node) is conn:
                    del self._bound[link.node]
                conn.close()
            counters.disconnects += 1
            if not self._closing:
                log.warning("link closed node=%s port=%s; reopening", link.node, link.serial_port)
                await asyncio.sleep(backoff)

    # -- tcp ---------------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          port: int, allowed: set[str]) -> None:
        peer = writer.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        conn = _Connection(reader, writer, name=name, node=None, ms_per_byte=0.0)
        try:
            await self._serve(conn, self.port_counters[port], allowed=allowed)
        finally:
            conn.close()
            node = conn.node
            if node is not None:
                self.counters[node].disconnects += 1
                if self._bound.get(node) is conn:
                    del self._bound[node]
                    log.info("link closed node=%s peer=%s", node, name)

    def _bind(self, conn: _Connection, frames: list[LinkFrame], counters: LinkCounters,
              allowed: set[str]) -> list[LinkFrame] | None:
        """Name an anonymous TCP connection by its first HELLO; the frames from that HELLO on,
        or None to drop the connection."""
        for index, frame in enumerate(frames):
            if frame.type != HELLO:
                counters.before_hello += 1
                continue
            try:
                node = decode_message(HELLO, frame.payload)["node"]
            except LinkMessageError:
                counters.before_hello += 1
                continue
            if node not in allowed:
                counters.unknown_node += 1
                log.warning("link refused node=%s peer=%s: boards.toml links no such node over "
                            "TCP on this port; add its [[board]] with link = { transport = "
                            "\"tcp\", gateway_port = ... }", node, conn.name)
                return None
            old = self._bound.get(node)
            if old is not None and old is not conn:
                self.counters[node].replaced += 1
                log.info("link node=%s connected again from %s; closing its connection from %s",
                         node, conn.name, old.name)
                old.close()
            conn.node = node
            self._bound[node] = conn
            self.counters[node].connects += 1
            log.info("link open node=%s transport=tcp peer=%s", node, conn.name)
            return frames[index:]
        return []

    # -- both --------------------------------------------------------------------------------------

    async def _serve(self, conn: _Connection, counters: LinkCounters, *,
                     allowed: set[str] | None = None) -> None:
        while not conn.closed:
            try:
                if conn.node is None and allowed is not None:
                    async with asyncio.timeout(HELLO_TIMEOUT_S):
                        data = await conn.reader.read(READ_SIZE)
                else:
                    data = await conn.reader.read(READ_SIZE)
            except TimeoutError:
                counters.before_hello += 1
                log.warning("link dropped peer=%s: no HELLO within %g s", conn.name,
                            HELLO_TIMEOUT_S)
                return
            except (OSError, serial.SerialException) as error:
                log.warning("link read failed node=%s peer=%s error=%s", conn.node, conn.name,
                            error)
                return
            if not data:
                return
            arrival = utc_now_ms()
            node_counters = counters if conn.node is None else self.counters[conn.node]
            node_counters.bytes_in += len(data)
            frames: list[LinkFrame] = []
            for item in conn.decoder.feed(data):
                if isinstance(item, LinkFrameError):
                    node_counters.rx[item.kind] = node_counters.rx.get(item.kind, 0) + 1
                elif item.type in _NODE_TYPES:
                    frames.append(item)
                else:
                    node_counters.unexpected += 1
            if not frames:
                continue
            if conn.node is None:
                assert allowed is not None
                bound = self._bind(conn, frames, counters, allowed)
                if bound is None:
                    return
                frames = bound
                if not frames:
                    continue
            node = conn.node
            assert node is not None
            self.counters[node].frames_in += len(frames)
            session = self.sessions[node]
            try:
                ack = await session.handle(frames, arrival, ms_per_byte=conn.ms_per_byte)
            except Exception:  # noqa: BLE001 - a bug here must not take the link down
                self.counters[node].handler_errors += 1
                log.exception("link frame handling failed node=%s", node)
                continue
            if ack is not None:
                try:
                    await conn.send(session.ack_frame(ack))
                except (OSError, serial.SerialException) as error:
                    self.counters[node].write_errors += 1
                    log.warning("link write failed node=%s error=%s", node, error)
                    return

    # -- commands ----------------------------------------------------------------------------------

    async def command(self, node: str, op: str, args: Mapping[str, Any], *,
                      timeout: float) -> dict[str, Any]:
        """Send CMD {op, args} to `node` and return its RESULT message ({id, ok, msg, data?})."""
        conn = self._bound.get(node)
        session = self.sessions.get(node)
        if conn is None or conn.closed or session is None or session.boot is None:
            raise NodeNotConnectedError(node, "is not connected (no link, or no HELLO yet)")
        command_id, future = session.new_command()
        try:
            try:
                frame = encode_frame(CMD, command_id, encode_message(
                    CMD, {"id": command_id, "op": op, "args": dict(args)}))
            except (LinkFrameValueError, LinkMessageError, TypeError, ValueError,
                    OverflowError) as error:
                raise CommandSendError(node, f"command {op!r} cannot be framed ({error})") from None
            try:
                await conn.send(frame)
            except (OSError, serial.SerialException) as error:
                self.counters[node].write_errors += 1
                raise CommandSendError(node, f"command {op!r} could not be written ({error})"
                                       ) from None
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise CommandTimeoutError(node, f"did not answer {op!r} within {timeout:g} s"
                                          ) from None
        finally:
            session.forget_command(command_id)

    def stats(self) -> dict[str, Any]:
        """Link counters per node, plus the anonymous TCP connections per port."""
        nodes = {}
        for link in self.config.nodes:
            entry = self.counters[link.node].as_dict()
            entry["transport"] = link.transport
            entry["connected"] = self.connected(link.node)
            nodes[link.node] = entry
        return {"nodes": nodes,
                "tcp_ports": {str(p): c.as_dict() for p, c in self.port_counters.items()}}
