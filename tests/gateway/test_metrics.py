"""The Prometheus endpoint: a strict parse of the exposition (format 0.0.4), values and labels from a
health document built from the real stats classes, the HTTP side scraped by a real client
(urllib in a thread), the loopback rule, and the real gateway service behind it."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.batcher import BatcherCounters
from gateway.config import load_gateway_config
from gateway.metrics import (
    MetricsAddressError,
    MetricsBindError,
    MetricsServer,
    is_loopback,
    parse_metrics_address,
    service_health,
)
from gateway.metrics_exposition import CONTENT_TYPE, Exposition, ExpositionError
from gateway.metrics_health import health_metrics
from gateway.mqtt_publisher import PublisherStats
from gateway.node_link import LinkCounters
from gateway.node_session import SessionCounters
from gateway.poll_bus import DeviceCounters
from gateway.service import GatewayService
from gateway.spool_types import LossCount, SpoolStats
from hil.broker import Mosquitto
from tests.gateway.conftest import ScriptedNode, tcp_opener, wait_until, write_boards

# -- a strict parser of the text format (prometheus_client is not installed; this checks more) ---

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\["\\n])*)"(,|\Z)')
Labels = frozenset[tuple[str, str]]


@dataclass
class Family:
    type: str
    help: str
    samples: dict[Labels, float] = field(default_factory=dict)


def _unescape(text: str, quote: bool) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]
            allowed = {"\\": "\\", "n": "\n", **({'"': '"'} if quote else {})}
            assert nxt in allowed, f"bad escape \\{nxt} in {text!r}"
            out.append(allowed[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _value(text: str) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text), f"bad value {text!r}"
    return float(text)


def parse_exposition(text: str) -> dict[str, Family]:
    """Every family with HELP and TYPE before its samples, samples contiguous, no label set twice,
    escapes valid, the page ending in a newline."""
    assert text.endswith("\n"), "the page must end with a newline"
    families: dict[str, Family] = {}
    current: str | None = None
    finished: set[str] = set()
    helps: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in helps, line
            helps[name] = _unescape(help_, quote=False)
            continue
        if line.startswith("# TYPE "):
            name, _, type_ = line[7:].partition(" ")
            assert type_ in ("counter", "gauge", "untyped", "summary", "histogram"), line
            assert name in helps and name not in families, f"TYPE without HELP first: {line}"
            if current is not None:
                finished.add(current)
            families[name] = Family(type_, helps[name])
            current = name
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, raw_labels, raw_value = match.groups()
        assert name == current and name not in finished, f"{name} is not contiguous"
        labels: list[tuple[str, str]] = []
        rest = raw_labels or ""
        while rest:
            m = _LABEL.match(rest)
            assert m, f"bad labels in {line!r}"
            labels.append((m.group(1), _unescape(m.group(2), quote=True)))
            rest = rest[m.end():]
        key = frozenset(labels)
        assert len(key) == len(labels), f"label repeated in {line!r}"
        assert key not in families[name].samples, f"series repeated: {line!r}"
        families[name].samples[key] = _value(raw_value)
    for name, family in families.items():
        if family.type == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
    return families


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    family = families[name]
    return family.samples[frozenset(labels.items())]


# -- a health document made of the real stats classes ---------------------------------------------


def sample_health(*, utc_ms: int = 1_700_000_100_000) -> dict[str, Any]:
    spool = SpoolStats(
        path="/var/lib/citynerve/spool.sqlite", max_bytes=256 << 20, used_bytes=12_345,
        pending_frames=7, pending_bytes=900, batched_frames=20, batched_bytes=3000,
        unacked_batches=3, unacked_batch_bytes=1500, oldest_received_ms=utc_ms - 4500,
        oldest_age_ms=4500, gateway_boot=1_700_000_000,
        evicted={("cab-pico", "m"): LossCount(frames=5, bytes=640)},
        evicted_batches=1, evicted_batch_bytes=210,
        duplicates={("cab-pico", "e"): 2, ("air-esp32", "m"): 4})
    publisher = PublisherStats(
        connected=True, published=120, acked=118, refused=0, publish_errors=2, connects=3,
        reconnects=2, disconnects=2, connect_failures=5, in_flight=2, commands_received=1,
        commands_dropped=0, last_error=None)
    batcher = BatcherCounters(batches=40, measurement_batches=10, event_batches=28,
                              health_batches=2, readings=500, events=90, filtered=3)
    cab_link = LinkCounters(connects=1, bytes_in=50_000, frames_in=420, rx={"crc": 3, "short": 1})
    air_link = LinkCounters(connects=2, disconnects=1, frames_in=77)
    port = LinkCounters(before_hello=4, unknown_node=1, bytes_in=99, rx={"garbage": 2})
    session = SessionCounters(hellos=2, data_frames=400, health_frames=10, results=1,
                              stored_frames=405, readings=1500, events=300, duplicates=6,
                              awaiting_hello=2, bad_readings=1, acks=398, reboots=1)
    co2 = DeviceCounters(requests=50, ok=45, timeouts=3, crc_errors=1, exceptions=1, polls=50,
                         skipped=2, in_backoff=True, backoff_s=4.0, consecutive_failures=2)
    return {
        "site": "demo-city", "gateway": "jn-main-1st", "boot_id": 1_700_000_000,
        "version": '0.1.0 "dev"', "utc_ms": utc_ms, "uptime_ms": 90_500,
        "spool": spool.as_dict(), "publisher": publisher.as_dict(), "batcher": batcher.as_dict(),
        "links": {"nodes": {"cab-pico": {**cab_link.as_dict(), "transport": "uart",
                                          "connected": True},
                            "air-esp32": {**air_link.as_dict(), "transport": "tcp",
                                          "connected": False}},
                  "tcp_ports": {"7700": port.as_dict()}},
        "modbus": {"co2": vars(co2)},
        "service": {"commands_received": 4, "commands_rejected": 3, "commands_failed": 0,
                    "commands_answered": 1, "health_published": 9, "health_skipped": 1,
                    "samples_spooled": 45},
        "nodes": {"cab-pico": {
            "source": "gateway", "node": "cab-pico", "boot": 77, "fw": "1.0", "cfg": "abc",
            "config_errors": [["x", "bad"]], "streams": 16, "acked_through": 401,
            "clock_offset_ms": -1500, "last_frame_ms": utc_ms - 2500,
            "last_hello_ms": utc_ms - 60_000, "counters": session.as_dict(),
            "node_health": {"uptime_ms": 3_600_000, "heap_free": 20_000, "heap_min": 18_000,
                            "heap_peak": -1,
                            "loss": {"ring_overflow": 12, "outbox_dropped": 0, "resent": 33,
                                     "bad_frames_in": 1, "sent": 900},
                            "dev": {"ctrl": {"requests": 3000, "ok": 2990, "timeouts": 7,
                                             "crc_errors": 2, "exceptions": 1, "events": 800,
                                             "last_fault": "ctrl: timeout"}}}}},
    }


def test_a_health_document_renders_every_part_with_its_labels() -> None:
    families = parse_exposition(health_metrics(sample_health()).render())
    v = lambda name, **labels: value(families, name, **labels)  # noqa: E731
    info = families["citynerve_gateway_info"].samples
    assert info == {frozenset({("site", "demo-city"), ("gateway", "jn-main-1st"),
                               ("version", '0.1.0 "dev"')}): 1.0}
    assert v("citynerve_gateway_uptime_seconds") == 90.5
    # spool
    assert v("citynerve_spool_pending_frames") == 7
    assert v("citynerve_spool_pending_bytes") == 900
    assert v("citynerve_spool_unacked_batches") == 3
    assert v("citynerve_spool_oldest_age_seconds") == 4.5
    assert v("citynerve_spool_evicted_frames_total", node="cab-pico", kind="measurements") == 5
    assert v("citynerve_spool_evicted_bytes_total", node="cab-pico", kind="measurements") == 640
    assert v("citynerve_spool_evicted_batches_total") == 1
    assert v("citynerve_spool_duplicate_frames_total", node="cab-pico", kind="events") == 2
    assert v("citynerve_spool_duplicate_frames_total", node="air-esp32", kind="measurements") == 4
    # publisher and batcher
    assert v("citynerve_mqtt_connected") == 1
    assert v("citynerve_mqtt_published_total") == 120
    assert v("citynerve_mqtt_acked_total") == 118
    assert v("citynerve_mqtt_reconnects_total") == 2
    assert families["citynerve_mqtt_reconnects_total"].type == "counter"
    assert families["citynerve_mqtt_connected"].type == "gauge"
    assert v("citynerve_batcher_batches_total", kind="events") == 28
    assert v("citynerve_batcher_readings_total", kind="measurements") == 500
    # links
    assert v("citynerve_link_connected", node="cab-pico", transport="uart") == 1
    assert v("citynerve_link_connected", node="air-esp32", transport="tcp") == 0
    assert v("citynerve_link_frames_total", node="cab-pico") == 420
    assert v("citynerve_link_bad_frames_total", node="cab-pico", kind="crc") == 3
    assert v("citynerve_link_bad_frames_total", node="cab-pico", kind="short") == 1
    assert v("citynerve_tcp_port_unknown_node_total", port="7700") == 1
    assert v("citynerve_tcp_port_bad_frames_total", port="7700", kind="garbage") == 2
    # the session and the node's own HEALTH
    assert v("citynerve_node_frames_total", node="cab-pico", kind="data") == 400
    assert v("citynerve_node_readings_total", node="cab-pico", kind="events") == 300
    assert v("citynerve_node_duplicate_frames_total", node="cab-pico") == 6
    assert v("citynerve_node_held_frames_total", node="cab-pico", kind="awaiting_hello") == 2
    assert v("citynerve_node_rejected_total", node="cab-pico", kind="bad_reading") == 1
    assert v("citynerve_node_last_frame_age_seconds", node="cab-pico") == 2.5
    assert v("citynerve_node_last_hello_age_seconds", node="cab-pico") == 60
    assert v("citynerve_node_clock_offset_seconds", node="cab-pico") == -1.5
    assert v("citynerve_node_config_errors", node="cab-pico") == 1
    assert v("citynerve_node_ring_overflow_frames_total", node="cab-pico") == 12
    assert v("citynerve_node_resent_frames_total", node="cab-pico") == 33
    assert v("citynerve_node_heap_free_bytes", node="cab-pico") == 20_000
    assert frozenset({("node", "cab-pico")}) not in families[
        "citynerve_node_heap_peak_bytes"].samples  # -1: unknown, not a size
    # devices: on the node (its HEALTH) and wired to the gateway (the poller)
    assert v("citynerve_device_faults_total", node="cab-pico", device="ctrl", kind="timeout") == 7
    assert v("citynerve_device_faults_total", node="cab-pico", device="ctrl", kind="crc") == 2
    assert v("citynerve_device_faults_total", node="cab-pico", device="ctrl",
             kind="exception") == 1
    assert v("citynerve_device_counter", node="cab-pico", device="ctrl", kind="events") == 800
    assert v("citynerve_device_faults_total", node="jn-main-1st", device="co2",
             kind="timeout") == 3
    assert v("citynerve_device_requests_total", node="jn-main-1st", device="co2") == 50
    assert v("citynerve_device_in_backoff", node="jn-main-1st", device="co2") == 1
    assert v("citynerve_device_polls_total", node="jn-main-1st", device="co2",
             kind="skipped") == 2
    assert v("citynerve_commands_total", kind="rejected") == 3


def test_missing_and_malformed_parts_leave_samples_out_not_the_page() -> None:
    health = {"gateway": "gw", "spool": {"pending_frames": "many", "unacked_batches": 2},
              "publisher": None, "links": {"nodes": {"n1": "oops"}}, "nodes": {"n2": {}}}
    families = parse_exposition(health_metrics(health).render())
    assert value(families, "citynerve_spool_unacked_batches") == 2
    assert families["citynerve_spool_pending_frames"].samples == {}
    assert value(families, "citynerve_mqtt_connected") == 0  # no publisher: not connected
    # Families exist before their first sample, so dashboards can be built on a fresh gateway.
    assert families["citynerve_spool_evicted_frames_total"].samples == {}


def test_the_exposition_escapes_and_spells_values_as_the_format_says() -> None:
    page = Exposition()
    page.gauge("x_gauge", "Help with \\ and\nnewline.", 1.5, node='a "b" \\ c\nd')
    page.untyped("x_special", "NaN and infinities.", math.inf, kind="pos")
    page.untyped("x_special", "", -math.inf, kind="neg")
    page.untyped("x_special", "", math.nan, kind="nan")
    page.counter("x_total", "An int stays an int.", 2**53 + 1)
    text = page.render()
    assert '# HELP x_gauge Help with \\\\ and\\nnewline.' in text
    assert 'x_gauge{node="a \\"b\\" \\\\ c\\nd"} 1.5' in text
    assert "x_total 9007199254740993\n" in text
    families = parse_exposition(text)
    assert value(families, "x_gauge", node='a "b" \\ c\nd') == 1.5
    assert families["x_gauge"].help == "Help with \\ and\nnewline."
    assert value(families, "x_special", kind="pos") == math.inf
    assert math.isnan(value(families, "x_special", kind="nan"))
    with pytest.raises(ExpositionError, match="not a valid metric name"):
        page.gauge("1bad", "", 1)
    with pytest.raises(ExpositionError, match="label name"):
        page.gauge("x_gauge", "", 1, **{"bad-label": "v"})
    with pytest.raises(ExpositionError, match="declared a gauge"):
        page.counter("x_gauge", "", 1)


# -- the HTTP side ----------------------------------------------------------------------------


def fetch(url: str, *, method: str = "GET") -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


async def scrape(url: str, **kw: Any) -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(fetch, url, **kw)


class Provider:
    """A health provider the test steers: a counter that grows, or a failure."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.hold: asyncio.Event | None = None

    async def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        health = sample_health()
        health["publisher"]["acked"] = 1000 + self.calls
        return health


async def test_a_real_client_scrapes_the_endpoint() -> None:
    provider = Provider()
    async with MetricsServer(provider, host="127.0.0.1", port=0) as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        status, headers, body = await scrape(server.url)
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        families = parse_exposition(body)
        assert value(families, "citynerve_mqtt_acked_total") == 1001
        assert value(families, "citynerve_metrics_scrapes_total") == 1
        # Every scrape asks the provider again.
        status, _, body = await scrape(server.url)
        assert value(parse_exposition(body), "citynerve_mqtt_acked_total") == 1002
        status, headers, body = await scrape(server.url, method="HEAD")
        assert status == 200 and body == "" and int(headers["Content-Length"]) > 1000
        assert (await scrape(f"http://127.0.0.1:{port}/nope"))[0] == 404
        assert (await scrape(f"http://127.0.0.1:{port}/"))[0] == 200
        status, headers, _ = await scrape(server.url, method="POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        # A failing provider answers 503 and is counted on the next good scrape.
        provider.fail = RuntimeError("spool gone")
        status, _, body = await scrape(server.url)
        assert status == 503 and "RuntimeError" in body
        provider.fail = None
        families = parse_exposition((await scrape(server.url))[2])
        assert value(families, "citynerve_metrics_scrape_errors_total") == 1
        assert value(families, "citynerve_metrics_scrapes_total") == 4  # GET, GET, HEAD, GET


async def test_a_provider_that_hangs_times_out_and_the_server_keeps_serving() -> None:
    provider = Provider()
    provider.hold = asyncio.Event()
    async with MetricsServer(provider, port=0, timeout_s=0.3) as server:
        status, _, body = await scrape(server.url)
        assert status == 503 and "timed out" in body
        provider.hold.set()
        assert (await scrape(server.url))[0] == 200


async def test_slow_and_oversized_requests_are_cut_off() -> None:
    async with MetricsServer(Provider(), port=0, timeout_s=0.3) as server:
        host, port = server.address
        # Headers that never end: the connection is closed after timeout_s, unanswered.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        # A header block beyond the stream limit: 431 (or a reset, when the server closes
        # with our bytes still unread; either way it is refused, not buffered without end).
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000)
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()
        except ConnectionError:
            answer = b"reset"
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"reset", answer[:100]
        # Garbage request line: 400.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"HELLO\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 400")
        writer.close()
        assert (await scrape(server.url))[0] == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "10.1.2.3"])
async def test_a_non_loopback_address_is_refused_unless_allowed(host: str) -> None:
    server = MetricsServer(Provider(), host=host, port=0)
    with pytest.raises(MetricsAddressError, match="not a loopback address") as info:
        await server.start()
    assert info.value.address.endswith(":0")
    assert server._server is None  # nothing was bound


async def test_remote_scrapes_can_be_allowed_explicitly() -> None:
    async with MetricsServer(Provider(), host="0.0.0.0", port=0, allow_remote=True) as server:
        _, port = server.address
        assert (await scrape(f"http://127.0.0.1:{port}/metrics"))[0] == 200


async def test_localhost_is_loopback_and_a_taken_port_is_a_bind_error() -> None:
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("10.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsBindError, match=f"127.0.0.1:{port}: cannot listen"):
            async with MetricsServer(Provider(), port=port):
                pass


def test_metrics_addresses_parse_as_boards_toml_writes_them() -> None:
    assert parse_metrics_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_metrics_address("[::1]:9108") == ("::1", 9108)
    assert parse_metrics_address("localhost:1") == ("localhost", 1)
    for bad in ("localhost", "127.0.0.1:", ":9108", "127.0.0.1:70000", "::1:9108", "h:x"):
        with pytest.raises(MetricsAddressError, match="not a host:port address"):
            parse_metrics_address(bad)


# -- behind the real gateway service ---------------------------------------------------------------


async def test_the_real_service_health_scrapes_with_nodes_and_links(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url,
                          spool=tmp_path / "spool.sqlite",
                          boards=[{"id": "air", "link": {"transport": "tcp", "gateway_port": 0}},
                                  {"id": "idle", "link": {"transport": "tcp",
                                                          "gateway_port": 0}}])
    streams = [("pm1/pm2_5", "ug/m3", "gauge", 1)]
    async with GatewayService(load_gateway_config(config), shutdown_grace_s=2.0) as service:
        provider: Callable[[], Awaitable[dict[str, Any]]] = lambda: service_health(service)  # noqa: E731
        async with MetricsServer(provider, port=0) as metrics:
            assert service.links is not None and service.publisher is not None
            await service.publisher.wait_connected(10)
            host, port = next(iter(service.links.tcp_addresses.values()))
            async with ScriptedNode("air", streams, connect=tcp_opener(host, port)) as node:
                for i in range(5):
                    node.send_data([("pm1/pm2_5", 10 + i * 0.1, None, 0)])
                await wait_until(node.all_acked, "every frame acknowledged")
                node.resend(max(node.readings))  # a retransmission of a settled frame
                await wait_until(lambda: service.sessions["air"].counters.duplicates >= 1,
                                 "the resend dropped as a duplicate")
                families = parse_exposition((await scrape(metrics.url))[2])
    v = lambda name, **labels: value(families, name, **labels)  # noqa: E731
    assert v("citynerve_link_connected", node="air", transport="tcp") == 1
    assert v("citynerve_link_connected", node="idle", transport="tcp") == 0
    assert v("citynerve_node_frames_total", node="air", kind="data") == 5
    assert v("citynerve_node_frames_total", node="air", kind="hello") >= 1
    assert v("citynerve_node_readings_total", node="air", kind="measurements") == 5
    assert v("citynerve_node_duplicate_frames_total", node="air") >= 1
    assert v("citynerve_node_boot_id", node="air") == node.boot
    assert v("citynerve_node_last_frame_age_seconds", node="air") < 60
    assert v("citynerve_mqtt_connected") == 1
    assert v("citynerve_spool_max_bytes") > 0
    assert families["citynerve_gateway_info"].samples == {frozenset({
        ("site", "test-site"), ("gateway", "gw-test"), ("version", service.version)}): 1.0}
