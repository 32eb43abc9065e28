"""The benchmarks' own parts: the demo stream they share, the hand-written Sparkplug B encoder
against REFERENCE.md §7's vector, the batch windows, and wire sizes as properties of the formats
on a short stream (sizes, never times). The benchmarks themselves run under -m long."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import demo_stream  # noqa: E402
import wire_size  # noqa: E402


def test_the_demo_stream_has_the_demo_junctions_rates_and_is_deterministic() -> None:
    demo = demo_stream.demo_junction(seconds=120, seed=3)
    again = demo_stream.demo_junction(seconds=120, seed=3)
    assert demo.nodes["cab-pico"].events == again.nodes["cab-pico"].events
    assert demo.nodes["air-esp32"].measurements == again.nodes["air-esp32"].measurements
    cab = demo.nodes["cab-pico"]
    # 7 loop measures per lane every 30 s (speed/length/headway/gap need vehicles: nearly always).
    loop_times = Counter(r.t_ms for r in cab.measurements)
    assert sorted(loop_times) == [demo.t0_ms + k * 30_000 for k in (1, 2, 3, 4)]
    assert all(10 <= n <= 14 for n in loop_times.values())
    codes = Counter(code for _, code, _ in cab.events)
    assert {1, 8, 9, 10, 11, 21, 22, 23, 81, 82} <= set(codes)
    assert codes[81] == codes[82]  # every detector on has its off
    assert 2 <= len(cab.events) / demo.seconds <= 5  # several events a second
    pm = [r.t_ms for r in demo.nodes["air-esp32"].measurements if r.stream == "pm1/pm2_5"]
    assert all(1000 <= b - a <= 2000 for a, b in zip(pm, pm[1:]))
    co2 = [r.t_ms for r in demo.nodes["air-esp32"].measurements if r.stream == "co2/co2_ppm"]
    assert all(3970 <= b - a <= 4030 for a, b in zip(co2, co2[1:]))


def test_the_sparkplug_encoder_reproduces_the_reference_vector() -> None:
    wire_size.check_sparkplug_vector()  # raises SystemExit on a mismatch
    assert len(wire_size.SPB_VECTOR) == 46
    other = wire_size.sparkplug_payload(1700000000000, 5, [
        wire_size.sparkplug_metric(1, 1700000000000, wire_size.SPB_FLOAT, 412.5)])
    assert other != wire_size.SPB_VECTOR and other[-2:] == b"\x18\x05"


def test_batches_hold_what_arrived_within_the_window_of_their_first() -> None:
    assert wire_size.windows([0, 50, 99, 100, 150, 250], 100) == [(0, 3), (3, 5), (5, 6)]
    assert wire_size.windows([], 100) == []


def test_wire_sizes_on_a_short_stream() -> None:
    stream = demo_stream.demo_junction(seconds=120, seed=7)
    sizes = {label: wire_size.measure(stream, m, e) for label, m, e in wire_size.SCHEDULES}
    for kinds in sizes.values():
        total = kinds["all"]
        assert total.readings == stream.readings == kinds["m"].readings + kinds["e"].readings
        assert total.cnb1_zlib * 5 < total.json  # cnb1 is several times smaller than JSON
        assert total.wire_json > total.json and total.wire_cnb1_zlib > total.cnb1_zlib
        # The floor is a lower bound: no batch the gateway really encodes is smaller.
        assert 0 < total.floor < total.cnb1_zlib
    # Longer windows amortise a batch's fixed cost: per reading, 30 s batches beat 10 s batches,
    # and events batched over 10 s beat events sent within 100 ms.
    per = lambda s: s.cnb1_zlib / s.readings  # noqa: E731
    assert per(sizes["m 30 s, e 30 s"]["all"]) < per(sizes["m 10 s, e 10 s"]["all"])
    assert per(sizes["m 10 s, e 10 s"]["e"]) * 3 < per(sizes["defaults: m 10 s, e 100 ms"]["e"])


def test_published_batches_measure_as_the_model_does() -> None:
    # --live measures payloads a gateway published; fed the model's own batches, encoded as the
    # gateway encodes them, it must give the model's figures.
    stream = demo_stream.demo_junction(seconds=60, seed=3)
    model = wire_size.measure(stream, 10_000, 100)
    payloads = []
    for node in stream.nodes.values():
        for seq, (kind, batch) in enumerate(wire_size.batches(node, 10_000, 100)):
            payloads.append((node.node, kind, wire_size.encode_batch(batch, 1_750_000_000, seq,
                                                                     wire_size.CODEC_AUTO_DICT)))
    live = wire_size.measure_published(payloads)
    for kind in ("all", "m", "e"):
        got, want = live[kind], model[kind]
        assert (got.readings, got.batches, got.cnb1_dict, got.json, got.floor) == (
            want.readings, want.batches, want.cnb1_dict, want.json, want.floor)
        assert got.sparkplug == pytest.approx(want.sparkplug, rel=0.01)  # seq bytes differ


@pytest.mark.long
def test_wire_size_bench_runs() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "wire_size.py")], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert "reproduces REFERENCE.md §7's 46-byte vector" in out
    assert out.count("vs Sparkplug B") == 3 * len(wire_size.SCHEDULES)  # payload, wire, floor


@pytest.mark.long
def test_gateway_throughput_bench_runs() -> None:
    import gateway_throughput

    results = gateway_throughput.run(20_000, 5_000)
    assert results["gateway"]["readings"] == 20_000
    assert results["JSON per reading, link"]["readings"] == 5_000
    assert results["JSON per reading, memory"]["readings"] == 5_000
    lines = gateway_throughput.report(results)
    assert any(l.startswith("gateway readings per CPU second") for l in lines)


@pytest.mark.long
def test_gateway_rss_bench_runs() -> None:
    import asyncio

    import gateway_rss

    result = asyncio.run(gateway_rss.run(4, 6.0, 3.0))
    assert result["exit"] == 0 and not result["errors"]
    assert result["readings"] > 0 and result["max_kb"] > result["bare_kb"] > 0
