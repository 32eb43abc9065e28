"""The gateway's Prometheus endpoint: GET /metrics renders the health document on every scrape.

    async with MetricsServer(service.health, host="127.0.0.1", port=9108) as metrics:
        ...                                    # curl http://127.0.0.1:9108/metrics

`provider` is any coroutine function returning a health dict (gateway/metrics_health.py says which
keys it reads; `service_health(service)` adds the per-node session state to
GatewayService.health()). Each scrape calls it once; a provider that fails or takes longer than
`timeout_s` answers 503 with one line saying why, and is counted in
citynerve_metrics_scrape_errors_total on the next good scrape.

Loopback only unless told. The page tells anyone who can reach it which nodes exist, how they are
linked and what fails, so the server refuses an address that is not loopback ("0.0.0.0", a LAN
address, a name that resolves to one) unless `allow_remote=True`; put it behind the cabinet's
firewall or a reverse proxy then.

The HTTP side is deliberately tiny (asyncio streams, HTTP/1.0 style: one request per connection,
then close): GET or HEAD of /metrics (200), / (a pointer to /metrics), anything else 404; other
methods 405. Requests are bounded in size and time, so a slow or hostile client cannot pin the
gateway's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, Self

from gateway.metrics_exposition import CONTENT_TYPE, Exposition
from gateway.metrics_health import health_metrics

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "HealthProvider",
    "MetricsAddressError",
    "MetricsBindError",
    "MetricsError",
    "MetricsServer",
    "is_loopback",
    "parse_metrics_address",
    "service_health",
]

log = logging.getLogger("gateway.metrics")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108  # what boards.toml and docs/boards-toml.md use
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 8  # scrapes served at once; more wait their turn in the kernel's accept queue

HealthProvider = Callable[[], Awaitable[Mapping[str, Any]]]


class MetricsError(Exception):
    """The metrics endpoint cannot do what was asked; `address` is host:port, `reason` says why."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"metrics endpoint {address}: {reason}")


class MetricsAddressError(MetricsError):
    """The address is malformed, or not loopback and remote access was not allowed."""


class MetricsBindError(MetricsError):
    """The address could not be bound (port taken, address not on this machine)."""


def parse_metrics_address(text: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port" (boards.toml [gateway] metrics)."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535
            or (":" in host and not bracketed)):
        raise MetricsAddressError(text, 'is not a host:port address; write it as "127.0.0.1:9108"'
                                        ' (IPv6 as "[::1]:9108")')
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when every address `host` stands for is a loopback address (a name is resolved)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)


class _Service(Protocol):
    sessions: Mapping[str, Any]
    links: Any

    async def health(self) -> dict[str, Any]: ...


async def service_health(service: _Service) -> dict[str, Any]:
    """GatewayService.health() plus "nodes": each session's health() and whether its link is up
    (left as the service gives it when it already has "nodes")."""
    health = dict(await service.health())
    if "nodes" not in health:
        nodes = {}
        for node, session in service.sessions.items():
            entry = dict(session.health())
            links = service.links
            entry["connected"] = bool(links is not None and links.connected(node))
            for attribute in ("last_hello_ms", "last_health"):
                value = getattr(session, attribute, None)
                if value is not None:
                    entry["node_health" if attribute == "last_health" else attribute] = value
            nodes[node] = entry
        health["nodes"] = nodes
    return health


class MetricsServer:
    """The /metrics endpoint; an async context manager. See the module doc."""

    def __init__(
        self,
        provider: HealthProvider,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        allow_remote: bool = False,
        timeout_s: float = REQUEST_TIMEOUT_S,
        render: Callable[[Mapping[str, Any]], Exposition] = health_metrics,
    ) -> None:
        self.provider = provider
        self.host = host
        self.port = port
        self.allow_remote = allow_remote
        self.timeout_s = timeout_s
        self.render = render
        self.scrapes = 0
        self.scrape_errors = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CLIENTS)

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) bound; port 0 asks the kernel for a free one."""
        if self._server is None or not self._server.sockets:
            raise MetricsError(self.where, "is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        loopback = await asyncio.get_running_loop().run_in_executor(None, is_loopback, self.host)
        if not loopback and not self.allow_remote:
            raise MetricsAddressError(
                self.where, "is not a loopback address, and the page shows every node and fault "
                            "of the junction; use 127.0.0.1 (scrape through a proxy or an SSH "
                            "tunnel) or allow remote scrapes explicitly")
        try:
            self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                      reuse_address=True)
        except OSError as error:
            raise MetricsBindError(self.where, f"cannot listen ({error.strerror or error}); free "
                                               "the port or change [gateway] metrics") from None
        if loopback:
            log.info("metrics listening url=%s", self.url)
        else:
            log.warning("metrics listening on a non-loopback address url=%s: whoever reaches it "
                        "sees every node and fault of the junction", self.url)

    async def close(self) -> None:
        """Stop listening and end the scrapes being served."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # -- one connection --------------------------------------------------------------------------

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with self._slots:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    await self._reply(writer, 431, "request header too large\n")
                    return
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                if len(head) > MAX_REQUEST_BYTES:
                    await self._reply(writer, 431, "request header too large\n")
                    return
                await self._answer(head, writer)
        except (ConnectionError, TimeoutError):
            pass  # the scraper went away; nothing to tell it
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._reply(writer, 400, "bad request line\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._reply(writer, 405, "only GET and HEAD\n", extra={"Allow": "GET, HEAD"})
            return
        body_wanted = method == "GET"
        if path == "/":
            await self._reply(writer, 200, "citynerve gateway: metrics at /metrics\n",
                              body=body_wanted)
            return
        if path != "/metrics":
            await self._reply(writer, 404, "not found: metrics are at /metrics\n", body=body_wanted)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                health = await self.provider()
            page = self.render(health)
        except Exception as error:  # noqa: BLE001 - a scrape never takes the gateway down
            self.scrape_errors += 1
            reason = "timed out" if isinstance(error, TimeoutError) else type(error).__name__
            log.warning("metrics scrape failed error=%s", reason)
            await self._reply(writer, 503, f"health not available ({reason})\n", body=body_wanted)
            return
        self.scrapes += 1
        page.counter("citynerve_metrics_scrapes_total", "Scrapes answered.", self.scrapes)
        page.counter("citynerve_metrics_scrape_errors_total",
                     "Scrapes that failed because the health document was not available.",
                     self.scrape_errors)
        await self._reply(writer, 200, page.render(), content_type=CONTENT_TYPE, body=body_wanted)

    async def _reply(self, writer: asyncio.StreamWriter, status: int, text: str, *,
                     content_type: str = "text/plain; charset=utf-8", body: bool = True,
                     extra: Mapping[str, str] | None = None) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   431: "Request Header Fields Too Large", 503: "Service Unavailable"}
        data = text.encode()
        headers = {"Content-Type": content_type, "Content-Length": str(len(data)),
                   "Connection": "close", **(extra or {})}
        lines = [f"HTTP/1.1 {status} {reasons[status]}"] + [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data if body else b""))
        await writer.drain()
