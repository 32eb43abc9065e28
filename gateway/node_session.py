"""One node's session on the gateway: its boot, stream table and clock, what it sent that is settled,
and the cumulative ACK (DESIGN.md "Node link"; the node side is firmware/link_client.py).

Boots. Every HELLO names the node's boot id. A new boot id starts a new BootState (stream table,
tick mapping, settled seqs) and nothing of the previous boot's carries over, so ticks of two boots
are never mixed. DATA and HEALTH that arrive before any HELLO (a gateway restart on a link that did
not reconnect) are held back: not stored, not acknowledged, counted in `awaiting_hello`; the node
resends them once it has told its boot again.

Time. The node stamps its frames with its wrap-safe millisecond tick. The gateway maps ticks to UTC
with the minimum-delay filter (TickClock): every frame that carries a tick gives a candidate offset
arrival UTC - tick, which is the true offset plus the frame's delay (queueing and, on a serial line,
its own wire time, which the link subtracts); the smallest candidate of the last `window_ms` is
the estimate. Resent frames keep their old tick, so they only give larger candidates and never
pull the estimate. Each DATA frame is converted to UTC readings at once (gateway/readings.py).

Settled seqs and the ACK. A seq is settled when the frame is durably spooled or dropped as a
duplicate (DATA, HEALTH), acted on (HELLO, RESULT), or below a message's "lo" (the node gave it up
or it was already acknowledged). ACK.seq is the highest seq with every seq up to it settled; it
starts from the spool's seen_through(node, boot), so a restarted gateway picks up where the spool
is. The ACK carries the gateway's UTC and echoes the tick of the newest frame settled (the node's
own time exchange, firmware/clock.py: the ACK goes out as soon as that frame is settled, so the
node measures a true round trip; stale resends never move the echo back).

Duplicates. A seq settled already is dropped here; otherwise the spool drops it by (node, boot,
seq) (it remembers seqs after their frames were published and deleted, and across restarts). A
DATA frame with both measurements and events becomes two spool records, measurements under the
boot id and events under EVENT_BOOT_OFFSET + boot id, so that each is published on its own topic
and each is still recognised by (node, boot, seq).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.fast_codec import decode_data
from gateway.readings import StreamInfo, health_json, pack_converted
from gateway.readings_convert import convert_data
from gateway.spool_async import AsyncSpool
from gateway.spool_seen import EMPTY, Window, is_seen, mark
from gateway.tick_clock import DEFAULT_CLOCK_WINDOW_MS, TickClock
from protocols.link_frame import ACK, DATA, HEALTH, HELLO, RESULT, LinkFrame, encode_frame
from protocols.link_messages import LinkMessageError, decode_message, encode_message
from protocols.ticks import TickUnwrapper

__all__ = [
    "EVENT_BOOT_OFFSET",
    "BootState",
    "NodeSession",
    "SessionCounters",
    "StoredFrame",
    "TickClock",
    "utc_now_ms",
]

log = logging.getLogger("gateway.node")

# Event records of a DATA frame are spooled under this + the node's (u32) boot id.
EVENT_BOOT_OFFSET = 1 << 32
_MAX_DEC = 9


def utc_now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SessionCounters:
    """Per node, cumulative over the gateway process's life."""

    hellos: int = 0
    data_frames: int = 0
    health_frames: int = 0
    results: int = 0
    stored_frames: int = 0
    readings: int = 0
    events: int = 0
    duplicates: int = 0
    awaiting_hello: int = 0  # frames held back because no HELLO told their boot yet
    unknown_stream: int = 0  # DATA held back: a stream id the HELLO table lacks
    bad_messages: int = 0  # good CRC, invalid message: counted and settled
    bad_readings: int = 0  # malformed readings left out of a frame
    bad_streams: int = 0  # malformed HELLO stream table entries
    wrong_node: int = 0  # HELLO naming another node on this node's link
    spool_errors: int = 0  # frames not stored (disk full, ...): not acknowledged, resent later
    late_results: int = 0  # RESULTs for no command waiting (timed out, or sent before a restart)
    acks: int = 0
    reboots: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class StoredFrame:
    """What the batcher is told about a frame just committed to the spool."""

    __slots__ = ("node", "kind", "received_ms", "readings", "oldest_event_ms")

    def __init__(self, node: str, kind: str, received_ms: int, readings: int,
                 oldest_event_ms: int | None = None) -> None:
        self.node = node
        self.kind = kind
        self.received_ms = received_ms
        self.readings = readings
        # Events: the oldest event's own UTC time, so the batcher can start the event window
        # from it without reading the frame back from the spool (None: not known).
        self.oldest_event_ms = oldest_event_ms


class BootState:
    """What the gateway knows of one boot of a node."""

    def __init__(self, boot: int, *, floor: int, clock_window_ms: int) -> None:
        self.boot = boot
        self.streams: dict[int, StreamInfo] = {}
        self.fw = ""
        self.cfg = ""
        self.config_errors: list[Any] = []
        self.clock = TickClock(window_ms=clock_window_ms)
        self.window: Window = (floor, 0) if floor >= 0 else EMPTY
        self.echo_tick: int | None = None
        self._echo_unwrapped: int | None = None
        self._ticks = TickUnwrapper()  # for "newest tick" only; independent of the clock

    @property
    def acked_through(self) -> int:
        return self.window[0]

    def settled(self, seq: int) -> bool:
        return is_seen(self.window, seq)

    def settle(self, seq: int, tick: int | None) -> None:
        if not is_seen(self.window, seq):
            self.window = mark(self.window, seq)
        if tick is not None:
            unwrapped = self._ticks.unwrap(tick)
            if self._echo_unwrapped is None or unwrapped >= self._echo_unwrapped:
                self._echo_unwrapped = unwrapped
                self.echo_tick = tick

    def apply_lo(self, lo: object) -> None:
        """Every seq below `lo` is settled (acknowledged before, or given up by the node)."""
        if isinstance(lo, int) and not isinstance(lo, bool) and lo - 1 > self.window[0]:
            floor, mask = self.window
            shift = lo - 1 - floor
            mask >>= shift
            # absorb a run of settled seqs just above the new floor
            run = (mask ^ (mask + 1)).bit_length() - 1
            self.window = (lo - 1 + run, mask >> run)


class _Pending:
    """A DATA/HEALTH frame on its way into the spool."""

    __slots__ = ("state", "seq", "tick", "records", "oldest_event_ms")

    def __init__(self, state: BootState, seq: int, tick: int,
                 records: list[tuple[str, int, bytes, int]],
                 oldest_event_ms: int | None = None) -> None:
        self.state = state
        self.seq = seq
        self.tick = tick
        self.records = records  # (kind, spool boot key, payload, reading count)
        self.oldest_event_ms = oldest_event_ms  # of its "e" record, if it has one


class NodeSession:
    """One node's session; `handle` takes the frames of one read and returns the ACK to send."""

    def __init__(
        self,
        node: str,
        *,
        spool: AsyncSpool,
        on_stored: Callable[[StoredFrame], None] | None = None,
        clock_window_ms: int = DEFAULT_CLOCK_WINDOW_MS,
        now_ms: Callable[[], int] = utc_now_ms,
    ) -> None:
        self.node = node
        self.spool = spool
        self.on_stored = on_stored
        self.clock_window_ms = clock_window_ms
        self.now_ms = now_ms
        self.boot: BootState | None = None
        self.counters = SessionCounters()
        self.last_frame_ms: int | None = None
        self._commands: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_command = 1
        self._ack_seq = 0
        self._told: set[str] = set()  # log-once keys

    # -- frames in ---------------------------------------------------------------------------------

    async def handle(self, frames: Sequence[LinkFrame], arrival_ms: int, *,
                     ms_per_byte: float = 0.0) -> dict[str, int] | None:
        """Act on the node frames of one read, in order (a HELLO first sets the boot for the
        frames after it); return the ACK message to send, or None when there is nothing to
        acknowledge yet. `ms_per_byte` is the line's character time, to take each frame's own
        wire time off its arrival (0 for TCP)."""
        pending: list[_Pending] = []
        acted = False
        for frame in frames:
            wire_ms = int((len(frame.payload) + 12) * ms_per_byte)
            arrival = arrival_ms - wire_ms
            if frame.type == HELLO:
                acted = await self._hello(frame, arrival) or acted
            elif frame.type in (DATA, HEALTH):
                item = self._prepare(frame, arrival)
                if item is not None:
                    pending.append(item)
                acted = acted or self.boot is not None
            elif frame.type == RESULT:
                acted = self._result(frame) or acted
        if pending:
            await self._store(pending, arrival_ms)
        if frames:
            self.last_frame_ms = arrival_ms
        state = self.boot
        if not acted or state is None or state.echo_tick is None:
            return None
        self.counters.acks += 1
        return {"seq": state.acked_through, "utc": self.now_ms(), "tick": state.echo_tick}

    def ack_frame(self, message: dict[str, int]) -> bytes:
        """The wire bytes of an ACK (the gateway numbers its own frames; the node ignores it)."""
        self._ack_seq = (self._ack_seq + 1) & 0xFFFFFFFF
        return encode_frame(ACK, self._ack_seq, encode_message(ACK, message))

    def _decode(self, frame: LinkFrame) -> dict[str, Any] | None:
        try:
            if frame.type == DATA:  # most frames: the C msgpack fast path, same answers
                return decode_data(frame.payload)
            return decode_message(frame.type, frame.payload)
        except LinkMessageError as error:
            self.counters.bad_messages += 1
            self._tell("bad-message", logging.WARNING,
                       "node link invalid message node=%s type=%d seq=%d reason=%s",
                       self.node, frame.type, frame.seq, error)
            return None

    async def _hello(self, frame: LinkFrame, arrival: int) -> bool:
        message = self._decode(frame)
        if message is None:
            if self.boot is not None:
                self.boot.settle(frame.seq, None)
            return self.boot is not None
        if message["node"] != self.node:
            self.counters.wrong_node += 1
            self._tell("wrong-node", logging.ERROR,
                       "node link hello from another node expected=%s got=%s; check which "
                       "board is wired to this port (boards.toml link.gateway_port)",
                       self.node, message["node"])
            return False
        self.counters.hellos += 1
        boot = message["boot"]
        state = self.boot
        if state is None or state.boot != boot:
            floor = await self.spool.seen_through(self.node, boot)
            if state is not None:
                self.counters.reboots += 1
            log.info("node hello node=%s boot=%d fw=%s cfg=%s streams=%d previous_boot=%s",
                     self.node, boot, message["fw"], message["cfg"], len(message["streams"]),
                     None if state is None else state.boot)
            state = BootState(boot, floor=floor, clock_window_ms=self.clock_window_ms)
            self.boot = state
            self._fail_commands("the node rebooted before answering")
        state.fw, state.cfg = message["fw"], message["cfg"]
        state.config_errors = list(message.get("errors", []))
        state.streams = self._stream_table(message["streams"])
        state.clock.observe(message["tick"], arrival)
        state.apply_lo(message.get("lo"))
        state.settle(frame.seq, message["tick"])
        return True

    def _stream_table(self, entries: list[Any]) -> dict[int, StreamInfo]:
        table: dict[int, StreamInfo] = {}
        for entry in entries:
            sid, name, unit, kind, dec = entry
            unit = "" if unit is None else unit
            kind = "gauge" if kind is None else kind
            if (not isinstance(name, str) or not name or not isinstance(unit, str)
                    or not isinstance(kind, str)
                    or (dec is not None and (not isinstance(dec, int) or isinstance(dec, bool)
                                             or not -_MAX_DEC <= dec <= _MAX_DEC))):
                self.counters.bad_streams += 1
                self._tell(f"bad-stream-{sid}", logging.WARNING,
                           "node hello bad stream entry node=%s entry=%r", self.node, entry)
                continue
            table[sid] = StreamInfo(name, unit, kind, dec)
        return table

    def _prepare(self, frame: LinkFrame, arrival: int) -> _Pending | None:
        state = self.boot
        if state is None:
            self.counters.awaiting_hello += 1
            self._tell("awaiting-hello", logging.WARNING,
                       "node link frames before any hello node=%s: held back until the node "
                       "says HELLO (a node on a serial link repeats it only after a reconnect "
                       "or when its frames go unacknowledged)", self.node)
            return None
        message = self._decode(frame)
        if message is None:
            state.settle(frame.seq, None)
            return None
        tick = message["tick"]
        state.clock.observe(tick, arrival)
        state.apply_lo(message.get("lo"))
        if state.settled(frame.seq):
            self.counters.duplicates += 1
            state.settle(frame.seq, tick)
            return None
        received = arrival
        if frame.type == HEALTH:
            self.counters.health_frames += 1
            payload = health_json(self.node, state.boot, frame.seq, message,
                                  received_ms=received, tick_utc_ms=state.clock.to_utc(tick))
            return _Pending(state, frame.seq, tick, [("h", state.boot, payload, 0)])
        self.counters.data_frames += 1
        converted = convert_data(message, state.streams, state.clock)
        if converted.unknown_sids:
            self.counters.unknown_stream += 1
            self._tell("unknown-stream", logging.WARNING,
                       "node data names streams its hello did not node=%s boot=%d sids=%s: held "
                       "back until a HELLO declares them", self.node, state.boot,
                       sorted(converted.unknown_sids))
            return None
        if converted.bad:
            self.counters.bad_readings += converted.bad
            self._tell("bad-readings", logging.WARNING,
                       "node data malformed readings left out node=%s boot=%d seq=%d count=%d",
                       self.node, state.boot, frame.seq, converted.bad)
        records: list[tuple[str, int, bytes, int]] = []
        m_payload, e_payload = pack_converted(self.node, state.boot, converted)
        if m_payload is not None:
            records.append(("m", state.boot, m_payload, len(converted.measurements)))
        oldest_event_ms = None
        if e_payload is not None:
            records.append(("e", EVENT_BOOT_OFFSET + state.boot, e_payload,
                            len(converted.events)))
            oldest_event_ms = min(event.utc_ms for event in converted.events)
        return _Pending(state, frame.seq, tick, records, oldest_event_ms)

    async def _store(self, pending: list[_Pending], arrival_ms: int) -> None:
        calls = [
            self.spool.add_frame(self.node, key, item.seq, kind, payload, arrival_ms)
            for item in pending
            for kind, key, payload, _count in item.records
        ]
        results = iter(await asyncio.gather(*calls, return_exceptions=True))
        for item in pending:
            outcomes = [next(results) for _ in item.records]
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:
                self.counters.spool_errors += 1
                self._tell("spool-error", logging.ERROR,
                           "spool write failed node=%s seq=%d error=%s: not acknowledged; the "
                           "node resends it", self.node, item.seq, failed[0])
                continue
            for (kind, _key, _payload, count), stored in zip(item.records, outcomes):
                if stored:
                    self.counters.stored_frames += 1
                    if kind == "m":
                        self.counters.readings += count
                    elif kind == "e":
                        self.counters.events += count
                    if self.on_stored is not None:
                        self.on_stored(StoredFrame(
                            self.node, kind, arrival_ms, count,
                            item.oldest_event_ms if kind == "e" else None))
                else:
                    self.counters.duplicates += 1
            item.state.settle(item.seq, item.tick)

    # -- commands ----------------------------------------------------------------------------------

    def new_command(self) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """A fresh CMD id and the future its RESULT message resolves."""
        command_id = self._next_command
        self._next_command = command_id % 0x7FFFFFFF + 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._commands[command_id] = future
        return command_id, future

    def forget_command(self, command_id: int) -> None:
        self._commands.pop(command_id, None)

    def _result(self, frame: LinkFrame) -> bool:
        state = self.boot
        if state is None:
            self.counters.awaiting_hello += 1
            return False
        message = self._decode(frame)
        if message is not None:
            state.apply_lo(message.get("lo"))
            if not state.settled(frame.seq):
                self.counters.results += 1
                future = self._commands.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    self.counters.late_results += 1
                    log.info("node result for no waiting command node=%s id=%d ok=%s",
                             self.node, message["id"], message["ok"])
        state.settle(frame.seq, None)
        return True

    def _fail_commands(self, reason: str) -> None:
        for future in self._commands.values():
            if not future.done():
                future.set_result({"id": -1, "ok": False, "msg": reason})
        self._commands.clear()

    # -- reporting ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The gateway's view of this node, for .../{node}/health ("source": "gateway")."""
        state = self.boot
        return {
            "source": "gateway",
            "node": self.node,
            "boot": None if state is None else state.boot,
            "fw": None if state is None else state.fw,
            "cfg": None if state is None else state.cfg,
            "config_errors": [] if state is None else state.config_errors,
            "streams": 0 if state is None else len(state.streams),
            "acked_through": None if state is None else state.acked_through,
            "clock_offset_ms": None if state is None else state.clock.offset_ms,
            "last_frame_ms": self.last_frame_ms,
            "counters": self.counters.as_dict(),
        }

    def _tell(self, key: str, level: int, message: str, *args: object) -> None:
        """Log the first occurrence of each kind of trouble; the counters keep the rest."""
        if key in self._told:
            log.debug(message, *args)
            return
        self._told.add(key)
        log.log(level, message, *args)
