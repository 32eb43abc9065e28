"""One MQTT connection to the broker: connect (with a classified, one-sentence error), publish and
wait for the PUBACK, subscribe, receive, notice the loss, close. The Publisher (mqtt_publisher.py)
makes a new one for every reconnect and owns the retry policy.

Why publish through the paho client inside aiomqtt rather than aiomqtt's publish(). aiomqtt 2.5's
Client.publish does await the PUBACK for QoS 1 (it waits on an event set by paho's on_publish,
which paho fires for QoS > 0 only from _handle_pubackcomp, i.e. on PUBACK), but (a) it drops the
MQTT 5 PUBACK reason code, so a message the broker refused (0x87 not authorised, 0x97 quota
exceeded) would look delivered and the spool would delete it; and (b) a publish in flight when the
connection drops just waits for its timeout. So this module registers one future per packet id
on paho's on_publish, resolves it with the reason code, and fails every pending one the moment
the connection is lost, and the caller re-sends on the next connection. aiomqtt still does what
it is good at: the executor connect and TLS, subscribe, and the incoming message queue (the
socket callbacks are ours: see below).

Why watch paho's on_disconnect. When the broker ends the session before CONNACK (a TLS 1.3
broker rejecting our client certificate sends its alert after the handshake), aiomqtt's connect
would wait for its whole timeout and then say only "Operation timed out". The wrapper sees the
close at once, and the paho log line captured just before it says why.

Why our own socket callbacks (paho's on_socket_open/close/register_write/unregister_write and
the loop_misc task) instead of aiomqtt's. aiomqtt 2.5 answers on_socket_register_write (and
on_socket_open) by *scheduling* `loop.add_writer(sock.fileno(), ...)` with call_soon_threadsafe,
even when paho calls it on the event loop's own thread, while it unregisters at once. A publish
made in the same loop iteration in which the reader callback then reads the broker's FIN (a
broker stopped mid-stream, with publishes from many drain workers) goes: publish -> add_writer
scheduled; reader -> EOF -> paho unregisters (nothing registered yet) and closes the socket; next
iteration -> add_writer on the closed descriptor: epoll says EBADF and asyncio logs "Exception
in callback BaseSelectorEventLoop.add_writer(15, ...)" at error level. Had the number been reused
in between, the dead client's writer would have been attached to another socket. Here a call on
the loop thread takes effect at once, in paho's order; a call from aiomqtt's connect thread is
scheduled and, when it runs, applies only if that socket is still the client's open socket
(otherwise it is dropped and counted, at debug level). Every registration is undone before paho
closes the socket, because paho calls on_socket_close just before closing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_client
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt_errors import (
    BrokerAuthError,
    BrokerConnectError,
    BrokerTlsError,
    PublishRefusedError,
)
from gateway.mqtt_settings import ENV_PASSWORD, ENV_USERNAME, MqttSettings

__all__ = ["ConnectionLost", "MqttConnection"]

# CONNACK codes that retrying cannot fix: 3.1.1 (2 identifier rejected, 4 bad user name or
# password, 5 not authorised) and MQTT 5 (0x85, 0x86, 0x87, 0x8C bad authentication method).
_AUTH_CODES = {4, 5, 0x86, 0x87, 0x8C}
_IDENTIFIER_CODES = {2, 0x85}
# How long to let the connect call report its own (more specific) error after the broker closed
# the connection before CONNACK: a negative CONNACK and the close arrive in the same read.
_CONNECT_ERROR_GRACE = 0.2


class ConnectionLost(Exception):
    """The connection ended before the PUBACK; the message may or may not have arrived."""


class _PahoLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """paho's logger for one connection. paho logs a socket or TLS error, then reports only
    "connection lost": this keeps the last error it logged for our one-sentence report, and
    passes paho's lines on at DEBUG, since that sentence is what an operator should read."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.last_error: str | None = None

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            with suppress(Exception):
                self.last_error = str(msg) % args if args else str(msg)
        super().log(logging.DEBUG, msg, *args, **kwargs)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _reason_value(rc: object) -> int | None:
    if isinstance(rc, ReasonCode):
        return int(rc.value)
    if isinstance(rc, int):
        return rc
    return None


class MqttConnection:
    """A single connection; `open()` it, use it, `close()` it. Not reusable."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        will: aiomqtt.Will | None,
        max_inflight: int,
        logger: logging.Logger,
    ) -> None:
        self.settings = settings
        self.broker = settings.broker
        self.client_id = client_id
        self._will = will
        self._max_inflight = max_inflight
        self._log = logger
        self._paho_log = _PahoLog(logging.getLogger(f"{logger.name}.paho"))
        self._loop = asyncio.get_running_loop()
        self._lost: asyncio.Future[str] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._client: aiomqtt.Client | None = None
        self._paho: paho_client.Client | None = None
        self._opened = False
        self.session_present: bool | None = None
        # Socket bookkeeping (see the module docstring): the descriptor we asked the loop to
        # watch for reading / writing, the loop_misc task, and how many late registrations for
        # a socket already closed were dropped.
        self._reading_fd: int | None = None
        self._writing_fd: int | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self.stale_socket_calls = 0

    # -- state -------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        return self._lost.done()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def wait_lost(self) -> str:
        """Wait until the connection is gone; the reason, in words."""
        return await asyncio.shield(self._lost)

    def _mark_lost(self, reason: str) -> None:
        if self._lost.done():
            return
        self._lost.set_result(reason)
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason))

    # -- paho callbacks (run on the event loop thread, from aiomqtt's socket callbacks) -----------

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None
    ) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        assert self._client is not None
        self._client._on_connect(client, userdata, flags, reason, props)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None
    ) -> None:
        if self._paho_log.last_error:
            detail = self._paho_log.last_error
        elif getattr(flags, "is_disconnect_packet_from_server", False):
            detail = f"the broker sent DISCONNECT ({reason})"
        elif str(reason) == "Keep alive timeout":
            detail = f"no answer from the broker for {self.settings.keepalive} s (keepalive)"
        elif str(reason) == "Unspecified error":  # what paho says for a socket closed on it
            detail = "the broker closed the connection"
        else:
            detail = f"disconnected ({reason})"
        if _running_loop() is self._loop:  # the usual case: aiomqtt's socket callbacks
            self._mark_lost(detail)
        else:
            with suppress(RuntimeError):  # the loop is already closed: nobody is left to tell
                self._loop.call_soon_threadsafe(self._mark_lost, detail)
        assert self._client is not None
        self._client._on_disconnect(client, userdata, flags, reason, props)
        self._retrieve_disconnected()

    def _retrieve_disconnected(self) -> None:
        """aiomqtt keeps the disconnect error in a future that only its message iterator reads;
        with no iterator left (a connection dropped while setting up, or the reader cancelled
        first) asyncio would log "Future exception was never retrieved" at error level when the
        client is collected. We report the loss ourselves, so mark it read."""
        client = self._client
        future = getattr(client, "_disconnected", None) if client is not None else None
        if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
            future.exception()

    # -- socket callbacks (see the module docstring) ----------------------------------------------

    def _on_loop_thread(self, action: Callable[..., None], *args: Any) -> None:
        """Run `action` now on the loop's thread, or schedule it there from another thread."""
        if _running_loop() is self._loop:
            action(*args)
        else:
            with suppress(RuntimeError):  # the loop is already closed: nothing to watch any more
                self._loop.call_soon_threadsafe(action, *args)

    def _is_open_socket(self, sock: Any) -> bool:
        paho = self._paho
        return paho is not None and paho._sock is sock and sock.fileno() >= 0

    def _stale(self, what: str, sock: Any) -> None:
        self.stale_socket_calls += 1
        self._log.debug(
            "MQTT broker %s: %s (%r); ignored", self.broker, what, sock
        )

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop_thread(self._watch_reads, sock)

    def _watch_reads(self, sock: Any) -> None:
        if not self._is_open_socket(sock):
            self._stale("reader registration for a socket already closed", sock)
            return
        if self._lost.done():
            # The connect thread opened this socket after the connection was given up (open()
            # cancelled or aborted meanwhile): close it rather than keep a second session alive.
            self._stale("a socket opened after the connection was given up, closed", sock)
            assert self._paho is not None
            with suppress(Exception):
                self._paho._sock_close()
            return
        self._reading_fd = sock.fileno()
        self._loop.add_reader(self._reading_fd, self._readable)
        if self._misc_task is None or self._misc_task.done():
            self._misc_task = self._loop.create_task(self._misc_loop())

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop_thread(self._watch_writes, sock)

    def _watch_writes(self, sock: Any) -> None:
        if not self._is_open_socket(sock):
            self._stale("writer registration for a socket already closed", sock)
            return
        if self._lost.done() or (self._paho is not None and not self._paho._registered_write):
            return  # given up, or paho unregistered it again before this scheduled call ran
        self._writing_fd = sock.fileno()
        self._loop.add_writer(self._writing_fd, self._writable)

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # At once, whatever the thread: paho may close the socket right after this returns.
        fd, self._writing_fd = self._writing_fd, None
        if fd is not None:
            self._loop.remove_writer(fd)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho calls this just before sock.close(): the descriptor is still ours to unregister.
        self._unwatch()

    def _unwatch(self) -> None:
        reading, self._reading_fd = self._reading_fd, None
        writing, self._writing_fd = self._writing_fd, None
        if reading is not None:
            self._loop.remove_reader(reading)
        if writing is not None:
            self._loop.remove_writer(writing)
        task, self._misc_task = self._misc_task, None
        if task is not None and not task.done():
            if _running_loop() is self._loop:
                task.cancel()
            else:
                with suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(task.cancel)

    def _readable(self) -> None:
        paho = self._paho
        assert paho is not None
        try:
            while True:
                paho.loop_read()
                # loop_read does not always consume everything an SSL socket has decoded
                # (eclipse-paho/paho.mqtt.python#131): read on while it holds some.
                sock = paho._sock
                pending = getattr(sock, "pending", None)
                if sock is None or pending is None or pending() <= 0:
                    break
        except Exception as error:  # noqa: BLE001 - a broken socket: this connection is over
            self._socket_failed(error)

    def _writable(self) -> None:
        paho = self._paho
        assert paho is not None
        try:
            paho.loop_write()
        except Exception as error:  # noqa: BLE001 - a broken socket: this connection is over
            self._socket_failed(error)

    def _socket_failed(self, error: Exception) -> None:
        client = self._client
        future = getattr(client, "_disconnected", None) if client is not None else None
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(error)  # ends aiomqtt's message iterator, as aiomqtt would
        self._retrieve_disconnected()
        self._mark_lost(self._paho_log.last_error or f"socket error ({error!r})")
        paho = self._paho
        if paho is not None:
            with suppress(Exception):
                paho._sock_close()

    async def _misc_loop(self) -> None:
        """paho's housekeeping: keepalive PINGREQs, and giving up on a silent broker."""
        paho = self._paho
        assert paho is not None
        while paho.loop_misc() == paho_client.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    # -- connect -----------------------------------------------------------------------------------

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = s.session_expiry
        credentials = s.credentials
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=credentials.username if credentials else None,
            password=credentials.password if credentials else None,
            logger=self._paho_log,  # type: ignore[arg-type]
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=self._will,
            # A persistent session: the broker keeps our command subscription and queues
            # commands while we are away. 3.1.1 says so with clean_session=0, 5 with
            # clean_start=0 plus a session expiry (paho refuses clean_start on 3.1.1).
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=s.keepalive,
            timeout=s.connect_timeout,
            max_inflight_messages=self._max_inflight,
            properties=properties,
            tls_context=s.ssl_context(),
        )
        # aiomqtt warns on every call past 10 pending; a bounded window of hundreds is normal.
        client.pending_calls_threshold = 1 << 30
        paho = client._client  # private: see the module docstring
        paho.on_publish = self._on_publish
        paho.on_connect = self._on_connect
        paho.on_disconnect = self._on_disconnect
        paho.on_socket_open = self._on_socket_open
        paho.on_socket_close = self._on_socket_close
        paho.on_socket_register_write = self._on_socket_register_write
        paho.on_socket_unregister_write = self._on_socket_unregister_write
        self._paho = paho
        return client

    async def open(self) -> None:
        """Connect and wait for CONNACK; BrokerConnectError (or a subclass) says why not."""
        self._client = client = self._make_client()
        enter: asyncio.Future[Any] = asyncio.ensure_future(client.__aenter__())
        lost: asyncio.Future[Any] = self._lost
        try:
            await asyncio.wait({enter, lost}, return_when=asyncio.FIRST_COMPLETED)
            if not enter.done():
                await asyncio.wait({enter}, timeout=_CONNECT_ERROR_GRACE)
        except BaseException:
            enter.cancel()
            self.abort()
            raise
        if enter.done() and not enter.cancelled() and enter.exception() is None:
            if self._lost.done():  # connected, then dropped at once
                self.abort()
                raise BrokerConnectError(
                    self.broker,
                    f"closed the connection right after CONNACK ({self._lost.result()})",
                )
            self._opened = True
            return
        if enter.done() and not enter.cancelled():
            error: BaseException | str = enter.exception()  # type: ignore[assignment]
        else:
            enter.cancel()
            await asyncio.gather(enter, return_exceptions=True)
            reason = self._lost.result() if self._lost.done() else "no reason given"
            self.abort()
            raise self._classify_early_close(reason)
        self.abort()
        raise self._classify(error)

    def _classify_early_close(self, reason: str) -> BrokerConnectError:
        """The broker ended the connection after our side of the connect (TCP, and the TLS
        handshake, which paho completes before returning) but before CONNACK."""
        s = self.settings
        if not s.tls:
            return BrokerConnectError(
                self.broker, f"closed the connection before CONNACK ({reason})"
            )
        # With TLS 1.3 the broker checks our certificate after the handshake has completed on our
        # side, then sends an alert and closes. The alert is often lost: the close resets the
        # connection while our CONNECT sits unread, so we see a reset or an EOF instead. Either
        # way the certificate is the usual cause, and retrying will not fix it.
        if s.cert_file is None:
            hint = "the broker requires a client certificate: set cert_file and key_file"
        else:
            hint = (
                f"the broker does not accept client certificate {s.cert_file}: it must be signed "
                "by a CA the broker trusts"
            )
        return BrokerTlsError(
            self.broker, f"ended the TLS session before CONNACK ({reason}); {hint}"
        )

    def _classify(self, error: BaseException | str) -> BrokerConnectError:
        s = self.settings
        code = _reason_value(getattr(error, "rc", None))
        text = str(error)
        if isinstance(error, MqttConnectError) and code is not None:
            if code in _AUTH_CODES:
                if s.credentials is None:
                    return BrokerAuthError(
                        self.broker,
                        f"refused an anonymous connection ({text}); give a user name and password "
                        f"in a credentials file or in {ENV_USERNAME}/{ENV_PASSWORD}",
                    )
                return BrokerAuthError(
                    self.broker,
                    f"refused user {s.credentials.username!r} ({text}); check the password in "
                    f"{s.credentials.source}",
                )
            if code in _IDENTIFIER_CODES:
                return BrokerAuthError(
                    self.broker,
                    f"refused client id {self.client_id!r} ({text}); set another client_id",
                )
            return BrokerConnectError(self.broker, f"refused the connection ({text})")
        if "CERTIFICATE_VERIFY_FAILED" in text:
            detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c")[0].strip()
            if "mismatch" in detail:
                return BrokerTlsError(
                    self.broker,
                    f"its certificate does not name host {s.host!r} ({detail}); connect by a name "
                    "the certificate lists, or set insecure to skip the host name check",
                )
            return BrokerTlsError(
                self.broker,
                f"cannot verify its certificate ({detail}); check that ca_file "
                f"{s.ca_file or '(system store)'} is the CA that signed the broker's certificate",
            )
        if s.tls and ("SSL" in text or "alert" in text.lower()):
            return BrokerTlsError(
                self.broker, f"TLS handshake failed ({text}); check the TLS settings on both sides"
            )
        if "timed out" in text.lower():
            return BrokerConnectError(
                self.broker, f"no answer within {s.connect_timeout:g} s ({text})"
            )
        if "refused" in text.lower():
            return BrokerConnectError(
                self.broker, f"refused the TCP connection ({text}); is it running?"
            )
        return BrokerConnectError(self.broker, f"could not connect ({text})")

    # -- use ---------------------------------------------------------------------------------------

    async def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; for QoS 1 and 2 return only after the broker acknowledged it. Raises
        ConnectionLost (send again on the next connection) or PublishRefusedError."""
        if self._lost.done() or self._paho is None:
            raise ConnectionLost(self._lost.result() if self._lost.done() else "not connected")
        info = self._paho.publish(topic, payload, qos, retain)
        if info.rc != paho_client.MQTT_ERR_SUCCESS:
            # paho knows the socket is gone before our on_disconnect bookkeeping has run: mark
            # it now, or a caller retrying at once would spin without ever yielding to the loop.
            why = paho_client.error_string(info.rc)
            self._mark_lost(why)
            raise ConnectionLost(why)
        if qos == 0:
            return
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            reason = await future
        finally:
            self._pending.pop(info.mid, None)
        if reason.is_failure:
            raise PublishRefusedError(
                self.broker, topic=topic, reason_code=int(reason.value), reason_name=str(reason)
            )

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        assert self._client is not None
        try:
            result = await self._client.subscribe(topic_filter, qos)
        except aiomqtt.MqttError as error:
            raise ConnectionLost(f"subscribe to {topic_filter!r} failed: {error}") from None
        granted = [_reason_value(r) for r in result]
        if any(code is None or code >= 0x80 for code in granted):
            self._log.warning(
                "MQTT broker %s refused the subscription to %s (%s)",
                self.broker,
                topic_filter,
                result,
            )

    async def messages(self) -> AsyncIterator[aiomqtt.Message]:
        """Incoming messages until the connection ends (then the loss is marked and this ends)."""
        assert self._client is not None
        try:
            async for message in self._client.messages:
                yield message
        except aiomqtt.MqttError as error:
            cause = error.__cause__ or error
            self._mark_lost(self._paho_log.last_error or str(cause))

    # -- close -------------------------------------------------------------------------------------

    async def close(self, *, timeout: float = 5.0) -> None:
        """Send DISCONNECT (the broker then discards our will) and wait for the socket to close."""
        client = self._client
        if client is not None and self._opened and not self._lost.done():
            with suppress(aiomqtt.MqttError, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(client.__aexit__(None, None, None), timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the socket without DISCONNECT (the broker publishes our will)."""
        paho = self._paho
        if paho is not None:
            with suppress(Exception):
                paho._sock_close()  # private: paho has no public "close, no DISCONNECT"
        self._unwatch()  # in case paho had no socket left to close
        self._retrieve_disconnected()
        self._mark_lost("aborted")
