"""`citynerve status --once` as a subprocess against a real mosquitto and a real gateway process:
every board is listed with its link state, firmware and config hash check, the gateway's spool
depth is shown, and the exit code says whether the junction is commissioned (1 while a board is
not linked or the gateway is offline, 0 when all is well)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from citynerve.inventory import board_config, config_bytes, load_inventory, load_profiles
from citynerve.status import expected_config_hashes
from hil.broker import Mosquitto
from tests.gateway.conftest import (  # noqa: F401 - fixtures used by name
    GatewayProcess,
    ScriptedNode,
    gateway_process,
    mosquitto,
    tcp_opener,
    wait_until,
    write_boards,
)
from tests.tools.test_tap import AIR_STREAMS, citynerve, junction

pytestmark = pytest.mark.timeout(90)


async def heartbeat(node: ScriptedNode, period_s: float = 0.3) -> None:
    """The node's HEALTH on its own schedule, until cancelled."""
    while True:
        node.send_health()
        await asyncio.sleep(period_s)


async def test_status_once_lists_every_board_link_and_the_spool(
        tmp_path: Path, mosquitto: Mosquitto, gateway_process: Callable[..., GatewayProcess]) -> None:
    async with junction(tmp_path, mosquitto, gateway_process, ["air", "cab"],
                        health_interval_s=0.3) as (config, ports, gw):
        async with ScriptedNode("air", AIR_STREAMS,
                                connect=tcp_opener("127.0.0.1", ports["air"])) as air:
            air.send_data([("pm2/pm2_5", 3.0, None, 0)])
            await wait_until(air.all_acked, "the gateway to acknowledge air's HELLO and DATA")
            # --once waits for the own HEALTH of every linked board, which is not retained: the
            # node sends it on its schedule (every 10 s on a board; here every 0.3 s).
            beat = asyncio.create_task(heartbeat(air))
            common = ("status", "--config", str(config), "--broker", mosquitto.url, "--once", "--wait", "15")
            async with citynerve(*common) as status:
                code, lines, err = await status.finish()

            # The same junction without the missing board is commissioned: exit 0.
            only_air = write_boards(tmp_path / "air-only.toml", broker=mosquitto.url,
                                    spool=tmp_path / "spool.sqlite",
                                    boards=[{"id": "air", "link": {"transport": "tcp",
                                                                   "gateway_port": ports["air"]}}])
            async with citynerve("status", "--config", str(only_air), "--broker", mosquitto.url,
                                 "--once", "--wait", "15") as status:
                ok_code, ok_lines, ok_err = await status.finish()
            beat.cancel()
        gw.terminate()
        async with citynerve(*common) as status:
            off_code, off_lines, off_err = await status.finish()

    text = "\n".join(lines)
    assert code == 1, (text, err)
    assert lines[0].startswith("gateway gw-test at test-site: online, boot "), text
    assert any(l.startswith("  spool: ") and " frames pending, " in l and " batches unacknowledged" in l
               for l in lines), text
    assert "  broker: connected" in text
    air_line = next(l for l in lines if l.startswith("board air: "))
    assert air_line.startswith(f"board air: connected, boot {air.boot:08x}, last frame 20"), air_line
    assert "fw scripted-1" in air_line
    expected = expected_config_hashes(config)["air"]
    assert f"cfg MISMATCH cfg0 != {expected}" in air_line  # the scripted node runs no real config
    assert next(l for l in lines if l.startswith("board cab: ")).startswith("board cab: disconnected, "), text
    assert "PROBLEM: board cab: not linked to the gateway" in text

    assert ok_code == 0, ("\n".join(ok_lines), ok_err)
    assert not any(l.startswith("PROBLEM") for l in ok_lines)
    # The scripted HEALTH names device pm1 with only a "frames" counter (none status picks out),
    # and the one DATA frame went out before status subscribed: no state, no last good value.
    assert "  device pm1: -; last good -" in ok_lines, ok_lines

    assert off_code == 1
    assert off_lines[0].startswith("gateway gw-test at test-site: offline (shutdown)"), off_lines
    assert "PROBLEM: the gateway is offline (shutdown)" in off_lines


def test_expected_config_hash_is_what_flash_writes(tmp_path: Path) -> None:
    repo_boards = Path(__file__).resolve().parents[2] / "boards.toml"
    hashes = expected_config_hashes(repo_boards)
    inventory = load_inventory(repo_boards)
    raw = config_bytes(board_config(inventory, "air-pico", load_profiles()))
    assert hashes["air-pico"] == hashlib.sha256(raw).hexdigest()[:16]
    assert set(hashes) >= {"air-pico", "cab-pico"}


def retained(broker: Mosquitto, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as paho

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-retainer")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_the_live_view_says_when_the_broker_goes_away(tmp_path: Path) -> None:
    """A live view whose broker stops ends with one sentence and exit 2, no traceback."""
    from hil.broker import mosquitto_executable

    if mosquitto_executable() is None:
        pytest.skip("mosquitto not installed")
    with Mosquitto() as broker:
        config = write_boards(tmp_path / "boards.toml", broker=broker.url, spool=tmp_path / "spool.sqlite",
                              boards=[{"id": "air", "link": {"transport": "tcp", "gateway_port": 47999}}])
        # The gateway's status is retained: a live view that subscribes later still gets it.
        retained(broker, "citynerve/v1/test-site/gw-test/status",
                 b'{"state": "online", "gateway": "gw-test", "site": "test-site"}')
        async with citynerve("status", "--config", str(config), "--redraws", "100") as status:
            async with asyncio.timeout(20):  # the first redraw: it is subscribed and drawing
                assert status.proc.stdout is not None
                first = await status.proc.stdout.readline()
            assert first.startswith(b"--- 20"), first
            broker.__exit__(None, None, None)
            code, lines, err = await status.finish()
    assert code == 2, (lines, err)
    assert err.strip().startswith(f"status: MQTT broker {broker.url}: the connection was lost ("), err
    assert "Traceback" not in err
