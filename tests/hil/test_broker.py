"""hil/broker.py against the real things: mosquitto as a child process on loopback (config,
readiness, stop/start on the same port, persistence, passwords, TLS, parent-death cleanup) and
amqtt in-process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from hil.broker import (
    BrokerStartError,
    BrokerTls,
    EmbeddedBroker,
    Mosquitto,
    free_port,
    mosquitto_executable,
    password_hash,
    start_broker,
)
from tests.gateway.certs import TestPki, make_pki, openssl_available

REPO_ROOT = Path(__file__).resolve().parents[2]

needs_mosquitto = pytest.mark.skipif(
    mosquitto_executable() is None, reason="mosquitto not installed"
)
needs_openssl = pytest.mark.skipif(not openssl_available(), reason="openssl CLI not installed")


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


async def roundtrip(
    host: str, port: int, *, topic: str = "t/x", payload: bytes = b"hello", **kw: object
) -> bytes:
    """Subscribe, publish QoS 1 and return what came back."""
    async with aiomqtt.Client(host, port, timeout=5, **kw) as client:  # type: ignore[arg-type]
        await client.subscribe(topic, qos=1)
        await client.publish(topic, payload, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return bytes(message.payload)  # type: ignore[arg-type]
    raise AssertionError("unreachable")


async def retained(host: str, port: int, topic: str) -> bytes | None:
    """The retained message on `topic`, or None (the broker sends retained ones on subscribe)."""
    async with aiomqtt.Client(host, port, timeout=5) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    return bytes(message.payload)  # type: ignore[arg-type]
        except TimeoutError:
            return None
    return None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    if not openssl_available():
        pytest.skip("openssl CLI not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- mosquitto -----------------------------------------------------------------------------------


@needs_mosquitto
async def test_mosquitto_serves_mqtt_and_cleans_up() -> None:
    broker = Mosquitto()
    async with broker:
        assert broker.running and broker.kind == "mosquitto"
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert await roundtrip(broker.host, broker.port) == b"hello"
        pid, workdir = broker.pid, broker.workdir
        assert pid is not None and pid_alive(pid)
    assert not pid_alive(pid)
    assert not workdir.exists()
    assert not accepts("127.0.0.1", broker.port)


@needs_mosquitto
def test_stop_and_start_again_on_the_same_port() -> None:
    with Mosquitto() as broker:
        port, first_pid = broker.port, broker.pid
        broker.stop()
        assert not broker.running
        assert not accepts(broker.host, port)
        broker.start()
        assert broker.port == port and broker.pid != first_pid
        assert accepts(broker.host, port)
        broker.kill()
        assert not broker.running
        broker.restart(down_for=0.1)
        assert broker.port == port and accepts(broker.host, port)
        assert "terminating" in broker.log_text()


@needs_mosquitto
async def test_persistence_keeps_retained_messages_across_a_restart() -> None:
    async with Mosquitto(persistence=True) as kept, Mosquitto() as volatile:
        for broker in (kept, volatile):
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await client.publish("keep/me", b"still here", qos=1, retain=True)
            await broker.restart_async(down_for=0.0)
        assert "persistence true" in kept.config_text()
        assert await retained(kept.host, kept.port, "keep/me") == b"still here"
        assert await retained(volatile.host, volatile.port, "keep/me") is None


def test_free_ports_avoid_the_ephemeral_range() -> None:
    # A client retrying a stopped broker's port must never be handed that port as its own
    # source port (TCP self-connect): the chosen ports stay out of the kernel's range.
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert all(not low <= port <= high for port in ports)
    assert len(ports) > 1


def test_password_hash_is_mosquitto_pbkdf2_format() -> None:
    salt = bytes(range(12))
    line = password_hash("s3cret", salt=salt)
    algorithm, iterations, salt_b64, digest_b64 = line.split("$")[1:]
    assert (algorithm, iterations) == ("7", "101")
    assert base64.b64decode(salt_b64) == salt
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert password_hash("s3cret") != password_hash("s3cret")  # fresh salt each time


@needs_mosquitto
async def test_password_file_admits_the_user_and_refuses_others() -> None:
    async with Mosquitto(users={"alice": "s3cret"}) as broker:
        assert "allow_anonymous false" in broker.config_text()
        passwd = broker.workdir / "passwd"
        assert oct(passwd.stat().st_mode & 0o777) == "0o600"
        assert "s3cret" not in passwd.read_text()
        assert (
            await roundtrip(broker.host, broker.port, username="alice", password="s3cret")
            == b"hello"
        )
        for credentials in ({"username": "alice", "password": "wrong"}, {}):
            with pytest.raises(aiomqtt.MqttCodeError):
                await roundtrip(broker.host, broker.port, **credentials)


@needs_mosquitto
def test_a_broken_config_fails_with_the_log() -> None:
    broker = Mosquitto(extra_config=["no_such_option 1"])
    with pytest.raises(BrokerStartError) as caught, broker:
        pass
    assert "exited with status" in str(caught.value)
    assert "no_such_option" in caught.value.log_tail
    assert not broker.running


@needs_mosquitto
def test_a_taken_fixed_port_is_reported() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(BrokerStartError) as caught, Mosquitto(port=port):
            pass
    assert "Address already in use" in caught.value.log_tail


@needs_mosquitto
@needs_openssl
async def test_tls_listener_with_required_client_certificate(pki: TestPki) -> None:
    tls = BrokerTls(pki.ca_cert, pki.server_cert, pki.server_key, require_certificate=True)
    async with Mosquitto(tls=tls) as broker:
        assert broker.tls_url == f"mqtts://127.0.0.1:{broker.tls_port}"
        assert "require_certificate true" in broker.config_text()
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        assert await roundtrip(broker.host, broker.tls_port, tls_context=context) == b"hello"
        # The plain listener is there too.
        assert await roundtrip(broker.host, broker.port, payload=b"plain") == b"plain"


@needs_mosquitto
def test_the_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed test run leaves no mosquitto behind."""
    code = (
        "import sys, time\n"
        "from hil.broker import Mosquitto\n"
        "m = Mosquitto().start()\n"
        "print(m.pid, m.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        pid_text, port_text = child.stdout.readline().split()
        broker_pid, port = int(pid_text), int(port_text)
        assert accepts("127.0.0.1", port)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert wait_until(lambda: not pid_alive(broker_pid)), "mosquitto outlived its parent"
    finally:
        child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()


# -- amqtt and the chooser -----------------------------------------------------------------------


async def test_embedded_broker_serves_and_restarts_on_the_same_port() -> None:
    async with EmbeddedBroker() as broker:
        assert broker.kind == "amqtt" and broker.running
        assert await roundtrip(broker.host, broker.port, payload=b"in-process") == b"in-process"
        port = broker.port
        await broker.restart()
        assert broker.port == port
        assert await roundtrip(broker.host, broker.port, payload=b"again") == b"again"
    assert not broker.running
    assert not accepts("127.0.0.1", port)


async def test_start_broker_says_which_it_started() -> None:
    async with start_broker(prefer="amqtt") as broker:
        assert broker.kind == "amqtt"
        assert await roundtrip(broker.host, broker.port) == b"hello"
    if mosquitto_executable() is not None:
        async with start_broker() as broker:
            assert broker.kind == "mosquitto"
            assert await roundtrip(broker.host, broker.port) == b"hello"


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import hil.broker

    monkeypatch.setattr(hil.broker, "mosquitto_executable", lambda: None)
    yield


async def test_start_broker_falls_back_to_amqtt_without_mosquitto(no_mosquitto: None) -> None:
    async with start_broker(prefer="mosquitto") as broker:
        assert broker.kind == "amqtt"
        assert await roundtrip(broker.host, broker.port) == b"hello"
    with pytest.raises(BrokerStartError, match="not installed"):
        Mosquitto()
