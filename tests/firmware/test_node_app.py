"""The whole node application (firmware/app.py) as a board runs it, under both runtimes: the demo's
air-pico board config from boards.toml, its SDS011 emulated on loopback, the node link to a test
gateway peer. Boot, HELLO with the stream table, readings equal to what the sensor sent, HEALTH,
config errors reported while the rest runs, the crash-loop safe mode, and safe mode on the link
saved in /link.json (or the board's built-in one) when config.json cannot be read."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from citynerve.flash import link_file_bytes
from citynerve.inventory import board_config, config_bytes, load_inventory, load_profiles
from firmware.safe_boot import safe_link
from hil.emulators.sds011_emulator import Sds011Emulator
from hil.firmware_process import RUNTIMES, firmware_command
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


class _BrokenConfigNode(NodeRunner):
    """A node whose config.json is not JSON (a truncated write, say), with or without the
    /link.json `citynerve flash` writes beside it. `wired_link`: where the harness wires the
    board's default UART (the host HAL's link when nothing on the flash says where it goes)."""

    def __init__(self, *, link_json: bytes | None, wired_link: str | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._link_json = link_json
        self._wired_link = wired_link

    def write_config(self) -> None:
        (self.flash / "config.json").write_bytes(b'{"node": "air-pico", "link": {"transport": "ua')
        if self._link_json is not None:
            (self.flash / "link.json").write_bytes(self._link_json)

    async def _spawn(self):  # type: ignore[no-untyped-def]
        host = {"fs_root": str(self.flash)}
        if self._wired_link:
            host["link"] = self._wired_link
        source = f"from firmware import hal_host\nhal_host.configure({host!r})\nfrom firmware.app import main\n"
        argv, env, cwd = firmware_command(self.runtime, source, "main()", build_dir=self.workdir, fs_root=self.flash)
        return await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_an_unreadable_config_reaches_the_gateway_on_the_saved_link(runtime: str, tmp_path: Path) -> None:
    """config.json is not JSON: safe mode boots on /link.json (here its host section is what wires
    the emulated link to the peer), under the board's own id, and says why in HELLO and HEALTH."""
    config = air_pico_config()
    async with LinkPeer() as peer:
        saved = link_file_bytes(dict(config, host={"link": peer.address}), backend="host")
        async with _BrokenConfigNode(config=config, host={}, runtime=runtime, workdir=tmp_path, link_json=saved):
            await peer.wait_for(lambda: peer.of_type(HELLO) and peer.of_type(HEALTH), "HELLO and HEALTH")
    hello = hello_of(peer)
    assert hello["node"] == "air-pico", "the id saved in /link.json: the gateway accepts the HELLO"
    errors = dict((key, reason) for key, reason in hello["errors"])
    assert errors["config"].startswith("config.json: not valid JSON")
    assert errors["link"] == ("config.json is unusable: using the link saved in /link.json "
                              "(UART 0 at 115200 baud, TX 0 / RX 1)")
    assert not any(name.startswith("pm2/") for _, name, *_ in hello["streams"]), "no drivers in safe mode"
    assert peer.of_type(HEALTH)[-1].message["errors"] == hello["errors"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_without_a_saved_link_safe_mode_opens_the_built_in_one(runtime: str, tmp_path: Path) -> None:
    """config.json is not JSON and there is no /link.json: the board's built-in link (UART 0 at
    115200 baud), which the harness wires to the peer as a technician's cable would be."""
    async with LinkPeer() as peer:
        async with _BrokenConfigNode(config=air_pico_config(), host={}, runtime=runtime, workdir=tmp_path,
                                     link_json=None, wired_link=peer.address):
            await peer.wait_for(lambda: peer.of_type(HELLO) and peer.of_type(HEALTH), "HELLO and HEALTH")
    hello = hello_of(peer)
    assert hello["node"] == "unconfigured"
    errors = dict((key, reason) for key, reason in hello["errors"])
    assert errors["config"].startswith("config.json: not valid JSON")
    assert errors["link"] == ("config.json is unusable and /link.json is missing: using the built-in link "
                              "(UART 0 at 115200 baud, TX 0 / RX 1)")
    assert peer.of_type(HEALTH)[-1].message["errors"] == hello["errors"]


class _Flash:
    """read_file over a dict, the HAL's SAFE_LINK: what safe_link needs of a HAL."""

    SAFE_LINK = {"transport": "uart", "uart": 0, "tx": 0, "rx": 1, "baud": 115200}

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read_file(self, path: str) -> bytes | None:
        return self.files.get(path)


UART_LINK = {"transport": "uart", "uart": 1, "tx": 4, "rx": 5, "baud": 57600}


@pytest.mark.parametrize(("config", "files", "expected"), [
    # The config's own link is fine (e.g. only `node` is missing): it is used, nothing to say.
    ({"link": UART_LINK}, {}, (None, UART_LINK, None, None)),
    # A bad link in a good-looking config: the saved one, with the saved id.
    ({"node": "", "link": {"transport": "usb"}}, {"link.json": json.dumps({"node": "cab", "link": UART_LINK})},
     ("cab", UART_LINK, None, "config.json is unusable: using the link saved in /link.json "
                              "(UART 1 at 57600 baud, TX 4 / RX 5)")),
    (None, {"link.json": json.dumps({"node": "cab", "link": {"transport": "tcp", "gateway_port": 7700},
                                     "host": {"link": "x"}})},
     ("cab", {"transport": "tcp", "gateway_port": 7700}, {"link": "x"},
      "config.json is unusable: using the link saved in /link.json (tcp to gateway port 7700)")),
    # The saved link is unusable: the built-in one, the saved id still.
    (None, {"link.json": json.dumps({"node": "cab", "link": {"transport": "uart", "uart": 0}})},
     ("cab", _Flash.SAFE_LINK, None, "config.json is unusable and /link.json: link.tx must be a whole number: "
                                     "using the built-in link (UART 0 at 115200 baud, TX 0 / RX 1)")),
    (None, {"link.json": b"\xff{"},
     (None, _Flash.SAFE_LINK, None, "config.json is unusable and /link.json is not valid JSON: "
                                    "using the built-in link (UART 0 at 115200 baud, TX 0 / RX 1)")),
    ({"node": "air", "link": 5}, {"link.json": b"[]"},
     ("air", _Flash.SAFE_LINK, None, "config.json is unusable and /link.json is not an object: "
                                     "using the built-in link (UART 0 at 115200 baud, TX 0 / RX 1)")),
])
def test_safe_link_choice(config: dict | None, files: dict, expected: tuple) -> None:
    assert safe_link(_Flash(files), config) == expected
