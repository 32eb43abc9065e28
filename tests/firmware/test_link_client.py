"""The node side of the node link, end to end under both runtimes: a node process (CPython with the
host HAL, or the MicroPython VM) runs firmware/link_client.py against tests/firmware/link_peer.py,
a gateway built only from protocols/, on a loopback TCP port.

The node script has one stand-in device, "probe", whose "mode" command plays readings at the
absolute ticks the test names (the node's ticks are the host's monotonic clock), so the test knows
exactly which readings, with which ticks, must arrive in DATA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware.link_client import split_data
from hil.firmware_process import RUNTIMES, firmware_command
from protocols.link_frame import CMD, DATA, HEALTH, HELLO, encode_frame
from protocols.link_messages import encode_message
from protocols.ticks import ticks_add
from hil.link_peer import LinkPeer, host_tick, utc_ms

SCRIPT = """
import asyncio
import json
from firmware import hal_host as hal
from firmware.clock import GatewayClock
from firmware.link_client import LinkClient
from firmware.node_context import NodeContext
from firmware.outbox import Outbox
from firmware.streams import StreamTable


class Probe:
    # A stand-in device driver: plays the readings the test asks for at the ticks it names.
    def __init__(self, node):
        self.node = node
        self.sid = node.streams.add("probe/value", "u", "gauge", 1)
        self.lsid = node.streams.add("probe/level", "dB", "gauge", None)
        self.counters = {"ok": 0, "timeouts": 0}
        self.last_fault = None

    async def command(self, op, args):
        if op == "mode" and "stream" in args:
            self.node.streams.add(args["stream"], "", "count", None)
            return True, "probe added a stream"
        if op == "mode" and "at" in args:
            asyncio.create_task(self.play(args["at"], args["items"]))
            return True, "probe plays %d readings" % len(args["items"])
        return True, "probe %s ok" % op

    async def play(self, at, items):
        for off, kind, a, b in items:
            tick = hal.ticks_add(at, off)
            wait = hal.ticks_diff(tick, hal.ticks_ms())
            if wait > 0:
                await asyncio.sleep(wait / 1000)
            if kind == "s":
                self.node.sample(self.sid, a, tick_ms=tick)
            elif kind == "f":
                self.node.sample(self.lsid, None, fault=a, detail=b, tick_ms=tick)
            else:
                self.node.event(a, b, tick_ms=tick)
            self.counters["ok"] += 1


async def main(cfg):
    hal.configure(cfg["host"])
    await hal.start()
    node = NodeContext(hal, cfg, StreamTable(), Outbox(), GatewayClock(hal.ticks_ms))
    probe = Probe(node)
    client = LinkClient(node, cfg["link"], "test-fw", "cfg0123", devices={"probe": probe})
    await client.run()
"""

STREAMS = [[0, "probe/value", "u", "gauge", 1], [1, "probe/level", "dB", "gauge", None]]
DETECTOR_ON, DETECTOR_OFF = 82, 81


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("link_mpy")


class Node:
    """The node process; its output is kept for failure messages."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.out.append(line.decode(errors="replace").rstrip())

    def output(self) -> str:
        return "\n".join(self.out[-60:])

    async def wait_exit(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)


@contextlib.asynccontextmanager
async def node_process(runtime: str, build_dir: Path, peer: LinkPeer,
                       **link: int | None) -> AsyncIterator[Node]:
    settings = {"transport": "tcp", "flush_ms": 200, "event_flush_ms": 20, "ack_timeout_ms": 400,
                "hello_ms": 300, "health_s": 3600, "backoff_ms": 50, "backoff_max_ms": 200}
    settings.update(link)
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the firmware default
    cfg = {"node": "test-node", "interval_s": 30, "link": settings, "host": {"link": peer.address}}
    argv, env, cwd = firmware_command(runtime, SCRIPT, "main(json.loads(%r))" % json.dumps(cfg),
                                      build_dir=build_dir)
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    node = Node(proc)
    assert proc.stdout is not None
    drain = asyncio.create_task(node.drain(proc.stdout))
    try:
        yield node
    except BaseException:
        print(f"--- node output ({runtime}) ---\n{node.output()}")
        raise
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await drain


async def hello_acked(peer: LinkPeer) -> dict:
    """Wait for the node's HELLO to be accepted and acknowledged; returns the HELLO message."""
    def acked() -> bool:
        hellos = peer.of_type(HELLO, new=True)
        return bool(hellos and peer.acks and peer.acks[-1]["seq"] >= hellos[0].seq)

    await peer.wait_for(acked, "an acknowledged HELLO")
    return peer.of_type(HELLO)[0].message


def events(readings: list[tuple]) -> list[tuple]:
    return [r for r in readings if r[0] == "e"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_hello_data_health_and_clock(runtime: str, build_dir: Path) -> None:
    async with LinkPeer(ack_mode="withhold") as peer, node_process(runtime, build_dir, peer,
                                                                   health_s=1) as node:
        # HELLO is repeated, as a retransmission (same seq), until it is acknowledged.
        await peer.wait_for(lambda: len(peer.of_type(HELLO)) >= 2, "a repeated HELLO")
        first, again = peer.of_type(HELLO)[:2]
        assert first.seq == again.seq == 1
        hello = first.message
        assert again.message["boot"] == hello["boot"]
        assert (hello["node"], hello["fw"], hello["cfg"]) == ("test-node", "test-fw", "cfg0123")
        assert hello["streams"] == STREAMS and hello["errors"] == [] and hello["lo"] == 1
        peer.ack_mode = "auto"
        peer.send_ack()

        # Readings played at known ticks arrive in order, with exact ticks (t0 + dt).
        at = ticks_add(host_tick(), 150)
        items = [[40 * i, "s", i * 10, 0] for i in range(12)]
        items += [[15, "e", DETECTOR_ON, 1], [95, "e", DETECTOR_OFF, 1], [300, "e", DETECTOR_ON, 2],
                  [301, "e", DETECTOR_OFF, 2], [200, "f", 1, 7]]
        items.sort(key=lambda item: item[0])
        result = await peer.command("mode", {"device": "probe", "at": at, "items": items})
        assert result["ok"], result
        await peer.wait_for(lambda: len(peer.readings()) == len(items), "every reading")
        got = peer.readings()
        expected_samples = [("s", 0, ticks_add(at, 40 * i), i * 10, None, None) for i in range(12)]
        assert [r for r in got if r[0] == "s" and r[1] == 0] == expected_samples
        faulted = [("s", 1, ticks_add(at, 200), None, 1, 7)]
        assert [r for r in got if r[0] == "s" and r[1] == 1] == faulted
        assert events(got) == [("e", ticks_add(at, off), code, param)
                               for off, kind, code, param in items if kind == "e"]
        seqs = [seq for seq, _ in peer.data_messages()]
        assert len(seqs) >= 2 and seqs == sorted(set(seqs))

        # HEALTH comes by itself every health_s, with the probe's counters.
        await peer.wait_for(lambda: peer.of_type(HEALTH, new=True), "a periodic HEALTH")
        health = peer.of_type(HEALTH, new=True)[-1].message
        assert health["dev"]["probe"]["last_fault"] is None and "ok" in health["dev"]["probe"]
        assert health["loss"]["ring_overflow"] == 0 and health["errors"] == []

        # The gateway clock learnt from the ACKs is within a few ms of the peer's UTC.
        diag = (await peer.command("diagnostics"))["data"]
        assert diag["hello_pending"] is False and diag["connected"] is True
        truth = utc_ms() - host_tick()
        assert abs(diag["utc_offset"] - truth) <= 15, (diag["utc_offset"], truth)
        assert diag["boot"] == hello["boot"] and diag["bad_frames_in"] == 0
        assert node.proc.returncode is None


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_withheld_acks_resend_same_frames_until_acked(runtime: str, build_dir: Path) -> None:
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer, ack_timeout_ms=250):
        await hello_acked(peer)
        peer.ack_mode = "withhold"
        at = host_tick()
        items = [[0, "e", DETECTOR_ON, 3], [60, "e", DETECTOR_OFF, 3], [120, "s", 5, 0]]
        assert (await peer.command("mode", {"device": "probe", "at": at, "items": items}))["ok"]

        def resent() -> list[int]:
            seen: dict[int, int] = {}
            for r in peer.of_type(DATA):
                seen[r.seq] = seen.get(r.seq, 0) + 1
            return [seq for seq, n in seen.items() if n >= 2]

        await peer.wait_for(lambda: len(peer.readings()) == 3 and len(resent()) >= 2, "resent DATA")
        for seq in resent():
            copies = {r.payload for r in peer.of_type(DATA) if r.seq == seq}
            assert len(copies) == 1, "a resend must be the same frame"
            assert sum(r.new for r in peer.of_type(DATA) if r.seq == seq) == 1, "one copy is new"

        # One cumulative ACK empties the ring: nothing is left to resend.
        peer.ack_mode = "auto"
        peer.send_ack()
        acked = peer.floor
        diag = (await peer.command("diagnostics"))["data"]
        assert diag["unacked"] == 0 and diag["acked_seq"] == acked and diag["resent"] >= 2
        mark = len(peer.frames)
        await peer.command("ping")
        assert all(r.seq > acked for r in peer.frames[mark:]), "an acknowledged frame was resent"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_ring_overflow_loses_oldest_and_counts_it(runtime: str, build_dir: Path) -> None:
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer, ring_slots=4,
                                                ack_timeout_ms=300):
        await hello_acked(peer)
        peer.ack_mode = "drop"
        items = [[100 * i, "e", DETECTOR_ON, i] for i in range(12)]
        peer.send_command("mode", {"device": "probe", "at": host_tick(), "items": items})
        def dropped_events() -> list[int]:
            return [r[3] for r in events(peer.readings(peer.of_type(DATA, dropped=True)))]

        await peer.wait_for(lambda: 11 in dropped_events(), "the last event, dropped")
        sent = {r.seq for r in peer.frames if r.dropped}
        assert len({r.seq for r in peer.of_type(DATA, dropped=True)}) > 4, "too few frames to overflow"

        peer.ack_mode = "auto"
        await peer.wait_for(lambda: any(r[3] == 11 for r in events(peer.readings())), "the last event")
        assert (await peer.command("health"))["ok"]
        await peer.wait_for(lambda: peer.of_type(HEALTH, new=True), "the HEALTH asked for")
        loss = peer.of_type(HEALTH, new=True)[-1].message["loss"]

        lost = sent - {r.seq for r in peer.frames if r.new}
        assert lost and loss["ring_overflow"] == len(lost)
        assert max(lost) < min(sent - lost), "the oldest frames go first"
        arrived = [r[3] for r in events(peer.readings())]
        assert arrived == list(range(12 - len(arrived), 12)), "the newest events survive, in order"
        assert loss["resent"] >= 1 and loss["outbox_dropped"] == 0
        # "lo" let the peer's cumulative ACK move past the gap: nothing is left unacknowledged.
        diag = (await peer.command("diagnostics"))["data"]
        assert diag["unacked"] == 0 and diag["ring_overflow"] == len(lost)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_reconnect_resends_hello_then_unacked_frames(runtime: str, build_dir: Path) -> None:
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer, ack_timeout_ms=5000):
        hello = await hello_acked(peer)
        peer.ack_mode = "withhold"
        items = [[0, "e", DETECTOR_ON, 4], [50, "e", DETECTOR_OFF, 4], [100, "e", DETECTOR_ON, 5]]
        await peer.command("mode", {"device": "probe", "at": host_tick(), "items": items})
        await peer.wait_for(lambda: len(peer.readings()) == 3, "the events")
        acked = peer.acks[-1]["seq"]  # the last ACK the node got
        unacked = sorted({r.seq for r in peer.frames if r.conn == 1 and r.seq > acked})
        assert unacked

        await peer.disconnect()
        peer.ack_mode = "auto"
        await peer.wait_for(lambda: {r.seq for r in peer.frames if r.conn == 2} >= set(unacked),
                            "the unacknowledged frames on the new connection")
        second = [r for r in peer.frames if r.conn == 2]
        assert second[0].type == HELLO and second[0].message["boot"] == hello["boot"]
        assert second[0].seq > max(unacked) and second[0].message["lo"] == unacked[0]
        assert second[0].message["streams"] == STREAMS
        assert [r.seq for r in second[1:1 + len(unacked)]] == unacked, "resent in order after HELLO"
        first_copy = {r.seq: r.payload for r in peer.frames if r.conn == 1}
        assert all(r.payload == first_copy[r.seq] for r in second[1:1 + len(unacked)])
        diag = (await peer.command("diagnostics"))["data"]
        assert diag["connects"] == 2 and diag["unacked"] == 0 and diag["hello_pending"] is False


def _corrupt(frame: bytes) -> bytes:
    """Flip bits of one byte in the middle of an encoded frame, never into a delimiter."""
    out = bytearray(frame)
    i = len(out) // 2
    out[i] ^= 0x41 if out[i] ^ 0x41 else 0x42
    return bytes(out)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_bad_input_is_counted_and_commands_are_answered(runtime: str, build_dir: Path) -> None:
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer) as node:
        await hello_acked(peer)
        ping = encode_frame(CMD, 7, encode_message(CMD, {"id": 99, "op": "ping", "args": {}}))
        await peer.send_raw(b"\x00this is not a frame\x00")  # garbage
        await peer.send_raw(_corrupt(ping))  # a CRC that does not match
        await peer.send_raw(encode_frame(CMD, 8, b"\xc1"))  # good frame, not msgpack
        await peer.send_raw(encode_frame(DATA, 9, encode_message(DATA, {"tick": 0, "t0": 0, "m": []})))
        peer.send_ack(seq=10**6)  # acknowledges a frame never sent
        result = await peer.command("ping")
        assert result["ok"] and result["msg"] == "pong" and isinstance(result["data"]["tick"], int)
        assert 99 not in peer.results, "the corrupted ping must not run"
        diag = (await peer.command("diagnostics"))["data"]
        assert (diag["bad_frames_in"], diag["unexpected_in"], diag["bad_acks"]) == (3, 1, 1), diag
        rx = diag["rx"]
        assert rx.get("bad_crc", 0) + rx.get("bad_cobs", 0) + rx.get("short", 0) == 2, rx

        for args in ({"interval_s": 2}, {"interval_s": 3601}, {"interval_s": True},
                     {"interval_s": "60"}, {}):
            answer = await peer.command("set_interval", args)
            assert answer["ok"] is False and "set_interval" in answer["msg"], (args, answer)
        answer = await peer.command("set_interval", {"interval_s": 60})
        assert answer["ok"] and answer["data"] == {"interval_s": 60}
        assert (await peer.command("diagnostics"))["data"]["interval_s"] == 60
        answer = await peer.command("frobnicate", {"x": 1})
        assert answer["ok"] is False and answer["msg"] == "unknown command op 'frobnicate'"
        answer = await peer.command("mode", {"device": "probe", "value": "eco"})
        assert answer["ok"] and answer["msg"] == "probe mode ok"
        answer = await peer.command("sleep", {"device": "nope"})
        assert answer["ok"] is False and "nope" in answer["msg"]

        # A stream declared late is announced in a new HELLO (a new seq: the first was acknowledged).
        assert (await peer.command("mode", {"device": "probe", "stream": "probe/extra"}))["ok"]
        await peer.wait_for(lambda: len(peer.of_type(HELLO, new=True)) == 2, "a second HELLO")
        second = peer.of_type(HELLO, new=True)[1]
        assert second.seq > 1
        assert second.message["streams"] == STREAMS + [[2, "probe/extra", "", "count", None]]
        assert (await peer.command("diagnostics"))["data"]["hello_pending"] is False

        assert (await peer.command("health"))["ok"]
        await peer.wait_for(lambda: peer.of_type(HEALTH, new=True), "the HEALTH asked for")
        health = peer.of_type(HEALTH, new=True)[-1].message
        assert health["dev"] == {"probe": {"ok": 0, "timeouts": 0, "last_fault": None}}
        assert health["loss"]["bad_frames_in"] == 3 and health["errors"] == []
        assert health["uptime_ms"] > 0 and isinstance(health["heap_free"], int)

        # reboot: the RESULT first, then the node resets (the host HAL exits with code 75).
        cid = peer.send_command("reboot")
        await peer.wait_for(lambda: peer.results.get(cid), "the reboot RESULT")
        assert peer.results[cid]["ok"] and peer.results[cid]["msg"] == "rebooting"
        assert await node.wait_exit() == 75
        assert any("reset: command" in line for line in node.out)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_batches_too_big_for_a_frame_are_split_in_order(runtime: str, build_dir: Path) -> None:
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer, frame_max=256,
                                                rx_max_payload=1024, flush_ms=2000,
                                                event_flush_ms=300):
        await hello_acked(peer)
        # 40 float samples and 10 events inside one debounce window: one outbox, several frames.
        items = [[i, "s", i + 0.25, 0] for i in range(40)]
        items += [[i, "e", DETECTOR_ON, i] for i in range(10)]
        items.sort(key=lambda item: item[0])
        at = ticks_add(host_tick(), 100)
        assert (await peer.command("mode", {"device": "probe", "at": at, "items": items}))["ok"]
        await peer.wait_for(lambda: len(peer.readings()) == len(items), "every reading")
        got = peer.readings()
        assert [r for r in got if r[0] == "s"] == [("s", 0, ticks_add(at, i), i + 0.25, None, None)
                                                 for i in range(40)]
        assert events(got) == [("e", ticks_add(at, i), DETECTOR_ON, i) for i in range(10)]
        frames = peer.of_type(DATA, new=True)
        assert len(frames) >= 3 and all(len(r.payload) + 10 < 256 for r in frames)
        assert len({r.message["t0"] for r in frames}) == 1, "the halves of one batch share t0"
        # An answer too big for a frame still goes, without its data.
        answer = await peer.command("diagnostics")
        assert answer["ok"] and answer["msg"] == "diagnostics (its data did not fit a frame)"
        assert "data" not in answer


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_events_leave_at_once_and_a_burst_together(runtime: str, build_dir: Path) -> None:
    """The default event flush (0 ms): a driver step's events go in one DATA frame at the
    writer's next pass; an event a moment later goes in the next frame."""
    async with LinkPeer() as peer, node_process(runtime, build_dir, peer, event_flush_ms=None,
                                                flush_ms=5000):
        await hello_acked(peer)
        peer.of_type(DATA, new=True)
        items = [[0, "e", DETECTOR_ON, ch] for ch in range(1, 5)] + [[300, "e", DETECTOR_ON, 9]]
        at = ticks_add(host_tick(), 100)
        assert (await peer.command("mode", {"device": "probe", "at": at, "items": items}))["ok"]
        await peer.wait_for(lambda: len(peer.readings()) == len(items), "every event")
        frames = [f for f in peer.of_type(DATA, new=True) if f.message.get("e")]
        assert [[f.message["e"][i + 2] for i in range(0, len(f.message["e"]), 3)]
                for f in frames] == [[1, 2, 3, 4], [9]]


# (sid, dt, fault code or None)
readings = st.lists(st.tuples(st.integers(0, 5), st.integers(-5, 5000),
                              st.one_of(st.none(), st.integers(0, 9))), max_size=30)
# (dt, code, param)
event_lists = st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 255), st.integers(0, 255)),
                       max_size=30)


@settings(max_examples=200, deadline=None)
@given(samples=readings, evs=event_lists)
def test_split_data_keeps_every_reading_in_order(samples: list[tuple], evs: list[tuple]) -> None:
    m, f = [], []
    for n, (sid, dt, fault) in enumerate(samples):
        m += [sid, dt, None if fault else n]
        if fault:
            f += [n, fault, n * 3]
    message = {"tick": 7, "t0": 3, "m": m, "e": [x for ev in evs for x in ev]}
    if f:
        message["f"] = f

    def flat(msgs: list[dict]) -> tuple[list, list]:
        out_s, out_e = [], []
        for msg in msgs:
            assert (msg["tick"], msg["t0"]) == (7, 3)
            faults = {msg["f"][i]: msg["f"][i + 1:i + 3] for i in range(0, len(msg.get("f", [])), 3)}
            out_s += [(msg["m"][3 * n:3 * n + 3], faults.get(n)) for n in range(len(msg["m"]) // 3)]
            out_e += msg.get("e", [])
        return out_s, out_e

    halves = split_data(message)
    if len(samples) + len(evs) < 2:
        assert halves is None
        return
    assert halves is not None
    assert all(len(h["m"]) + len(h.get("e", [])) > 0 for h in halves), "both halves hold readings"
    assert flat(list(halves)) == flat([message])
