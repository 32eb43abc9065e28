"""hil.emulators.signal_controller: the NEMA dual-ring controller's interval sequence (fixed time,
actuated, pedestrians, preempt) read back from its ground truth and over Modbus (TCP, and RTU
through a VirtualWire at 19200 baud), and a property test that no plan and no call sequence ever
shows conflicting greens or leaves a call unserved. Time is a ManualClock: exact and fast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from firmware.phase_events import conflicting_greens
from hil.emulators.ground_truth import GroundTruthLog, ManualClock
from hil.emulators.modbus_devices import ModbusDeviceServer, ProfileLayoutError, load_profile
from hil.emulators.signal_controller import MAPS, DualRingController, PlanError, SignalControllerEmulator, SignalPlan
from hil.wire import VirtualWire

S = 1_000_000  # microseconds in a second


def bits(*phases: int) -> int:
    return sum(1 << (p - 1) for p in phases)


def events(truth: GroundTruthLog, t0: int, codes: tuple[int, ...] | None = None) -> list[tuple[float, int, int]]:
    """The logged events as (seconds after t0, code, phase), in log order."""
    return [((r["t_us"] - t0) / S, r["code"], r["param"]) for r in truth.records("signal", "event")
            if codes is None or r["code"] in codes]


# Asymmetric rings, no phases 3 and 7, pedestrians on 2 and 6 only: ring 2 reaches the barrier
# 3 s before ring 1 and rests in red there.
FIXED_PLAN: dict[str, Any] = {
    "mode": "fixed", "startup_s": 1,
    "defaults": {"yellow": 3, "red_clear": 1, "ped": False},
    "phases": {"1": {"green": 8}, "2": {"green": 20, "ped": {"walk": 5, "ped_clear": 10}},
               "4": {"green": 15}, "5": {"green": 5},
               "6": {"green": 20, "ped": {"walk": 5, "ped_clear": 10}}, "8": {"green": 15}},
}

FIXED_CYCLE = [
    (1.0, 1, 1), (1.0, 1, 5),
    (6.0, 8, 5), (9.0, 8, 1), (9.0, 9, 5), (9.0, 10, 5),
    (10.0, 1, 6), (10.0, 11, 5), (10.0, 21, 6),
    (12.0, 9, 1), (12.0, 10, 1),
    (13.0, 1, 2), (13.0, 11, 1), (13.0, 21, 2),
    (15.0, 22, 6), (18.0, 22, 2), (25.0, 23, 6), (28.0, 23, 2),
    (30.0, 8, 6), (33.0, 8, 2), (33.0, 9, 6), (33.0, 10, 6), (34.0, 11, 6),
    (36.0, 9, 2), (36.0, 10, 2),
    (37.0, 1, 4), (37.0, 1, 8), (37.0, 11, 2),
    (52.0, 8, 4), (52.0, 8, 8), (55.0, 9, 4), (55.0, 9, 8), (55.0, 10, 4), (55.0, 10, 8),
    (56.0, 1, 1), (56.0, 1, 5), (56.0, 11, 4), (56.0, 11, 8),
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def truth(clock: ManualClock) -> GroundTruthLog:
    return GroundTruthLog(clock=clock)


async def tcp_client(server: ModbusDeviceServer) -> AsyncModbusTcpClient:
    host, port = server.address.rsplit(":", 1)
    client = AsyncModbusTcpClient(host, port=int(port), timeout=2, retries=0)
    assert await client.connect()
    return client


async def read_maps(client: Any, unit: int = 1) -> dict[str, int]:
    """The bitmaps as a node would read them, by the profile's register map."""
    profile = load_profile("nema-phase-status")
    reply = await client.read_holding_registers(0, count=17, device_id=unit)
    assert not reply.isError(), reply
    out = {}
    for entry in profile["registers"]:
        name = "preempt" if entry["role"] == "preempt_bitmap" else entry["name"]
        out[name] = reply.registers[entry["address"]]
    return out


async def test_fixed_time_cycle_logs_every_interval_in_order(clock: ManualClock, truth: GroundTruthLog) -> None:
    t0 = clock.now_us()
    signal = SignalControllerEmulator(FIXED_PLAN, clock=clock, truth=truth)
    clock.advance(56)
    signal.advance()
    assert events(truth, t0) == FIXED_CYCLE
    # Ring 2 cleared phase 6 at 34 s and waited for ring 1: no green began then, so the node
    # cannot see that end of red clearance; the truth says so. Phase 2's at 37 s is visible.
    ends = {(r["t_us"] - t0) / S: r.fields.get("rest_in_red", False)
            for r in truth.records("signal", "event") if r["code"] == 11 and r["param"] in (2, 6)}
    assert ends == {34.0: True, 37.0: False}
    clock.advance(300)
    signal.advance()
    first = {1: 1.0, 5: 1.0, 6: 10.0, 2: 13.0, 4: 37.0, 8: 37.0}
    for phase, t in first.items():  # the 55 s cycle repeats exactly
        began = [s for s, _, p in events(truth, t0, (1,)) if p == phase]
        assert began == [t + 55 * k for k in range(7) if t + 55 * k <= 356], phase
    assert not [p for _, _, p in events(truth, t0) if p in (3, 7)]


async def test_bitmaps_served_over_tcp_follow_the_clock(clock: ManualClock, truth: GroundTruthLog) -> None:
    signal = SignalControllerEmulator(FIXED_PLAN, clock=clock, truth=truth)
    all_phases = bits(1, 2, 4, 5, 6, 8)
    async with ModbusDeviceServer([signal]) as server:
        client = await tcp_client(server)
        try:
            maps = await read_maps(client)
            assert maps == {"reds": all_phases, "yellows": 0, "greens": 0, "dont_walks": bits(2, 6),
                            "ped_clears": 0, "walks": 0, "veh_calls": 0, "ped_calls": 0, "preempt": 0}
            clock.advance(11)  # phase 1 yellow, phase 6 green in its walk
            maps = await read_maps(client)
            assert (maps["greens"], maps["yellows"], maps["walks"]) == (bits(6), bits(1), bits(6))
            assert maps["reds"] == all_phases & ~bits(1, 6) and maps["dont_walks"] == bits(2)
            clock.advance(9)  # 20 s: both throughs green in ped clearance
            maps = await read_maps(client)
            assert (maps["greens"], maps["ped_clears"], maps["walks"], maps["dont_walks"]) == (bits(2, 6), bits(2, 6), 0, 0)
            clock.advance(14)  # 34 s: 2 yellow, 6 resting in red at the barrier
            maps = await read_maps(client)
            assert (maps["greens"], maps["yellows"]) == (0, bits(2))
            clock.advance(3)  # 37 s: across the barrier
            maps = await read_maps(client)
            assert maps["greens"] == bits(4, 8)
            served = truth.records("signal", "served")
            assert [r["values"]["greens"] for r in served] == [0, bits(6), bits(2, 6), 0, bits(4, 8)]
        finally:
            client.close()


ACTUATED_PLAN: dict[str, Any] = {
    "mode": "actuated", "startup_s": 1,
    "defaults": {"yellow": 3, "red_clear": 1, "passage": 2, "ped": False},
    "phases": {"2": {"min_green": 10, "max_green": 30, "recall": "min",
                     "ped": {"walk": 4, "ped_clear": 6}},
               "4": {"min_green": 5, "max_green": 12}, "6": {"min_green": 10, "recall": "min"},
               "8": {"min_green": 5}},
}


async def test_the_running_controller_logs_changes_without_being_read(clock: ManualClock,
                                                                       truth: GroundTruthLog) -> None:
    """Served by a server, the controller's own task follows the clock and wakes for inputs."""
    t0 = clock.now_us()
    signal = SignalControllerEmulator(ACTUATED_PLAN, clock=clock, truth=truth)
    async with ModbusDeviceServer([signal]):
        clock.advance(15)
        await truth.wait_for(lambda: len(truth.records("signal", "event")) == 2)
        signal.detector(4, True)  # now: 2 and 6 have served their minimum, so they end at once
        await truth.wait_for(lambda: len(truth.records("signal", "event")) == 4)
        clock.advance(4)
        await truth.wait_for(lambda: [r["param"] for r in truth.records("signal", "event")
                                      if r["code"] == 1][-1:] == [4])
    assert events(truth, t0, (1, 8)) == [(1.0, 1, 2), (1.0, 1, 6), (15.0, 8, 2), (15.0, 8, 6), (19.0, 1, 4)]


async def test_actuated_skips_extends_maxes_out_and_rests(clock: ManualClock, truth: GroundTruthLog) -> None:
    t0 = clock.now_us()
    signal = SignalControllerEmulator(ACTUATED_PLAN, clock=clock, truth=truth)

    def at(s: float) -> int:
        return t0 + round(s * S)

    signal.detector(4, True, at(20)); signal.detector(4, False, at(20.5))   # a call on 4
    signal.detector(4, True, at(27)); signal.detector(4, False, at(27.2))   # extends to 29.2
    signal.detector(4, True, at(29)); signal.detector(4, False, at(30))     # extends to 32
    signal.detector(4, True, at(50)); signal.detector(4, False, at(50.3))   # a second call
    for k in range(8):  # a vehicle every 1.5 s from 54 s to 65 s: no 2 s gap, so 4 maxes out
        signal.detector(4, True, at(54 + 1.5 * k)); signal.detector(4, False, at(54.5 + 1.5 * k))
    clock.advance(90)
    signal.advance()
    greens_yellows = events(truth, t0, (1, 8))
    assert greens_yellows == [
        (1.0, 1, 2), (1.0, 1, 6),      # recall: 2 and 6 rest in green until a conflicting call
        (20.0, 8, 2), (20.0, 8, 6),    # the call on 4: min green long served, gapped out already
        (24.0, 1, 4),                  # 8 has no call: skipped
        (32.0, 8, 4),                  # gap out: 2 s after the last actuation
        (36.0, 1, 2), (36.0, 1, 6),    # recall brings 2 and 6 back
        (50.0, 8, 2), (50.0, 8, 6),
        (54.0, 1, 4), (66.0, 8, 4),    # max out: 12 s of green despite continuous demand
        (70.0, 1, 2), (70.0, 1, 6),
    ]
    assert not [e for e in events(truth, t0) if e[2] == 8]  # never called, never served
    assert signal.advance()["veh_calls"] == 0  # the last vehicle left at 65 s, inside the green
    inputs = truth.records("signal", "input")
    assert len(inputs) == 24 and all(r["accepted"] for r in inputs)


async def test_ped_call_recycles_walk_on_resting_green(clock: ManualClock, truth: GroundTruthLog) -> None:
    t0 = clock.now_us()
    signal = SignalControllerEmulator(ACTUATED_PLAN, clock=clock, truth=truth)
    signal.ped_button(2, t0 + 15 * S)
    signal.ped_button(4, t0 + 15 * S)  # phase 4 has no pedestrians: refused
    clock.advance(40)
    assert signal.advance()["ped_calls"] == 0
    assert events(truth, t0, (21, 22, 23)) == [(15.0, 21, 2), (19.0, 22, 2), (25.0, 23, 2)]
    assert [r["accepted"] for r in truth.records("signal", "input")] == [True, False]
    assert events(truth, t0, (8,)) == []  # nothing conflicting was called: 2 and 6 still rest


async def test_preempt_cuts_walk_clears_to_all_red_then_resumes(clock: ManualClock, truth: GroundTruthLog) -> None:
    t0 = clock.now_us()
    signal = SignalControllerEmulator(FIXED_PLAN, clock=clock, truth=truth)
    signal.preempt(1, True, t0 + 16 * S)   # phase 2 in its walk (13-18 s), 6 in ped clear (15-25 s)
    signal.preempt(1, False, t0 + 40 * S)
    clock.advance(41)
    signal.advance()
    assert events(truth, t0)[:15] == FIXED_CYCLE[:15]
    assert events(truth, t0)[15:] == [
        (16.0, 22, 2), (16.0, 102, 1),   # the walk is cut to its clearance at once
        (25.0, 8, 6), (25.0, 23, 6),     # a clearance under way is honoured, then yellow
        (26.0, 8, 2), (26.0, 23, 2),
        (28.0, 9, 6), (28.0, 10, 6), (29.0, 9, 2), (29.0, 10, 2),
        (29.0, 11, 6), (30.0, 11, 2),
        (40.0, 1, 4), (40.0, 1, 8), (40.0, 104, 1),  # the dwell ends: on to the next side
    ]
    dwell = [r for r in truth.records("signal", "maps") if r["t_us"] < t0 + 40 * S][-1]
    assert dwell["t_us"] == t0 + 29 * S  # all red from 29 s to the end of the preempt
    assert (dwell["greens"], dwell["yellows"], dwell["reds"], dwell["preempt"]) == (0, 0, bits(1, 2, 4, 5, 6, 8), 1)
    ends = [r.fields.get("rest_in_red") for r in truth.records("signal", "event") if r["code"] == 11]
    assert ends[-2:] == [True, True]  # no green followed: invisible in the bitmaps until 40 s


def test_plan_errors_name_the_setting() -> None:
    with pytest.raises(PlanError) as err:
        SignalPlan.from_dict({"mode": "actuated", "phases": {"2": {"min_green": 10, "max_green": 5}}})
    assert err.value.key == "phases.2.max_green"
    with pytest.raises(PlanError) as err:
        SignalPlan.from_dict({"phases": {"9": {}}})
    assert err.value.key == "phases"
    with pytest.raises(PlanError) as err:
        SignalPlan.from_dict({"mode": "fixed", "phases": {"1": {"yellow": 0}}})
    assert err.value.key == "phases.1.yellow"
    with pytest.raises(ProfileLayoutError) as bad:
        profile = load_profile("nema-phase-status")
        profile["registers"].append({"name": "phase_ons", "table": "holding", "address": 9})
        SignalControllerEmulator(FIXED_PLAN, profile=profile)
    assert bad.value.key == "registers.phase_ons"


@pytest.fixture
async def rtu_signal(clock: ManualClock, truth: GroundTruthLog) -> AsyncIterator[tuple[SignalControllerEmulator, AsyncModbusSerialClient]]:
    signal = SignalControllerEmulator(FIXED_PLAN, unit=3, clock=clock, truth=truth)
    async with VirtualWire(baud=19200, framing="8E1") as wire, \
            ModbusDeviceServer([signal], port=wire.b_path, baud=19200):
        # The wire keeps 8E1 timing; a pty refuses parity, so both ends open 8N1.
        client = AsyncModbusSerialClient(wire.a_path, baudrate=19200, timeout=2, retries=0)
        assert await client.connect()
        try:
            yield signal, client
        finally:
            client.close()


async def test_bitmaps_over_rtu_on_a_virtual_wire(rtu_signal: tuple[SignalControllerEmulator, AsyncModbusSerialClient],
                                                  clock: ManualClock) -> None:
    signal, client = rtu_signal
    clock.advance(40)
    maps = await read_maps(client, unit=3)
    assert maps == signal.advance()
    assert maps["greens"] == bits(4, 8)
    refused = await client.write_register(0, 1, device_id=3)  # status bitmaps are read-only
    assert refused.isError() and refused.exception_code == 2


# -- property: safety and service over random plans and call sequences --------------------------

PHASE_SETS = st.sets(st.integers(1, 8), min_size=1).map(sorted)


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    phases = {}
    for p in draw(PHASE_SETS):
        min_green = draw(st.sampled_from([1, 3, 5, 10, 15]))
        spec: dict[str, Any] = {
            "min_green": min_green, "max_green": min_green + draw(st.sampled_from([0, 5, 20])),
            "green": draw(st.sampled_from([2, 5, 10, 25])), "passage": draw(st.sampled_from([0, 2, 3])),
            "yellow": draw(st.sampled_from([3, 3.6, 6])), "red_clear": draw(st.sampled_from([0, 1, 2])),
            "recall": draw(st.sampled_from(["none", "none", "min", "max"])),
            "ped": draw(st.one_of(st.just(False), st.fixed_dictionaries(
                {"walk": st.sampled_from([4, 7]), "ped_clear": st.sampled_from([5, 12]),
                 "recall": st.booleans()}))),
        }
        phases[str(p)] = spec
    return {"mode": draw(st.sampled_from(["fixed", "actuated"])),
            "startup_s": draw(st.sampled_from([0, 2])), "phases": phases}


INPUTS = st.lists(st.tuples(
    st.integers(0, 400_000) .map(lambda ms: ms * 1000),       # when, within 400 s
    st.sampled_from(["on", "off", "pulse", "ped", "preempt"]),
    st.integers(1, 8)), max_size=40)


def worst_cycle_us(plan: SignalPlan) -> int:
    """An upper bound on one cycle: every phase at its longest, one after another."""
    total = plan.startup
    for t in plan.phases.values():
        total += max(t.max_green, t.min_green, t.green, t.walk + t.ped_clear) + t.walk + t.ped_clear
        total += t.yellow + t.red_clear
    return total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), inputs=INPUTS)
def test_never_conflicting_greens_and_every_call_is_served(plan: dict[str, Any],
                                                          inputs: list[tuple[int, str, int]]) -> None:
    states: list[tuple[int, dict[str, int]]] = []
    served: list[tuple[int, int, int]] = []

    def on_event(t: int, code: int, param: int, _extra: dict[str, Any]) -> None:
        served.append((t, code, param))

    controller = DualRingController(plan, start_us=0, on_event=on_event,
                                    on_maps=lambda t, maps: states.append((t, maps)))
    preempt_us = 0
    for t, kind, n in inputs:
        if kind == "on":
            controller.detector(n, True, t)
        elif kind == "off":
            controller.detector(n, False, t)
        elif kind == "pulse":
            controller.detector(n, True, t)
            controller.detector(n, False, t + 300_000)
        elif kind == "ped":
            controller.ped_button(n, t)
        else:  # a 20 s preempt on input 1 or 2
            controller.preempt(1 + n % 2, True, t)
            controller.preempt(1 + n % 2, False, t + 20_000_000)
            preempt_us += 20_000_000
    # Detectors left on hold their phase's green at most to max; release them late, then wait.
    end_inputs = 420_000_000
    for p in range(1, 9):
        for _ in range(controller.presence[p] + sum(1 for _, k, n in inputs if k == "on" and n == p)):
            controller.detector(p, False, end_inputs)
    bound = 3 * worst_cycle_us(controller.plan) + preempt_us
    controller.advance_to(end_inputs + 2 * bound)

    for t, maps in states:
        assert conflicting_greens(maps["greens"], maps["yellows"]) is None, (t, maps)
        assert maps["walks"] & ~maps["greens"] == 0 and maps["ped_clears"] & ~maps["greens"] == 0
        assert maps["greens"] & maps["yellows"] == 0
        assert (maps["greens"] | maps["yellows"]) & maps["reds"] == 0
    # Liveness: no call waits longer than the bound; every configured phase is served when called.
    for key in ("veh_calls", "ped_calls"):
        since: dict[int, int] = {}
        for t, maps in states + [(controller.now, controller.maps())]:
            for p in range(1, 9):
                if maps[key] & (1 << (p - 1)):
                    since.setdefault(p, t)
                    assert t - since[p] <= bound, (key, p, since[p], t)
                else:
                    since.pop(p, None)
    began = {p for _, code, p in served if code == 1}
    if controller.actuated:
        wanted = {n for _, k, n in inputs if k in ("on", "pulse") and n in controller.timing}
        wanted |= {p for p, t in controller.timing.items() if t.recall != "none" or t.ped_recall}
        assert wanted <= began
    else:
        assert began == set(controller.timing)
    # Every red clearance begun has ended, but those still timing; events come in time order.
    in_red = sum(1 for ring in controller.rings if ring.interval == "red_clear")
    assert sum(1 for e in served if e[1] == 10) - sum(1 for e in served if e[1] == 11) == in_red
    assert [e[0] for e in served] == sorted(e[0] for e in served)


def test_every_map_name_is_in_the_profile() -> None:
    names = {"preempt" if e["role"] == "preempt_bitmap" else e["name"]
             for e in load_profile("nema-phase-status")["registers"]}
    assert names == set(MAPS)
