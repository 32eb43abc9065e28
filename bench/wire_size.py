"""Wire size: bytes per reading of cnb1 against per-reading JSON and Sparkplug B, same data, one run.

    .venv/bin/python bench/wire_size.py [--seconds 600] [--seed 7]
    .venv/bin/python bench/wire_size.py --live 120 [--event-window-ms 30000 --measurement-interval-s 30]

Data: the demo junction's readings (bench/demo_stream.py: loop measures every 30 s, PM every
1-2 s and every 1 s, CO2 every 4 s, about 3 controller and detector events a second), 10 minutes.

Batching as the gateway does it (gateway/batcher.py): per node and kind (measurements "m", events
"e"), a batch holds what arrived within its window of the first reading; each schedule below
names the two windows. The gateway's defaults are 10 s for measurements and 100 ms for events
(events must reach the brain fast); the other schedules show what longer windows buy.

Encodings of the same batches:
  cnb1 dict   what the gateway publishes by default, codec "deflate-dict" (CODEC_AUTO_DICT: deflate
              primed with protocols/batch_dictionary.py, or none when that does not shrink it);
              the ratios and verdicts are for this one
  cnb1 zlib   the same with codec "zlib" (plain RFC 1950, CODEC_AUTO); cnb1 zstd with "zstd"
  JSON        every reading as its own message: the JSON mode's reading plus "node", compact
              separators (decoded from the cnb1 batch, so it is the same data)
  Sparkplug B one DDATA payload per batch (REFERENCE.md §7, protobuf written here by hand and
              checked against the §7 vector): every metric aliased, with its own timestamp;
              whole numbers as Int32, decimals as Float (the smallest types that hold them);
              an event is a UInt32 metric (the parameter) aliased per event code. The births that
              carry names and aliases are not counted (kind to Sparkplug: cnb1 names its streams
              in every batch).
--live SECONDS runs the emulated demo junction instead (hil/scenarios/demo.toml: firmware, real
gateway with its config, mosquitto) and measures the batches the gateway really published, with
--event-window-ms / --measurement-interval-s to try other windows.

"On the wire" adds each message's MQTT 3.1.1 QoS 1 PUBLISH framing (fixed header, topic, packet
id): per batch for cnb1 and Sparkplug, per reading for JSON.

Targets (DESIGN.md): cnb1 >= 20x smaller than per-reading JSON and >= 4x smaller than Sparkplug B.

Floor: the fewest bytes any batch format with the DESIGN's header could use for the same batches,
to show what the windows alone allow: the 14-byte cnb1 header (magic, version, codec, batch id)
and a 6-byte base time per batch, then one byte per measurement (a value with no time) and two per
event (code and parameter, no time). No real encoding gets there; a ratio the floor misses is out
of reach of any body, and only longer windows (fewer batches) move it.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_stream import DemoStream, NodeStream, demo_junction  # noqa: E402

from protocols.batch_cnb1 import CODEC_AUTO, CODEC_AUTO_DICT, CODEC_ZSTD, HEADER_SIZE, Batch, codec_available, decode_batch, encode_batch  # noqa: E402

SITE, GATEWAY = "demo-city", "jn-main-1st"
FLOOR_BASE_TIME = 6  # UTC milliseconds fit 6 bytes until the year 10889
JSON_TARGET, SPARKPLUG_TARGET = 20.0, 4.0
# (label, measurement window ms, event window ms)
SCHEDULES = [
    ("defaults: m 10 s, e 100 ms", 10_000, 100),
    ("m 30 s, e 100 ms", 30_000, 100),
    ("m 10 s, e 10 s", 10_000, 10_000),
    ("m 30 s, e 30 s", 30_000, 30_000),
]

# -- Sparkplug B by hand (eclipse/tahu sparkplug_b.proto field numbers, REFERENCE.md §7) -----------

SPB_INT32, SPB_UINT32, SPB_FLOAT, SPB_DOUBLE = 3, 7, 9, 10
SPB_VECTOR = bytes.fromhex(
    "0880d095ffbc31 1214 1001 1880d095ffbc31 200a 690000000000c87940"
    " 120d 1002 1880d095ffbc31 2007 5025 1805".replace(" ", ""))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def sparkplug_metric(alias: int, timestamp: int, datatype: int, value: int | float) -> bytes:
    """Metric{alias=2, timestamp=3, datatype=4, value}: int_value=10 (uint32 varint) for the
    32-bit integer types, float_value=12 (fixed32), double_value=13 (fixed64)."""
    out = _key(2, 0) + _varint(alias) + _key(3, 0) + _varint(timestamp) + _key(4, 0) + _varint(datatype)
    if datatype == SPB_DOUBLE:
        return out + _key(13, 1) + struct.pack("<d", value)
    if datatype == SPB_FLOAT:
        return out + _key(12, 5) + struct.pack("<f", value)
    return out + _key(10, 0) + _varint(int(value) & 0xFFFFFFFF)


def sparkplug_payload(timestamp: int, seq: int, metrics: Iterable[bytes]) -> bytes:
    """Payload{timestamp=1, metrics=2 (repeated, length-delimited), seq=3}."""
    out = _key(1, 0) + _varint(timestamp)
    for metric in metrics:
        out += _key(2, 2) + _varint(len(metric)) + metric
    return out + _key(3, 0) + _varint(seq)


def check_sparkplug_vector() -> None:
    got = sparkplug_payload(1700000000000, 5, [
        sparkplug_metric(1, 1700000000000, SPB_DOUBLE, 412.5),
        sparkplug_metric(2, 1700000000000, SPB_UINT32, 37)])
    if got != SPB_VECTOR or len(got) != 46:
        raise SystemExit(f"the Sparkplug B encoder does not reproduce REFERENCE.md §7's vector:\n"
                         f"  got  {got.hex(' ')}\n  want {SPB_VECTOR.hex(' ')}")


# -- batches ----------------------------------------------------------------------------------------


def windows(times: Sequence[int], window_ms: int) -> list[tuple[int, int]]:
    """[start, end) index ranges: a batch holds what arrived within window_ms of its first."""
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(times):
        j = i
        while j < len(times) and times[j] < times[i] + window_ms:
            j += 1
        out.append((i, j))
        i = j
    return out


def batches(node: NodeStream, m_window_ms: int, e_window_ms: int) -> list[tuple[str, Batch]]:
    """("m" | "e", Batch) in seal order, built as gateway/batcher.py _seal_chunk builds them."""
    info = {s.name: s for s in node.streams}
    out: list[tuple[int, str, Batch]] = []
    ms = node.measurements
    for i, j in windows([r.t_ms for r in ms], m_window_ms):
        batch = Batch(node.node, 3)
        for r in ms[i:j]:
            s = info[r.stream]
            batch.add_stream(s.name, s.unit, s.kind, s.dec)
            batch.add_measurement(r.stream, r.t_ms, r.value)
        out.append((ms[i].t_ms, "m", batch))
    es = node.events
    for i, j in windows([e[0] for e in es], e_window_ms):
        batch = Batch(node.node, 3)
        for t, code, param in es[i:j]:
            batch.add_event(t, code, param)
        out.append((es[i][0], "e", batch))
    out.sort(key=lambda item: item[0])
    return [(kind, batch) for _, kind, batch in out]


def publish_size(topic: str, payload_len: int) -> int:
    """MQTT 3.1.1 PUBLISH, QoS 1 (§3.3): fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode()) + 2 + payload_len
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2**21 else 4
    return 1 + length_bytes + remaining


@dataclass
class Sizes:
    readings: int = 0
    batches: int = 0
    cnb1_dict: int = 0
    cnb1_zlib: int = 0
    cnb1_zstd: int = 0
    json: int = 0
    sparkplug: int = 0
    wire_cnb1_dict: int = 0
    wire_cnb1_zlib: int = 0
    wire_cnb1_zstd: int = 0
    wire_json: int = 0
    wire_sparkplug: int = 0
    floor: int = 0


def add_baselines(sizes: Sizes, node: str, decoded: dict[str, Any], topic: str, spb_topic: str,
                  aliases: dict[Any, int], spb_seq: int) -> None:
    """The same readings as per-reading JSON messages and as one aliased Sparkplug B DDATA."""
    for row in decoded["measurements"] + decoded["events"]:
        message = json.dumps(dict(row, node=node), separators=(",", ":")).encode()
        sizes.json += len(message)
        sizes.wire_json += publish_size(topic, len(message))
    metrics = []
    for m in decoded["measurements"]:
        alias = aliases.setdefault(m["stream"], len(aliases) + 1)
        whole = isinstance(m["value"], int)
        metrics.append(sparkplug_metric(alias, m["t"], SPB_INT32 if whole else SPB_FLOAT, m["value"]))
    for e in decoded["events"]:
        alias = aliases.setdefault(("event", e["code"]), len(aliases) + 1)
        metrics.append(sparkplug_metric(alias, e["t"], SPB_UINT32, e["param"]))
    spb = sparkplug_payload(decoded["t0"], spb_seq, metrics)
    sizes.sparkplug += len(spb)
    sizes.wire_sparkplug += publish_size(spb_topic, len(spb))


def measure(stream: DemoStream, m_window_ms: int, e_window_ms: int) -> dict[str, Sizes]:
    """Sizes of every batch of the schedule: "all", and per kind "m" and "e"."""
    out = {"all": Sizes(), "m": Sizes(), "e": Sizes()}
    seq = 0
    zstd = codec_available(CODEC_ZSTD)
    for node in stream.nodes.values():
        aliases: dict[Any, int] = {}
        spb_topic = f"spBv1.0/{SITE}/DDATA/{GATEWAY}/{node.node}"
        spb_seq = 0
        for kind, batch in batches(node, m_window_ms, e_window_ms):
            seq += 1
            sizes = Sizes()
            topic = f"citynerve/v1/{SITE}/{GATEWAY}/{node.node}/{kind}"
            payload = encode_batch(batch, 1_750_000_000, seq, CODEC_AUTO)
            decoded = decode_batch(payload)
            rows = decoded["measurements"] + decoded["events"]
            assert len(rows) == len(batch), "cnb1 round trip lost readings"
            sizes.readings += len(rows)
            sizes.floor += (HEADER_SIZE + FLOOR_BASE_TIME + len(decoded["measurements"])
                            + 2 * len(decoded["events"]))
            sizes.batches += 1
            sizes.cnb1_zlib += len(payload)
            sizes.wire_cnb1_zlib += publish_size(topic, len(payload))
            primed = encode_batch(batch, 1_750_000_000, seq, CODEC_AUTO_DICT)
            again = decode_batch(primed)
            assert again == dict(decoded, codec=again["codec"]), "deflate-dict changed the batch"
            sizes.cnb1_dict += len(primed)
            sizes.wire_cnb1_dict += publish_size(topic, len(primed))
            if zstd:
                z = encode_batch(batch, 1_750_000_000, seq, CODEC_ZSTD)
                sizes.cnb1_zstd += len(z)
                sizes.wire_cnb1_zstd += publish_size(topic, len(z))
            add_baselines(sizes, node.node, decoded, topic, spb_topic, aliases, spb_seq)
            spb_seq = (spb_seq + 1) % 256
            for total in (out["all"], out[kind]):
                for name, value in vars(sizes).items():
                    setattr(total, name, getattr(total, name) + value)
    return out


def table(rows: list[tuple[str, dict[str, Sizes]]], *, wire: bool) -> list[str]:
    p = "wire_" if wire else ""
    head = (f"{'schedule':28} {'readings':>8} {'batches':>7} {'cnb1 dict':>9} {'cnb1 zlib':>9} "
            f"{'cnb1 zstd':>9} {'JSON':>7} {'SpB':>6} {'JSON/cnb1':>9} {'SpB/cnb1':>8}")
    out = [head, "-" * len(head)]
    for label, kinds in rows:
        for kind, name in (("all", label), ("m", "  of which measurements"), ("e", "  of which events")):
            s = kinds[kind]
            per = lambda n: n / s.readings  # noqa: E731
            primed = per(getattr(s, p + "cnb1_dict"))
            zlib = per(getattr(s, p + "cnb1_zlib"))
            zstd = per(getattr(s, p + "cnb1_zstd")) if s.cnb1_zstd else float("nan")
            js, spb = per(getattr(s, p + "json")), per(getattr(s, p + "sparkplug"))
            out.append(f"{name:28} {s.readings:8} {s.batches:7} {primed:9.2f} {zlib:9.2f} {zstd:9.2f} "
                       f"{js:7.1f} {spb:6.2f} {js / primed:8.1f}x {spb / primed:7.2f}x")
    return out


def verdict(label: str, s: Sizes, *, wire: bool) -> str:
    p = "wire_" if wire else ""
    primed = getattr(s, p + "cnb1_dict")
    vs_json = getattr(s, p + "json") / primed
    vs_spb = getattr(s, p + "sparkplug") / primed
    ok = lambda x, t: "meets" if x >= t else "MISSES"  # noqa: E731
    return (f"{label} ({'wire' if wire else 'payload'}): {vs_json:.1f}x vs JSON ({ok(vs_json, JSON_TARGET)} "
            f">= {JSON_TARGET:g}x), {vs_spb:.2f}x vs Sparkplug B ({ok(vs_spb, SPARKPLUG_TARGET)} "
            f">= {SPARKPLUG_TARGET:g}x)")


def floor_verdict(label: str, s: Sizes) -> str:
    vs_json, vs_spb = s.json / s.floor, s.sparkplug / s.floor
    reach = "both targets" if vs_json >= JSON_TARGET and vs_spb >= SPARKPLUG_TARGET else "NOT both targets"
    return (f"{label} (payload floor {s.floor / s.readings:.2f} B/reading): at best {vs_json:.1f}x vs JSON, "
            f"{vs_spb:.2f}x vs Sparkplug B; these windows allow {reach}")


def measure_published(payloads: Sequence[tuple[str, str, bytes]]) -> dict[str, Sizes]:
    """Sizes of batches a running gateway published (node, "m" | "e", payload), as they are: the
    cnb1 columns hold the payloads themselves (the gateway's codec), the baselines as above."""
    out = {"all": Sizes(), "m": Sizes(), "e": Sizes()}
    aliases: dict[str, dict[Any, int]] = {}
    for seq, (node, kind, payload) in enumerate(payloads):
        decoded = decode_batch(payload)
        sizes = Sizes(readings=len(decoded["measurements"]) + len(decoded["events"]), batches=1)
        topic = f"citynerve/v1/{SITE}/{GATEWAY}/{node}/{kind}"
        sizes.cnb1_dict = len(payload)  # the gateway's codec, whichever it is configured with
        sizes.wire_cnb1_dict = publish_size(topic, len(payload))
        sizes.floor = HEADER_SIZE + FLOOR_BASE_TIME + len(decoded["measurements"]) + 2 * len(decoded["events"])
        add_baselines(sizes, node, decoded, topic, f"spBv1.0/{SITE}/DDATA/{GATEWAY}/{node}",
                      aliases.setdefault(node, {}), seq % 256)
        for total in (out["all"], out[kind]):
            for name, value in vars(sizes).items():
                setattr(total, name, getattr(total, name) + value)
    return out


def live(seconds: float, event_window_ms: int | None, measurement_interval_s: float | None) -> None:
    """Run the demo junction (hil/scenarios/demo.toml, real gateway, mosquitto) and measure what
    the gateway published."""
    import asyncio
    import tempfile

    from hil.junction import run_scenario
    from hil.scenario import load_scenario

    scenario = load_scenario("demo")
    gateway = dict(scenario.gateway)
    if event_window_ms is not None:
        gateway["event_window_ms"] = event_window_ms
    if measurement_interval_s is not None:
        gateway["measurement_interval_s"] = measurement_interval_s
    scenario = scenario.with_changes(duration_s=seconds, gateway=gateway)
    with tempfile.TemporaryDirectory(prefix="citynerve-wire-") as folder:
        result = asyncio.run(run_scenario(scenario, workdir=Path(folder)))
    sizes = measure_published(result.payloads)
    windows_of = (f"event window {gateway.get('event_window_ms', 'default')} ms, measurement interval "
                  f"{gateway.get('measurement_interval_s', 'default')} s")
    print(f"demo junction run live for {seconds:g} s ({windows_of}): {len(result.payloads)} batches "
          f"as published, {sizes['all'].readings} readings; accounting "
          + ("clean" if result.ok else "; ".join(result.accounting.violations(scenario.expect))))
    for kind, name in (("all", "published stream"), ("m", "  measurements"), ("e", "  events")):
        s = sizes[kind]
        if s.readings:
            print(f"{name:20} cnb1 {s.cnb1_dict / s.readings:6.2f} B/reading, JSON {s.json / s.readings:6.1f}, "
                  f"Sparkplug B {s.sparkplug / s.readings:6.2f}: {s.json / s.cnb1_dict:5.1f}x, "
                  f"{s.sparkplug / s.cnb1_dict:5.2f}x")
    print(verdict("live", sizes["all"], wire=False))
    print(verdict("live", sizes["all"], wire=True))
    print(floor_verdict("live", sizes["all"]))


def run(seconds: int, seed: int) -> dict[str, dict[str, Sizes]]:
    check_sparkplug_vector()
    stream = demo_junction(seconds=seconds, seed=seed)
    return {label: measure(stream, m, e) for label, m, e in SCHEDULES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="length of the stream (600)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--live", type=float, metavar="SECONDS",
                        help="instead: run the emulated demo junction this long and measure the "
                             "batches its gateway really published")
    parser.add_argument("--event-window-ms", type=int, help="with --live: the gateway's event window")
    parser.add_argument("--measurement-interval-s", type=float,
                        help="with --live: the gateway's measurement interval")
    args = parser.parse_args(argv)
    if args.live:
        live(args.live, args.event_window_ms, args.measurement_interval_s)
        return
    check_sparkplug_vector()
    stream = demo_junction(seconds=args.seconds, seed=args.seed)
    results = {label: measure(stream, m, e) for label, m, e in SCHEDULES}
    print(f"demo junction, {args.seconds} s: {stream.readings} readings "
          + ", ".join(f"{n.node} {n.readings}" for n in stream.nodes.values())
          + "; Sparkplug B encoder reproduces REFERENCE.md §7's 46-byte vector")
    rows = list(results.items())
    print("\nbytes per reading, payload only")
    print("\n".join(table(rows, wire=False)))
    print("\nbytes per reading on the wire (MQTT 3.1.1 QoS 1 PUBLISH per message)")
    print("\n".join(table(rows, wire=True)))
    print()
    for label, kinds in rows:
        print(verdict(label, kinds["all"], wire=False))
        print(verdict(label, kinds["all"], wire=True))
    print()
    for label, kinds in rows:
        print(floor_verdict(label, kinds["all"]))


if __name__ == "__main__":
    main()
