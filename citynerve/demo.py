"""`citynerve demo`: the demo junction, as far as it is built.

Until the firmware runners, gateway and harness exist this runs what does: the demo junction's
inventory, the protocol stack on the reference frames of its devices (REFERENCE.md), and one cnb1
batch built from those decoded readings and decoded back, then says plainly what is still missing.
Nothing here is a stand-in for the emulated junction.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

from rich.console import Console
from rich.table import Table

from protocols import link_frame, link_messages, modbus_rtu
from protocols.batch_cnb1 import Batch, decode_batch, encode_batch
from protocols.pms5003 import Pms5003Parser
from protocols.sds011 import Sds011Parser

BOARDS = Path(__file__).resolve().parent.parent / "boards.toml"

# Reference frames from REFERENCE.md §2, §3 and §4 (the datasheets' own examples).
PMS5003_FRAME = bytes.fromhex("424d001c0005000d00160005000d001602fd00fc001d000f00060006970003c5")
SDS011_FRAME = bytes.fromhex("aac0d4043a0aa1601dab")
S8_REPLY = bytes.fromhex("fe04020190acd8")

MISSING = [
    ("node firmware runners", "the firmware under CPython and the MicroPython VM, driven by emulated devices"),
    ("gateway service", "node links, Modbus poller, batcher, MQTT publishing with aiomqtt, signed commands"),
    ("embedded broker and live view", "the decoded junction stream shown live until Ctrl-C"),
    ("emulators and scenarios", "traffic generator, signal controller, accounting against ground truth"),
]


def run_demo(broker: str | None = None) -> int:
    console = Console()
    inventory = tomllib.loads(BOARDS.read_text())
    console.rule(f"[bold]citynerve demo junction: {inventory['site']['junction']}")
    boards = Table("board", "type", "link", "devices")
    for board in inventory["board"]:
        devices = ", ".join(f"{d['id']} ({d['profile']})" for d in board.get("device", []))
        boards.add_row(board["id"], board["type"], board["link"]["transport"], devices)
    console.print(boards)

    console.rule("the protocol stack on the devices' reference frames")
    (pms,) = [r for r in Pms5003Parser().feed(PMS5003_FRAME)]
    (sds,) = [r for r in Sds011Parser().feed(SDS011_FRAME)]
    s8_request = modbus_rtu.read_input_registers(0xFE, 3, 1, any_address=True)
    (co2,) = modbus_rtu.parse_response(s8_request, S8_REPLY)
    console.print(f"PMS5003 frame  {PMS5003_FRAME.hex(' ')}\n  → PM1.0 {pms.pm1_0_atm}, PM2.5 "
                  f"{pms.pm2_5_atm}, PM10 {pms.pm10_atm} µg/m³ (atmospheric)")
    console.print(f"SDS011 frame   {SDS011_FRAME.hex(' ')}\n  → PM2.5 {sds.pm2_5}, PM10 {sds.pm10} µg/m³")
    console.print(f"SenseAir S8    request {s8_request.hex(' ')}, reply {S8_REPLY.hex(' ')}\n  → CO₂ {co2} ppm")

    now = int(time.time() * 1000)
    batch = Batch("air-esp32", node_boot=1)
    batch.add_stream("pm1/pm2_5", unit="ug/m3", kind="gauge", dec=0)
    batch.add_stream("pm1/pm10", unit="ug/m3", kind="gauge", dec=0)
    batch.add_stream("pm2/pm2_5", unit="ug/m3", kind="gauge", dec=1)
    batch.add_stream("co2/co2_ppm", unit="ppm", kind="gauge", dec=0)
    batch.add_measurement("pm1/pm2_5", now, pms.pm2_5_atm)
    batch.add_measurement("pm1/pm10", now, pms.pm10_atm)
    batch.add_measurement("pm2/pm2_5", now, sds.pm2_5)
    batch.add_measurement("co2/co2_ppm", now, co2)
    payload = encode_batch(batch, gateway_boot=1, seq=0)
    decoded = decode_batch(payload)
    data_frame = link_frame.encode_frame(
        link_frame.DATA, 1, link_messages.encode_message(link_frame.DATA, {"tick": 0, "t0": 0, "m": [0, 0, pms.pm2_5_atm]}))
    console.print(f"node-link DATA frame with one reading: {len(data_frame)} bytes on the wire")
    console.print(f"cnb1 batch of those {len(decoded['measurements'])} readings: {len(payload)} bytes "
                  f"(codec {decoded['codec']}), decoded back:")
    for m in decoded["measurements"]:
        console.print("  " + json.dumps({k: m[k] for k in ("stream", "unit", "value", "fault")}))

    console.rule("[bold yellow]not built yet")
    for name, what in MISSING:
        console.print(f"[yellow]✗[/] {name}: {what}")
    if broker:
        console.print(f"--broker {broker} is noted, but there is no gateway yet to publish to it.")
    console.print("The emulated junction end to end arrives with the gateway and harness issues.")
    return 0
