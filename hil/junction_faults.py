"""The scenario's faults, applied to a running Junction at their scenario time: a broker outage, a
kill -9 of the gateway and its restart, a node reset (a power cut: SIGKILL, then a fresh boot with
its flash intact), bit errors on the wires, a Modbus unit that stops answering. Each is logged in
the ground truth (source "harness"), and the outages' windows are kept for the accounting, which
explains the lateness they cause."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from hil.broker import Mosquitto
from hil.junction_config import dead_unit_id
from hil.scenario import FaultSpec

if TYPE_CHECKING:
    from hil.junction import Junction

__all__ = ["run_fault"]


async def run_fault(junction: Junction, fault: FaultSpec) -> None:
    """Wait for the fault's scenario time, then apply it (and undo it when it has a duration)."""
    assert junction.t0_us is not None and junction.devices is not None
    await junction.clock.sleep_until(junction.t0_us + round(fault.at_s * 1e6))
    start = junction.clock.now_us()
    junction.truth.record("harness", "fault", fault=fault.kind, at_s=fault.at_s, board=fault.board)
    if fault.kind == "broker_down":
        assert junction.broker is not None and fault.duration_s is not None
        junction.note(f"broker down for {fault.duration_s:g} s")
        await _broker_stop(junction)
        await asyncio.sleep(fault.duration_s)
        await _broker_start(junction)
        junction.note("broker back")
    elif fault.kind == "gateway_kill":
        assert junction.gateway is not None
        async with junction.gateway_lock:
            junction.gateway.kill()
            junction.note(f"gateway killed (kill -9); restarting in {fault.restart_after_s:g} s")
            await asyncio.sleep(fault.restart_after_s)
            await junction.gateway.start()
        junction.note(f"gateway restarted (pid {junction.gateway.pid})")
    elif fault.kind == "node_reboot":
        board = fault.board or ""
        runner = junction.nodes[board]
        runner.kill()
        junction.truth.record("harness", "node_stop", board=board, reason="reboot")
        await runner.stop()
        junction.note(f"node {board} reset; back in {fault.down_s:g} s")
        await asyncio.sleep(fault.down_s)
        junction.truth.record("harness", "node_start", board=board, runtime=runner.runtime)
        await runner.start()
    elif fault.kind == "bit_errors":
        names = junction.devices.set_bit_errors(fault.rate, fault.wires)
        junction.note(f"bit error rate {fault.rate:g} on {len(names)} wires")
        if fault.duration_s is not None:
            await asyncio.sleep(fault.duration_s)
            junction.devices.set_bit_errors(0.0, names)
    elif fault.kind == "dead_unit":
        unit = junction.devices.modbus_units[(fault.board or "", dead_unit_id(fault))]
        if fault.at_s > 0:
            unit.go_silent(duration_s=fault.duration_s)
        junction.note(f"Modbus unit {fault.address} on {fault.board}/{fault.bus} is dead")
        return
    if fault.kind in ("broker_down", "gateway_kill", "node_reboot"):
        junction.fault_windows.append((start, junction.clock.now_us(), fault.kind))


async def _broker_stop(junction: Junction) -> None:
    assert junction.broker is not None
    if isinstance(junction.broker, Mosquitto):
        await junction.broker.stop_async()
    else:
        await junction.broker.stop()


async def _broker_start(junction: Junction) -> None:
    assert junction.broker is not None
    if isinstance(junction.broker, Mosquitto):
        await junction.broker.start_async()
    else:
        await junction.broker.start()
