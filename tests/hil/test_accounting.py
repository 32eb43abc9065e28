"""The accounting on a made-up run, so each verdict is known in advance: what was delivered, lost
(and lost to a node reset), duplicated, corrupted (a wrong value, a phantom event, a number from a
dead unit, a lane interval that does not match the traffic), late, and what is not judged (before
a node could observe it, after the end)."""

from __future__ import annotations

from dataclasses import replace

from hil.accounting import account, percentiles
from hil.accounting_modbus import modbus_check
from hil.accounting_truth import BoardInfo, RunTruth
from hil.emulators.ground_truth import TruthRecord
from hil.junction_devices import PmFrame
from hil.junction_stream import Reading, StreamStats
from hil.scenario import Expectations
from protocols.quality_codes import EVENT_DETECTOR_OFF, EVENT_DETECTOR_ON, EVENT_PHASE_BEGIN_GREEN

T0 = 5_000_000_000  # monotonic us
OFFSET_MS = 1_700_000_000_000 - T0 // 1000  # UTC ms = monotonic ms + OFFSET_MS


def utc(t_us: int) -> int:
    return t_us // 1000 + OFFSET_MS


def record(source: str, kind: str, t_us: int, **fields: object) -> TruthRecord:
    return TruthRecord(utc(t_us), source, kind, {"t_us": t_us, **fields})


BOARD = BoardInfo(board="cab", runtime="cpython",
                  profiles={"ctrl": "nema-phase-status", "lane": "loop-presence", "pm": "pms5003", "aux2": "x"},
                  detectors={"lane": (1, 2)}, pins={"lane": (10, 11)}, interval_s=5, dead=frozenset({"aux2"}))


def base_truth(records: list[TruthRecord], pm: list[PmFrame] = ()) -> RunTruth:
    return RunTruth(t0_us=T0, end_us=T0 + 20_000_000, utc_ms=lambda t: utc(t),
                    records=[record("harness", "node_start", T0 - 5_000_000, board="cab"), *records],
                    pm_frames=list(pm), wire_faults={}, boards={"cab": BOARD}, lanes={0: ("cab", "lane")},
                    grace_us={"cab": 1_000_000})


def vehicle(a_on_s: float, speed: float = 30.0) -> TruthRecord:
    on = T0 + round(a_on_s * 1e6)
    return record("traffic", "vehicle", on, lane=0, node="cab", t_on_a_us=on, t_off_a_us=on + 200_000,
                  t_on_b_us=on + 450_000, t_off_b_us=on + 650_000, speed_mph=speed, delivered=True)


def ev(t_us: int, code: int, param: int, *, recv_after: int = 300, batch: tuple[int, int] = (1, 1)) -> Reading:
    return Reading("e", "cab", 9, batch, utc(t_us), utc(t_us) + recv_after, code=code, param=param)


def detector_readings(v: TruthRecord) -> list[Reading]:
    f = v.fields
    return [ev(f["t_on_a_us"], EVENT_DETECTOR_ON, 1), ev(f["t_off_a_us"], EVENT_DETECTOR_OFF, 1),
            ev(f["t_on_b_us"], EVENT_DETECTOR_ON, 2), ev(f["t_off_b_us"], EVENT_DETECTOR_OFF, 2)]


def test_everything_delivered_once_and_on_time_is_clean() -> None:
    cars = [vehicle(2.0), vehicle(7.5)]
    truth = base_truth(cars)
    readings = [r for v in cars for r in detector_readings(v)]
    result = account(truth, readings, StreamStats(batches=1), expect=Expectations())
    assert result.violations(Expectations()) == []
    assert result.kinds["detector"].expected == result.kinds["detector"].delivered == 8
    assert result.latency_ms["detector"] == {"count": 8, "p50": 300, "p90": 300, "p99": 300, "max": 300}


def test_loss_duplicates_corruption_and_lateness_are_each_counted() -> None:
    cars = [vehicle(2.0), vehicle(7.5), vehicle(12.0)]
    green = record("signal", "event", T0 + 4_000_000, code=EVENT_PHASE_BEGIN_GREEN, param=2)
    reads = [record("signal", "served", T0 + k * 100_000) for k in range(0, 150)]
    truth = base_truth([*cars, green, *reads])
    readings = detector_readings(cars[0]) + detector_readings(cars[1])[1:]  # car 2's first edge lost
    readings.append(replace(readings[0], batch=(1, 2)))  # the same event again, in another batch
    readings.append(ev(T0 + 9_000_000, EVENT_DETECTOR_ON, 2))  # no vehicle there: a phantom
    readings += [replace(r, recv_ms=r.t + 5000) for r in detector_readings(cars[2])]  # 5 s late
    readings.append(ev(T0 + 4_050_000, EVENT_PHASE_BEGIN_GREEN, 2))  # seen at the next poll
    readings.append(Reading("m", "cab", 9, (1, 3), utc(T0 + 3_000_000), utc(T0 + 3_000_000),
                            stream="aux2/humidity_pct", value=12.5))  # a dead unit never gives a number
    stats = StreamStats(batches=4, explained_duplicates=2)
    result = account(truth, readings, stats, expect=Expectations())
    det = result.kinds["detector"]
    assert (det.expected, det.delivered, det.lost) == (12, 11, 1)
    assert (det.duplicated, det.corrupted, det.late) == (1, 1, 4)
    assert result.kinds["phase"].delivered == result.kinds["phase"].expected == 1
    assert result.kinds["dead"].corrupted == 1
    assert result.explained_duplicates == 2, "whole re-sent batches are counted apart"
    assert (result.lost, result.duplicated, result.corrupted, result.late) == (1, 1, 2, 4)
    assert result.violations(Expectations()) == [
        "1 lost (at most 0 expected)", "2 corrupted (at most 0 expected)",
        "1 duplicated (at most 0 expected)", "4 late (at most 0 expected)"]
    assert any("phantom" in p or "no truth item" in p for p in result.problems)


def test_a_node_reset_explains_what_it_held_and_nothing_is_expected_while_it_is_down() -> None:
    cars = [vehicle(3.0), vehicle(9.0), vehicle(14.0)]
    stop, start = T0 + 10_000_000, T0 + 12_000_000
    truth = base_truth([*cars, record("harness", "node_stop", stop, board="cab"),
                        record("harness", "node_start", start, board="cab")])
    # Car 2 passed 0.5 s before the reset and was never sent; car 3 after the node was back.
    readings = detector_readings(cars[0]) + detector_readings(cars[2])
    result = account(truth, readings, StreamStats(batches=2), expect=Expectations())
    det = result.kinds["detector"]
    assert (det.expected, det.delivered, det.lost, det.lost_explained) == (12, 8, 0, 4)
    truth = base_truth([*cars, record("harness", "node_stop", T0 + 13_000_000, board="cab"),
                        record("harness", "node_start", T0 + 13_500_000, board="cab")])
    result = account(truth, detector_readings(cars[0]) + detector_readings(cars[2]), StreamStats(),
                     expect=Expectations())
    assert result.kinds["detector"].lost == 4, "a loss long before the reset is not the reset's"


def test_pm_values_must_match_and_fault_samples_are_classified() -> None:
    frames = [PmFrame(T0 + k * 1_000_000, "cab", "pm", {"pm2_5": 10 + k}) for k in range(1, 6)]
    truth = base_truth([], pm=frames)
    readings = [Reading("m", "cab", 9, (1, 1), utc(f.t_us) + 40, utc(f.t_us) + 900, stream="pm/pm2_5",
                        value=f.values["pm2_5"]) for f in frames[:3]]
    readings.append(Reading("m", "cab", 9, (1, 1), utc(frames[3].t_us) + 40, 0, stream="pm/pm2_5", value=99))
    readings.append(Reading("m", "cab", 9, (1, 1), utc(frames[4].t_us) + 40, 0, stream="pm/pm2_5",
                            fault="checksum"))
    result = account(truth, readings, StreamStats(), expect=Expectations(unexplained_faults=0))
    pm = result.kinds["pm"]
    assert (pm.expected, pm.delivered, pm.corrupted, pm.faulted, pm.lost) == (5, 3, 1, 1, 1)
    assert result.faults_unexplained == 1, "no wire damage, boot or fault window explains the checksum"
    assert "1 unexplained fault samples (at most 0 expected)" in result.violations(Expectations(unexplained_faults=0))


def test_lane_intervals_are_compared_with_the_traffic_played() -> None:
    cars = [vehicle(s) for s in (0.4, 1.5, 3.1, 6.2, 7.0, 8.8)]
    truth = base_truth(cars)
    b1, b2, b3 = (utc(T0 + s * 1_000_000) for s in (0, 5, 10))

    def sample(t: int, name: str, value: float) -> Reading:
        return Reading("m", "cab", 9, (1, 1), t, t + 500, stream=f"lane/{name}", value=value)
    readings = [sample(b1, "volume", 7)]  # the first interval of a boot: only its presence is checked
    readings += [sample(b2, "volume", 3), sample(b2, "occupancy", 12.0), sample(b2, "speed", 30.0)]
    readings += [sample(b3, "volume", 4), sample(b3, "occupancy", 12.0)]  # 3 arrived, not 4
    readings += [sample(utc(T0 + 20_000_000), "volume", 0)]  # the one ending at 15 s is missing
    result = account(truth, [*readings, *(r for v in cars for r in detector_readings(v))], StreamStats(),
                     expect=Expectations())
    iv = result.intervals
    assert (iv["published"], iv["checked"], iv["unchecked"], iv["corrupted"], iv["lost"]) == (4, 2, 2, 1, 1)
    assert any("volume 4, 3 vehicles arrived" in p for p in iv["problems"])


def test_the_dead_unit_check_reads_tries_and_polls() -> None:
    polls = [record("signal", "served", T0 + k * 100_000) for k in range(200)]
    first = [T0 + 50_000 + k * 120_000 for k in range(6)]  # 3 requests with their retries
    later = [T0 + 3_050_000, T0 + 5_050_000, T0 + 9_050_000]
    tries = [record("cab/aux2", "silent", t) for t in first + later]
    truth = base_truth([*polls, *tries])
    check = modbus_check(truth, board="cab", dead="cab/aux2", poll_ms=100, backoff_ms=1000)
    assert check["violations"] == [] and check["tries_after_offline"] == 3 and check["min_try_spacing_ms"] == 2000
    bad = base_truth([*polls, *tries, record("cab/aux2", "silent", T0 + 3_060_000)])
    check = modbus_check(bad, board="cab", dead="cab/aux2", poll_ms=100, backoff_ms=1000)
    assert len(check["violations"]) == 2, check


def test_percentiles_use_nearest_rank() -> None:
    assert percentiles(list(range(1, 101))) == {"count": 100, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([])["p99"] is None


def test_a_harness_stall_is_the_harness_s_fault_not_the_node_s() -> None:
    cars = [vehicle(2.0), vehicle(8.0)]
    stall = (T0 + 7_950_000, T0 + 8_100_000)  # the loop ran 150 ms late as car 2 arrived
    truth = replace(base_truth(cars), stalls=[stall])
    assert truth.stalled(T0 + 8_000_000, T0 + 8_000_000) and not truth.stalled(T0, T0 + 1_000_000)
    readings = detector_readings(cars[0]) + detector_readings(cars[1])[1:]
    readings.append(ev(T0 + 8_090_000, EVENT_DETECTOR_ON, 1))  # its edge, stamped late
    result = account(truth, readings, StreamStats(), expect=Expectations())
    det = result.kinds["detector"]
    assert (det.lost, det.lost_explained, det.corrupted, result.harness_stalled) == (0, 1, 0, 1)
    result = account(replace(truth, stalls=[]), readings, StreamStats(), expect=Expectations())
    assert (result.kinds["detector"].lost, result.kinds["detector"].corrupted) == (1, 1), "without it"
