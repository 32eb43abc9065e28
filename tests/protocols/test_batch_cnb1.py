"""cnb1 on CPython: the documented reference decoder, round trips, fuzzing and the size property."""

from __future__ import annotations

import json
import random
import re
import struct
import hashlib
import subprocess
import sys
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import batch_cnb1
from protocols.batch_builder import Batch
from protocols.batch_cnb1 import (
    CODEC_AUTO,
    CODEC_AUTO_DICT,
    CODEC_DICT,
    CODEC_NONE,
    CODEC_ZLIB,
    CODEC_ZSTD,
    BatchFormatError,
    batch_to_json,
    decode_batch,
    encode_batch,
    encode_batch_json,
)
from protocols.batch_codes import EVENT_NAMES, fault_code, fault_name, modbus_fault
from tests.conftest import REPO_ROOT, VECTOR_DIR
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings, mutated

DOC = REPO_ROOT / "README.md"
VECTORS = json.loads((VECTOR_DIR / "batch_cnb1.json").read_text())["cases"]
T0 = 1767225600000  # 2026-01-01T00:00:00Z


def build(spec: dict) -> Batch:
    batch = Batch(spec["node"], spec["node_boot"], spec["streams"])
    for stream, t, value, fault in spec["measurements"]:
        batch.add_measurement(stream, t, value, fault)
    for t, code, param in spec["events"]:
        batch.add_event(t, code, param)
    return batch


# ---------------------------------------------------------------------------------------------
# The reference decoder printed in README.md, "Batch format (cnb1)", run as printed


def reference_decoder() -> Any:
    text = DOC.read_text()
    match = re.search(r"<!-- reference-decoder -->\s*```python\n(.*?)```", text, re.S)
    assert match, 'README.md, "Batch format (cnb1)" lost its reference decoder block'
    source = match.group(1)
    assert len(source.splitlines()) <= 48, "the reference decoder should stay short"
    namespace: dict[str, Any] = {}
    exec(compile(source, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["decode_cnb1"]


def project(decoded: dict) -> dict:
    """decode_batch's output in the reference decoder's shape (fault codes, no names)."""
    return {
        "gateway_boot": decoded["gateway_boot"], "seq": decoded["seq"], "node": decoded["node"],
        "node_boot": decoded["node_boot"], "t0": decoded["t0"],
        "measurements": [
            dict(m, fault=None if m["fault"] is None else fault_code(m["fault"]))
            for m in decoded["measurements"]
        ],
        "events": [{"t": e["t"], "code": e["code"], "param": e["param"]} for e in decoded["events"]],
    }


VALID_VECTORS = [c for c in VECTORS if c["check"] in ("encode_decode", "decode", "decode_zstd")]


@pytest.mark.parametrize("case", VALID_VECTORS, ids=[c["id"] for c in VALID_VECTORS])
def test_reference_decoder_reads_every_vector_like_decode_batch(case: dict) -> None:
    data = bytes.fromhex(case["hex"])
    assert reference_decoder()(data) == project(decode_batch(data))


def test_small_vector_is_the_documented_dump() -> None:
    # The annotated dump in the doc is the small vector, byte for byte.
    dump = re.search(r"<!-- small-example-dump -->\s*```\n(.*?)```", DOC.read_text(), re.S)
    assert dump
    hex_bytes = "".join(
        tok for line in dump.group(1).splitlines() for tok in line.split("|")[0].split()[1:]
    )
    assert hex_bytes == VECTORS[0]["hex"]


def test_small_vector_is_independently_derived() -> None:
    # Written out by hand from the doc, serialised by msgpack (not protocols/) and struct.
    body = {
        "n": "air-1", "b": 3, "t": T0,
        "m": [
            ["air/pm1/", [["pm2_5", "ug/m3", "gauge", 0], ["pm10", "ug/m3", "gauge", 0]],
             [[[1000, 1000, 1000], [12, 1, None], [2, 1]], [0, [20, -2, None], [2, 1]]]],
            ["loop/1/", [["occ", "%", "gauge", 2]], [[[3000], [1234]]]],
            ["loop/2/", 1, [[2, [750]]]],
            ["node/", [["vbat", "V", "gauge", None]], [[[500], [3.25]]]],
        ],
        "e": [[0, 250, 1250], [82, 81, 1], [1, 1, 2]],
    }
    expected = b"cnb1" + struct.pack(">BBII", 1, 0, 0x01020304, 5) + msgpack.packb(body)
    case = VECTORS[0]
    assert case["id"] == "small-codec-none"
    assert bytes.fromhex(case["hex"]) == expected
    spec = case["batch"]
    assert encode_batch(build(spec), spec["gateway_boot"], spec["seq"], CODEC_NONE) == expected
    zcase = next(c for c in VECTORS if c["id"] == "small-codec-zlib")
    assert zlib.decompress(bytes.fromhex(zcase["hex"])[14:]) == expected[14:]


# ---------------------------------------------------------------------------------------------
# Round trips


PREFIXES = ["loop/1/", "loop/2/", "air/pm1/", "", "node/"]
LEAVES = ["volume", "occ", "pm2_5", "vbat", "x"]


@st.composite
def batches(draw: st.DrawFn) -> tuple[Batch, dict]:
    """A random batch and what it should decode to: per stream, (t, value, fault) in add order."""
    node = draw(st.text(max_size=12))
    batch = Batch(node, draw(st.integers(0, 2**64 - 1)))
    names = draw(st.lists(st.tuples(st.sampled_from(PREFIXES), st.sampled_from(LEAVES)),
                          unique=True, max_size=8))
    expected: dict[str, list] = {}
    base = draw(st.integers(0, 2**45))
    times = st.integers(base, base + 100_000)
    for prefix, leaf in names:
        name = prefix + leaf
        dec = draw(st.one_of(st.none(), st.integers(-3, 5)))
        batch.add_stream(name, draw(st.sampled_from(["", "%", "ug/m3"])),
                         draw(st.sampled_from(["gauge", "count", "rate"])), dec)
        samples = []
        for _ in range(draw(st.integers(0, 12))):
            t = draw(times)
            if draw(st.integers(0, 5)) == 0:
                fault = draw(st.one_of(st.integers(1, 0xFFFF), st.sampled_from(
                    ["timeout", "checksum", "stuck", "modbus_exception:0B"])))
                batch.add_measurement(name, t, None, fault)
                samples.append((t, None, fault_name(fault_code(fault))))
                continue
            if dec is None:
                value = draw(st.one_of(st.integers(-(2**63), 2**63 - 1),
                                       st.floats(allow_nan=False, allow_infinity=False)))
            else:
                bound = 2**50 / 10**dec
                value = draw(st.one_of(st.integers(int(-bound), int(bound)),
                                       st.floats(-bound, bound, allow_nan=False)))
            batch.add_measurement(name, t, value)
            samples.append((t, value, None))
        expected[name] = samples
    events = []
    for _ in range(draw(st.integers(0, 20))):
        ev = (draw(times), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
        batch.add_event(*ev)
        events.append(ev)
    return batch, {"node": node, "streams": expected, "events": events,
                   "decs": {n: s.dec for n, s in batch._streams.items()}}


def check_decoded(decoded: dict, expected: dict) -> None:
    assert decoded["node"] == expected["node"]
    got: dict[str, list] = {}
    for m in decoded["measurements"]:
        got.setdefault(m["stream"], []).append((m["t"], m["value"], m["fault"]))
    want = {name: samples for name, samples in expected["streams"].items() if samples}
    assert set(got) == set(want)
    for name, samples in want.items():
        # Samples come back sorted by time; ties keep their add order.
        samples = sorted(samples, key=lambda s: s[0])
        assert [s[0] for s in got[name]] == [s[0] for s in samples]
        assert [s[2] for s in got[name]] == [s[2] for s in samples]
        dec = expected["decs"][name]
        for (_, value, _), (_, want_value, _) in zip(got[name], samples):
            if want_value is None:
                assert value is None
            elif dec is None:
                assert value == want_value and type(value) is type(want_value)
            else:
                # round(v * 10**dec): half a unit of the last kept decimal, plus float rounding.
                tolerance = 0.5 * 10.0**-dec + abs(want_value) * 1e-15
                assert abs(value - want_value) <= tolerance, (name, dec, value, want_value)
    events = sorted(expected["events"], key=lambda e: e[0])
    assert [(e["t"], e["code"], e["param"]) for e in decoded["events"]] == events
    for e in decoded["events"]:
        assert e["name"] == EVENT_NAMES.get(e["code"])


@settings(max_examples=300, deadline=None)
@given(batches(), st.sampled_from([CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, CODEC_DICT, CODEC_AUTO,
                                    CODEC_AUTO_DICT]),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_round_trip(made: tuple[Batch, dict], codec: Any, gateway_boot: int, seq: int) -> None:
    batch, expected = made
    data = encode_batch(batch, gateway_boot, seq, codec)
    assert data == encode_batch(batch, gateway_boot, seq, codec)  # a re-send is byte-identical
    decoded = decode_batch(data)
    assert (decoded["gateway_boot"], decoded["seq"]) == (gateway_boot, seq)
    check_decoded(decoded, expected)
    # The JSON mode carries the same document; and it is JSON all the way (no NaN, no bytes).
    text = encode_batch_json(batch, gateway_boot, seq)
    assert json.loads(text) == dict(json.loads(batch_to_json(decoded)), codec="json")
    # The independent reference decoder agrees, and msgpack reads the body like msgpack_lite does.
    assert reference_decoder()(data) == project(decoded)


def test_auto_codec_picks_the_smaller() -> None:
    tiny = Batch("cab", 1)
    tiny.add_event(T0, 82, 1)
    assert encode_batch(tiny, 1, 1)[5] == CODEC_NONE
    assert len(encode_batch(tiny, 1, 1)) < len(encode_batch(tiny, 1, 1, CODEC_ZLIB))
    big = junction_batch(1)
    assert encode_batch(big, 1, 1)[5] == CODEC_ZLIB


def test_zlib_window_fits_the_body() -> None:
    # The zlib header's CINFO says how much RAM a decoder needs (RFC 1950 §2.2).
    small = encode_batch(build(VECTORS[0]["batch"]), 1, 1, CODEC_ZLIB)
    assert small[14] >> 4 == 1  # 2**9 window for a 212-byte body
    big = encode_batch(junction_batch(1), 1, 1, CODEC_ZLIB)
    assert 1 <= big[14] >> 4 <= 7


def test_decompression_bomb_is_refused() -> None:
    batch = Batch("n", 1, [("a", "", "gauge", 0)])
    for i in range(20000):
        batch.add_measurement("a", T0 + i, 0)
    for codec in (CODEC_ZLIB, CODEC_ZSTD, CODEC_DICT):
        data = encode_batch(batch, 1, 1, codec)
        assert decode_batch(data)["measurements"][-1]["t"] == T0 + 19999
        with pytest.raises(BatchFormatError, match="more than|at most"):
            decode_batch(data, max_body=1000)


DICTIONARY_SHA256 = "fc0acf0711c14e947d04e9e1c2fd3efb75ba700822a91a13fd831dd7006e0e78"


def test_the_codec_3_dictionary_is_frozen() -> None:
    # Codec 3 means these bytes for good: every deflate-dict payload ever published needs them.
    from protocols.batch_dictionary import DICTIONARY_1

    assert (len(DICTIONARY_1), hashlib.sha256(DICTIONARY_1).hexdigest()) == (863, DICTIONARY_SHA256)
    # And its builder says how it was made (its output may change with the profiles, the
    # dictionary may not: a new one would be a new codec number).
    out = subprocess.run([sys.executable, "-m", "citynerve.batch_dictionary_build"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("# ") and "DICTIONARY_1 = bytes.fromhex(" in out


def test_deflate_dict_is_a_raw_deflate_stream_with_the_preset_dictionary() -> None:
    from protocols.batch_dictionary import DICTIONARY_1

    batch = junction_batch(3)
    data = encode_batch(batch, 7, 9, CODEC_DICT)
    assert data[:6] == b"cnb1\x01\x03"
    body = zlib.decompressobj(-15, zdict=DICTIONARY_1).decompress(data[14:])
    assert body == encode_batch(batch, 7, 9, CODEC_NONE)[14:]
    # The dictionary is what makes it small: a junction batch shrinks well below plain zlib's.
    assert len(data) < 0.9 * len(encode_batch(batch, 7, 9, CODEC_ZLIB))
    # Even a lone event shrinks (plain zlib cannot: codec 0 goes out), and the auto choice is
    # the smaller of codec 3 and codec 0.
    tiny = Batch("cab", 1)
    tiny.add_event(T0, 82, 1)
    plain, primed = (len(encode_batch(tiny, 1, 1, c)) for c in (CODEC_NONE, CODEC_DICT))
    assert primed < plain and encode_batch(tiny, 1, 1, CODEC_AUTO)[5] == CODEC_NONE
    for b in (tiny, batch, Batch("n", 1)):
        auto = encode_batch(b, 1, 1, CODEC_AUTO_DICT)
        sizes = {c: len(encode_batch(b, 1, 1, c)) for c in (CODEC_NONE, CODEC_DICT)}
        assert len(auto) == min(sizes.values()) and sizes[auto[5]] == len(auto)


@pytest.mark.parametrize(("cut", "reason"), [
    (lambda d: d[:-1], "cut short"), (lambda d: d + b"\x00", "followed by extra bytes"),
    (lambda d: d[:14] + b"\xff" * 8, "does not decompress"), (lambda d: d[:14], "cut short")])
def test_a_broken_deflate_dict_body_is_a_format_error(cut: Any, reason: str) -> None:
    data = encode_batch(junction_batch(4), 1, 1, CODEC_DICT)
    with pytest.raises(BatchFormatError, match=reason) as info:
        decode_batch(cut(data))
    assert info.value.offset == 14


def test_deflate_dict_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # MicroPython's deflate takes no preset dictionary: there the codec is unavailable, said so.
    data = encode_batch(junction_batch(4), 1, 1, CODEC_DICT)
    monkeypatch.setattr(batch_cnb1, "_zlib", None)
    assert not batch_cnb1.codec_available(CODEC_DICT)
    with pytest.raises(BatchFormatError) as info:
        decode_batch(data)
    assert info.value.reason == "codec deflate-dict not available here"


def test_zstd_without_content_size_is_refused() -> None:
    import zstandard

    body = encode_batch(build(VECTORS[0]["batch"]), 1, 1, CODEC_NONE)[14:]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(body)
    with pytest.raises(BatchFormatError, match="content size"):
        decode_batch(b"cnb1" + struct.pack(">BBII", 1, 2, 1, 1) + frame)


def test_zstd_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_batch(build(VECTORS[0]["batch"]), 1, 1, CODEC_ZSTD)
    monkeypatch.setattr(batch_cnb1, "_zstd", None)
    with pytest.raises(BatchFormatError) as info:
        decode_batch(data)
    assert info.value.reason == "codec zstd not available here"
    with pytest.raises(BatchFormatError, match="not available"):
        encode_batch(Batch("n", 1), 1, 1, CODEC_ZSTD)


def test_decode_takes_any_buffer() -> None:
    data = bytes.fromhex(VECTORS[0]["hex"])
    assert decode_batch(bytearray(data)) == decode_batch(memoryview(data)) == decode_batch(data)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: b.add_measurement("nope", T0, 1), "not declared"),
        (lambda b: b.add_measurement("a", -1, 1), "t_ms"),
        (lambda b: b.add_measurement("a", 1.5, 1), "t_ms"),
        (lambda b: b.add_measurement("a", T0, float("nan")), "finite"),
        (lambda b: b.add_measurement("a", T0, float("inf")), "finite"),
        (lambda b: b.add_measurement("a", T0, "12"), "finite"),
        (lambda b: b.add_measurement("a", T0, 2**60), "2\\*\\*53"),
        (lambda b: b.add_measurement("raw", T0, 2**64), "64 bits"),
        (lambda b: b.add_measurement("a", T0, None, "melted"), "unknown fault"),
        (lambda b: b.add_measurement("a", T0, None, 0), "fault code"),
        (lambda b: b.add_event(T0, 256, 1), "event code"),
        (lambda b: b.add_event(T0, 1, -1), "event param"),
        (lambda b: b.add_stream("a", "V", "gauge", 0), "already declared"),
        (lambda b: b.add_stream("z", "", "gauge", 10), "dec"),
        (lambda b: modbus_fault(0), "Modbus exception"),
    ],
)
def test_builder_refuses_bad_input(call: Any, match: str) -> None:
    batch = Batch("n", 1, [("a", "", "gauge", 2), ("raw", "", "gauge", None)])
    with pytest.raises(ValueError, match=match):
        call(batch)


def test_header_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        encode_batch(Batch("n", 1), 2**32, 0)
    with pytest.raises(ValueError):
        encode_batch(Batch("n", 1), 0, -1)
    with pytest.raises(ValueError):
        encode_batch(Batch("n", 1), 0, 0, 7)


# ---------------------------------------------------------------------------------------------
# Size: a property of the format on a fixed data set (not a timing)

LOOP_STREAMS = [("volume", "veh", "count", 0), ("flow", "veh/h", "rate", 0),
                ("occupancy", "%", "gauge", 2), ("speed", "mph", "gauge", 1),
                ("headway", "s", "gauge", 2), ("gap", "s", "gauge", 2), ("length", "ft", "gauge", 1)]


def junction_batch(seed: int, seconds: int = 10, lanes: int = 2, loop_interval: bool = True) -> Batch:
    """A synthetic 10 s batch of a junction: loop measures of a 30 s interval that ends inside it
    (the profile's seven per lane), PM every 1-2 s (three streams per PMS5003 frame), CO2 every
    2-4 s, and detector on/off and phase events several times a second."""
    rng = random.Random(seed)
    streams = [(f"loop/{lane}/{name}", unit, kind, dec)
               for lane in range(1, lanes + 1) for name, unit, kind, dec in LOOP_STREAMS]
    streams += [(f"air/pm1/{n}", "ug/m3", "gauge", 0) for n in ("pm1_0", "pm2_5", "pm10")]
    streams += [("air/co2/co2_ppm", "ppm", "gauge", 0)]
    batch = Batch("cab-pico", 3, streams)
    start = T0 + seed * 10_000
    end = start + seconds * 1000
    if loop_interval:
        for lane in range(1, lanes + 1):
            volume = rng.randint(5, 15)
            values = [volume, volume * 120, rng.uniform(5, 25), rng.uniform(25, 45),
                      rng.uniform(1.5, 6), rng.uniform(1, 5), rng.uniform(14, 22)]
            for (name, *_), value in zip(LOOP_STREAMS, values):
                batch.add_measurement(f"loop/{lane}/{name}", start + 4000, value)
    t, pm = start + rng.randint(0, 900), [8, 12, 15]
    while t < end:
        for i, name in enumerate(("pm1_0", "pm2_5", "pm10")):
            pm[i] = max(0, pm[i] + rng.randint(-2, 2))
            batch.add_measurement(f"air/pm1/{name}", t, pm[i])
        t += rng.randint(1000, 2000)
    t, co2 = start + rng.randint(0, 2000), 415
    while t < end:
        co2 += rng.randint(-5, 5)
        batch.add_measurement("air/co2/co2_ppm", t, co2)
        t += rng.randint(2000, 4000)
    t = start
    while True:
        t += rng.randint(100, 600)
        if t >= end:
            break
        if rng.random() < 0.8:
            detector = rng.randint(1, 4)
            batch.add_event(t, 82, detector)
            batch.add_event(t + rng.randint(150, 400), 81, detector)
        else:  # phase changes seen by a 100 ms controller poll
            batch.add_event(t - t % 100 + rng.randint(0, 4), rng.choice((1, 8, 9, 10, 11)),
                            rng.choice((2, 4, 6, 8)))
    return batch


TOPIC = "citynerve/v1/demo-city/jn-main-1st/cab-pico/m"


def mqtt_publish_size(payload_len: int, topic: str = TOPIC) -> int:
    """Bytes on the wire of an MQTT 3.1.1 QoS 1 PUBLISH (§3.3): fixed header, topic, packet id."""
    remaining = 2 + len(topic) + 2 + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining


def per_reading_json(decoded: dict) -> list[bytes]:
    """Each reading as its own JSON message: the JSON mode's reading plus the node that made it."""
    rows = decoded["measurements"] + decoded["events"]
    return [json.dumps(dict(r, node=decoded["node"]), separators=(",", ":")).encode() for r in rows]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def sparkplug_payload(timestamp: int, seq: int, metrics: list[tuple[int, int, int, Any]]) -> bytes:
    """Sparkplug B Payload with aliased metrics (alias, timestamp, datatype, value), REFERENCE §7."""
    out = b"\x08" + _varint(timestamp)
    for alias, ts, datatype, value in metrics:
        m = b"\x10" + _varint(alias) + b"\x18" + _varint(ts) + b"\x20" + _varint(datatype)
        if datatype == 10:
            m += b"\x69" + struct.pack("<d", value)
        elif datatype == 9:
            m += b"\x65" + struct.pack("<f", value)
        else:
            m += b"\x50" + _varint(value & 0xFFFFFFFF)
        out += b"\x12" + _varint(len(m)) + m
    return out + b"\x18" + _varint(seq)


def test_sparkplug_model_matches_the_reference_vector() -> None:
    expected = bytes.fromhex(
        "08 80 d0 95 ff bc 31 12 14 10 01 18 80 d0 95 ff bc 31 20 0a 69 00 00 00 00 00 c8 79 40 12"
        " 0d 10 02 18 80 d0 95 ff bc 31 20 07 50 25 18 05")
    got = sparkplug_payload(1700000000000, 5, [(1, 1700000000000, 10, 412.5),
                                               (2, 1700000000000, 7, 37)])
    assert got == expected


def sparkplug_size(decoded: dict) -> int:
    aliases: dict[Any, int] = {}
    metrics = []
    for m in decoded["measurements"]:
        alias = aliases.setdefault(m["stream"], len(aliases) + 1)
        v = m["value"]
        # Int32 for whole numbers, Float (the smaller float type) otherwise: the kindest choice.
        metrics.append((alias, m["t"], 3, v) if isinstance(v, int) else (alias, m["t"], 9, v))
    for e in decoded["events"]:
        alias = aliases.setdefault(("event", e["code"]), len(aliases) + 1)
        metrics.append((alias, e["t"], 7, e["param"]))
    return len(sparkplug_payload(decoded["t0"], 0, metrics))


def test_size_of_a_junction_batch() -> None:
    batch = junction_batch(7)
    readings = len(batch)
    payload = encode_batch(batch, 1, 1, CODEC_ZLIB)
    decoded = decode_batch(payload)
    assert len(decoded["measurements"]) + len(decoded["events"]) == readings > 80
    per_reading = len(payload) / readings
    json_messages = per_reading_json(decoded)
    json_payload = sum(map(len, json_messages)) / readings
    json_wire = sum(mqtt_publish_size(len(m)) for m in json_messages) / readings
    cnb1_wire = mqtt_publish_size(len(payload)) / readings
    sparkplug = (sparkplug_size(decoded) + 0.0) / readings
    report = (f"{readings} readings: cnb1 {per_reading:.2f} B/reading (payload), "
              f"{cnb1_wire:.2f} on the wire; per-reading JSON {json_payload:.1f} payload, "
              f"{json_wire:.1f} wire; Sparkplug B aliased {sparkplug:.1f}")
    # On the wire (each per-reading JSON message is a PUBLISH of its own, DESIGN.md "Targets"):
    assert cnb1_wire * 20 < json_wire, report
    # Payload against payload, which leaves out the MQTT framing JSON pays per reading:
    assert per_reading * 15 < json_payload, report
    assert per_reading * 2.5 < sparkplug, report
    assert per_reading < 6.0, report
    # The columns, the shared time columns and the leaf templates do their part before zlib.
    assert len(encode_batch(batch, 1, 1, CODEC_NONE)) / readings < 8.0, report


def test_size_of_a_junction_stream() -> None:
    # A minute of the stream in 10 s batches: loop measures in one batch of three (30 s interval).
    sizes, readings, json_bytes = 0, 0, 0
    for k in range(6):
        batch = junction_batch(100 + k, loop_interval=k % 3 == 0)
        payload = encode_batch(batch, 1, k, CODEC_ZLIB)
        sizes += len(payload)
        readings += len(batch)
        json_bytes += sum(map(len, per_reading_json(decode_batch(payload))))
    assert sizes / readings < 5.5, sizes / readings
    assert sizes * 17 < json_bytes, json_bytes / sizes


def test_size_grows_slowly_with_lanes() -> None:
    # Lanes of one profile share their leaves: six more lanes cost little more than their values.
    two = len(encode_batch(junction_batch(9, lanes=2), 1, 1, CODEC_ZLIB))
    eight = len(encode_batch(junction_batch(9, lanes=8), 1, 1, CODEC_ZLIB))
    assert eight - two < 42 * 3.5, (two, eight)


# ---------------------------------------------------------------------------------------------
# Fuzzing: every malformed payload raises BatchFormatError and nothing else

SEEDS = [bytes.fromhex(c["hex"]) for c in VALID_VECTORS] + [
    encode_batch(junction_batch(2), 1, 2, CODEC_NONE),
    encode_batch(junction_batch(2), 1, 2, CODEC_ZLIB),
    encode_batch(junction_batch(2), 1, 2, CODEC_DICT),
]

SMALL_BODY = msgpack.unpackb(bytes.fromhex(VECTORS[0]["hex"])[14:])
LEAF_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(),
                        st.text(max_size=4), st.binary(max_size=4))
ANY_VALUE = st.recursive(LEAF_VALUES, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=2), c, max_size=4)), max_leaves=12)


@st.composite
def schema_mutants(draw: st.DrawFn) -> bytes:
    """The small body with one element somewhere replaced by any msgpack value: valid msgpack,
    usually not the schema."""
    body = json.loads(json.dumps(SMALL_BODY))
    node: Any = body
    path = []
    while isinstance(node, (list, dict)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append((node, key))
        node = node[key]
    replacement = draw(ANY_VALUE)
    if path:
        parent, key = path[-1]
        if draw(st.integers(0, 9)) == 0 and isinstance(parent, list):
            del parent[key]
        else:
            parent[key] = replacement
    else:
        body = replacement
    try:
        packed = msgpack.packb(body)
    except (OverflowError, ValueError):
        packed = b"\xc0"
    return b"cnb1" + struct.pack(">BBII", 1, 0, 1, 1) + packed


def decode_only_format_errors(data: bytes) -> None:
    try:
        decoded = decode_batch(data)
    except BatchFormatError as exc:
        assert exc.offset is None or 0 <= exc.offset <= len(data)
        return
    json.dumps(decoded, allow_nan=False)  # whatever decodes is plain JSON


FUZZ_INPUT = st.one_of(st.binary(max_size=80), mutated(SEEDS), schema_mutants(),
                       st.binary(max_size=60).map(lambda b: b"cnb1\x01" + b))


@fuzz_settings(DEFAULT_EXAMPLES)
@given(FUZZ_INPUT)
def test_fuzz_decode_batch(data: bytes) -> None:
    decode_only_format_errors(data)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(FUZZ_INPUT)
def test_fuzz_decode_batch_long(data: bytes) -> None:
    decode_only_format_errors(data)
