"""The gateway serves its Prometheus endpoint when [gateway] metrics is set, on loopback, and a
metrics problem (the port already taken) is logged without stopping the data path."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

from gateway.config import load_gateway_config
from gateway.service import GatewayService
from hil.broker import Mosquitto, free_port
from tests.gateway.conftest import GATEWAY, needs_mosquitto, write_boards


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@needs_mosquitto()
async def test_the_gateway_serves_metrics_on_loopback(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url, spool=tmp_path / "spool.sqlite",
                          boards=[{"id": "n1", "link": {"transport": "tcp", "gateway_port": free_port()}}],
                          metrics=f"127.0.0.1:{port}")
    async with GatewayService(load_gateway_config(config), shutdown_grace_s=3.0) as service:
        assert service.metrics is not None
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    assert "# TYPE" in text and GATEWAY in text


@needs_mosquitto()
async def test_a_taken_metrics_port_does_not_stop_the_gateway(mosquitto: Mosquitto, tmp_path: Path,
                                                             caplog) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url, spool=tmp_path / "spool.sqlite",
                              boards=[{"id": "n1", "link": {"transport": "tcp", "gateway_port": free_port()}}],
                              metrics=f"127.0.0.1:{port}")
        async with GatewayService(load_gateway_config(config), shutdown_grace_s=3.0) as service:
            assert service.metrics is None
            assert service.failure is None
    assert "metrics endpoint not started" in caplog.text
