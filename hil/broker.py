"""A real MQTT broker for the harness and the tests: mosquitto as a child process on a free
loopback port, or amqtt in-process where mosquitto is absent.

`Mosquitto` writes a config file into a private work directory (plain listener always; a TLS
listener when given certificates; a PBKDF2 password file when given users; a persistence
directory when asked), starts /usr/sbin/mosquitto, and returns once every listener accepts TCP
connections. `stop()`/`start()` keep the same ports and the same persistence directory, so an
outage test stops the broker for a few seconds and starts it again where clients expect it. The
child gets PR_SET_PDEATHSIG, so even a SIGKILLed test run leaves no broker behind; `close()` (or
the context manager) stops it and removes the work directory.

`EmbeddedBroker` runs amqtt 0.12 in the current event loop (MQTT 3.1.1 only, anonymous only): the
default broker of `citynerve demo` and the fallback where mosquitto is not installed.
`start_broker()` picks one and says which in `.kind`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import ctypes
import hashlib
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

__all__ = [
    "BrokerStartError",
    "BrokerTls",
    "EmbeddedBroker",
    "Mosquitto",
    "free_port",
    "mosquitto_executable",
    "password_hash",
    "start_broker",
    "write_password_file",
]

log = logging.getLogger(__name__)

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# mosquitto 2's password file format ($7$ = PBKDF2-HMAC-SHA512), as mosquitto_passwd writes it:
# "$7$<iterations>$<base64 12-byte salt>$<base64 64-byte digest>"; 101 is its default count.
_PBKDF2_ITERATIONS = 101
_PBKDF2_SALT_BYTES = 12
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_RUNNING_LINE = re.compile(r"mosquitto version \S+ running")


class BrokerStartError(RuntimeError):
    """A broker did not come up; `log_tail` is the end of its log, which usually says why."""

    def __init__(self, what: str, reason: str, *, log_tail: str = "") -> None:
        self.what = what
        self.reason = reason
        self.log_tail = log_tail
        message = f"{what}: {reason}"
        if log_tail:
            message += f"\n--- broker log ---\n{log_tail}"
        super().__init__(message)


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener's files; with `require_certificate` clients must present one `ca_file`
    signed (mosquitto's require_certificate)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, outside the kernel's ephemeral port range.

    Why outside: while a broker is stopped for an outage test, a client retrying its port may
    be given that very port as its own source port and connect to itself (a TCP self-connect:
    it reads back its own CONNECT), holding the port so the broker cannot bind it again.
    """
    low, high = _ephemeral_range()
    pool = [(10_000, low - 1), (high + 1, 65_535)]
    pool = [(a, b) for a, b in pool if a <= b]
    for _ in range(200):
        if not pool:
            break
        a, b = random.choice(pool)
        port = random.randint(a, b)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # odd ranges: kernel's pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def mosquitto_executable() -> str | None:
    """Where mosquitto is installed, or None."""
    for candidate in MOSQUITTO_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """The mosquitto 2 password-file hash of `password` (what `mosquitto_passwd -b` writes)."""
    salt = secrets.token_bytes(_PBKDF2_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file (mode 600) for `users` {name: password}."""
    for name in users:
        if not name or ":" in name or "\n" in name:
            raise ValueError(
                f"password file {path}: user name {name!r} is empty or has ':' or a newline"
            )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        for name, password in users.items():
            fh.write(f"{name}:{password_hash(password)}\n")


try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, atexit still cleans up
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (looked up beforehand: no imports or dlopen after a
    # fork): the kernel SIGKILLs mosquitto when the thread that started it dies, so a killed test
    # run never leaves a broker holding a port.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_RUNNING: weakref.WeakSet[Mosquitto] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_RUNNING):
        broker.kill()


class Mosquitto:
    """mosquitto 2 as a child process on loopback; a context manager (sync or async).

    `users` {name: password} makes a password file (and turns anonymous access off unless
    `allow_anonymous` says otherwise); `acl_rules` are lines of a mosquitto ACL file ("topic
    readwrite a/#", "user alice", ...); `extra_config` lines are appended to mosquitto.conf.

    Start it from the thread that will outlive it (the event loop's thread in async code): the
    child dies with that thread (PR_SET_PDEATHSIG).
    """

    kind: Literal["mosquitto"] = "mosquitto"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: BrokerTls | None = None,
        tls_port: int | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        persistence: bool = False,
        acl_rules: Sequence[str] = (),
        max_queued_messages: int = 100_000,
        extra_config: Sequence[str] = (),
        workdir: Path | None = None,
        executable: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        found = executable or mosquitto_executable()
        if found is None:
            raise BrokerStartError("mosquitto", "not installed (apt-get install mosquitto)")
        self.executable = found
        self.host = host
        self._fixed_ports = port is not None
        self.port = port if port is not None else free_port(host)
        self.tls = tls
        self.tls_port: int | None = None
        if tls is not None:
            self.tls_port = tls_port if tls_port is not None else free_port(host)
        self.users = dict(users or {})
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        self.persistence = persistence
        self.acl_rules = tuple(acl_rules)
        self.max_queued_messages = max_queued_messages
        self.extra_config = tuple(extra_config)
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="citynerve-mosquitto-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._own_workdir:  # removed at close(), or when forgotten, at garbage collection
            weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.persistence_dir = self.workdir / "persist"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's log lines begin
        self._closed = False

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """mqtt://host:port of the plain listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        """mqtts://host:port of the TLS listener (only when started with `tls`)."""
        if self.tls_port is None:
            raise ValueError("mosquitto: no TLS listener configured (pass tls=BrokerTls(...))")
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """Everything mosquitto logged so far (all starts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.url} pid={self.pid} {state}>"

    # -- config ------------------------------------------------------------------------------------

    def config_text(self) -> str:
        """The mosquitto.conf this instance runs with."""
        lines = [
            "# written by citynerve hil/broker.py",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Queue generously for offline persistent sessions: outage tests count every message.
            f"max_queued_messages {self.max_queued_messages}",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto 2 drops to user "mosquitto", which cannot read our
            # private work directory (0700) or the key files in it.
            lines.append("user root")
        if self.users:
            lines.append(f"password_file {self.workdir / 'passwd'}")
        if self.acl_rules:
            lines.append(f"acl_file {self.workdir / 'acl'}")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.persistence_dir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        lines += list(self.extra_config)
        return "\n".join(lines) + "\n"

    def _write_config(self) -> None:
        if self.users:
            write_password_file(self.workdir / "passwd", self.users)
        if self.acl_rules:
            (self.workdir / "acl").write_text("\n".join(self.acl_rules) + "\n")
        if self.persistence:
            self.persistence_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())

    def _ports(self) -> list[int]:
        return [self.port] + ([self.tls_port] if self.tls_port is not None else [])

    # -- lifecycle ---------------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._closed:
            raise BrokerStartError(repr(self), "already closed")
        if self.running:
            return
        self._write_config()
        with open(self.log_path, "ab") as logfile:
            self._log_offset = logfile.tell()
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, see above
            )
        _RUNNING.add(self)

    def _this_start_log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _not_ready_reason(self) -> str | None:
        """None when mosquitto says it runs and every listener accepts TCP; else why not
        (raises if mosquitto exited). Its own "running" line matters: a port that accepts may
        belong to another process that took it first."""
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise BrokerStartError(
                f"mosquitto on {self.host}:{self.port}",
                f"exited with status {code} while starting",
                log_tail=self._this_start_log()[-2000:],
            )
        if _RUNNING_LINE.search(self._this_start_log()) is None:
            return "mosquitto has not logged that it is running"
        for port in self._ports():
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    pass
            except OSError as error:
                return f"port {port}: {error}"
        return None

    def _address_in_use(self) -> bool:
        return "Address already in use" in self._this_start_log()

    def start(self) -> Self:
        """Start (or start again, on the same ports) and return once every listener accepts."""
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            try:
                while (reason := self._not_ready_reason()) is not None:
                    self._check_deadline(deadline, reason)
                    time.sleep(0.01)
                return self
            except BrokerStartError:
                if not self._may_repick_ports(attempt):
                    raise
        raise AssertionError("unreachable")

    async def start_async(self) -> Self:
        """start() without blocking the event loop while mosquitto comes up."""
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            try:
                while (reason := self._not_ready_reason()) is not None:
                    self._check_deadline(deadline, reason)
                    await asyncio.sleep(0.01)
                return self
            except BrokerStartError:
                if not self._may_repick_ports(attempt):
                    raise
        raise AssertionError("unreachable")

    def _check_deadline(self, deadline: float, reason: str) -> None:
        if time.monotonic() > deadline:
            self.kill()
            raise BrokerStartError(
                f"mosquitto on {self.host}:{self.port}",
                f"not accepting connections after {self.start_timeout} s ({reason})",
                log_tail=self._this_start_log()[-2000:],
            )

    def _may_repick_ports(self, attempt: int) -> bool:
        """After a failed start: pick new ports and say so, if another process may have taken
        one we picked between free_port() and mosquitto's bind (and the ports are not promised)."""
        if self._fixed_ports or attempt == 2 or not self._address_in_use():
            return False
        self._proc = None
        self.port = free_port(self.host)
        if self.tls_port is not None:
            self.tls_port = free_port(self.host)
        return True

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM and wait: mosquitto closes its clients and saves its persistence file.
        Once started, the ports stay this instance's: start() uses them again."""
        self._fixed_ports = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        _RUNNING.discard(self)

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, nothing saved since the last autosave (1 s)."""
        self._fixed_ports = True
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None
        _RUNNING.discard(self)

    def restart(self, *, down_for: float = 0.0) -> Self:
        """Stop, stay down `down_for` seconds (the outage), start again on the same ports."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        return self.start()

    async def stop_async(self, *, timeout: float = 5.0) -> None:
        """stop() without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout=timeout)

    async def restart_async(self, *, down_for: float = 0.0) -> Self:
        """restart() without blocking the event loop."""
        await self.stop_async()
        if down_for > 0:
            await asyncio.sleep(down_for)
        return await self.start_async()

    def close(self) -> None:
        """Stop and remove the work directory (if this instance made it)."""
        self.stop()
        self._closed = True
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        try:
            return await self.start_async()
        except BaseException:
            self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()
        self.close()


class EmbeddedBroker:
    """amqtt 0.12 in the running event loop, anonymous, MQTT 3.1.1; an async context manager.

    amqtt forgets sessions and retained messages when stopped, so a restart is a fresh broker on
    the same port (unlike mosquitto with persistence).
    """

    kind: Literal["amqtt"] = "amqtt"

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    def __repr__(self) -> str:
        return f"<EmbeddedBroker amqtt {self.url} {'running' if self.running else 'stopped'}>"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # Only the anonymous-auth plugin: the default set adds $SYS publishing and per-packet
            # logging, noise in a test run and in the demo.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    async def start(self) -> Self:
        """Bind and serve; returns once the listener accepts connections."""
        if self._broker is not None:
            return self
        try:
            from amqtt.broker import Broker  # type: ignore[import-untyped]
        except ImportError as error:
            raise BrokerStartError("amqtt", "not installed (pip install amqtt==0.12.*)") from error
        broker = Broker(self._config())
        try:
            await broker.start()
        except Exception as error:
            raise BrokerStartError(f"amqtt on {self.host}:{self.port}", str(error)) from error
        self._broker = broker
        return self

    async def stop(self) -> None:
        """Close every client and the listener."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def restart(self, *, down_for: float = 0.0) -> Self:
        await self.stop()
        if down_for > 0:
            await asyncio.sleep(down_for)
        return await self.start()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


@asynccontextmanager
async def start_broker(
    *, prefer: Literal["mosquitto", "amqtt"] = "mosquitto", host: str = "127.0.0.1"
) -> AsyncIterator[Mosquitto | EmbeddedBroker]:
    """A running anonymous broker on loopback: mosquitto when preferred and installed, else
    amqtt in-process. `.kind` says which, `.url` where."""
    broker: Mosquitto | EmbeddedBroker
    if prefer == "mosquitto" and mosquitto_executable() is not None:
        broker = Mosquitto(host=host)
    else:
        if prefer == "mosquitto":
            log.warning("mosquitto is not installed; using the embedded amqtt broker instead")
        broker = EmbeddedBroker(host=host)
    async with broker:
        log.info("MQTT broker %s at %s", broker.kind, broker.url)
        yield broker
