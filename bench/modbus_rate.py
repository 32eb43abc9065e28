"""Modbus polling rate: transactions/s of the firmware's master and the gateway's poller on the
timed virtual wire, each against the wire's physical transaction rate (REFERENCE.md §1; DESIGN.md
target: >= 90 %).

    .venv/bin/python bench/modbus_rate.py [--seconds 5] [--bauds 9600,19200,115200]
                                          [--sides pyserial,fw-cpython,fw-micropython,gateway]

The harness (this process): a hil/wire.py VirtualWire at each baud rate (8E1 timing) with, on its
end b, the independent peer: pymodbus's RTU server through hil/emulators/modbus_devices.py (a
GenericModbusSensor, turnaround 0 unless --turnaround-ms). On end a, each side in turn, in its own
process, asks back-to-back for one representative transaction, Read Holding Registers of 2
registers from 0 at unit 1 (8-byte request, 9-byte reply), for --seconds after a warm-up:

- pyserial: a bare blocking request/response loop (write, read the 9 bytes, sleep t3.5): the
  baseline of what the emulated chain allows a plain program;
- fw-cpython / fw-micropython: firmware/modbus_master.py's ModbusMaster.request over the host HAL
  (its Uart is a TCP connection to hil/uart_bridge.UartBridge on end a), under CPython and under
  the MicroPython WebAssembly VM (hil/firmware_process.py: protocols/ and firmware/ compiled by
  mpy-cross, as flashed);
- gateway: gateway/modbus_poller.py's ModbusPoller (pymodbus client) polling the device on its
  schedule at the fastest interval gateway.poll_plan accepts (the plan's own bus time, which is
  the physical limit: the schedule never goes faster);
- gateway-once: the same poller's poll_once in a loop, no schedule: what the poller could do.

The physical limit is REFERENCE.md §1's: (request + reply characters) x character time + 2 x t3.5
+ the device's turnaround. pymodbus's server answers as soon as a request is whole, without the
t3.5 the limit gives it, so a master that keeps its own t3.5 can beat the limit by up to one t3.5.

Columns: tx/s is answered transactions over the measured window (the median of --repeat runs, their
range beside it) and "% limit" its share of the limit: the target. The wire records when it read
each chunk from a program and handed it to the other (WireActivity), so every row is also split
into medians of where a transaction's time goes: "req" and "reply" from a frame's first byte read
to its last byte handed over, "turn" the server (pty in, pymodbus, pty out), "gap" the master from
the reply handed over to its next request read back (its t3.5, its runtime, ptys and TCP hops),
"late" how long after its due time the emulator handed a frame's last byte over. "steady" is the
limit over the median period: the pace between the stalls a loaded machine adds (the mean in tx/s
counts them). Last, what one wake costs each firmware runtime (asyncio sleeps, and a one-byte
echo through the host HAL's Uart read directly or by a reader task that wakes the requester, as
the master does).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protocols.modbus_rtu import (  # noqa: E402
    char_time_us, expected_response_length, parse_request, read_holding_registers, t35_us)

BAUDS = (9600, 19200, 115200)
FRAMING = "8E1"
UNIT, ADDRESS, COUNT = 1, 0, 2  # the representative transaction: 2 holding registers (one f32)
TARGET = 0.90
WARMUP_S = 1.0
SIDES = ("pyserial", "fw-cpython", "fw-micropython", "gateway", "gateway-once")
LABELS = {"pyserial": "pyserial loop (baseline)", "fw-cpython": "firmware master, CPython",
          "fw-micropython": "firmware master, MicroPython VM", "gateway": "gateway poller, schedule",
          "gateway-once": "gateway poller, poll_once loop"}
CHILD_TIMEOUT_S = 120.0


# --- the physical limit (REFERENCE.md §1) ------------------------------------------------------

@dataclass(frozen=True)
class Limit:
    """One transaction's wire time and the rate it allows."""

    baud: int
    framing: str
    request_len: int
    reply_len: int
    turnaround_us: float
    char_us: float
    t35_us: float

    @property
    def transaction_us(self) -> float:
        return ((self.request_len + self.reply_len) * self.char_us + 2 * self.t35_us
                + self.turnaround_us)

    @property
    def per_s(self) -> float:
        return 1e6 / self.transaction_us


def physical_limit(request_len: int, reply_len: int, baud: int, framing: str = FRAMING,
                   turnaround_us: float = 0.0) -> Limit:
    """REFERENCE.md §1: both frames' characters, a t3.5 of silence after each (fixed 1.75 ms above
    19200 baud), and the device's turnaround."""
    return Limit(baud, framing, request_len, reply_len, turnaround_us,
                 char_time_us(baud, framing), t35_us(baud, framing))


def request_adu() -> bytes:
    return read_holding_registers(UNIT, ADDRESS, COUNT)


def transaction_limit(baud: int, framing: str = FRAMING, turnaround_us: float = 0.0) -> Limit:
    adu = request_adu()
    return physical_limit(len(adu), expected_response_length(parse_request(adu)), baud, framing,
                          turnaround_us)


# --- where the time goes: the wire's activity record --------------------------------------------

@dataclass
class Split:
    """Median microseconds of each part of a transaction, from the wire's activity record."""

    transactions: int
    period: float  # first request byte read from the master -> the next one
    request: float  # request's first byte read -> its last byte handed to the server
    turnaround: float  # last request byte handed over -> first reply byte read from the server
    reply: float  # first reply byte read -> last reply byte handed to the master
    gap: float  # last reply byte handed over -> the master's next request read
    late: float  # mean lateness of a frame's last byte: handed over after it was due


def split(activity: list[Any], t0: float, t1: float) -> Split | None:
    """Cut the record into transactions (a request starts at the first a->b chunk after a reply)."""
    rows: list[dict[str, float]] = []
    cur: dict[str, float] | None = None
    for act in activity:
        if act.direction == "a_to_b" and act.kind == "sent":
            if cur is None or "rep_out" in cur:
                if cur is not None and "rep_out" in cur:
                    cur["next"] = act.t
                    rows.append(cur)
                cur = {"req_in": act.t}
        elif cur is None:
            continue
        elif act.direction == "a_to_b" and act.kind == "received":
            cur["req_out"], cur["req_late"] = act.t, act.t - act.due
        elif act.direction == "b_to_a" and act.kind == "sent":
            cur.setdefault("rep_in", act.t)
        elif act.direction == "b_to_a" and act.kind == "received":
            cur["rep_out"], cur["rep_late"] = act.t, act.t - act.due
    rows = [r for r in rows if t0 <= r["req_in"] and r["next"] <= t1
            and {"req_out", "rep_in", "rep_out"} <= r.keys()]
    if not rows:
        return None

    def med(values: list[float]) -> float:
        return statistics.median(values) * 1e6
    return Split(
        transactions=len(rows),
        period=med([r["next"] - r["req_in"] for r in rows]),
        request=med([r["req_out"] - r["req_in"] for r in rows]),
        turnaround=med([r["rep_in"] - r["req_out"] for r in rows]),
        reply=med([r["rep_out"] - r["rep_in"] for r in rows]),
        gap=med([r["next"] - r["rep_out"] for r in rows]),
        late=statistics.fmean([r["req_late"] + r["rep_late"] for r in rows]) / 2 * 1e6)


# --- the sides, each a child process ------------------------------------------------------------

FIRMWARE_SCRIPT = r"""
import asyncio
import json
from firmware import hal_host as hal
from firmware.modbus_master import ModbusMaster


async def main(text):
    cfg = json.loads(text)
    hal.configure(cfg["host"])
    master = ModbusMaster(hal, hal.Uart({"id": "bus"}), cfg["baud"], cfg["framing"])
    adu = bytes.fromhex(cfg["adu"])
    unit = cfg["unit"]
    ok = errors = 0
    warm = hal.ticks_add(hal.ticks_ms(), cfg["warmup_ms"])
    while hal.ticks_diff(warm, hal.ticks_ms()) > 0:
        await master.request(unit, adu)
    print("START %d" % hal.ticks_us())
    t0 = hal.ticks_us()
    span = int(cfg["seconds"] * 1000000)
    elapsed = 0
    while elapsed < span:
        try:
            await master.request(unit, adu)
            ok += 1
        except Exception:
            errors += 1
        elapsed = hal.ticks_diff(hal.ticks_us(), t0)
    master.close()
    print("RESULT " + json.dumps({"ok": ok, "errors": errors, "elapsed_s": elapsed / 1000000,
                                  "counters": master.counters_for(unit)}))
"""


def pyserial_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """The baseline: blocking pyserial, write the request, read the reply, keep t3.5, repeat."""
    import serial

    adu = bytes.fromhex(cfg["adu"])
    reply_len = cfg["reply_len"]
    gap = t35_us(cfg["baud"], cfg["framing"]) / 1e6
    ok = errors = 0
    with serial.Serial(cfg["port"], cfg["baud"], timeout=1.0) as port:
        def once() -> bool:
            port.write(adu)
            reply = port.read(reply_len)
            time.sleep(gap)
            return len(reply) == reply_len
        warm = time.monotonic() + cfg["warmup_s"]
        while time.monotonic() < warm:
            once()
        print("START", flush=True)
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < cfg["seconds"]:
            if once():
                ok += 1
            else:
                errors += 1
                port.reset_input_buffer()
    return {"ok": ok, "errors": errors, "elapsed_s": elapsed}


async def gateway_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """The gateway's poller on its schedule, at the fastest interval its planner accepts."""
    from gateway.modbus_poller import ModbusPoller
    from gateway.poll_plan import PolledDevice, SerialBus, plan_bus, plan_device

    profile = {"profile": "bench-f32", "interface": "modbus-rtu",
               "turnaround_ms": cfg["turnaround_ms"], "max_registers_per_request": 16,
               "registers": [{"name": "temperature_c", "table": "holding", "address": ADDRESS,
                              "type": "f32", "word_order": "little"}]}
    bus = SerialBus(id="bench", port=cfg["port"], baud=cfg["baud"], framing=cfg["framing"],
                    apply_framing=False)
    probe = plan_device(PolledDevice(id="s", address=UNIT, profile=profile, poll_ms=1000), bus)
    assert probe.bus_time_us is not None and len(probe.reads) == 1
    device = PolledDevice(id="s", address=UNIT, profile=profile, poll_ms=probe.bus_time_us / 1000)
    plan = plan_bus(bus, [device])
    faults = 0

    def sink(sample: Any) -> None:
        nonlocal faults
        faults += sample.fault is not None
    async with ModbusPoller([plan], sink=sink, schedule=cfg["schedule"]) as poller:
        async def for_s(seconds: float) -> None:
            if cfg["schedule"]:
                await asyncio.sleep(seconds)
                return
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for sample in await poller.poll_once("s"):
                    sink(sample)
        await for_s(cfg["warmup_s"])
        print("START", flush=True)
        c0, t0 = poller.counters()["s"], time.monotonic()
        await for_s(cfg["seconds"])
        c1, t1 = poller.counters()["s"], time.monotonic()
    return {"ok": c1.ok - c0.ok, "errors": _failures(c1) - _failures(c0),
            "elapsed_s": t1 - t0, "overruns": c1.overruns - c0.overruns,
            "interval_ms": device.poll_ms, "faulty_samples": faults}


def _failures(c: Any) -> int:
    return c.exceptions + c.timeouts + c.crc_errors + c.framing_errors + c.connection_errors


def child_main(side: str, cfg: dict[str, Any]) -> None:
    cfg["schedule"] = side == "gateway"
    result = pyserial_child(cfg) if side == "pyserial" else asyncio.run(gateway_child(cfg))
    print("RESULT " + json.dumps(result), flush=True)


# --- the harness --------------------------------------------------------------------------------

@dataclass
class Row:
    side: str
    baud: int
    ok: int
    errors: int
    elapsed_s: float
    split: Split | None
    extra: dict[str, Any]

    @property
    def per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def _command(side: str, cfg: dict[str, Any], build_dir: Path,
             script: str) -> tuple[list[str], dict[str, str], Path]:
    if side.startswith("fw-"):
        from hil.firmware_process import firmware_command

        runtime = "cpython" if side == "fw-cpython" else "micropython"
        return firmware_command(runtime, script, f"main({json.dumps(json.dumps(cfg))})",
                                build_dir=build_dir)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return [sys.executable, str(Path(__file__).resolve()), "--child", side, json.dumps(cfg)], env, REPO


async def _run_child(side: str, cfg: dict[str, Any], build_dir: Path, marks: dict[str, float],
                     *, script: str = FIRMWARE_SCRIPT) -> dict[str, Any]:
    argv, env, cwd = _command(side, cfg, build_dir, script)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    result: dict[str, Any] | None = None
    other: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(CHILD_TIMEOUT_S):
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("START"):
                    marks["start"] = time.monotonic()
                elif line.startswith("RESULT "):
                    marks["end"] = time.monotonic()
                    result = json.loads(line[7:])
                else:
                    other.append(line)
            err = (await proc.stderr.read()).decode(errors="replace")
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if result is None:
        raise RuntimeError(f"{side} gave no result (exit {proc.returncode}):\n"
                           + "\n".join(other[-20:]) + "\n" + err[-3000:])
    return result


async def measure(side: str, baud: int, *, seconds: float, turnaround_ms: float,
                  build_dir: Path) -> Row:
    from hil.emulators.modbus_devices import GenericModbusSensor, ModbusDeviceServer
    from hil.uart_bridge import UartBridge
    from hil.wire import VirtualWire, WireActivity

    activity: list[WireActivity] = []
    sensor = GenericModbusSensor(values={"temperature_c": 21.5}, unit=UNIT,
                                 turnaround_s=turnaround_ms / 1000)
    adu = request_adu()
    cfg: dict[str, Any] = {"baud": baud, "framing": FRAMING, "adu": adu.hex(), "unit": UNIT,
                           "seconds": seconds, "warmup_s": WARMUP_S,
                           "warmup_ms": int(WARMUP_S * 1000), "turnaround_ms": turnaround_ms,
                           "reply_len": expected_response_length(parse_request(adu))}
    marks: dict[str, float] = {}
    async with VirtualWire(baud=baud, framing=FRAMING, activity=activity) as wire, \
            ModbusDeviceServer([sensor], port=wire.b_path, baud=baud):
        if side.startswith("fw-"):
            async with UartBridge(wire.a_path, baud, FRAMING) as bridge:
                cfg["host"] = {"uarts": {"bus": bridge.address}}
                result = await _run_child(side, cfg, build_dir, marks)
        else:
            cfg["port"] = wire.a_path
            result = await _run_child(side, cfg, build_dir, marks)
    t0, t1 = marks.get("start", 0.0), marks.get("end", float("inf"))
    extra = {k: v for k, v in result.items() if k not in ("ok", "errors", "elapsed_s")}
    extra["served"] = sensor.requests  # warm-up included: a check that the peer saw them
    return Row(side, baud, result["ok"], result["errors"], result["elapsed_s"],
               split(activity, t0, t1), extra)


FLOOR_SCRIPT = r"""
import asyncio
import json
from firmware import hal_host as hal


async def median_us(step, n):
    times = []
    for _ in range(n):
        t = hal.ticks_us()
        await step()
        times.append(hal.ticks_diff(hal.ticks_us(), t))
    times.sort()
    return times[len(times) // 2]


async def main(text):
    cfg = json.loads(text)
    hal.configure(cfg["host"])
    uart = hal.Uart({"id": "echo"})

    async def echo():
        await uart.write(b"x")
        await uart.read(1)

    await echo()
    out = {"sleep(0)": await median_us(lambda: asyncio.sleep(0), 100),
           "sleep(0.001)": await median_us(lambda: asyncio.sleep(0.001), 100),
           "sleep(0.00175)": await median_us(lambda: asyncio.sleep(0.00175), 100),
           "sleep(0.002)": await median_us(lambda: asyncio.sleep(0.002), 100),
           "echo": await median_us(echo, 100)}
    # As the master has it: a reader task takes the reply and wakes the requester (an Event).
    got = asyncio.Event()

    async def reader():
        while True:
            await uart.read(1)
            got.set()

    task = asyncio.create_task(reader())

    async def echo_via_reader():
        got.clear()
        await uart.write(b"x")
        await got.wait()

    out["echo via reader task"] = await median_us(echo_via_reader, 100)
    task.cancel()
    print("RESULT " + json.dumps(out))
"""
FLOOR_KEYS = ("sleep(0)", "sleep(0.001)", "sleep(0.00175)", "sleep(0.002)", "echo",
              "echo via reader task")


async def runtime_floor(runtime: str, build_dir: Path) -> dict[str, int]:
    """What one wake costs the firmware's runtime: asyncio sleeps, and a one-byte round trip
    through the host HAL's Uart to an echo server in this process (its read is a socket under
    CPython, a JS Promise in the VM)."""
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        side = "fw-cpython" if runtime == "cpython" else "fw-micropython"
        return await _run_child(side, {"host": {"uarts": {"echo": f"{host}:{port}"}}}, build_dir,
                                {}, script=FLOOR_SCRIPT)
    finally:
        server.close()
        await server.wait_closed()


# --- the report ---------------------------------------------------------------------------------

def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values):.1f}-{max(values):.1f}"


def print_table(rows: list[Row], turnaround_ms: float) -> list[tuple[str, int, float]]:
    """The table (medians over repeated runs, their range beside); returns (side, baud, % of the
    limit) of every side that missed the target."""
    runs = max(sum(1 for r in rows if (r.side, r.baud) == (rows[0].side, rows[0].baud)), 1)
    print(f"Read Holding Registers, unit {UNIT}, {COUNT} registers from {ADDRESS} "
          f"(8-byte request, 9-byte reply), {FRAMING} timing, device turnaround {turnaround_ms:g} ms; "
          f"{runs} run(s), median tx/s and range")
    print(f"{'side':<31} {'baud':>6} {'tx/s':>6} {'range':>11} {'% limit':>7} {'steady':>6} {'err':>3}   "
          f"{'period':>6} {'req':>5} {'turn':>5} {'reply':>5} {'gap':>5} {'late':>4}  µs, medians")
    missed = []
    for baud in sorted({r.baud for r in rows}):
        lim = transaction_limit(baud, FRAMING, turnaround_ms * 1000)
        print(f"{'physical limit (REFERENCE §1)':<31} {baud:>6} {lim.per_s:>6.1f} {'':>11} "
              f"{100.0:>6.1f}% {'':>6} {'':>3}   {lim.transaction_us:>6.0f} "
              f"{lim.request_len * lim.char_us:>5.0f} {lim.t35_us + lim.turnaround_us:>5.0f} "
              f"{lim.reply_len * lim.char_us:>5.0f} {lim.t35_us:>5.0f}")
        for side in dict.fromkeys(r.side for r in rows if r.baud == baud):
            mine = [r for r in rows if (r.side, r.baud) == (side, baud)]
            rate = statistics.median(r.per_s for r in mine)
            pct = 100 * rate / lim.per_s
            splits = [r.split for r in mine if r.split is not None]
            parts, steady = "", ""
            if splits:
                m = {k: statistics.median(getattr(x, k) for x in splits)
                     for k in ("period", "request", "turnaround", "reply", "gap", "late")}
                parts = (f"{m['period']:>6.0f} {m['request']:>5.0f} {m['turnaround']:>5.0f} "
                         f"{m['reply']:>5.0f} {m['gap']:>5.0f} {m['late']:>4.0f}")
                steady = f"{100 * lim.transaction_us / m['period']:.0f}%"
            mark = ""
            if side != "pyserial" and pct < 100 * TARGET:
                mark = "  < 90 %"
                missed.append((side, baud, pct))
            print(f"{LABELS[side]:<31} {baud:>6} {rate:>6.1f} {_spread([r.per_s for r in mine]):>11} "
                  f"{pct:>6.1f}% {steady:>6} {sum(r.errors for r in mine):>3}   {parts}{mark}")
    return missed


def print_floor(floors: dict[str, dict[str, int]]) -> None:
    print("one wake in each firmware runtime, µs (medians of 100): "
          + "; ".join(f"{rt}: " + ", ".join(f"{k} {v[k]}" for k in FLOOR_KEYS)
                      for rt, v in floors.items()))


async def run(sides: list[str], bauds: list[int], seconds: float, turnaround_ms: float,
              repeat: int) -> tuple[list[Row], dict[str, dict[str, int]]]:
    rows = []
    floors = {}
    with tempfile.TemporaryDirectory(prefix="citynerve-modbus-rate-") as folder:
        for side in sides:
            if side.startswith("fw-"):
                runtime = "cpython" if side == "fw-cpython" else "micropython"
                floors[runtime] = await runtime_floor(runtime, Path(folder))
        for _ in range(repeat):
            for baud in bauds:
                for side in sides:
                    rows.append(await measure(side, baud, seconds=seconds,
                                              turnaround_ms=turnaround_ms, build_dir=Path(folder)))
    return rows, floors


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child_main(sys.argv[2], json.loads(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole table")
    parser.add_argument("--bauds", default=",".join(map(str, BAUDS)))
    parser.add_argument("--sides", default=",".join(SIDES), help=f"some of {', '.join(SIDES)}")
    parser.add_argument("--turnaround-ms", type=float, default=0.0,
                        help="the emulated device's turnaround (counted in the limit)")
    parser.add_argument("--json", type=Path, help="also write every run's rows here")
    args = parser.parse_args()
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}: use {', '.join(SIDES)}")
    bauds = [int(b) for b in args.bauds.split(",")]
    rows, floors = asyncio.run(run(sides, bauds, args.seconds, args.turnaround_ms, args.repeat))
    missed = print_table(rows, args.turnaround_ms)
    if floors:
        print_floor(floors)
    print(f"target >= {TARGET:.0%} of the physical limit: "
          + ("met by every side" if not missed else
             "NOT met by " + ", ".join(f"{LABELS[s]} at {b} ({p:.0f} %)" for s, b, p in missed)))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": [dataclasses.asdict(r) | {"per_s": r.per_s}
                                                  for r in rows], "floors": floors}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
