"""The emulated field of a junction: for every bus and node link of every board, a timed virtual
wire with the device at one end and the node's host-HAL connection at the other, the emulated
devices themselves, and the traffic played to the loop pins and the signal controller.

    async with JunctionDevices(configs, scenario=scenario, clock=clock, truth=truth) as field:
        host = field.host_section("cab-pico")      # what NodeRunner's `host` needs
        field.gateway_links["cab-pico"]             # {"transport": "uart", "gateway_port": pty}

Per bus: node Uart (TCP) -> UartBridge -> VirtualWire (the bus's baud and framing) -> the device
(a ModbusDeviceServer for the Modbus units on the bus, or a PtyTcpRelay to a PMS5003/SDS011
emulator, which serve TCP). Per UART node link: node -> UartBridge -> VirtualWire (the link's baud,
8N1) -> the gateway's serial port, the wire's other end. A TCP node link goes straight to the
gateway's listener. Ptys take no parity, so every program opens its end 8N1 while the wire keeps
the real framing's character time (hil/wire.py).

Ground truth: the controller and Modbus units write to the shared GroundTruthLog; the PM sensors
keep their own logs (hil/emulators/__init__.py), read by `pm_frames()`; each wire's fault log is
in `wire_faults`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import tty
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from hil.broker import free_port
from hil.emulators import UartDeviceServer
from hil.emulators.ground_truth import Clock, GroundTruthLog
from hil.emulators.modbus_devices import GenericModbusSensor, ModbusDevice, ModbusDeviceServer, SenseAirS8
from hil.emulators.pms5003_emulator import Pms5003Emulator
from hil.emulators.sds011_emulator import Sds011Emulator
from hil.emulators.signal_controller import SignalControllerEmulator
from hil.emulators.traffic import Lane, TrafficPlayback
from hil.faults import FaultEvent, FaultSettings
from hil.scenario import AirProfile, Scenario
from hil.uart_bridge import UartBridge
from hil.wire import VirtualWire
from protocols.modbus_receiver import RtuReceiver

__all__ = ["FieldError", "JunctionDevices", "PmFrame", "PtyTcpRelay"]

LINK_BAUD = 115200
PM_PERIOD_S = 1.0  # both sensors report about once a second in active mode (REFERENCE.md §2, §3)
SERIES_LENGTH = 3600  # frames before a PM series repeats: an hour of distinct readings
READ_CHUNK = 4096


class FieldError(Exception):
    """The emulated field cannot be built: `where` (board, bus or device) and why."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"emulated junction, {where}: {reason}")


@dataclass(frozen=True)
class PmFrame:
    """A good data frame a PM sensor put on its wire: monotonic time, board/device, values."""

    t_us: int
    board: str
    device: str
    values: dict[str, float]


class PtyTcpRelay:
    """Joins a pty end (a wire's device side) to a device emulator serving TCP, both ways, for as
    long as it lives; reconnects to the emulator if that connection drops.

    With `modbus=True` the line's bytes go through an RTU receiver (protocols/modbus_receiver.py,
    role "server") and only whole, CRC-valid requests reach the emulator, one write each: a real
    device resynchronises on the bus's silences, but pymodbus's RTU framer, given a stale request
    and the retry that followed it back to back (a harness stall does that), consumes both and
    never finds a frame boundary again."""

    def __init__(self, serial_path: str, address: str, *, modbus: bool = False) -> None:
        self.serial_path = serial_path
        self.address = address
        self.rx = RtuReceiver("server") if modbus else None
        self.dropped = 0  # garbage bytes the RTU receiver threw away
        self._fd: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        fd = os.open(self.serial_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        self._task = asyncio.create_task(self._pump(), name=f"relay {self.address}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._task
        if self._writer is not None:
            self._writer.close()
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return
        if not data or self._writer is None or self._writer.is_closing():
            return
        if self.rx is None:
            self._writer.write(data)
            return
        for item in self.rx.feed(data):
            if isinstance(item, bytes):
                self._writer.write(item)
            else:
                self.dropped += 1

    async def _pump(self) -> None:
        host, port = self.address.rsplit(":", 1)
        while True:
            try:
                reader, self._writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            while data := await reader.read(READ_CHUNK):
                assert self._fd is not None
                with contextlib.suppress(BlockingIOError):
                    os.write(self._fd, data)  # a 9600-baud wire drains far faster than a sensor talks
            self._writer.close()


def pm_series(air: AirProfile, seed: int) -> list[tuple[float, float]]:
    """(PM2.5, PM10) in ug/m3, one a second, from the air profile with seeded noise."""
    rng = random.Random(seed)
    out = []
    for i in range(SERIES_LENGTH):
        pm25 = max(0.0, air.at(air.pm2_5, i * PM_PERIOD_S) + rng.uniform(-air.pm_noise, air.pm_noise))
        out.append((pm25, pm25 * (1.6 + rng.uniform(-0.1, 0.1))))
    return out


class JunctionDevices:
    """Every wire, bridge and emulated device of the junction's boards; an async context manager.
    `configs` are the node configs (board id -> citynerve.inventory.board_config(...) result with
    the scenario's changes applied); `dead_units` are Modbus devices a dead_unit fault adds, served
by a generic unit that the fault silences."""

    def __init__(self, configs: Mapping[str, dict[str, Any]], *, scenario: Scenario, clock: Clock,
                 truth: GroundTruthLog, dead_units: Sequence[tuple[str, str]] = ()) -> None:
        self.configs = configs
        self.dead_units = set(dead_units)  # (board, device id): emulated by an unpowered unit
        self.scenario = scenario
        self.clock = clock
        self.truth = truth
        self.wires: dict[str, VirtualWire] = {}
        self.wire_faults: dict[str, list[FaultEvent]] = {}
        self.bridges: dict[str, UartBridge] = {}
        self.gateway_links: dict[str, dict[str, Any]] = {}
        self.uart_sensors: dict[tuple[str, str], UartDeviceServer] = {}
        self.modbus_units: dict[tuple[str, str], ModbusDevice] = {}
        self.controller: SignalControllerEmulator | None = None
        self.playback: TrafficPlayback | None = None
        self._host: dict[str, dict[str, Any]] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        try:
            for board, config in self.configs.items():
                await self._board(board, config)
            self.playback = await self._stack.enter_async_context(self._traffic())
            for board in self._host:
                if board in {lane.node for lane in self.playback.lanes}:
                    self._host[board]["control"] = self.playback.control_address(board)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    # -- what the rest of the junction reads -----------------------------------------------------

    def host_section(self, board: str) -> dict[str, Any]:
        return dict(self._host[board])

    def set_bit_errors(self, rate: float, wires: Sequence[str] | str = "all") -> list[str]:
        """Bit errors at `rate` on the named wires (both directions); returns the names hit."""
        names = list(self.wires) if wires == "all" else list(wires)
        for name in names:
            if name not in self.wires:
                raise FieldError(f"wire {name}", f"no such wire (wires: {', '.join(self.wires)})")
            self.wires[name].set_faults(FaultSettings(bit_error_rate=rate))
        return names

    def pm_frames(self) -> list[PmFrame]:
        """Every good data frame the PM sensors sent so far."""
        out = []
        for (board, device), sensor in self.uart_sensors.items():
            for entry in sensor.entries("frame"):
                reading = entry.info["reading"]
                if isinstance(sensor, Pms5003Emulator):
                    values = {"pm1_0": reading.pm1_0_atm, "pm2_5": reading.pm2_5_atm,
                              "pm10": reading.pm10_atm}
                else:
                    values = {"pm2_5": reading.pm2_5_tenths / 10, "pm10": reading.pm10_tenths / 10}
                out.append(PmFrame(int(entry.t * 1e6), board, device, values))
        return out

    # -- building -----------------------------------------------------------------------------------

    async def _wire(self, name: str, *, baud: int, framing: str, half_duplex: bool = False) -> VirtualWire:
        log: list[FaultEvent] = []
        wire = await self._stack.enter_async_context(
            VirtualWire(baud=baud, framing=framing, half_duplex=half_duplex,
                        seed=self.scenario.seed + len(self.wires), log=log))
        self.wires[name] = wire
        self.wire_faults[name] = log
        return wire

    async def _bridge(self, name: str, path: str, baud: int) -> str:
        bridge = await self._stack.enter_async_context(UartBridge(path, baud=baud, framing="8N1"))
        self.bridges[name] = bridge
        return bridge.address

    async def _board(self, board: str, config: dict[str, Any]) -> None:
        host: dict[str, Any] = {"uarts": {}, "uid": board}
        link = config.get("link", {})
        if link.get("transport") == "tcp":
            port = free_port()
            self.gateway_links[board] = {"transport": "tcp", "gateway_port": port}
            host["link"] = f"127.0.0.1:{port}"
        else:
            baud = int(link.get("baud", LINK_BAUD))
            wire = await self._wire(f"{board}/link", baud=baud, framing="8N1")
            self.gateway_links[board] = {"transport": link.get("transport", "uart"),
                                         "gateway_port": wire.a_path, "baud": baud}
            host["link"] = await self._bridge(f"{board}/link", wire.b_path, baud)
        devices = config.get("devices", [])
        for bus_id, bus in config.get("buses", {}).items():
            on_bus = [d for d in devices if d.get("bus") == bus_id]
            if not on_bus:
                continue
            baud, framing = int(bus["baud"]), str(bus.get("framing", "8N1"))
            modbus = [d for d in on_bus if config["profiles"][d["profile"]].get("interface") == "modbus-rtu"]
            wire = await self._wire(f"{board}/{bus_id}", baud=baud, framing=framing,
                                    half_duplex=bool(modbus))
            host["uarts"][bus_id] = await self._bridge(f"{board}/{bus_id}", wire.a_path, baud)
            if modbus:
                units = [self._modbus_unit(board, d) for d in modbus]
                server = await self._stack.enter_async_context(
                    ModbusDeviceServer(units, rtu_over_tcp=True))
                await self._stack.enter_async_context(PtyTcpRelay(wire.b_path, server.address, modbus=True))
            else:
                if len(on_bus) > 1:
                    raise FieldError(f"board {board}, bus {bus_id}", "a frame sensor's UART carries one device")
                sensor = await self._uart_sensor(board, on_bus[0])
                await self._stack.enter_async_context(PtyTcpRelay(wire.b_path, sensor.address))
        self._host[board] = host

    def _modbus_unit(self, board: str, device: dict[str, Any]) -> ModbusDevice:
        profile, address = device["profile"], int(device["address"])
        source = f"{board}/{device['id']}"
        unit: ModbusDevice
        if profile == "nema-phase-status":
            unit = SignalControllerEmulator(dict(self.scenario.signal), unit=address, clock=self.clock,
                                            truth=self.truth, source="signal")
            self.controller = unit
        elif profile == "senseair-s8":
            air = self.scenario.air
            unit = SenseAirS8(co2=lambda t: round(air.at(air.co2_ppm, t)), clock=self.clock,
                              truth=self.truth, source=source)
        elif (board, device["id"]) in self.dead_units:
            unit = GenericModbusSensor(values={}, profile=profile, unit=address, clock=self.clock,
                                       truth=self.truth, source=source)
        else:
            raise FieldError(f"board {board}, device {device['id']}",
                             f"no emulator for Modbus profile {profile!r}")
        self.modbus_units[(board, device["id"])] = unit
        return unit

    async def _uart_sensor(self, board: str, device: dict[str, Any]) -> UartDeviceServer:
        profile = device["profile"]
        seed = self.scenario.seed * 1000 + len(self.uart_sensors)
        series = pm_series(self.scenario.air, seed)
        sensor: UartDeviceServer
        if profile == "pms5003":
            sensor = Pms5003Emulator(
                [{"pm1_0_atm": round(a * 0.65), "pm2_5_atm": round(a), "pm10_atm": round(b),
                  "pm1_0_cf1": round(a * 0.65), "pm2_5_cf1": round(a), "pm10_cf1": round(b)}
                 for a, b in series], period_s=PM_PERIOD_S, seed=seed)
        elif profile == "sds011":
            sensor = Sds011Emulator([(round(a * 10), round(b * 10)) for a, b in series],
                                    period_s=PM_PERIOD_S, seed=seed)
        else:
            raise FieldError(f"board {board}, device {device['id']}", f"no emulator for UART profile {profile!r}")
        await self._stack.enter_async_context(sensor)
        self.uart_sensors[(board, device["id"])] = sensor
        return sensor

    def _traffic(self) -> TrafficPlayback:
        lanes = []
        for demand in self.scenario.lanes:
            config = self.configs.get(demand.board)
            device = next((d for d in (config or {}).get("devices", []) if d.get("id") == demand.device), None)
            if config is None or device is None or "pins" not in device:
                raise FieldError(f"traffic lane {demand.board}/{demand.device}",
                                 "names no loop device with pins on that board")
            profile = config["profiles"][device["profile"]]
            lanes.append(Lane(node=demand.board, pins=tuple(device["pins"]),
                              spacing_ft=float(device.get("trap_spacing_ft", 20)),
                              loop_ft=float(device.get("loop_length_ft", 6)), flow_vph=demand.flow_vph,
                              speed_mph=demand.speed_mph, active_level=int(profile.get("active_level", 0)),
                              phase=demand.phase if self.controller is not None else None))
        if not lanes:
            raise FieldError("traffic", "the scenario plays no lane (add [[traffic.lane]])")
        duration = self.scenario.duration_s + self.scenario.drain_s
        return TrafficPlayback(lanes, seed=self.scenario.seed, duration_s=duration, clock=self.clock,
                               truth=self.truth, controller=self.controller)

