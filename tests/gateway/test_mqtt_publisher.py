"""The MQTT publisher against a real mosquitto on a free loopback port (hil/broker.py): QoS 1 with
PUBACK, retained birth / last will / goodbye, a broker outage mid-drain, TLS with client
certificates, passwords that never leak, commands over a persistent session, MQTT 5 refusals,
the spool wiring, and the embedded amqtt broker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Self

import aiomqtt
import pytest

from gateway.mqtt_errors import (
    BrokerAuthError,
    BrokerConnectError,
    BrokerTlsError,
    PublisherClosedError,
    PublishRefusedError,
    PublishTimeoutError,
)
from gateway.mqtt_publisher import Command, OutgoingMessage, Publisher
from gateway.mqtt_settings import Credentials, MqttSettings
from gateway.spool import Spool
from gateway.topics import GatewayTopics
from hil.broker import BrokerTls, EmbeddedBroker, Mosquitto, mosquitto_executable
from tests.gateway.certs import TestPki, make_pki, openssl_available

pytestmark = pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto not installed")

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPICS = GatewayTopics("riverside", "gw1")
SECRET = "correct-horse-7Q"
WRONG = "wrong-battery-9Z"

Received = tuple[str, bytes, bool, int]  # topic, payload, retain flag, qos


def settings_for(url: str, **overrides: Any) -> MqttSettings:
    """Fast reconnects and short timeouts: these tests stop brokers on purpose."""
    values: dict[str, Any] = {
        "url": url,
        "reconnect_min": 0.05,
        "reconnect_max": 0.4,
        "connect_timeout": 5.0,
        "keepalive": 5,
    }
    values.update(overrides)
    return MqttSettings(**values)


def publisher(settings: MqttSettings, **kw: Any) -> Publisher:
    kw.setdefault("topics", TOPICS)
    kw.setdefault("boot_id", 42)
    kw.setdefault("version", "0.1.0-test")
    return Publisher(settings, **kw)


class Collector:
    """A subscriber that keeps everything it receives and reconnects after a broker restart.
    With a client id it has a persistent session (clean_session=0), so messages published while
    it is away are queued for it."""

    def __init__(
        self, host: str, port: int, topic_filter: str, *, client_id: str | None = None
    ) -> None:
        self.host, self.port, self.topic_filter, self.client_id = (
            host,
            port,
            topic_filter,
            client_id,
        )
        self.received: list[Received] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _connect(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            clean_session=self.client_id is None,
            timeout=5,
        )
        await client.__aenter__()
        try:
            await client.subscribe(self.topic_filter, qos=1)
        except BaseException:
            with suppress(Exception):
                await client.__aexit__(None, None, None)
            raise
        return client

    async def _run(self, client: aiomqtt.Client) -> None:
        try:
            while True:
                with suppress(aiomqtt.MqttError):
                    async for m in client.messages:
                        self.received.append((str(m.topic), bytes(m.payload), m.retain, m.qos))  # type: ignore[arg-type]
                        self._changed.set()
                with suppress(Exception):
                    await client.__aexit__(None, None, None)
                while True:  # the broker is down: retry until it is back
                    await asyncio.sleep(0.05)
                    with suppress(aiomqtt.MqttError):
                        client = await self._connect()
                        break
        finally:
            with suppress(Exception):
                await client.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(await self._connect()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 15
    ) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.received):
                self._changed.clear()
                await self._changed.wait()

    def payloads(self, topic: str) -> list[bytes]:
        return [p for t, p, _, _ in self.received if t == topic]


def status_of(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)  # type: ignore[no-any-return]


async def retained(broker: Mosquitto | EmbeddedBroker, topic: str) -> bytes | None:
    """The broker's retained message on `topic` now (it sends it right after SUBACK)."""
    async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for m in client.messages:
                    return bytes(m.payload)  # type: ignore[arg-type]
        except TimeoutError:
            return None
    return None


@pytest.fixture
async def broker() -> AsyncIterator[Mosquitto]:
    async with Mosquitto() as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    if not openssl_available():
        pytest.skip("openssl CLI not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- publish, birth, goodbye, last will ----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_publish_is_acknowledged_and_delivered_with_qos1(
    broker: Mosquitto, protocol: str
) -> None:
    topic = TOPICS.measurements("n1")
    async with Collector(broker.host, broker.port, topic) as sub:
        async with publisher(settings_for(broker.url, protocol=protocol)) as pub:
            assert pub.connected
            await pub.publish(topic, b"\x00cnb1-batch\xff")
            # A retained publish that has returned is already stored: the broker handles a
            # PUBLISH before it sends the PUBACK.
            await pub.publish(TOPICS.health, b'{"ok":true}', retain=True)
            assert await retained(broker, TOPICS.health) == b'{"ok":true}'
            stats = pub.stats()
            assert (stats.published, stats.acked, stats.publish_errors) == (2, 2, 0)
        await sub.wait_for(lambda r: len(r) >= 1)
    assert sub.received[0] == (topic, b"\x00cnb1-batch\xff", False, 1)


async def test_birth_status_then_retained_goodbye_on_close(broker: Mosquitto) -> None:
    async with Collector(broker.host, broker.port, TOPICS.status) as sub:
        async with publisher(settings_for(broker.url), status={"hostname": "pi-7"}) as pub:
            birth = status_of(await retained(broker, TOPICS.status) or b"null")
            assert birth["state"] == "online"
            assert (birth["site"], birth["gateway"], birth["boot_id"], birth["version"]) == (
                "riverside", "gw1", 42, "0.1.0-test",
            )  # fmt: skip
            assert birth["hostname"] == "pi-7" and birth["client_id"] == pub.client_id
        goodbye = status_of(await retained(broker, TOPICS.status) or b"null")
        assert (goodbye["state"], goodbye["reason"], goodbye["boot_id"]) == (
            "offline",
            "shutdown",
            42,
        )
        await sub.wait_for(lambda r: len(r) >= 2)
        # A clean DISCONNECT: the broker dropped the will, so "connection lost" never came.
        states = [
            (status_of(p)["state"], status_of(p).get("reason")) for p in sub.payloads(TOPICS.status)
        ]
        assert states == [("online", None), ("offline", "shutdown")]


_CHILD = """
import asyncio, sys
from gateway.mqtt_publisher import Publisher
from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics

async def main():
    settings = MqttSettings(url=sys.argv[1], keepalive=5)
    async with Publisher(settings, topics=GatewayTopics("riverside", "gw1"), boot_id=9, version="child"):
        print("online", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_last_will_says_offline_when_the_gateway_is_killed(broker: Mosquitto) -> None:
    async with Collector(broker.host, broker.port, TOPICS.status) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CHILD, broker.url,
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert child.stdout is not None
            async with asyncio.timeout(20):
                assert await child.stdout.readline() == b"online\n"
            assert status_of(await retained(broker, TOPICS.status) or b"null")["state"] == "online"
            child.send_signal(signal.SIGKILL)
            await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        await sub.wait_for(lambda r: any(status_of(p)["state"] == "offline" for _, p, _, _ in r))
    will = status_of(await retained(broker, TOPICS.status) or b"null")
    assert (will["state"], will["reason"], will["boot_id"], will["version"]) == (
        "offline", "connection lost", 9, "child",
    )  # fmt: skip


# -- outages -------------------------------------------------------------------------------------


async def test_broker_outage_mid_drain_loses_nothing_and_duplicates_only_whole() -> None:
    async with Mosquitto(persistence=True) as broker:
        topic = TOPICS.measurements("n1")
        sent = {i: f"batch-{i:04d}-".encode() + bytes([i % 251]) * 180 for i in range(600)}
        acked: list[int] = []
        broker_down = asyncio.Event()

        async def batches() -> AsyncIterator[OutgoingMessage]:
            for i, payload in sent.items():
                if i == 300:
                    await broker_down.wait()  # the second half goes out during and after the outage
                yield OutgoingMessage(i, topic, payload)

        async with Collector(broker.host, broker.port, topic, client_id="brain-consumer") as sub:
            async with publisher(settings_for(broker.url)) as pub:

                async def outage() -> None:
                    while len(acked) < 100:
                        await asyncio.sleep(0.005)
                    await broker.stop_async()
                    broker_down.set()
                    while pub.connected:
                        await asyncio.sleep(0.005)
                    await asyncio.sleep(1.0)  # the outage itself
                    await broker.start_async()

                async with asyncio.timeout(60), asyncio.TaskGroup() as tasks:
                    tasks.create_task(outage())  # a failed restart fails the test at once
                    draining = tasks.create_task(pub.drain(batches(), acked.append, window=64))
                result = draining.result()
                stats = pub.stats()
            await sub.wait_for(lambda r: {p for _, p, _, _ in r} >= set(sent.values()), timeout=30)

        assert result.acked == 600 and result.refused == 0
        assert sorted(acked) == list(sent)  # each batch acknowledged exactly once, after its PUBACK
        assert stats.disconnects >= 1 and stats.reconnects >= 1
        received = sub.payloads(topic)
        assert set(received) == set(sent.values())  # nothing lost, nothing partial or foreign
        # The publisher sent again only what the outage cut off in flight (at most the window).
        assert stats.published == 600 + stats.publish_errors
        assert stats.publish_errors <= 64
        # The consumer may see more duplicates than that: mosquitto redelivers to a persistent
        # session whatever PUBACKs it had not processed when it stopped. Whole, all of them.


async def test_publish_waits_for_the_broker_to_come_back(broker: Mosquitto) -> None:
    async with publisher(settings_for(broker.url)) as pub:
        await broker.stop_async()
        while pub.connected:
            await asyncio.sleep(0.005)
        with pytest.raises(PublishTimeoutError, match="no PUBACK") as caught:
            await pub.publish(TOPICS.health, b"never", timeout=0.2)
        assert caught.value.broker == broker.url
        waiting = asyncio.create_task(pub.publish(TOPICS.health, b"after the outage", retain=True))
        await asyncio.sleep(0)
        assert not waiting.done()
        await broker.start_async()
        await asyncio.wait_for(waiting, 15)
        assert pub.connected and pub.stats().reconnects == 1
        assert await retained(broker, TOPICS.health) == b"after the outage"


async def test_a_silent_broker_is_given_up_by_keepalive(broker: Mosquitto) -> None:
    """A half-open connection (a frozen broker, a NAT that forgot us): no FIN ever comes, only
    the keepalive notices; the message in flight is sent again once the broker answers."""
    assert broker.pid is not None
    async with publisher(settings_for(broker.url, keepalive=1)) as pub:
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            sending = asyncio.create_task(pub.publish(TOPICS.health, b"through", retain=True))
            async with asyncio.timeout(15):
                while pub.stats().disconnects == 0:
                    await asyncio.sleep(0.01)
            assert not pub.connected
            assert "keepalive" in (pub.stats().last_error or "")
            assert not sending.done()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await asyncio.wait_for(sending, 15)
        assert pub.stats().reconnects == 1
    assert await retained(broker, TOPICS.health) == b"through"


async def test_a_socket_closed_under_us_is_noticed_by_the_next_publish(broker: Mosquitto) -> None:
    """Regression: paho had closed the socket but our on_disconnect bookkeeping had not run, so
    publish() kept failing synchronously, never yielding to the event loop (a 100 % CPU spin)."""
    async with publisher(settings_for(broker.url)) as pub:
        conn = pub._conn  # white box: close the socket the way paho does, with no callback
        assert conn is not None and conn._paho is not None
        conn._paho._sock_close()
        assert not conn.lost
        await asyncio.wait_for(pub.publish(TOPICS.health, b"resent", retain=True), 15)
        assert pub.stats().reconnects == 1 and pub.stats().publish_errors >= 1
    assert await retained(broker, TOPICS.health) == b"resent"


async def test_a_broker_that_is_down_at_start_is_waited_for() -> None:
    broker = Mosquitto()  # ports chosen, not started yet
    try:
        async with publisher(settings_for(broker.url)) as pub:
            assert not pub.connected
            with pytest.raises(BrokerConnectError, match="refused the TCP connection") as caught:
                await pub.wait_connected(timeout=0.2)
            assert broker.url in str(caught.value)
            assert pub.stats().connect_failures >= 1
            await broker.start_async()
            await pub.wait_connected(timeout=15)
            await pub.publish(TOPICS.health, b"up", retain=True)
            assert await retained(broker, TOPICS.health) == b"up"
    finally:
        broker.close()


async def test_calls_waiting_for_a_connection_end_on_close() -> None:
    broker = Mosquitto()  # never started
    try:
        pub = publisher(settings_for(broker.url))
        await pub.__aenter__()
        waiting = asyncio.create_task(pub.publish(TOPICS.health, b"x"))
        await asyncio.sleep(0)
        await pub.close()
        with pytest.raises(PublisherClosedError):
            await waiting
        with pytest.raises(PublisherClosedError):
            await pub.publish(TOPICS.health, b"y")
    finally:
        broker.close()


# -- many in flight, and the spool wiring --------------------------------------------------------


async def test_drain_keeps_a_window_in_flight_and_acks_each_once(broker: Mosquitto) -> None:
    topic = TOPICS.events("sig")
    items = [(("boot", i), topic, i.to_bytes(4, "big") * 50) for i in range(3000)]
    async with Collector(broker.host, broker.port, topic) as sub:
        async with publisher(settings_for(broker.url), max_inflight=200) as pub:
            acked: list[tuple[str, int]] = []
            peak = 0

            def ack(batch_id: tuple[str, int]) -> None:
                nonlocal peak
                peak = max(peak, pub.stats().in_flight)  # others still wait for their PUBACK
                acked.append(batch_id)

            result = await pub.drain(items, ack)
            assert result.acked == 3000
            assert sorted(acked) == [item[0] for item in items]
            assert pub.stats().acked == 3000 and pub.stats().in_flight == 0
            assert 1 < peak <= 200
        await sub.wait_for(lambda r: len(r) >= 3000)
    assert sorted(sub.payloads(topic)) == sorted(item[2] for item in items)


async def test_drain_stops_on_an_ack_error(broker: Mosquitto) -> None:
    def ack(batch_id: int) -> None:
        if batch_id == 5:
            raise RuntimeError("spool is gone")

    async with publisher(settings_for(broker.url)) as pub:
        items = [OutgoingMessage(i, TOPICS.health, b"x") for i in range(50)]
        with pytest.raises(RuntimeError, match="spool is gone"):
            await pub.drain(items, ack, window=4)


async def test_spool_batches_are_deleted_only_after_their_puback(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The wiring the gateway uses: drain(spool.unacked_batches(), spool.acknowledge)."""
    with Spool(tmp_path / "spool.db", max_bytes=1 << 24) as spool:
        spool.next_gateway_boot()
        for seq in range(10):
            spool.add_frame("n1", 1, seq, "m", bytes([seq]) * 20, 1_000 + seq)
        frames = spool.pending_frames()
        for chunk in (frames[:4], frames[4:]):
            spool.seal_batch(
                [f.id for f in chunk],
                batch_id=spool.next_batch_id(),
                topic=TOPICS.for_kind("n1", "m"),
                payload=b"cnb1" + b"".join(f.payload for f in chunk),
            )
        batches = spool.unacked_batches()
        assert len(batches) == 2
        async with Collector(broker.host, broker.port, TOPICS.for_kind("n1", "m")) as sub:
            async with publisher(settings_for(broker.url)) as pub:
                result = await pub.drain(batches, spool.acknowledge)
            await sub.wait_for(lambda r: len(r) >= 2)
        assert result.acked == 2
        assert spool.unacked_batches() == []
        assert sorted(sub.payloads(TOPICS.for_kind("n1", "m"))) == sorted(
            b.payload for b in batches
        )


# -- MQTT 5 refusals -----------------------------------------------------------------------------


async def test_mqtt5_negative_puback_is_an_error_and_the_batch_is_not_acked() -> None:
    rules = [f"topic readwrite {TOPICS.status}", f"topic readwrite {TOPICS.measurements('n1')}"]
    async with Mosquitto(acl_rules=rules) as broker:
        settings = settings_for(broker.url, protocol="5")
        async with publisher(settings, subscribe_commands=False) as pub:
            with pytest.raises(PublishRefusedError) as caught:
                await pub.publish(TOPICS.measurements("n2"), b"denied")
            assert caught.value.reason_code == 0x87
            assert broker.url in str(caught.value) and "ACL" in str(caught.value)
            acked: list[int] = []
            items = [
                OutgoingMessage(1, TOPICS.measurements("n1"), b"a"),
                OutgoingMessage(2, TOPICS.measurements("n2"), b"b"),
                OutgoingMessage(3, TOPICS.measurements("n1"), b"c"),
            ]
            result = await pub.drain(items, acked.append, window=2)
            assert (result.acked, result.refused) == (2, 1)
            assert sorted(acked) == [1, 3]
            assert pub.stats().refused == 2


# -- commands ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_commands_arrive_including_those_sent_while_away(
    broker: Mosquitto, protocol: str
) -> None:
    settings = settings_for(broker.url, protocol=protocol)

    async def send(topic: str, payload: bytes) -> None:
        async with aiomqtt.Client(broker.host, broker.port) as brain:
            await brain.publish(topic, payload, qos=1)

    async with publisher(settings) as pub:
        commands = pub.commands()
        await send(TOPICS.command_result("sig"), b"not for us")
        await send(TOPICS.command("sig"), b"set-plan 3")
        async with asyncio.timeout(10):
            first = await anext(commands)
        assert first == Command("sig", TOPICS.command("sig"), b"set-plan 3", retained=False)
    # Away (clean DISCONNECT, session kept): the broker queues the next command for us.
    await send(TOPICS.command("air1"), b"calibrate")
    async with publisher(settings) as pub:
        async with asyncio.timeout(10):
            queued = await anext(pub.commands())
        assert (queued.node, queued.payload) == ("air1", b"calibrate")
        assert pub.stats().commands_received == 1


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
async def tls_broker(pki: TestPki) -> AsyncIterator[Mosquitto]:
    tls = BrokerTls(pki.ca_cert, pki.server_cert, pki.server_key, require_certificate=True)
    async with Mosquitto(tls=tls) as running:
        yield running


async def test_tls_with_a_client_certificate(tls_broker: Mosquitto, pki: TestPki) -> None:
    settings = settings_for(
        tls_broker.tls_url, ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
    )
    async with publisher(settings) as pub:
        await pub.publish(TOPICS.health, b"over tls", retain=True)
    assert await retained(tls_broker, TOPICS.health) == b"over tls"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong CA", "cannot verify its certificate"),
        ("no client certificate", "requires a client certificate"),
        ("client certificate from another CA", "does not accept client certificate"),
    ],
)
async def test_tls_refusals_are_clear(
    tls_broker: Mosquitto, pki: TestPki, case: str, message: str
) -> None:
    files = {
        "wrong CA": {"ca_file": pki.other_ca_cert, "cert_file": pki.client_cert, "key_file": pki.client_key},
        "no client certificate": {"ca_file": pki.ca_cert},
        "client certificate from another CA": {
            "ca_file": pki.ca_cert, "cert_file": pki.other_client_cert, "key_file": pki.other_client_key,
        },
    }[case]  # fmt: skip
    # A long connect timeout: the refusal must be reported when it happens, not when that expires.
    settings = settings_for(tls_broker.tls_url, connect_timeout=60, **files)
    async with asyncio.timeout(20):
        with pytest.raises(BrokerTlsError, match=message) as caught:
            async with publisher(settings):
                pass
    assert caught.value.broker == tls_broker.tls_url
    assert str(caught.value).startswith(f"MQTT broker {tls_broker.tls_url}: ")
    if case == "wrong CA":
        assert str(pki.other_ca_cert) in str(caught.value)


# -- credentials ---------------------------------------------------------------------------------


@pytest.fixture
async def auth_broker() -> AsyncIterator[Mosquitto]:
    async with Mosquitto(users={"gw1": SECRET}) as running:
        yield running


async def test_credentials_from_a_file_are_accepted(auth_broker: Mosquitto, tmp_path: Path) -> None:
    creds = tmp_path / "mqtt.creds"
    creds.write_text(f"gw1\n{SECRET}\n")
    creds.chmod(0o600)
    settings = MqttSettings.load(credentials_file=creds, env={}, url=auth_broker.url)
    async with publisher(settings) as pub:
        await pub.publish(TOPICS.health, b"authenticated")
        assert pub.stats().acked == 1


async def test_bad_credentials_fail_clearly_and_the_password_never_leaks(
    auth_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = settings_for(
        auth_broker.url, credentials=Credentials("gw1", SECRET, source="test credentials")
    )
    async with publisher(good) as pub:
        await pub.publish(TOPICS.health, b"ok")
        assert SECRET not in repr(pub.settings)
    bad = settings_for(
        auth_broker.url, credentials=Credentials("gw1", WRONG, source="/etc/citynerve/mqtt.creds")
    )
    with pytest.raises(BrokerAuthError) as caught:
        async with publisher(bad):
            pass
    message = str(caught.value)
    assert message.startswith(f"MQTT broker {auth_broker.url}: refused user 'gw1'")
    assert "/etc/citynerve/mqtt.creds" in message
    with pytest.raises(BrokerAuthError, match="refused an anonymous connection"):
        async with publisher(settings_for(auth_broker.url)):
            pass
    # Retrying (fail_fast off) keeps the reason where the health topic can show it.
    async with publisher(bad, fail_fast=False) as pub:
        assert not pub.connected
        assert "refused user 'gw1'" in (pub.stats().last_error or "")
    assert "Sending CONNECT" in caplog.text  # paho's own debug log, where a leak would show
    for secret in (SECRET, WRONG):
        assert secret not in caplog.text
        assert secret not in message and secret not in repr(caught.value)


# -- the embedded broker -------------------------------------------------------------------------


async def test_the_embedded_amqtt_broker_works_too() -> None:
    async with EmbeddedBroker() as broker:
        topic = TOPICS.measurements("n1")
        async with Collector(broker.host, broker.port, topic) as sub:
            async with publisher(settings_for(broker.url)) as pub:
                await pub.drain(
                    [OutgoingMessage(i, topic, b"m%d" % i) for i in range(20)], lambda _: None
                )
                assert (
                    status_of(await retained(broker, TOPICS.status) or b"null")["state"] == "online"
                )
            await sub.wait_for(lambda r: len(r) >= 20)
        assert sorted(sub.payloads(topic)) == sorted(b"m%d" % i for i in range(20))
