"""The whole node application (firmware/app.py) as a board runs it, under both runtimes: the demo's
air-pico board config from boards.toml, its SDS011 emulated on loopback, the node link to a test
gateway peer. Boot, HELLO with the stream table, readings equal to what the sensor sent, HEALTH,
config errors reported while the rest runs, and the crash-loop safe mode."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from citynerve.inventory import board_config, config_bytes, load_inventory, load_profiles
from hil.emulators.sds011_emulator import Sds011Emulator
from hil.firmware_process import RUNTIMES
from hil.node_runner import NodeRunner
from protocols.link_frame import HEALTH, HELLO
from hil.link_peer import LinkPeer

SERIES = [(123, 261), (124, 262), (130, 270), (99, 180)]  # PM2.5, PM10 in tenths of µg/m³


def air_pico_config() -> dict:
    config = board_config(load_inventory(), "air-pico", load_profiles())
    config["devices"][0]["warmup_s"] = 0  # no 30 s warm-up gate in a test
    config["link"] = dict(config["link"], hello_ms=300, flush_ms=200, health_s=1)
    return config


def hello_of(peer: LinkPeer) -> dict:
    return peer.of_type(HELLO)[-1].message


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_the_node_boots_reports_and_publishes_what_the_sensor_sent(runtime: str, tmp_path: Path) -> None:
    config = air_pico_config()
    config["devices"].append({"id": "ghost", "profile": "sds011", "bus": "no-such-bus"})
    async with Sds011Emulator(SERIES, period_s=0.2) as sensor, LinkPeer() as peer:
        host = {"uarts": {"sds-uart": sensor.address}, "link": peer.address}
        async with NodeRunner(config=config, host=host, runtime=runtime, workdir=tmp_path) as node:
            await peer.wait_for(lambda: peer.of_type(HELLO), "HELLO")
            hello = hello_of(peer)
            assert hello["node"] == "air-pico" and hello["fw"] == "0.1.0"
            written = (node.flash / "config.json").read_bytes()
            assert hello["cfg"] == hashlib.sha256(written).hexdigest()[:16]
            names = {entry[1] for entry in hello["streams"]}
            assert {"pm2/pm2_5", "pm2/pm10"} <= names
            assert ["devices.ghost", "bus 'no-such-bus' is not a valid bus of this board"] in hello["errors"]
            sid = {entry[1]: entry[0] for entry in hello["streams"]}

            def values(stream: str) -> list:
                return [r[3] for r in peer.readings() if r[0] == "s" and r[1] == sid[stream] and r[4] is None]

            await peer.wait_for(lambda: len(values("pm2/pm2_5")) >= 6, "six PM2.5 readings")
            await peer.wait_for(
                lambda: any(h.message["dev"]["pm2"]["frames"] >= 6 for h in peer.of_type(HEALTH)),
                "a HEALTH counting the frames")
        sent = sensor.sent_readings()
    got = values("pm2/pm2_5")
    expected = [r.pm2_5_tenths / 10 for r in sent]
    assert got == expected[:len(got)], "every PM2.5 value is exactly one the sensor sent, in order"
    assert values("pm2/pm10") == [r.pm10_tenths / 10 for r in sent][:len(values("pm2/pm10"))]
    health = peer.of_type(HEALTH)[-1].message
    assert health["dev"]["pm2"]["bad_checksum"] == 0
    assert health["errors"] == hello_of(peer)["errors"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_crash_looping_node_boots_into_safe_mode_and_says_why(runtime: str, tmp_path: Path) -> None:
    config = air_pico_config()
    flash = tmp_path / "flash"
    flash.mkdir()
    # Three boots in a row that never reached a healthy minute: the fourth is a safe-mode boot.
    (flash / "bootlog.json").write_text(json.dumps({"unhealthy": 3, "reason": "drivers crash-looping: pm2"}))
    async with Sds011Emulator(SERIES, period_s=0.2) as sensor, LinkPeer() as peer:
        host = {"uarts": {"sds-uart": sensor.address}, "link": peer.address}
        async with NodeRunner(config=config, host=host, runtime=runtime, workdir=tmp_path):
            await peer.wait_for(lambda: peer.of_type(HELLO), "HELLO")
            await peer.wait_for(lambda: peer.of_type(HEALTH), "HEALTH")
    hello = hello_of(peer)
    safe = [reason for key, reason in hello["errors"] if key == "safe_mode"]
    assert safe and "3 boots in a row crashed" in safe[0] and "drivers crash-looping: pm2" in safe[0]
    assert not any(name.startswith("pm2/") for _, name, *_ in hello["streams"]), "no drivers in safe mode"
    assert json.loads((flash / "bootlog.json").read_text())["unhealthy"] == 4


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_an_unusable_config_keeps_the_link_up_and_reports_it(runtime: str, tmp_path: Path) -> None:
    config = air_pico_config()
    config["node"] = ""
    async with LinkPeer() as peer:
        async with NodeRunner(config=config, host={"link": peer.address}, runtime=runtime, workdir=tmp_path):
            await peer.wait_for(lambda: peer.of_type(HELLO), "HELLO")
    hello = hello_of(peer)
    assert hello["node"] == "unconfigured"
    assert ["config", "config.json: `node` (the board id) is missing"] in hello["errors"]


def test_config_bytes_are_canonical() -> None:
    a = config_bytes(air_pico_config())
    assert a == config_bytes(json.loads(a)), "same config, same bytes, same hash in HELLO"
