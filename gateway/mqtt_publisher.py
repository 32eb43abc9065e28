"""The gateway's MQTT publisher: one logical session to the broker that survives outages.

    async with Publisher(settings, topics=GatewayTopics("riverside", "gw1"), boot_id=7,
                         version="0.1.0") as publisher:
        await publisher.publish(topic, payload)           # returns after the PUBACK
        await publisher.drain(batches, spool.acknowledge)  # spool batches, ack after PUBACK
        async for command in publisher.commands(): ...

Session. A stable client id (default "citynerve-{site}-{gateway}") with a persistent session
(3.1.1 clean_session=0; 5 clean_start=0 plus a session expiry), so the broker keeps the command
subscription and queues commands while the gateway is away. Each connection publishes a retained
`status` birth {"state": "online", ...} before anything else and leaves a retained last will
{"state": "offline", "reason": "connection lost", ...}; close() replaces it with a retained
{"state": "offline", "reason": "shutdown"} and disconnects cleanly.

Delivery. publish() is at least once: it waits for a connection, sends, and returns on the
PUBACK; if the connection drops first it sends the same bytes again on the next one, so a
consumer can see a message twice but never a part of one. Many publish() calls may be in flight
at once (drain() keeps a window of them); they are acknowledged independently, so with a window
larger than one, batches may arrive out of order (batch ids order them).

Reconnect. A supervisor task reconnects forever with capped exponential backoff and jitter
(mqtt_backoff.py). The first attempt is special: a configuration error that retrying cannot fix
(credentials, certificates) makes `async with` raise at once, a one-sentence error naming the
broker; a broker that is merely down does not (the spool keeps the data meanwhile).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
)
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Protocol, Self

import aiomqtt

from gateway.mqtt_backoff import Backoff
from gateway.mqtt_connection import ConnectionLost, MqttConnection
from gateway.mqtt_errors import (
    BrokerConnectError,
    MqttSettingsError,
    PublisherClosedError,
    PublishRefusedError,
    PublishTimeoutError,
)
from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics

__all__ = [
    "Command",
    "DrainResult",
    "Outgoing",
    "OutgoingMessage",
    "Publisher",
    "PublisherStats",
]

log = logging.getLogger("gateway.mqtt")


class Outgoing(Protocol):
    """What drain() sends: gateway.spool_types.SealedBatch is one, OutgoingMessage another."""

    @property
    def batch_id(self) -> Hashable: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


class OutgoingMessage(NamedTuple):
    batch_id: Hashable
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Command:
    """A message on cmd/{node}; verifying it (signature, expiry, nonce) is the command path's job."""

    node: str
    topic: str
    payload: bytes
    retained: bool = False


@dataclass(frozen=True)
class PublisherStats:
    """Counters for the health topic; cumulative over the publisher's life."""

    connected: bool
    published: int  # PUBLISH packets sent, resends included
    acked: int  # PUBACKs received
    refused: int  # negative PUBACKs (MQTT 5)
    publish_errors: int  # sends whose connection dropped before the PUBACK (each is sent again)
    connects: int  # successful connections
    reconnects: int  # successful connections after the first
    disconnects: int  # connections lost (not counting close())
    connect_failures: int
    in_flight: int
    commands_received: int
    commands_dropped: int  # the command queue was full
    last_error: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class DrainResult:
    acked: int
    refused: int


_DONE = object()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Publisher:
    """The gateway's connection to its broker; an async context manager. See the module doc."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        topics: GatewayTopics,
        boot_id: int,
        version: str,
        status: Mapping[str, object] | None = None,
        max_inflight: int = 256,
        subscribe_commands: bool = True,
        command_queue_size: int = 1024,
        fail_fast: bool = True,
        shutdown_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"publisher: max_inflight {max_inflight} must be at least 1")
        self.settings = settings
        self.topics = topics
        self.boot_id = boot_id
        self.version = version
        self.client_id = settings.client_id or f"citynerve-{topics.site}-{topics.gateway}"
        self.max_inflight = max_inflight
        self._status_extra = dict(status or {})
        self._subscribe_commands = subscribe_commands
        self._fail_fast = fail_fast
        self._shutdown_timeout = shutdown_timeout
        self._log = logger or log
        self._conn: MqttConnection | None = None
        self._changed = asyncio.Event()  # set and replaced on every connect, loss and close
        self._closing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[BaseException | None] | None = None
        self._commands: asyncio.Queue[Command | object] = asyncio.Queue(command_queue_size)
        self._counts = dict.fromkeys(
            ("published", "acked", "refused", "publish_errors", "connects", "disconnects",
             "connect_failures", "commands_received", "commands_dropped"),
            0,
        )  # fmt: skip
        self._last_error: str | None = None

    # -- state -------------------------------------------------------------------------------------

    @property
    def broker(self) -> str:
        return self.settings.broker

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.lost

    def stats(self) -> PublisherStats:
        c = self._counts
        conn = self._conn
        return PublisherStats(
            connected=self.connected,
            published=c["published"],
            acked=c["acked"],
            refused=c["refused"],
            publish_errors=c["publish_errors"],
            connects=c["connects"],
            reconnects=max(0, c["connects"] - 1),
            disconnects=c["disconnects"],
            connect_failures=c["connect_failures"],
            in_flight=conn.in_flight if conn is not None else 0,
            commands_received=c["commands_received"],
            commands_dropped=c["commands_dropped"],
            last_error=self._last_error,
        )

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected (birth message acknowledged); BrokerConnectError after `timeout`
        seconds, carrying the last connection error."""
        try:
            async with asyncio.timeout(timeout):
                await self._connection()
        except TimeoutError:
            last = f"; last error: {self._last_error}" if self._last_error else ""
            raise BrokerConnectError(
                self.broker, f"not connected after {timeout:g} s{last}"
            ) from None

    async def _connection(self) -> MqttConnection:
        while True:
            if self._closing:
                raise PublisherClosedError(self.broker, "the publisher is closed")
            conn = self._conn
            if conn is not None and not conn.lost:
                return conn
            await self._changed.wait()

    # -- status payloads ---------------------------------------------------------------------------

    def _status(self, state: str, **more: object) -> bytes:
        body: dict[str, Any] = {
            "state": state,
            "site": self.topics.site,
            "gateway": self.topics.gateway,
            "boot_id": self.boot_id,
            "version": self.version,
            "client_id": self.client_id,
            **self._status_extra,
            **more,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("publisher: already started (a Publisher is not reusable)")
        self.settings.ssl_context()  # unreadable TLS files are a config error: raise it here
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._task = asyncio.create_task(self._supervise(), name=f"mqtt {self.broker}")
        first = await asyncio.shield(self._first_attempt)
        if isinstance(first, MqttSettingsError) or (
            self._fail_fast and isinstance(first, BrokerConnectError) and first.permanent
        ):
            await self.close()
            raise first
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Publish the retained "offline (shutdown)" status, disconnect cleanly, stop reconnecting.
        Calls still waiting raise PublisherClosedError; their data stays in the caller's spool."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        conn = self._conn
        if conn is not None and not conn.lost:
            payload = self._status("offline", reason="shutdown", at_ms=_now_ms())
            try:
                async with asyncio.timeout(self._shutdown_timeout):
                    await conn.send(self.topics.status, payload, qos=1, retain=True)
            except (ConnectionLost, PublishRefusedError, TimeoutError) as error:
                self._log.warning(
                    "MQTT broker %s: could not publish the offline status (%s)", self.broker, error
                )
            await conn.close(timeout=self._shutdown_timeout)
        self._signal()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._commands_end()
        self._log.info("MQTT broker %s: publisher closed", self.broker)

    def _commands_end(self) -> None:
        while True:
            try:
                self._commands.put_nowait(_DONE)
                return
            except asyncio.QueueFull:
                # Make room for the end marker: unread commands are lost with the process anyway.
                self._commands.get_nowait()
                self._counts["commands_dropped"] += 1

    async def _sleep_unless_closing(self, delay: float) -> None:
        changed = self._changed
        deadline = time.monotonic() + delay
        while not self._closing and (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                return
            changed = self._changed

    def _settle_first(self, outcome: BaseException | None) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(outcome)

    async def _open(self) -> MqttConnection:
        will = aiomqtt.Will(
            self.topics.status,
            self._status("offline", reason="connection lost"),
            qos=1,
            retain=True,
        )
        conn = MqttConnection(
            self.settings, client_id=self.client_id, will=will, max_inflight=self.max_inflight,
            logger=self._log,
        )  # fmt: skip
        try:
            await conn.open()
            # A session the broker kept still holds the subscription; subscribing again would
            # only make it resend any retained command (which the command path would reject).
            if self._subscribe_commands and not conn.session_present:
                await conn.subscribe(self.topics.commands_filter, qos=1)
            online = self._status(
                "online", since_ms=_now_ms(), session_present=conn.session_present
            )
            await conn.send(self.topics.status, online, qos=1, retain=True)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _supervise(self) -> None:
        s = self.settings
        backoff = Backoff(initial=s.reconnect_min, maximum=s.reconnect_max)
        try:
            while not self._closing:
                try:
                    conn = await self._open()
                except (
                    BrokerConnectError,
                    MqttSettingsError,
                    ConnectionLost,
                    PublishRefusedError,
                ) as error:
                    if isinstance(error, ConnectionLost):
                        error = BrokerConnectError(
                            self.broker, f"connection lost while setting up ({error})"
                        )
                    self._counts["connect_failures"] += 1
                    if str(error) != self._last_error:
                        self._log.warning("%s", error)
                    self._last_error = str(error)
                    self._settle_first(error)
                    await self._sleep_unless_closing(backoff.next_delay())
                    continue
                except Exception as error:  # noqa: BLE001 - a bug or unforeseen library error: keep trying
                    self._counts["connect_failures"] += 1
                    self._last_error = (
                        f"MQTT broker {self.broker}: unexpected error while connecting ({error!r})"
                    )
                    self._log.exception("%s", self._last_error)
                    self._settle_first(BrokerConnectError(self.broker, self._last_error))
                    await self._sleep_unless_closing(backoff.next_delay())
                    continue
                self._counts["connects"] += 1
                self._conn = conn
                started = time.monotonic()
                self._log.info(
                    "MQTT broker %s: connected as %s (session present: %s)",
                    self.broker, self.client_id, conn.session_present,
                )  # fmt: skip
                self._settle_first(None)
                self._signal()
                reader = asyncio.create_task(self._read_commands(conn))
                try:
                    reason = await conn.wait_lost()
                finally:
                    reader.cancel()
                    conn.abort()
                    self._conn = None
                    self._signal()
                    await asyncio.gather(reader, return_exceptions=True)
                if self._closing:
                    break
                self._counts["disconnects"] += 1
                self._last_error = f"MQTT broker {self.broker}: connection lost ({reason})"
                self._log.warning("%s; reconnecting", self._last_error)
                if time.monotonic() - started >= s.reconnect_stable:
                    backoff.reset()
                await self._sleep_unless_closing(backoff.next_delay())
        finally:
            self._settle_first(
                PublisherClosedError(self.broker, "the publisher was closed while connecting")
            )

    async def _read_commands(self, conn: MqttConnection) -> None:
        async for message in conn.messages():
            topic = str(message.topic)
            node = self.topics.command_node(topic)
            if node is None:
                continue
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, (bytes, bytearray)):
                payload = b"" if payload is None else str(payload).encode()
            command = Command(node, topic, bytes(payload), retained=bool(message.retain))
            self._counts["commands_received"] += 1
            try:
                self._commands.put_nowait(command)
            except asyncio.QueueFull:
                self._counts["commands_dropped"] += 1
                self._log.warning("MQTT command queue full: dropped a command for node %s", node)

    # -- publishing --------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish and, for QoS 1, return after the broker's PUBACK, sending again after a
        reconnect if need be. PublishTimeoutError after `timeout` s (None: wait for ever),
        PublishRefusedError on a negative PUBACK, PublisherClosedError on close()."""
        if timeout is None:
            return await self._publish(topic, payload, qos, retain)
        try:
            async with asyncio.timeout(timeout):
                return await self._publish(topic, payload, qos, retain)
        except TimeoutError:
            raise PublishTimeoutError(self.broker, topic=topic, timeout=timeout) from None

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        counts = self._counts
        while True:
            conn = self._conn
            if conn is None or conn.lost:
                conn = await self._connection()
            counts["published"] += 1
            try:
                await conn.send(topic, payload, qos=qos, retain=retain)
            except ConnectionLost:
                counts["publish_errors"] += 1
                await asyncio.sleep(0)  # let the loss be processed before trying again
                continue
            except PublishRefusedError:
                counts["refused"] += 1
                raise
            if qos:
                counts["acked"] += 1
            return

    async def drain(
        self,
        items: AsyncIterable[Outgoing | tuple[Hashable, str, bytes]]
        | Iterable[Outgoing | tuple[Hashable, str, bytes]],
        ack: Callable[[Any], Awaitable[object] | object],
        *,
        window: int | None = None,
    ) -> DrainResult:
        """Publish every item (QoS 1) with at most `window` in flight, and call ack(batch_id)
        (awaited if it returns an awaitable) only after that item's PUBACK. An item whose
        connection drops is sent again, whole, on the next connection. A refused item is counted,
        logged and not acknowledged. Returns when `items` is exhausted and all are settled; an
        exception from `ack` stops the drain and is raised."""
        window = window or self.max_inflight
        queue: asyncio.Queue[object] = asyncio.Queue(window)
        acked = refused = 0

        async def feed() -> None:
            if isinstance(items, AsyncIterable):
                async for item in items:
                    await queue.put(item)
            else:
                for item in items:
                    await queue.put(item)
            for _ in range(window):
                await queue.put(_DONE)

        async def work() -> None:
            nonlocal acked, refused
            while (item := await queue.get()) is not _DONE:
                if hasattr(item, "batch_id"):
                    batch_id, topic, payload = item.batch_id, item.topic, item.payload  # type: ignore[attr-defined]
                else:
                    batch_id, topic, payload = item  # type: ignore[misc]
                try:
                    await self._publish(topic, payload, 1, False)
                except PublishRefusedError as error:
                    refused += 1
                    self._log.error("%s (batch %s stays spooled)", error, batch_id)
                    continue
                outcome = ack(batch_id)
                if inspect.isawaitable(outcome):
                    await outcome
                acked += 1

        tasks = [asyncio.create_task(feed())] + [asyncio.create_task(work()) for _ in range(window)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return DrainResult(acked=acked, refused=refused)

    # -- commands ----------------------------------------------------------------------------------

    async def commands(self) -> AsyncIterator[Command]:
        """Commands for this gateway's nodes (cmd/+), until the publisher closes. One consumer."""
        while True:
            item = await self._commands.get()
            if item is _DONE:
                self._commands_end()  # leave the marker for any later iterator
                return
            yield item  # type: ignore[misc]
