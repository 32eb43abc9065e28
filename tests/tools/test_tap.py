"""`citynerve tap` as a subprocess against a real mosquitto and a real `citynerve gateway run`, fed
by ScriptedNodes over TCP: the decoded lines match what the nodes sent, in text and --json, the
--node and --stream filters hold, a garbage payload is reported and tap goes on, and --timeout
says nothing arrived."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from hil.broker import Mosquitto, free_port
from tests.gateway.conftest import (  # noqa: F401 - fixtures used by name
    GATEWAY,
    REPO_ROOT,
    SITE,
    GatewayProcess,
    ScriptedNode,
    gateway_process,
    mosquitto,
    tcp_opener,
    write_boards,
)

pytestmark = pytest.mark.timeout(90)

AIR_STREAMS = [("pm2/pm2_5", "ug/m3", "gauge", 1), ("pm2/pm10", "ug/m3", "gauge", 1)]
CAB_STREAMS = [("loop/1/volume", "veh", "counter", None)]
BASE = f"citynerve/v1/{SITE}/{GATEWAY}"


class CliProcess:
    """`citynerve ARGS` as an asyncio child with piped output; `lines` are its stdout lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def wait_for_stderr(self, text: str, timeout: float = 20.0) -> None:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError(f"the command exited before saying {text!r}: {self.stderr}")
                self.stderr.append(line)
                if text in line:
                    return

    async def finish(self, timeout: float = 30.0) -> tuple[int, list[str], str]:
        """(exit code, stdout lines, the rest of stderr) once it exits."""
        async with asyncio.timeout(timeout):
            out, err = await self.proc.communicate()
        return self.proc.returncode or 0, out.decode().splitlines(), "".join(self.stderr) + err.decode()


@asynccontextmanager
async def citynerve(*args: str) -> AsyncIterator[CliProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from citynerve.cli import main; main()", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    try:
        yield CliProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def junction(tmp_path: Path, mosquitto: Mosquitto, make: Callable[..., GatewayProcess],
                   boards: list[str], **gateway: Any) -> AsyncIterator[tuple[Path, dict[str, int], GatewayProcess]]:
    """A running gateway with one TCP port per board; yields (boards.toml, ports, process)."""
    ports = {b: free_port() for b in boards}
    spool = tmp_path / "spool.sqlite"
    config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url, spool=spool,
                          boards=[{"id": b, "link": {"transport": "tcp", "gateway_port": ports[b]}}
                                  for b in boards], **gateway)
    process = make(config, broker=mosquitto.url, spool=spool)
    process.start()
    try:
        await process.wait_running()
        yield config, ports, process
    finally:
        process.kill()


def publish(url: str, topic: str, payload: bytes) -> None:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-publisher")
    client.connect(host, int(port))
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_tap_prints_the_readings_a_node_sent_in_text_and_json(
        tmp_path: Path, mosquitto: Mosquitto, gateway_process: Callable[..., GatewayProcess]) -> None:
    async with junction(tmp_path, mosquitto, gateway_process, ["air", "cab"]) as (config, ports, _gw):
        common = ("--config", str(config), "--broker", mosquitto.url, "--timeout", "20")
        async with (citynerve("tap", *common, "--node", "air", "--count", "4") as text,
                    citynerve("tap", *common, "--node", "air", "--count", "4", "--json") as js,
                    citynerve("tap", *common, "--node", "cab", "--count", "1") as cab,
                    citynerve("tap", *common, "--stream", "pm2/pm1*", "--count", "1") as pm10):
            for tap in (text, js, cab, pm10):
                await tap.wait_for_stderr("tap: listening")
            async with (ScriptedNode("air", AIR_STREAMS, connect=tcp_opener("127.0.0.1", ports["air"])) as air,
                        ScriptedNode("cab", CAB_STREAMS, connect=tcp_opener("127.0.0.1", ports["cab"])) as cab_node):
                cab_node.send_data([("loop/1/volume", 7, None, 0)])
                air.send_data([("pm2/pm2_5", 12.3, None, 300), ("pm2/pm10", 25.7, None, 200),
                               ("pm2/pm2_5", None, 1, 100)], events=[(1, 2, 0)])
                code, lines, err = await text.finish()
                assert code == 0, err
                jcode, jlines, jerr = await js.finish()
                assert jcode == 0, jerr
                ccode, clines, cerr = await cab.finish()
                assert ccode == 0, cerr
                pcode, plines, perr = await pm10.finish()
                assert pcode == 0, perr

    assert any(l.endswith(" air pm2/pm2_5 = 12.3 ug/m3") for l in lines), lines
    assert any(l.endswith(" air pm2/pm10 = 25.7 ug/m3") for l in lines), lines
    assert any(l.endswith(" air pm2/pm2_5 FAULT timeout") for l in lines), lines
    assert any(l.endswith(" air event phase_begin_green phase 2") for l in lines), lines
    assert all(l[:4].isdigit() and l[23] == "Z" for l in lines), lines  # ISO UTC with ms

    records = [json.loads(l) for l in jlines]
    readings = {(r["stream"], r["value"], r["fault"]) for r in records if r["kind"] == "m"}
    assert readings == {("pm2/pm2_5", 12.3, None), ("pm2/pm10", 25.7, None), ("pm2/pm2_5", None, "timeout")}
    assert [(r["name"], r["param"]) for r in records if r["kind"] == "e"] == [("phase_begin_green", 2)]
    assert all(r["node"] == "air" and r["utc"].endswith("Z") for r in records)

    assert len(clines) == 1 and clines[0].endswith(" cab loop/1/volume = 7 veh"), clines
    assert len(plines) == 1 and plines[0].endswith(" air pm2/pm10 = 25.7 ug/m3"), plines


async def test_a_garbage_payload_is_reported_and_tap_goes_on(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url, spool=tmp_path / "s.sqlite",
                          boards=[{"id": "air", "link": {"transport": "tcp", "gateway_port": 0}}])
    good = {"format": "cnb1", "node": "air", "measurements": [
        {"stream": "pm2/pm2_5", "unit": "ug/m3", "kind": "gauge", "t": 1795900000000, "value": 4.5,
         "fault": None}], "events": []}
    async with citynerve("tap", "--config", str(config), "--broker", mosquitto.url, "--count", "3",
                         "--timeout", "20") as tap:
        await tap.wait_for_stderr("tap: listening")
        publish(mosquitto.url, f"{BASE}/air/m", b"cnb1\x01\x07garbage-after-a-bad-codec")
        publish(mosquitto.url, f"{BASE}/air/e", b'{"node": "air", "events": [')
        publish(mosquitto.url, f"{BASE}/air/m", json.dumps(good).encode())
        code, lines, err = await tap.finish()
    assert code == 0, err
    assert len(lines) == 3, lines
    assert f"UNDECODABLE payload on {BASE}/air/m at byte 5: unknown codec 7" in lines[0]
    assert f"UNDECODABLE payload on {BASE}/air/e at byte 27" in lines[1]
    assert lines[2] == "2026-11-28T21:06:40.000Z air pm2/pm2_5 = 4.5 ug/m3"


async def test_tap_says_when_nothing_arrives(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = write_boards(tmp_path / "boards.toml", broker=mosquitto.url, spool=tmp_path / "s.sqlite",
                          boards=[{"id": "air", "link": {"transport": "tcp", "gateway_port": 0}}])
    async with citynerve("tap", "--config", str(config), "--broker", mosquitto.url,
                         "--timeout", "0.3") as tap:
        code, lines, err = await tap.finish()
    assert code == 1 and lines == []
    assert f"tap: nothing arrived on {BASE}/# at {mosquitto.url} within 0.3 s" in err


async def test_tap_names_a_broker_it_cannot_reach(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    config = write_boards(tmp_path / "boards.toml", broker=url, spool=tmp_path / "s.sqlite",
                          boards=[{"id": "air", "link": {"transport": "tcp", "gateway_port": 0}}])
    async with citynerve("tap", "--config", str(config)) as tap:
        code, lines, err = await tap.finish()
    assert code == 2 and lines == []
    assert f"tap: MQTT broker {url}: cannot be reached" in err
