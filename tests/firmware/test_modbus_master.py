"""The firmware's Modbus master against an independent peer on a timed wire, under both runtimes.

The chain is the one a node in the harness uses: the firmware process (CPython with the host HAL,
or the MicroPython VM) → its Uart, a TCP connection → hil.uart_bridge.UartBridge → VirtualWire
(19200 8E1, character timing) → a pymodbus RTU server holding the registers. What the pymodbus side
decoded is recorded (trace_pdu), so merged reads are counted where they arrive; a "dead" unit is a
pymodbus device whose replies never leave (trace_packet drops them).

The helpers here (ModbusPeer, modbus_peer, FirmwareRun, run_firmware_process) are shared with
test_modbus_drivers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.faults import FaultSettings
from hil.firmware_process import RUNTIMES, firmware_command
from hil.uart_bridge import UartBridge
from hil.wire import VirtualWire
from protocols import modbus_rtu as rtu
from protocols.batch_codes import (
    FAULT_CHECKSUM, FAULT_FRAMING, FAULT_TIMEOUT, FAULT_UNAVAILABLE, modbus_fault)
from tests.conftest import REPO_ROOT

BAUD = 19200
# Slack for units that answer: generous, so a loaded test machine never turns a slow reply into a
# timeout (the tests assert exact outcomes); dead units get short ones to keep the tests fast.
LIVE_TIMEOUT_MS = 500
FRAMING = "8E1"
PROFILES = {p.stem: json.loads(p.read_text()) for p in (REPO_ROOT / "profiles").glob("*.json")}


def f32_words(x: float, word_order: str = "big") -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return [hi, lo] if word_order == "big" else [lo, hi]


# --- the independent peer -----------------------------------------------------------------------

@dataclass
class ModbusPeer:
    """A pymodbus RTU server on end b of a VirtualWire, reachable at `address` through a bridge."""

    wire: VirtualWire
    bridge: UartBridge
    requests: list[tuple[int, int, int | None, int | None]] = field(default_factory=list)
    registers: dict[int, list[int]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    fail: dict[int, ExcCodes] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.bridge.address

    def seen(self, unit: int) -> list[tuple[int, int | None, int | None]]:
        """(function, address, count) of every request to `unit` the server decoded."""
        return [(fc, a, c) for u, fc, a, c in self.requests if u == unit]

    def set(self, unit: int, address: int, *values: int) -> None:
        """Change registers of a unit that has been read at least once (the action hook hands
        the server's own register list over on the first read)."""
        regs = self.registers[unit]
        regs[address:address + len(values)] = list(values)


async def _action(peer: ModbusPeer, unit: int, _fc: int, start: int, _address: int, _count: int,
                  registers: list[int], _values: Any) -> ExcCodes | None:
    if start != 0:
        raise AssertionError("register blocks in these tests start at address 0")
    peer.registers[unit] = registers
    return peer.fail.get(unit)


@contextlib.asynccontextmanager
async def modbus_peer(devices: dict[int, list[SimData]], *, dead: Iterable[int] = (),
                      seed: int = 0) -> AsyncIterator[ModbusPeer]:
    async with VirtualWire(baud=BAUD, framing=FRAMING, seed=seed) as wire, \
            UartBridge(wire.a_path, BAUD, FRAMING) as bridge:
        peer = ModbusPeer(wire, bridge, dead=set(dead))

        def trace_pdu(sending: bool, pdu: Any) -> Any:
            if not sending:
                peer.requests.append((pdu.dev_id, pdu.function_code, getattr(pdu, "address", None),
                                      getattr(pdu, "count", None)))
            return pdu

        def trace_packet(sending: bool, data: bytes) -> bytes:
            return b"" if sending and data and data[0] in peer.dead else data

        sim = [SimDevice(id=unit, simdata=blocks, action=functools.partial(_action, peer, unit))
               for unit, blocks in devices.items()]
        # The wire carries the timing; a pty refuses parity settings, so pymodbus opens it 8N1.
        server = ModbusSerialServer(sim, port=wire.b_path, baudrate=BAUD, trace_pdu=trace_pdu,
                                    trace_packet=trace_packet)
        await server.serve_forever(background=True)
        try:
            yield peer
        finally:
            await server.shutdown()


@contextlib.asynccontextmanager
async def silent_bus() -> AsyncIterator[UartBridge]:
    """A bus with nobody on the far end."""
    async with VirtualWire(baud=BAUD, framing=FRAMING) as wire, \
            UartBridge(wire.a_path, BAUD, FRAMING) as bridge:
        yield bridge


def regs(address: int, values: list[int]) -> SimData:
    return SimData(address=address, values=values, datatype=DataType.REGISTERS)


# --- the firmware process -----------------------------------------------------------------------

class FirmwareRun:
    """A firmware process whose "OUT {json}" stdout lines are collected as records."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.stderr = b""
        self._changed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("OUT "):
                self.records.append(json.loads(line[4:]))
            else:
                self.other.append(line)
            self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def diagnostics(self) -> str:
        return ("stdout (other lines):\n" + "\n".join(self.other[-30:]) + "\nstderr:\n"
                + self.stderr.decode(errors="replace")[-3000:])

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], *, timeout: float = 30.0,
                       what: str = "the condition") -> Any:
        """Wait until predicate(records) is truthy and return it; fail with the process's output."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = predicate(self.records)
            if got:
                return got
            if self.proc.returncode is not None and self._tasks[0].done():
                await self._tasks[1]
                pytest.fail(f"the firmware exited ({self.proc.returncode}) before {what}:\n"
                            + self.diagnostics())
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"timed out waiting for {what}:\n" + self.diagnostics())
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def run_firmware_process(runtime: str, source: str, config: dict[str, Any],
                               build_dir: Path) -> AsyncIterator[FirmwareRun]:
    """Start `source`'s main(config_json) under `runtime`; killed on exit whatever happened."""
    # JSON as a Python string literal: profiles hold true/false/null, which are not Python.
    argv, env, cwd = firmware_command(runtime, source, f"main({json.dumps(json.dumps(config))})",
                                      build_dir=build_dir)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    run = FirmwareRun(proc)
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mpy-cross build of protocols/ and firmware/ for the module's VM runs."""
    return tmp_path_factory.mktemp("mpy")


# --- the master, step by step -------------------------------------------------------------------

MASTER_SCRIPT = r"""
import asyncio
import json
from firmware import hal_host as hal
from firmware.modbus_master import ModbusMaster, failed, fault_of, profile_plan


def out(**record):
    print("OUT " + json.dumps(record))


def shown(result):
    if failed(result):
        return {"fault": fault_of(result)[0]}
    if isinstance(result, Exception):
        return {"error": type(result).__name__}
    return result


async def rounds(master, units, plan, count, gap_s):
    got = {}
    for u in units:
        got[str(u)] = []
    for _ in range(count):
        for u in units:
            res = (await master.read_plan(u, plan))[0]
            got[str(u)].append(0 if not failed(res) else fault_of(res)[0])
        await asyncio.sleep(gap_s)
    return got


async def main(text):
    cfg = json.loads(text)
    hal.configure(cfg["host"])
    masters = {}
    for bus in cfg["host"]["uarts"]:
        masters[bus] = ModbusMaster(hal, hal.Uart({"id": bus}), cfg["baud"], cfg["framing"])
    for i in range(len(cfg["steps"])):
        step = cfg["steps"][i]
        i = step.get("name", i)
        m = masters[step.get("bus", "bus")]
        op = step["op"]
        if op == "configure":
            m.configure(step["unit"], **step["settings"])
            out(step=i)
        elif op == "plan":
            profile = step["profile"]
            before = hal.ticks_us()
            results = await m.read_plan(step["unit"], profile_plan(profile, profile["registers"]),
                                        any_address=step.get("any_address", False))
            after = hal.ticks_us()
            out(step=i, results=[shown(r) for r in results],
                reply_start_us=[hal.ticks_diff(m.reply_start_us, before),
                                hal.ticks_diff(after, m.reply_start_us)])
        elif op == "request":
            try:
                result = await m.request(step["unit"], bytes.fromhex(step["adu"]),
                                         any_address=step.get("any_address", False))
            except Exception as exc:
                result = exc
            out(step=i, result=shown(result))
        elif op == "rounds":
            plan = profile_plan(step["profile"], step["profile"]["registers"])
            t0 = hal.ticks_ms()
            got = await rounds(m, step["units"], plan, step["count"], step["gap_ms"] / 1000)
            out(step=i, rounds=got, elapsed_ms=hal.ticks_diff(hal.ticks_ms(), t0))
        elif op == "until_ok":
            plan = profile_plan(step["profile"], step["profile"]["registers"])
            unit = step["unit"]
            seen = []
            after = None
            for _ in range(step["max_rounds"]):
                res = (await m.read_plan(unit, plan))[0]
                seen.append(0 if not failed(res) else fault_of(res)[0])
                if after is None and not failed(res):
                    after = step["after"]
                if after is not None:
                    after -= 1
                    if after < 0:
                        break
                await asyncio.sleep(step["gap_ms"] / 1000)
            out(step=i, seen=seen)
        elif op == "counters":
            c = {}
            for u in step["units"]:
                c[str(u)] = m.counters_for(u)
            out(step=i, counters=c, offline=[u for u in step["units"] if m.is_offline(u)])
    out(done=True)
"""


def u16(name: str, address: int, table: str = "holding", **extra: Any) -> dict[str, Any]:
    return dict({"name": name, "table": table, "address": address, "type": "u16"}, **extra)


FOUR = {"max_registers_per_request": 125, "registers": [
    u16("a", 0), u16("b", 1), {"name": "c", "table": "holding", "address": 2, "type": "f32"},
    {"name": "d", "table": "holding", "address": 4, "type": "u32"}]}
UNIT1 = [regs(0, [10, 20, *f32_words(21.5), 0x0001, 0x86A0]), regs(8, [7])]
FOUR_VALUES = [[10], [20], f32_words(21.5), [0x0001, 0x86A0]]


async def _run_steps(runtime: str, build_dir: Path, peer_address: str, steps: list[dict[str, Any]],
                     extra_buses: dict[str, str] | None = None,
                     on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    config = {"host": {"uarts": dict({"bus": peer_address}, **(extra_buses or {}))}, "baud": BAUD,
              "framing": FRAMING, "steps": steps}
    async with run_firmware_process(runtime, MASTER_SCRIPT, config, build_dir) as fw:
        if on_record is not None:
            await fw.wait_for(lambda recs: any(on_record(r) for r in recs), what="the trigger record")
        await fw.wait_for(lambda recs: recs and recs[-1].get("done"), timeout=60, what="the last step")
        return fw.records


BAD_CRC = rtu.read_holding_registers(1, 0, 1)[:-1] + b"\x00"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_merged_reads_exceptions_and_timeouts(runtime: str, build_dir: Path) -> None:
    s8 = PROFILES["senseair-s8"]
    devices = {1: UNIT1, 9: [regs(0, [1, 2])], 254: [regs(0, [0, 0, 0, 400])]}
    steps = [
        {"op": "configure", "unit": 1, "settings": {"timeout_ms": LIVE_TIMEOUT_MS}},
        {"op": "configure", "unit": 254, "settings": {"timeout_ms": LIVE_TIMEOUT_MS}},
        {"name": "one", "op": "plan", "unit": 1, "profile": FOUR},
        {"name": "max2", "op": "plan", "unit": 1, "profile": dict(FOUR, max_registers_per_request=2)},
        {"name": "each", "op": "plan", "unit": 1, "profile": dict(FOUR, one_register_per_request=True)},
        # A gap merged into a read holds unmapped registers 6 and 7: pymodbus refuses the read.
        {"name": "gap", "op": "plan", "unit": 1,
         "profile": {"max_gap": 3, "registers": [u16("a", 4), u16("z", 8)]}},
        {"name": "no_gap", "op": "plan", "unit": 1, "profile": {"registers": [u16("a", 4), u16("z", 8)]}},
        {"name": "unmapped", "op": "request", "unit": 1, "adu": rtu.read_holding_registers(1, 100, 1).hex()},
        {"name": "dead", "op": "request", "unit": 9, "adu": rtu.read_holding_registers(9, 0, 2).hex()},
        {"name": "nobody", "op": "request", "unit": 1, "bus": "empty",
         "adu": rtu.read_holding_registers(1, 0, 1).hex()},
        {"name": "s8", "op": "plan", "unit": 254, "profile": s8, "any_address": True},
        # A raw ADU the master cannot trust (its CRC, its length) is refused before the bus.
        {"name": "bad_crc", "op": "request", "unit": 1, "adu": BAD_CRC.hex()},
        {"name": "short", "op": "request", "unit": 1, "adu": rtu.read_holding_registers(1, 0, 1)[:7].hex()},
        {"name": "counters", "op": "counters", "units": [1, 9, 254]},
    ]
    async with modbus_peer(devices, dead=[9]) as peer, silent_bus() as empty:
        records = await _run_steps(runtime, build_dir, peer.address, steps, {"empty": empty.address})
    by_step = {r["step"]: r for r in records if "step" in r}
    assert by_step["one"]["results"] == FOUR_VALUES
    # The reply's start, estimated back from its arrival by its length at the baud rate, comes
    # after the whole 8-byte request was on the wire and 17 byte times before the read returned.
    char_us = 11 * 1_000_000 / BAUD
    after_send, before_return = by_step["one"]["reply_start_us"]
    assert after_send >= 8 * char_us and before_return >= int(17 * char_us)
    assert by_step["max2"]["results"] == FOUR_VALUES
    assert by_step["each"]["results"] == FOUR_VALUES
    gap_fault = {"fault": modbus_fault(rtu.ILLEGAL_DATA_ADDRESS)}
    assert by_step["gap"]["results"] == [gap_fault, gap_fault]
    assert by_step["no_gap"]["results"] == [[1], [7]]
    assert by_step["unmapped"]["result"] == gap_fault
    assert by_step["dead"]["result"] == {"fault": FAULT_TIMEOUT}
    assert by_step["nobody"]["result"] == {"fault": FAULT_TIMEOUT}
    assert by_step["s8"]["results"] == [[0], [400]]  # meter status, then CO2 (IR1 and IR4)
    assert by_step["bad_crc"]["result"] == by_step["short"]["result"] == {"error": "ModbusFrameError"}
    # What the peer decoded: the fewest requests each plan allows, and one retry to the dead unit.
    assert peer.seen(1) == [
        (3, 0, 6),
        (3, 0, 2), (3, 2, 2), (3, 4, 2),
        (3, 0, 1), (3, 1, 1), (3, 2, 1), (3, 3, 1), (3, 4, 1), (3, 5, 1),
        (3, 4, 5),
        (3, 4, 1), (3, 8, 1),
        (3, 100, 1),
    ]
    assert peer.seen(9) == [(3, 0, 2), (3, 0, 2)]
    assert peer.seen(254) == [(4, 0, 4)]  # the profile's max_gap 2 merges IR1..IR4 into one read
    counters = by_step["counters"]["counters"]
    assert counters["1"] == {"requests": 14, "ok": 12, "timeouts": 0, "crc_errors": 0, "exceptions": 2,
                             "framing_errors": 0, "skipped_backoff": 0, "offline": 0}
    assert counters["9"]["requests"] == 2 and counters["9"]["timeouts"] == 2 and counters["9"]["ok"] == 0
    assert counters["254"]["ok"] == 1


LIVE_DEAD = {"registers": [u16("v", 0)]}
BACKOFF = {"timeout_ms": 30, "retries": 1, "offline_after": 2, "backoff_ms": 150, "backoff_max_ms": 300}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_dead_unit_backs_off_without_stalling_a_live_unit(runtime: str, build_dir: Path) -> None:
    rounds = 40
    steps = [
        {"op": "configure", "unit": 7, "settings": BACKOFF},
        {"op": "configure", "unit": 1, "settings": {"timeout_ms": LIVE_TIMEOUT_MS}},
        {"name": "rounds", "op": "rounds", "units": [1, 7], "profile": LIVE_DEAD, "count": rounds,
         "gap_ms": 20},
        {"name": "offline", "op": "counters", "units": [1, 7]},
        {"name": "revived", "op": "until_ok", "unit": 7, "profile": LIVE_DEAD, "max_rounds": 400,
         "gap_ms": 10, "after": 5},
        {"name": "after", "op": "counters", "units": [1, 7]},
    ]
    devices = {1: [regs(0, [11])], 7: [regs(0, [77])]}
    async with modbus_peer(devices, dead=[7]) as peer:
        def revive(record: dict[str, Any]) -> bool:
            if record.get("step") == "offline":
                peer.dead.discard(7)  # the dead unit comes back: its next probe is answered
                return True
            return False

        records = await _run_steps(runtime, build_dir, peer.address, steps, on_record=revive)
        wire_requests_7 = len(peer.seen(7))
    by_step = {r["step"]: r for r in records if "step" in r}
    live, dead = by_step["rounds"]["rounds"]["1"], by_step["rounds"]["rounds"]["7"]
    assert live == [0] * rounds, "the live unit must be read on every round"
    # Two requests (each with one retry) time out, then the unit is offline: skipped polls are
    # FAULT_UNAVAILABLE, and only one probe (one timeout) per backoff window reaches the bus.
    assert dead[:2] == [FAULT_TIMEOUT, FAULT_TIMEOUT]
    assert set(dead[2:]) <= {FAULT_TIMEOUT, FAULT_UNAVAILABLE}
    probes = dead[2:].count(FAULT_TIMEOUT)
    windows = by_step["rounds"]["elapsed_ms"] / BACKOFF["backoff_ms"]
    assert 1 <= probes <= windows + 1
    c7 = by_step["offline"]["counters"]["7"]
    assert c7["offline"] == 1 and by_step["offline"]["offline"] == [7]
    assert c7["timeouts"] == 2 * 2 + probes and c7["requests"] == c7["timeouts"]
    assert c7["skipped_backoff"] == rounds - 2 - probes
    # One success brings it back: from then on every poll is answered, none skipped.
    seen = by_step["revived"]["seen"]
    assert seen[-6:] == [0] * 6
    assert set(seen[:-6]) <= {FAULT_TIMEOUT, FAULT_UNAVAILABLE}
    after = by_step["after"]
    assert after["offline"] == [] and after["counters"]["7"]["ok"] == 6
    assert after["counters"]["1"]["ok"] == rounds and after["counters"]["1"]["timeouts"] == 0
    # Every request the master counted reached the wire; no skipped poll did.
    assert wire_requests_7 == after["counters"]["7"]["requests"]


# --- corrupted replies (CPython, in process) ----------------------------------------------------

async def test_corrupted_replies_are_checksum_faults_never_wrong_numbers() -> None:
    from firmware import hal_host
    from firmware.modbus_master import ModbusError, ModbusMaster

    values = [0x1234, 0xBEEF, 0x0000, 0xFFFF, 0x8001]
    outcomes: dict[int, int] = {}
    async with modbus_peer({1: [regs(0, values)]}, seed=11) as peer:
        hal_host.configure({"uarts": {"noisy": peer.address}})
        master = ModbusMaster(hal_host, hal_host.Uart({"id": "noisy"}), BAUD, FRAMING)
        master.configure(1, timeout_ms=30, retries=0, offline_after=1000)
        # Replies only: about one reply in five (9 + 10 bytes of 8 data bits) gets a flipped bit.
        peer.wire.set_faults(FaultSettings(bit_error_rate=3e-3), direction="b_to_a")
        adu = rtu.read_holding_registers(1, 0, len(values))
        try:
            for _ in range(150):
                try:
                    got = await master.request(1, adu)
                except ModbusError as exc:
                    outcomes[exc.fault] = outcomes.get(exc.fault, 0) + 1
                    continue
                assert got == values, "a corrupted reply must never come back as numbers"
                outcomes[0] = outcomes.get(0, 0) + 1
        finally:
            master.close()
        flipped = peer.wire.counters("b_to_a").bits_flipped
    counters = master.counters_for(1)
    assert flipped > 0 and outcomes.get(FAULT_CHECKSUM, 0) > 0 and outcomes.get(0, 0) > 0
    assert set(outcomes) <= {0, FAULT_CHECKSUM, FAULT_FRAMING, FAULT_TIMEOUT}
    assert counters["crc_errors"] == outcomes[FAULT_CHECKSUM]
    assert counters["ok"] == outcomes[0]
    assert counters["framing_errors"] == outcomes.get(FAULT_FRAMING, 0)
    assert counters["timeouts"] == outcomes.get(FAULT_TIMEOUT, 0)
    assert FAULT_UNAVAILABLE not in outcomes
