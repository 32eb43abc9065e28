"""The MQTT connection's socket bookkeeping when the broker goes away with a publish in flight.

Regression for an intermittent error log in the gateway e2e outage test ("Exception in callback
BaseSelectorEventLoop.add_writer(15, <function Client...>)"). aiomqtt 2.5 answers paho's
on_socket_register_write by *scheduling* loop.add_writer(fd, ...) with call_soon_threadsafe, even
on the event loop's own thread. When the broker's FIN is read in the same loop iteration as a
publish (the publish's task step runs first, then the reader callback sees EOF and paho closes
the socket), the scheduled add_writer runs one iteration later on a closed descriptor: epoll
refuses it (EBADF) and asyncio logs the exception at error level. Were the number reused by then,
the stale writer would be attached to someone else's socket.

The tests below make that ordering happen on purpose, against a real mosquitto: with the event
loop blocked (so it cannot read the socket yet), stop the broker and wait until our socket is
readable; then yield once, so that our task runs ahead of the reader callback in the next
iteration, and publish. Before the fix this logged the error every time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import select
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest

from gateway.mqtt_connection import ConnectionLost, MqttConnection
from gateway.mqtt_publisher import OutgoingMessage, Publisher
from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics
from hil.broker import Mosquitto, mosquitto_executable

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto not installed")

LOG = logging.getLogger("tests.mqtt_socket_race")
TOPICS = GatewayTopics("riverside", "gw1")


@pytest.fixture
async def broker() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as running:
        yield running


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Every context the running loop's exception handler is given (they are also logged)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(context)
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


def describe(errors: list[dict[str, Any]]) -> list[str]:
    return [f"{c.get('message')}: {c.get('exception')!r} ({c.get('handle')})" for c in errors]


async def connect(url: str, protocol: str = "3.1.1") -> MqttConnection:
    settings = MqttSettings(url=url, keepalive=5, connect_timeout=5.0, protocol=protocol)
    conn = MqttConnection(settings, client_id="race-test", will=None, max_inflight=16, logger=LOG)
    await conn.open()
    return conn


def wait_readable(fd: int, timeout: float = 5.0) -> None:
    """Block (the whole event loop, on purpose) until `fd` has something to read: the FIN."""
    readable, _, _ = select.select([fd], [], [], timeout)
    assert readable, "the broker's close never reached our socket"


async def settle(conn: MqttConnection) -> None:
    async with asyncio.timeout(10):
        await conn.wait_lost()
    for _ in range(5):  # let anything the close left scheduled run (and fail, if it would)
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_publish_in_the_iteration_the_broker_closes_logs_no_error(
    broker: Mosquitto, protocol: str
) -> None:
    conn: MqttConnection | None = await connect(broker.url, protocol)
    try:
        with loop_errors() as errors:
            assert conn is not None and conn._paho is not None and conn._paho._sock is not None
            fd = conn._paho._sock.fileno()
            broker.stop()  # blocking: the loop cannot notice the close before we publish
            wait_readable(fd)
            await asyncio.sleep(0)  # we now run just before the reader callback of this iteration
            assert not conn.lost, "the reader ran first: the ordering this test needs did not occur"
            with suppress(ConnectionLost):  # publishes in this step, then waits for the PUBACK
                await conn.send("race/t", b"x" * 64, qos=1)
            await settle(conn)
            assert not asyncio.get_running_loop().remove_writer(fd)  # nothing left watching it
            conn.abort()
            conn = None
            gc.collect()  # "Future exception was never retrieved" is reported at collection
            await asyncio.sleep(0)
        assert not errors, describe(errors)
    finally:
        if conn is not None:
            conn.abort()


async def test_a_late_registration_from_the_connect_thread_is_dropped(broker: Mosquitto) -> None:
    """paho calls on_socket_open and on_socket_register_write from aiomqtt's connect thread; the
    loop applies them later. If the socket was closed in between and its descriptor number taken
    by another socket, aiomqtt would attach the dead client's reader and writer to that one."""
    conn = await connect(broker.url)
    loop = asyncio.get_running_loop()
    other: socket.socket | None = None
    try:
        with loop_errors() as errors:
            paho = conn._paho
            assert paho is not None and paho._sock is not None and not paho._registered_write
            sock = paho._sock
            fd = sock.fileno()

            def from_another_thread() -> None:  # what paho's connect() does, in that thread
                paho._call_socket_open(sock)
                paho._call_socket_register_write()

            thread = threading.Thread(target=from_another_thread)
            thread.start()
            thread.join()  # blocking the loop: the scheduled registrations have not run yet
            conn.abort()  # the socket closes...
            other = socket.socket()  # ...and its number is handed out again
            assert other.fileno() == fd, "the descriptor number was not reused; test inconclusive"
            for _ in range(3):
                await asyncio.sleep(0)
            assert not loop.remove_reader(fd), "a stale reader was attached to another socket"
            assert not loop.remove_writer(fd), "a stale writer was attached to another socket"
            assert conn.stale_socket_calls == 2
        assert not errors, describe(errors)
    finally:
        conn.abort()
        if other is not None:
            other.close()


async def test_publisher_through_broker_stops_with_publishes_in_every_iteration_logs_no_error(
    broker: Mosquitto,
) -> None:
    """The same race through the Publisher, as the gateway meets it: a windowed QoS 1 drain plus
    a task publishing in every loop iteration (so that some publish lands just before the reader
    sees the broker's FIN), through several broker stops. Before the fix most outages logged an
    error: the add_writer one, or "Future exception was never retrieved" for aiomqtt's
    disconnect error (27 of 40 outages each, in a 40-outage stress run of each workload)."""
    topic = TOPICS.measurements("n1")
    settings = MqttSettings(
        url=broker.url, reconnect_min=0.02, reconnect_max=0.1, keepalive=5, connect_timeout=5.0
    )
    stop = asyncio.Event()
    outages = 6
    with loop_errors() as errors:
        async with Publisher(settings, topics=TOPICS, boot_id=1, version="0-test") as pub:

            async def spin() -> None:
                while not stop.is_set():
                    await pub.publish(TOPICS.health, b"tick", qos=0)
                    await asyncio.sleep(0)

            async def items() -> AsyncIterator[OutgoingMessage]:
                i = 0
                while not stop.is_set():
                    yield OutgoingMessage(i, topic, b"m" * 100)
                    i += 1

            async with asyncio.timeout(60), asyncio.TaskGroup() as tasks:
                tasks.create_task(spin())
                tasks.create_task(pub.drain(items(), lambda _batch: None, window=64))
                for _ in range(outages):
                    await asyncio.sleep(0.05)
                    await broker.stop_async()
                    while pub.connected:
                        await asyncio.sleep(0.005)
                    await broker.start_async()
                    await pub.wait_connected(timeout=20)
                stop.set()
            assert pub.stats().disconnects >= outages
        gc.collect()  # "Future exception was never retrieved" is reported at collection
        await asyncio.sleep(0)
    assert not errors, describe(errors)


async def test_a_socket_the_connect_thread_opens_after_abort_is_closed(broker: Mosquitto) -> None:
    """open() can be given up (cancelled, or aborted) while aiomqtt's connect thread is still in
    paho's connect(); the socket that thread then opens must not be watched and kept alive (its
    keepalive would hold a second session with our client id), but closed."""
    conn = await connect(broker.url)
    late: socket.socket | None = None
    try:
        with loop_errors() as errors:
            paho = conn._paho
            assert paho is not None
            conn.abort()
            assert paho._sock is None and conn.lost
            late = socket.create_connection((broker.host, broker.port))
            late.setblocking(False)

            def connect_thread_finishes() -> None:  # what paho's reconnect() does, in that thread
                paho._sock = late
                paho._registered_write = False
                paho._call_socket_open(late)
                paho._call_socket_register_write()

            thread = threading.Thread(target=connect_thread_finishes)
            thread.start()
            thread.join()
            for _ in range(3):
                await asyncio.sleep(0)
            assert paho._sock is None and late.fileno() == -1, "the late socket was left open"
            assert conn._misc_task is None and conn._reading_fd is None
            assert conn._writing_fd is None
        assert not errors, describe(errors)
    finally:
        conn.abort()
        if late is not None:
            late.close()
