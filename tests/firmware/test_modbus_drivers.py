"""The Modbus drivers end to end under both runtimes: driver (picked by firmware.config.driver_for)
→ NodeContext → the master → UartBridge → VirtualWire (19200 8E1) → pymodbus holding the profile's
registers. The firmware process prints what its outbox collects; the test changes the registers
(through pymodbus's action hook) and waits for the samples and events that must follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from hil.firmware_process import RUNTIMES
from protocols.batch_codes import (
    EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON, EVENT_PHASE_BEGIN_GREEN, EVENT_PHASE_BEGIN_RED_CLEARANCE,
    EVENT_PHASE_BEGIN_YELLOW, EVENT_PHASE_END_RED_CLEARANCE, EVENT_PHASE_END_YELLOW,
    EVENT_PED_BEGIN_DONT_WALK, EVENT_PREEMPT_CALL_OFF, EVENT_PREEMPT_CALL_ON, FAULT_OUT_OF_RANGE,
    FAULT_SENSOR, FAULT_TIMEOUT, FAULT_UNAVAILABLE, modbus_fault)
from tests.firmware.test_modbus_master import (
    BAUD, FRAMING, PROFILES, FirmwareRun, f32_words, modbus_peer, regs, run_firmware_process)

# Slack for units that answer: generous, so a loaded test machine never turns a slow reply into a
# timeout (the tests assert exact outcomes); dead units get a short one to keep the tests fast.
LIVE_TIMEOUT_MS = 500

DRIVER_SCRIPT = r"""
import asyncio
import json
from firmware import hal_host as hal
from firmware.clock import GatewayClock
from firmware.config import driver_for
from firmware.node_context import NodeContext
from firmware.outbox import Outbox
from firmware.streams import StreamTable


def out(**record):
    print("OUT " + json.dumps(record))


async def main(text):
    cfg = json.loads(text)
    hal.configure(cfg["host"])
    node = NodeContext(hal, cfg, StreamTable(), Outbox(), GatewayClock(hal.ticks_ms))
    drivers = {}
    for device in cfg["devices"]:
        profile = cfg["profiles"][device["profile"]]
        module_name, class_name = driver_for(device, profile)
        module = __import__(module_name, None, None, [class_name])
        drivers[device["id"]] = getattr(module, class_name)(device, profile, node)
    out(streams=node.streams.entries(), config_errors=node.config_errors)
    for did in drivers:
        asyncio.create_task(drivers[did].run())
    for did, op in cfg.get("commands", []):
        ok, message = await drivers[did].command(op, {})
        out(command=[did, op, ok, message])
    while True:
        await asyncio.sleep(0.05)
        counters = {}
        last = {}
        for did in drivers:
            counters[did] = drivers[did].counters
            last[did] = drivers[did].last_fault
        out(msg=node.outbox.take(hal.ticks_ms()), counters=counters, last_fault=last)
"""


@dataclass
class Sample:
    stream: str
    t: int
    value: Any
    fault: int
    detail: int


@dataclass
class Event:
    t: int
    code: int
    param: int


class Outbound:
    """What the node's outbox produced, decoded from the firmware's records."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        head = next((r for r in records if "streams" in r), {"streams": [], "config_errors": []})
        self.streams = {sid: (name, unit, kind, dec) for sid, name, unit, kind, dec in head["streams"]}
        self.config_errors = head["config_errors"]
        self.samples: list[Sample] = []
        self.events: list[Event] = []
        self.counters: dict[str, dict[str, int]] = {}
        for r in records:
            if "counters" in r:
                self.counters = r["counters"]
            msg = r.get("msg")
            if not msg:
                continue
            t0 = msg["t0"]
            faults = {}
            f = msg.get("f", [])
            for i in range(0, len(f), 3):
                faults[f[i]] = (f[i + 1], f[i + 2])
            m = msg["m"]
            for i in range(0, len(m), 3):
                fault, detail = faults.get(i // 3, (0, 0))
                self.samples.append(Sample(self.streams[m[i]][0], t0 + m[i + 1], m[i + 2], fault, detail))
            e = msg.get("e", [])
            for i in range(0, len(e), 3):
                self.events.append(Event(t0 + e[i], e[i + 1], e[i + 2]))

    def of(self, stream: str) -> list[Sample]:
        return [s for s in self.samples if s.stream == stream]

    def has(self, stream: str, value: Any = None, fault: int = 0, detail: int | None = None) -> bool:
        for s in self.of(stream):
            if s.fault == fault and (fault or s.value == value) and (detail is None or s.detail == detail):
                return True
        return False


def outbound(fw: FirmwareRun) -> Outbound:
    return Outbound(fw.records)


def node_config(address: str, devices: list[dict[str, Any]], interval_s: float = 30) -> dict[str, Any]:
    return {
        "node": "test-node", "type": "rp2040", "interval_s": interval_s, "link": {"transport": "usb"},
        "buses": {"rs485": {"id": "rs485", "uart": 1, "tx": 4, "rx": 5, "baud": BAUD, "framing": FRAMING}},
        "devices": devices,
        "profiles": {d["profile"]: PROFILES[d["profile"]] for d in devices},
        "host": {"uarts": {"rs485": address}},
    }


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpy")


# --- SenseAir S8 and the generic sensor ---------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_modbus_sensors(runtime: str, build_dir: Path) -> None:
    fast = {"bus": "rs485", "poll_ms": 100, "timeout_ms": LIVE_TIMEOUT_MS}
    devices = [
        dict(fast, id="co2", profile="senseair-s8", address=254),
        dict(fast, id="env", profile="generic-modbus-sensor", address=2),
        dict(fast, id="env2", profile="generic-modbus-sensor", address=3),
        dict(fast, id="gone", profile="generic-modbus-sensor", address=9, retries=0, offline_after=2,
             backoff_ms=300, timeout_ms=40),
    ]
    temperature = f32_words(21.5, "little")  # the profile says low word first
    peer_devices = {
        254: [regs(0, [0, 0, 0, 400])],  # IR1 meter status, IR2 alarm, IR3 output, IR4 CO2
        2: [regs(0, temperature), regs(4, [523])],
        3: [regs(0, temperature)],  # no humidity register: pymodbus answers exception 02
        9: [regs(0, [0, 0, 0, 0, 0])],
    }
    config = dict(node_config("", devices), commands=[["co2", "background_calibration"],
                                                       ["co2", "self_destruct"]])
    async with modbus_peer(peer_devices, dead=[9]) as peer:
        config["host"] = {"uarts": {"rs485": peer.address}}
        async with run_firmware_process(runtime, DRIVER_SCRIPT, config, build_dir) as fw:
            def command_results(recs: list[dict[str, Any]]) -> list[list[Any]] | None:
                got = [r["command"] for r in recs if "command" in r]
                return got if len(got) == 2 else None

            commands = await fw.wait_for(command_results, what="the command results")

            def first_readings(_: Any) -> bool:
                o = outbound(fw)
                return (o.has("co2/co2_ppm", 400) and o.has("env/temperature_c", 21.5)
                        and o.has("env/humidity_pct", 52.3) and o.has("env2/temperature_c", 21.5)
                        and o.has("env2/humidity_pct", fault=modbus_fault(2))
                        and o.has("gone/temperature_c", fault=FAULT_TIMEOUT)
                        and o.has("gone/humidity_pct", fault=FAULT_UNAVAILABLE))

            await fw.wait_for(first_readings, what="the first readings of every sensor")
            peer.set(254, 0, 0x0020)  # meter status bit 5: out of range
            await fw.wait_for(lambda _: outbound(fw).has("co2/co2_ppm", fault=FAULT_SENSOR, detail=0x20),
                              what="the S8's status fault")
            peer.set(254, 0, 0)
            peer.set(254, 3, 20000)  # above the profile's valid_max
            await fw.wait_for(lambda _: outbound(fw).has("co2/co2_ppm", fault=FAULT_OUT_OF_RANGE),
                              what="an out-of-range CO2 fault")
            peer.set(254, 3, 415)
            await fw.wait_for(lambda _: outbound(fw).has("co2/co2_ppm", 415), what="CO2 415 ppm")
            o = outbound(fw)
            calibration = peer.registers[254][1]
    # HR2 "special command" 0x7C06 = background calibration (REFERENCE.md §4: FE 06 00 01 7C 06).
    assert commands[0][:3] == ["co2", "background_calibration", True]
    assert commands[1][:3] == ["co2", "self_destruct", False] and "co2" in commands[1][3]
    assert calibration == 0x7C06 and (6, 1) in [(fc, a) for fc, a, _ in peer.seen(254)]
    assert o.config_errors == []
    assert sorted(o.streams.values()) == sorted([
        ("co2/co2_ppm", "ppm", "gauge", 0),
        ("env/temperature_c", "degC", "gauge", 2), ("env/humidity_pct", "%", "gauge", 1),
        ("env2/temperature_c", "degC", "gauge", 2), ("env2/humidity_pct", "%", "gauge", 1),
        ("gone/temperature_c", "degC", "gauge", 2), ("gone/humidity_pct", "%", "gauge", 1),
    ])
    # Never a wrong number: every published value is one the registers held.
    assert {s.value for s in o.of("co2/co2_ppm") if not s.fault} == {400, 415}
    assert {s.fault for s in o.of("co2/co2_ppm")} == {0, FAULT_SENSOR, FAULT_OUT_OF_RANGE}
    assert {s.value for s in o.of("env/humidity_pct")} == {52.3}
    for stream in ("env/temperature_c", "env2/temperature_c"):
        assert {s.value for s in o.of(stream)} == {21.5}
    assert {s.fault for s in o.of("env2/humidity_pct")} == {modbus_fault(2)}
    gone = o.of("gone/temperature_c")
    assert all(s.value is None for s in gone)
    assert {s.fault for s in gone} <= {FAULT_TIMEOUT, FAULT_UNAVAILABLE}
    c = o.counters["gone"]
    assert c["offline"] == 1 and c["skipped_backoff"] >= 1 and c["ok"] == 0
    # The dead unit's skipped polls never reached the wire. The counters are the last the firmware
    # printed before it was stopped, so one probe may still have been in flight.
    assert c["timeouts"] <= c["requests"] <= c["timeouts"] + 1
    assert c["requests"] <= len(peer.seen(9)) <= c["requests"] + 1
    assert o.counters["env2"]["exceptions"] >= 1 and o.counters["env2"]["offline"] == 0


# --- the loop detector card ---------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_loop_card(runtime: str, build_dir: Path) -> None:
    detectors = [11, 12, 13, 14, 15, 16, 17, 18]
    devices = [{"id": "card", "profile": "loop-card-modbus", "bus": "rs485", "address": 4,
                "poll_ms": 50, "timeout_ms": LIVE_TIMEOUT_MS, "detector": detectors, "interval_s": 1}]
    counts = [65530, 0, 0, 0, 0, 0, 0, 100]
    async with modbus_peer({4: [regs(0, [0, 0]), regs(16, counts)]}) as peer:
        async with run_firmware_process(runtime, DRIVER_SCRIPT, node_config(peer.address, devices),
                                        build_dir) as fw:
            def events(_: Any) -> list[tuple[int, int]]:
                return [(e.code, e.param) for e in outbound(fw).events]

            def volumes(_: Any) -> list[Sample]:
                return outbound(fw).of("card/1/volume")

            await fw.wait_for(lambda _: outbound(fw).counters.get("card", {}).get("ok", 0) >= 2,
                              what="the first poll")
            peer.set(4, 0, 0b101)  # channels 1 and 3 occupied
            await fw.wait_for(lambda r: len(events(r)) >= 2, what="detector on events")
            peer.set(4, 0, 0b100)
            await fw.wait_for(lambda r: len(events(r)) >= 3, what="a detector off event")
            # The first interval began before the node saw the card: no volume for it. Counts
            # after its boundary go into the next one: channel 1 wraps 65530 -> 3 (+9).
            await fw.wait_for(volumes, what="the first interval's volume")
            peer.set(4, 16, 3)
            peer.set(4, 23, 105)
            await fw.wait_for(lambda _: outbound(fw).has("card/1/volume", 9), what="a wrapped count")
            # A channel fault: channel 3 (on) is forced off, its interval is a sensor fault.
            peer.set(4, 1, 0b100)
            await fw.wait_for(lambda r: len(events(r)) >= 4, what="the faulted channel going off")
            await fw.wait_for(lambda _: outbound(fw).has("card/3/volume", fault=FAULT_SENSOR),
                              what="the faulted channel's volume fault")
            # The card fails: a poll fault, no events while it does, then what changed since.
            peer.fail[4] = ExcCodes.DEVICE_FAILURE
            await fw.wait_for(lambda _: outbound(fw).has("card/poll", fault=modbus_fault(4)),
                              what="the card's poll fault")
            peer.set(4, 1, 0)
            peer.set(4, 0, 0b110)
            quiet = len(events(None))
            await fw.wait_for(lambda _: outbound(fw).has("card/1/volume", fault=modbus_fault(4)),
                              what="a volume fault for the interval the card failed in")
            assert len(events(None)) == quiet, "a failed poll must not emit events"
            del peer.fail[4]
            await fw.wait_for(lambda r: len(events(r)) >= quiet + 2 and outbound(fw).has("card/poll", 1),
                              what="events after recovery")
            o = outbound(fw)
    assert [(e.code, e.param) for e in o.events] == [
        (EVENT_DETECTOR_ON, 11), (EVENT_DETECTOR_ON, 13), (EVENT_DETECTOR_OFF, 11),
        (EVENT_DETECTOR_OFF, 13),  # channel 3 faulted
        (EVENT_DETECTOR_ON, 12), (EVENT_DETECTOR_ON, 13),  # after the failure: 2 on, 3 back
    ]
    first = o.of("card/1/volume")[0]
    assert first.value is None and first.fault == FAULT_UNAVAILABLE
    # Counts are never invented: the valid volumes add up to what the counters moved.
    for channel, moved in ((1, 9), (8, 5), (2, 0)):
        valid = [s.value for s in o.of(f"card/{channel}/volume") if not s.fault]
        assert sum(valid) == moved, (channel, valid)
    assert ("card/poll", "", "status", 0) in o.streams.values()
    assert ("card/8/volume", "veh", "count", 0) in o.streams.values()
    assert o.counters["card"]["exceptions"] >= 1 and o.counters["card"]["poll_faults"] >= 1


# --- the signal controller ----------------------------------------------------------------------

def _bits(*phases: int) -> int:
    bits = 0
    for p in phases:
        bits |= 1 << (p - 1)
    return bits


def _phase_regs(greens: int, yellows: int, walks: int = 0, ped_clears: int = 0) -> list[int]:
    """reds, yellows, greens, dont_walks, ped_clears, walks, veh_calls, ped_calls (profile order)."""
    peds = _bits(2, 4, 6, 8)
    return [0xFF & ~(greens | yellows), yellows, greens, peds & ~(walks | ped_clears), ped_clears,
            walks, 0, 0]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_signal_controller(runtime: str, build_dir: Path) -> None:
    devices = [{"id": "ctrl", "profile": "nema-phase-status", "bus": "rs485", "address": 5,
                "poll_ms": 50, "timeout_ms": LIVE_TIMEOUT_MS}]
    start = _phase_regs(greens=_bits(2, 6), yellows=0, walks=_bits(2, 6))
    async with modbus_peer({5: [regs(0, start), regs(16, [0])]}) as peer:
        async with run_firmware_process(runtime, DRIVER_SCRIPT, node_config(peer.address, devices),
                                        build_dir) as fw:
            def n_events(_: Any) -> int:
                return len(outbound(fw).events)

            await fw.wait_for(lambda _: outbound(fw).counters.get("ctrl", {}).get("ok", 0) >= 2,
                              what="the first poll")
            peer.set(5, 0, *_phase_regs(greens=0, yellows=_bits(2, 6)))
            await fw.wait_for(lambda r: n_events(r) >= 4, what="yellow and don't walk")
            peer.set(5, 0, *_phase_regs(greens=0, yellows=0))
            await fw.wait_for(lambda r: n_events(r) >= 8, what="yellow end and red clearance")
            peer.set(5, 0, *_phase_regs(greens=_bits(4, 8), yellows=0))
            await fw.wait_for(lambda r: n_events(r) >= 12, what="the cross street's green")
            peer.set(5, 16, 1)
            await fw.wait_for(lambda r: n_events(r) >= 13, what="a preempt call")
            peer.set(5, 16, 0)
            await fw.wait_for(lambda r: n_events(r) >= 14, what="the preempt call's end")
            peer.fail[5] = ExcCodes.DEVICE_FAILURE
            await fw.wait_for(lambda _: outbound(fw).has("ctrl/poll", fault=modbus_fault(4)),
                              what="the controller's poll fault")
            peer.set(5, 0, *_phase_regs(greens=0, yellows=_bits(4, 8)))
            failing = outbound(fw).counters["ctrl"]["poll_faults"]
            await fw.wait_for(lambda _: outbound(fw).counters["ctrl"]["poll_faults"] >= failing + 3,
                              what="more failed polls")
            assert n_events(None) == 14, "a failed poll must not emit events"
            del peer.fail[5]
            await fw.wait_for(lambda r: n_events(r) >= 16, what="events after recovery")
            o = outbound(fw)
    got = [(e.code, e.param) for e in o.events]
    assert got == [
        (EVENT_PHASE_BEGIN_YELLOW, 2), (EVENT_PHASE_BEGIN_YELLOW, 6),
        (EVENT_PED_BEGIN_DONT_WALK, 2), (EVENT_PED_BEGIN_DONT_WALK, 6),
        (EVENT_PHASE_END_YELLOW, 2), (EVENT_PHASE_END_YELLOW, 6),
        (EVENT_PHASE_BEGIN_RED_CLEARANCE, 2), (EVENT_PHASE_BEGIN_RED_CLEARANCE, 6),
        (EVENT_PHASE_BEGIN_GREEN, 4), (EVENT_PHASE_BEGIN_GREEN, 8),
        (EVENT_PHASE_END_RED_CLEARANCE, 2), (EVENT_PHASE_END_RED_CLEARANCE, 6),
        (EVENT_PREEMPT_CALL_ON, 1), (EVENT_PREEMPT_CALL_OFF, 1),
        (EVENT_PHASE_BEGIN_YELLOW, 4), (EVENT_PHASE_BEGIN_YELLOW, 8),
    ]
    times = [e.t for e in o.events]
    assert times == sorted(times)
    poll = o.of("ctrl/poll")
    assert [s.fault for s in poll if s.fault] and poll[-1].value == 1 and poll[-1].fault == 0
    # The recovered poll's events are stamped after the failure was reported.
    first_fault = next(s.t for s in poll if s.fault)
    assert o.events[-1].t >= first_fault
    # Phase maps 0..7 in one read and the preempt register in another, on every poll: the
    # preempt first, so the poll is stamped by the phase reply that ends it.
    seen = peer.seen(5)
    assert set(seen) == {(3, 0, 8), (3, 16, 1)}
    assert seen[:4] == [(3, 16, 1), (3, 0, 8), (3, 16, 1), (3, 0, 8)]
    assert json.dumps(o.counters["ctrl"])  # plain ints, reported in HEALTH
