"""The junction's parts that the scenario runs rely on, each on its own: the gateway's boards.toml
for the emulated junction (read back by the gateway's own loader), the node configs with a
scenario's changes, the Modbus relay that keeps pymodbus framing on a wire, the live view and the
report picture."""

from __future__ import annotations

import asyncio
import os
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from citynerve.inventory import load_inventory, load_profiles
from gateway.config import load_gateway_config
from hil.demo_view import DemoView
from hil.emulators.ground_truth import GroundTruthLog, MonotonicClock
from hil.emulators.modbus_devices import GenericModbusSensor, ModbusDeviceServer
from hil.junction_config import dead_unit_id, node_configs
from hil.junction_devices import PtyTcpRelay
from hil.junction_gateway import gateway_boards, toml_text
from hil.junction_stream import Reading, utc_ms
from hil.scenario import load_scenario
from hil.timeline_svg import LEFT, RIGHT, timeline_svg
from hil.wire import VirtualWire
from protocols import modbus_rtu
from protocols.quality_codes import (
    EVENT_DETECTOR_OFF,
    EVENT_DETECTOR_ON,
    EVENT_PHASE_BEGIN_GREEN,
    EVENT_PHASE_BEGIN_YELLOW,
    EVENT_PHASE_END_RED_CLEARANCE,
)


def test_the_gateway_reads_the_boards_file_written_for_the_emulated_junction(tmp_path: Path) -> None:
    inventory = load_inventory()
    links = {"cab-pico": {"transport": "uart", "gateway_port": "/dev/pts/98", "baud": 115200},
             "air-esp32": {"transport": "tcp", "gateway_port": 47123},
             "air-pico": {"transport": "uart", "gateway_port": "/dev/pts/99", "baud": 115200}}
    boards = gateway_boards(inventory, links, broker="mqtt://127.0.0.1:1999", spool=tmp_path / "s.sqlite",
                            settings={"measurement_interval_s": 2})
    path = tmp_path / "boards.toml"
    path.write_text(toml_text(boards))
    assert tomllib.loads(path.read_text())["board"][0]["device"][0]["id"] == "ctrl"
    config = load_gateway_config(path)
    assert (config.site, config.gateway) == ("demo-city", "jn-main-1st")
    assert config.broker == "mqtt://127.0.0.1:1999" and config.measurement_interval_s == 2
    assert config.spool == tmp_path / "s.sqlite"
    by_node = {n.node: n for n in config.nodes}
    assert by_node["cab-pico"].serial_port == "/dev/pts/98" and by_node["cab-pico"].baud == 115200
    assert by_node["air-esp32"].tcp_port == 47123
    assert config.event_window_ms == 100, "the inventory's own [gateway] settings are kept"


def test_node_configs_carry_the_scenario_and_its_dead_unit() -> None:
    scenario = load_scenario("faults")
    configs = node_configs(load_inventory(), load_profiles(), scenario)
    assert set(configs) == {"cab-pico", "air-esp32", "air-pico"}
    cab = configs["cab-pico"]
    assert cab["interval_s"] == 5 and cab["link"]["baud"] == 115200
    assert cab["link"]["ring_slots"] == 64 and cab["link"]["ring_bytes"] == 32768
    fault = scenario.faults_of("dead_unit")[0]
    dead = next(d for d in cab["devices"] if d["id"] == dead_unit_id(fault))
    assert (dead["bus"], dead["address"], dead["profile"]) == ("rs485", 2, "generic-modbus-sensor")
    assert "generic-modbus-sensor" in cab["profiles"]
    pm = next(d for d in configs["air-esp32"]["devices"] if d["id"] == "pm1")
    assert pm["warmup_s"] == 0 and pm["set_pin"] == 27, "scenario keys merged into the board's device"


async def test_the_modbus_relay_resynchronises_where_pymodbus_alone_would_not() -> None:
    """Garbage, then a stale request and its retry back to back (what a stalled harness puts on a
    wire): each whole request reaches the emulator on its own, and the next one is answered."""
    truth = GroundTruthLog(clock=MonotonicClock())
    unit = GenericModbusSensor(values={"humidity_pct": 55.5}, unit=7, truth=truth, turnaround_s=0)
    request = modbus_rtu.read_holding_registers(7, 4, 1)
    async with VirtualWire(baud=19200, framing="8E1") as wire, \
            ModbusDeviceServer([unit], rtu_over_tcp=True) as server, \
            PtyTcpRelay(wire.b_path, server.address, modbus=True) as relay:
        fd = os.open(wire.a_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        got = bytearray()
        ready = asyncio.Event()

        def readable() -> None:
            got.extend(os.read(fd, 256))
            ready.set()
        loop.add_reader(fd, readable)
        try:
            os.write(fd, b"\x07\x03\x00" + request + request)
            async with asyncio.timeout(10):
                while len(got) < 2 * 7:  # two replies of one register: 7 bytes each
                    ready.clear()
                    await ready.wait()
            got.clear()
            os.write(fd, request)
            async with asyncio.timeout(10):
                while len(got) < 7:
                    ready.clear()
                    await ready.wait()
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    reply = bytes(got[:7])
    assert modbus_rtu.parse_response(request, reply) == [555], "the request after the burst is answered"
    assert relay.dropped >= 1, "the garbage was dropped, never handed to pymodbus"
    served = [r for r in truth.records() if r.kind == "served"]
    assert len(served) == 3


class _FakeJunction:
    """What DemoView reads of a Junction: the recorder's readings and health, and the status."""

    def __init__(self, readings: list[Reading]) -> None:
        self.recorder = self
        self._readings = readings
        self.inventory = {"site": {"junction": "Main St & 1st Ave"}}
        self.url = "mqtt://127.0.0.1:1"
        self.nodes = {"cab-pico": None}

    def readings(self) -> list[Reading]:
        return list(self._readings)

    def node_health(self, node: str, source: str = "node") -> dict | None:
        return {"uptime_ms": 42000, "heap_free": 12345, "loss": {"ring_overflow": 0, "resent": 3}} \
            if source == "node" else {"connected": True, "acked_through": 77}

    def status(self) -> dict:
        return {"t_s": 12.0, "broker": None, "gateway": {"running": True, "starts": 2},
                "nodes": {"cab-pico": {"runtime": "micropython", "boots": 1, "running": True}},
                "events": ["[t=  3.00 s] gateway killed (kill -9)"]}


def _event(t: int, code: int, param: int) -> Reading:
    return Reading("e", "cab-pico", 1, (1, 1), t, t + 200, code=code, param=param)


def test_the_demo_view_shows_rings_detectors_lanes_air_and_nodes() -> None:
    from rich.console import Console

    now = utc_ms()
    readings = [
        _event(now - 9000, EVENT_PHASE_BEGIN_GREEN, 2), _event(now - 3000, EVENT_PHASE_BEGIN_YELLOW, 2),
        _event(now - 5000, EVENT_PHASE_BEGIN_GREEN, 6), _event(now - 1000, EVENT_PHASE_END_RED_CLEARANCE, 6),
        _event(now - 1000, EVENT_PHASE_BEGIN_GREEN, 8),
        _event(now - 800, EVENT_DETECTOR_ON, 1), _event(now - 400, EVENT_DETECTOR_OFF, 1),
        _event(now - 300, EVENT_DETECTOR_ON, 3),
        Reading("m", "cab-pico", 1, (1, 2), now - 2000, now, stream="nb-lane1/volume", unit="veh", value=4),
        Reading("m", "cab-pico", 1, (1, 2), now - 2000, now, stream="nb-lane1/speed", unit="mph", value=31.5),
        Reading("m", "air-esp32", 1, (1, 3), now - 1500, now, stream="co2/co2_ppm", unit="ppm", value=512),
        Reading("m", "air-pico", 1, (1, 4), now - 1500, now, stream="pm2/pm2_5", unit="ug/m3", fault="checksum"),
    ]
    view = DemoView(_FakeJunction(readings))  # type: ignore[arg-type]
    view.update()
    console = Console(width=160, record=True, color_system=None)
    console.print(view.render())
    screen = console.export_text()
    assert "phase 2 YELLOW" in screen, "ring 1 shows its latest interval"
    assert "phase 8 GREEN" in screen, "at one instant the next green wins over the end of red clearance"
    assert "● occupied" in screen and screen.count("○") >= 1, "detector 3 is occupied, detector 1 is not"
    assert "31.5 mph" in screen and "512 ppm" in screen and "fault: checksum" in screen
    assert "micropython" in screen and "12345" in screen and "77" in screen
    assert "gateway killed" in screen
    summary = view.summary()
    assert "detector 1 (cab-pico): 1 actuations" in summary


def test_the_report_picture_is_svg_with_phases_detectors_air_and_faults() -> None:
    t = 1_700_000_000_000
    readings = [_event(t + 1000, EVENT_PHASE_BEGIN_GREEN, 2), _event(t + 5000, EVENT_PHASE_BEGIN_YELLOW, 2),
                _event(t + 2000, EVENT_DETECTOR_ON, 4), _event(t + 2500, EVENT_DETECTOR_OFF, 4),
                Reading("m", "air-pico", 1, (1, 2), t + 1000, t, stream="pm2/pm2_5", unit="ug/m3", value=9.5),
                Reading("m", "air-pico", 1, (1, 2), t + 2000, t, stream="pm2/pm2_5", unit="ug/m3", value=12.0)]
    svg = timeline_svg(readings, start_ms=t, end_ms=t + 10_000, title="test <run>",
                       faults=[(t + 3000, t + 6000, "broker_down")])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    titles = [e.text for e in root.iter(f"{ns}title")]
    assert "ring 1 2 green" in titles and "det 4 4 on" in titles and "air-pico/pm2/pm2_5" in titles
    texts = [e.text for e in root.iter(f"{ns}text")]
    assert "test <run>" in texts and "broker_down" in texts
    green = next(e for e in root.iter(f"{ns}rect") if e.findtext(f"{ns}title") == "ring 1 2 green")
    plot = float(root.get("width", 0)) - LEFT - RIGHT
    assert abs(float(green.get("width", 0)) - 0.4 * plot) < 1, "4 s of a 10 s axis"
