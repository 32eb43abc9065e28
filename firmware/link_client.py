"""The node side of the node link (DESIGN.md "Node link"): HELLO, DATA, HEALTH and RESULT up,
ACK and CMD down, over whatever byte stream hal.open_link gives (UART, USB CDC or TCP).

Numbering. Every frame the node sends carries a u32 seq, per boot, starting at 1 and incremented
for every new frame (HELLO, DATA, HEALTH, RESULT); a retransmission keeps its seq. The boot id is
hal.random_u32() at start, so a reboot never mixes with the previous boot. The gateway's ACK is
cumulative: every seq <= ACK.seq is durably spooled (it acknowledges seqs it does not spool, HELLO
and RESULT, once it has acted on them), so it needs every seq to arrive, or to learn that one never
will: each message also carries "lo", the lowest seq the node may still send (every seq below it
was acknowledged, or given up when the ring overflowed), and the gateway treats every seq below lo
as settled. That is also how it learns that seqs start at 1. The node allocates a new HELLO seq
only once the previous HELLO is acknowledged, and ring frames take a seq only once they are
encoded and fit the ring, so a gap only ever comes from a counted ring overflow.

HELLO (node, fw, cfg hash, boot, tick, stream table, config errors) goes first on every connection,
after a lone 0x00 so a receiver holding half a frame resynchronises; it is repeated every hello_ms
until acknowledged, keeping its seq (its tick is refreshed), and sent again when the stream table or
the config errors change. It is not in the ring: a stream table may be larger than a ring frame.
A serial link never "reconnects" when the gateway restarts (the UART stays up), and a restarted
gateway holds DATA back until a HELLO tells it the boot: so when frames wait and no ACK at all has
come for rehello_ms, the HELLO is sent again (a new seq once the previous one was acknowledged).

DATA. Readings collect in node.outbox (firmware/outbox.py). The link seals them into a DATA
message when an event is waiting (event_flush_ms after the first one, default 0: at the writer's
next pass, which still takes every event a driver step or poll produced together; the gateway's
event window counts from the event's own time, so a wait here would only eat into it), at least
every flush_ms (default 1000) for measurements, and at once when the outbox is full. A message
that does not fit a frame (max_payload, frame_max) is split in two (halves of the samples and of the events, faults
re-indexed) until it does, so readings are never refused for size. DATA, HEALTH and RESULT frames
go into the ring (firmware/frame_ring.py) before they are sent.

Reliability. Frames are resent, oldest first, when not acknowledged within ack_timeout_ms, and
after a reconnect all unacknowledged frames are resent in order, after the HELLO. A full ring drops
its oldest frames and counts them (ring_overflow); the dropping happens before the new frame's "lo"
is written, so that frame already tells the gateway what is gone. The link is reopened with a backoff that doubles
from backoff_ms to backoff_max_ms and starts again once a connection has been acknowledged.
Incoming bytes go through LinkFrameReader (protocols/link_wire.py): bad frames, invalid messages
and ACKs for seqs never sent are counted (bad_frames_in, bad_acks) and skipped, never fatal. Only this client's writer task writes
to the link and pushes to the ring, so frames never interleave on the wire.

Time. ACK carries the gateway's UTC and echoes the tick of the frame it acknowledges;
node.clock.on_ack turns that into the gateway time offset (firmware/clock.py).

Commands. CMD is handled by firmware/commands.py in its own task (at most MAX_COMMANDS at once; more
are answered "busy") and answered with a RESULT. A reboot command's RESULT is sent first; the node
resets once it is acknowledged or reboot_wait_ms later.

HEALTH (firmware/health.py) goes every health_s and when asked. One too big for a frame loses detail
in steps (each device's last_fault shortened, then its zero counters, then the device section)
rather than going unsent.

Link config keys (all optional; out-of-range values become config errors and fall back):
ring_bytes 2048 and ring_slots 24 (the resend ring: bytes of wire frames, and how many frames at
most; event frames are ~50 B, measurement frames up to ~300 B, a cabinet node's HEALTH ~800 B and
at most max_payload, so a HEALTH always fits and leaves room for the frames around it: the cabinet
node makes ~2 KB of frames in 10 s, against the 8 frames, ~3 s, of the fixed 8 x 1 KB slots this
replaced), frame_max 2048 (the largest frame the ring takes, at most ring_bytes; DATA is split to
fit), flush_ms 1000, event_flush_ms 0, ack_timeout_ms 2000, hello_ms 1000, health_s 10,
backoff_ms 200, backoff_max_ms 5000, max_payload 1024 (the gateway's limit; a HELLO must fit it),
rx_max_payload 512 (the biggest CMD payload accepted), reboot_wait_ms 1000, rehello_ms 10000 (0: never
repeat an acknowledged HELLO).
"""

import asyncio

from firmware.frame_ring import SEQ_MASK, FrameRing, seq_le, seq_lt
from firmware.health import Uptime, build_health, trim_health
from protocols.link_messages import LinkMessageError, decode_message, encode_message
from protocols.link_wire import ACK, CMD, DATA, HEALTH, HELLO, OVERHEAD, RESULT, LinkFrameReader, encode_frame
from protocols.ticks import ticks_add, ticks_diff

# link config key -> (default, lowest, highest)
SETTINGS = {
    "ring_slots": (24, 1, 64),
    "ring_bytes": (2048, 256, 65536),
    "frame_max": (2048, 64, 4096),
    "flush_ms": (1000, 10, 60000),
    "event_flush_ms": (0, 0, 1000),
    "ack_timeout_ms": (2000, 20, 60000),
    "hello_ms": (1000, 20, 60000),
    "health_s": (10, 1, 3600),
    "backoff_ms": (200, 10, 60000),
    "backoff_max_ms": (5000, 10, 600000),
    "max_payload": (1024, 64, 4096),
    "rx_max_payload": (512, 64, 4096),
    "reboot_wait_ms": (1000, 0, 10000),
    "rehello_ms": (10000, 0, 600000),
}
MAX_COMMANDS = 2  # commands running at once
MAX_RESULTS = 4  # answers waiting for the writer
READ_CHUNK = 256
MAX_SLEEP_MS = 1000  # the writer wakes at least this often (uptime, heap watermark)


def split_data(message):
    """Two DATA messages holding `message`'s readings in the same order, or None when it holds a
    single reading. Samples and events are halved separately; fault indices follow their sample."""
    m = message["m"]
    e = message.get("e") or []
    f = message.get("f") or []
    ns = len(m) // 3
    ne = len(e) // 3
    if ns >= 2:
        ks, ke = ns // 2, ne // 2
    elif ne >= 2:
        ks, ke = ns, ne // 2
    elif ns == 1 and ne == 1:
        ks, ke = 1, 0
    else:
        return None
    first = {"tick": message["tick"], "t0": message["t0"], "m": m[:3 * ks]}
    second = {"tick": message["tick"], "t0": message["t0"], "m": m[3 * ks:]}
    f1 = []
    f2 = []
    for i in range(0, len(f), 3):
        if f[i] < ks:
            f1.extend(f[i:i + 3])
        else:
            f2.extend((f[i] - ks, f[i + 1], f[i + 2]))
    if f1:
        first["f"] = f1
    if f2:
        second["f"] = f2
    if ke:
        first["e"] = e[:3 * ke]
    if len(e) > 3 * ke:
        second["e"] = e[3 * ke:]
    return first, second


class LinkClient:
    def __init__(self, node, link_cfg, fw_version, config_hash, *, devices=None):
        self.node = node
        self.hal = node.hal
        self.link_cfg = link_cfg
        self.fw_version = fw_version
        self.config_hash = config_hash
        self.devices = devices or {}
        self.settings = self._settings(link_cfg)
        s = self.settings
        self.ring = FrameRing(s["ring_slots"], s["ring_bytes"], s["frame_max"])
        self.decoder = LinkFrameReader(s["rx_max_payload"])
        self.boot = self.hal.random_u32() & SEQ_MASK  # u32 on the wire, whatever the backend gives
        self.counters = {"sent": 0, "hello_sent": 0, "bad_frames_in": 0, "bad_acks": 0,
                         "unexpected_in": 0, "oversize": 0, "unencodable": 0, "connects": 0,
                         "link_errors": 0, "commands": 0, "errors": 0}
        self.heap_min = None
        now = self.hal.ticks_ms()
        self.uptime = Uptime(now)
        self._next_seq = 1
        self._acked = 0  # highest seq acknowledged
        self._hello_seq = None  # seq of the HELLO not acknowledged yet
        self._hello_streams = -1  # stream table size and config error count the last HELLO told
        self._hello_errors = -1
        self._hello_at = now
        self._ack_at = now  # when the last ACK (any) came: its silence triggers a repeated HELLO
        self._link = None
        self._fresh = False  # a new connection: HELLO and a full resend are due
        self._conn_acked = False
        self._wake = asyncio.Event()
        self._event_due = None
        self._flush_at = ticks_add(now, s["flush_ms"])
        self._health_at = ticks_add(now, s["health_s"] * 1000)
        self._health_now = False
        self._results = []  # (RESULT message, arms the reset)
        self._running = 0
        self._reset_reason = None
        self._reset_seq = None
        self._reset_at = 0
        node.outbox.on_add = self._on_add

    def _settings(self, cfg):
        out = {}
        for key in SETTINGS:
            default, low, high = SETTINGS[key]
            value = cfg.get(key, default) if isinstance(cfg, dict) else default
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                self.node.config_error("link.%s" % key, "must be a whole number in %d..%d; using %d"
                                       % (low, high, default))
                value = default
            out[key] = value
        return out

    # -- public -----------------------------------------------------------------------------------

    async def run(self):
        """Keep the link open (reconnecting with backoff) and serve it; never returns."""
        s = self.settings
        pump = asyncio.create_task(self._pump())
        backoff = s["backoff_ms"]
        told = False
        try:
            while True:
                link = None
                try:
                    link = await self.hal.open_link(self.link_cfg)
                except Exception as exc:  # noqa: BLE001 - any failure to connect means "retry later"
                    self.counters["link_errors"] += 1
                    if not told:
                        print("[link] cannot open the link (%s); retrying with backoff" % (exc,))
                        told = True
                if link is not None:
                    told = False
                    await self._serve(link)
                    if self._conn_acked:
                        backoff = s["backoff_ms"]
                await asyncio.sleep(backoff / 1000)
                backoff = min(backoff * 2, s["backoff_max_ms"])
        finally:
            pump.cancel()

    def request_health(self):
        """Send a HEALTH report now (besides the periodic one)."""
        self._health_now = True
        self._wake.set()

    def request_reset(self, reason):
        """Reset the node once the RESULT of the command being answered is acknowledged."""
        self._reset_reason = reason

    def loss_counters(self):
        """HEALTH's loss map: readings and frames lost for good, and the link's own counters."""
        out = {"ring_overflow": self.ring.overflow_frames, "outbox_dropped": self.node.outbox.dropped,
               "resent": self.ring.resent, "acked": self.ring.acked}
        for key in self.counters:
            out[key] = self.counters[key]
        return out

    def diagnostics(self):
        """The "diagnostics" command's answer: counters plus link, ring and clock state."""
        clock = self.node.clock
        free = self.hal.mem_free()
        out = self.loss_counters()
        out["boot"] = self.boot
        out["seq"] = (self._next_seq - 1) & SEQ_MASK
        out["acked_seq"] = self._acked
        out["unacked"] = len(self.ring)
        out["ring"] = [self.ring.slots, self.ring.size, self.ring.used()]
        out["hello_pending"] = self._hello_seq is not None
        out["connected"] = self._link is not None
        out["utc_offset"] = clock.offset
        out["heap_free"] = -1 if free is None else free
        out["heap_min"] = -1 if self.heap_min is None else self.heap_min
        out["uptime_ms"] = self.uptime.ms
        out["interval_s"] = self.node.config.get("interval_s")
        rx = {}
        counters = self.decoder.counters
        for key in counters:
            if counters[key]:
                rx[key] = counters[key]
        out["rx"] = rx
        return out

    # -- connection and reading -------------------------------------------------------------------

    async def _serve(self, link):
        self.counters["connects"] += 1
        self.decoder.reset()
        self._conn_acked = False
        self._link = link
        self._fresh = True
        self._wake.set()
        try:
            while self._link is link:
                data = await link.read(READ_CHUNK)
                if self._link is not link:
                    break
                for item in self.decoder.feed(data):
                    if isinstance(item, str):  # a rejected candidate's kind
                        self.counters["bad_frames_in"] += 1
                    else:
                        self._on_frame(item)
        except Exception as exc:  # noqa: BLE001 - the link closed or failed: reconnect
            if self._link is link:
                print("[link] link lost: %s" % (exc,))
        self._drop(link)

    def _drop(self, link):
        if self._link is link:
            self._link = None
        try:
            link.close()
        except Exception:  # noqa: BLE001 - it is going away anyway
            pass

    def _on_frame(self, frame):
        if frame.type != ACK and frame.type != CMD:
            self.counters["unexpected_in"] += 1
            return
        try:
            message = decode_message(frame.type, frame.payload)
        except LinkMessageError:
            self.counters["bad_frames_in"] += 1
            return
        if frame.type == ACK:
            self._on_ack(message)
        else:
            self._on_cmd(message)

    def _on_ack(self, message):
        self._ack_at = self.hal.ticks_ms()
        seq = message["seq"]
        if seq >= 0:
            if seq > SEQ_MASK or not seq_lt(seq, self._next_seq):
                # Acknowledges a frame this boot never sent: a confused gateway; trust none of it.
                self.counters["bad_acks"] += 1
                return
            self.ring.ack(seq)
            if seq_lt(self._acked, seq):
                self._acked = seq
            if self._hello_seq is not None and seq_le(self._hello_seq, seq):
                self._hello_seq = None
            self._conn_acked = True
        self.node.clock.on_ack(message["utc"], message["tick"])
        if self._reset_seq is not None:
            self._wake.set()

    def _on_cmd(self, message):
        self.counters["commands"] += 1
        if self._running >= MAX_COMMANDS or len(self._results) >= MAX_RESULTS:
            self._answer({"id": message["id"], "ok": False,
                          "msg": "node busy: %d commands are still running" % self._running})
            return
        self._running += 1
        asyncio.create_task(self._command(message))

    async def _command(self, message):
        from firmware.commands import dispatch

        try:
            ok, text, data = await dispatch(message["op"], message["args"], self.node,
                                            self.devices, self)
        finally:
            self._running -= 1
        result = {"id": message["id"], "ok": bool(ok), "msg": text}
        if data is not None:
            result["data"] = data
        # The reboot's own RESULT arms the reset: the node goes once that frame is acknowledged.
        self._answer(result, ok and message["op"] == "reboot" and self._reset_reason is not None)

    def _answer(self, result, arm=False):
        self._results.append((result, arm))
        self._wake.set()

    def _on_add(self, urgent):
        if urgent and self._event_due is None:
            self._event_due = ticks_add(self.hal.ticks_ms(), self.settings["event_flush_ms"])
            self._wake.set()
        elif self.node.outbox.full:
            self._wake.set()

    # -- the writer ---------------------------------------------------------------------------------

    async def _pump(self):
        while True:
            try:
                await self._pump_once()
            except Exception as exc:  # noqa: BLE001 - a bug here must not silence the node
                self.counters["errors"] += 1
                print("[link] writer error: %s: %s" % (type(exc).__name__, exc))
                await asyncio.sleep(0.1)

    async def _pump_once(self):
        hal = self.hal
        now = hal.ticks_ms()
        self.uptime.update(now)
        free = hal.mem_free()
        if free is not None and (self.heap_min is None or free < self.heap_min):
            self.heap_min = free
        self._seal_due(now)
        link = self._link
        if link is not None:
            try:
                await self._send_due(link, now)
            except Exception as exc:  # noqa: BLE001 - the link died mid-write: run() reconnects
                if self._link is link:
                    self.counters["link_errors"] += 1
                    print("[link] write failed: %s" % (exc,))
                    self._drop(link)
        if self._reset_seq is not None and (seq_le(self._reset_seq, self._acked)
                                            or ticks_diff(hal.ticks_ms(), self._reset_at) >= 0):
            hal.reset(self._reset_reason)
        await self._sleep(self._wait_ms(hal.ticks_ms()))

    def _seal_due(self, now):
        s = self.settings
        outbox = self.node.outbox
        flush = ticks_diff(now, self._flush_at) >= 0
        if len(outbox) and (flush or outbox.full or (
                self._event_due is not None and ticks_diff(now, self._event_due) >= 0)):
            message = outbox.take(now)
            self._event_due = None
            if message is not None:
                self._push_data(message)
        if flush:
            self._flush_at = ticks_add(now, s["flush_ms"])
        while self._results:
            result, arm = self._results.pop(0)
            self._push_result(result)
            if arm:
                self._reset_seq = (self._next_seq - 1) & SEQ_MASK
                self._reset_at = ticks_add(now, s["reboot_wait_ms"])
        if self._health_now or ticks_diff(now, self._health_at) >= 0:
            self._health_now = False
            self._health_at = ticks_add(now, s["health_s"] * 1000)
            self._push_health()

    async def _send_due(self, link, now):
        s = self.settings
        if self._fresh:
            self._fresh = False
            await link.write(b"\x00")
            await self._send_hello(link, now)
            self.ring.rewind()
        elif (len(self.node.streams) != self._hello_streams
              or len(self.node.config_errors) != self._hello_errors
              or (self._hello_seq is not None and ticks_diff(now, self._hello_at) >= s["hello_ms"])
              or self._rehello_due(now)):
            await self._send_hello(link, now)
        for _seq, frame in self.ring.due(now, s["ack_timeout_ms"]):
            await link.write(frame)
            self.counters["sent"] += 1

    def _rehello_due(self, now):
        wait = self.settings["rehello_ms"]
        return (wait > 0 and self._hello_seq is None and len(self.ring) > 0
                and ticks_diff(now, self._ack_at) >= wait and ticks_diff(now, self._hello_at) >= wait)

    def _wait_ms(self, now):
        wait = MAX_SLEEP_MS
        for deadline in (self._flush_at, self._health_at):
            d = ticks_diff(deadline, now)
            if d < wait:
                wait = d
        if self._event_due is not None:
            d = ticks_diff(self._event_due, now)
            if d < wait:
                wait = d
        if self._reset_seq is not None:
            d = ticks_diff(self._reset_at, now)
            if d < wait:
                wait = d
        if self._link is not None:
            if self._hello_seq is not None:
                d = self.settings["hello_ms"] - ticks_diff(now, self._hello_at)
                if d < wait:
                    wait = d
            d = self.ring.next_due_in(now, self.settings["ack_timeout_ms"])
            if d is not None and d < wait:
                wait = d
        return wait

    async def _sleep(self, ms):
        if ms <= 0 or self._wake.is_set():
            self._wake.clear()
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self._wake.wait(), ms / 1000)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    # -- building frames --------------------------------------------------------------------------

    def _take_seq(self):
        seq = self._next_seq
        self._next_seq = (seq + 1) & SEQ_MASK or 1  # unreachable wrap: 136 years at 1 frame/s
        return seq

    def _lo(self, lo):
        if self._hello_seq is not None and seq_lt(self._hello_seq, lo):
            return self._hello_seq
        return lo

    async def _send_hello(self, link, now):
        if self._hello_seq is None:
            self._hello_seq = self._take_seq()
        seq = self._hello_seq
        oldest = self.ring.oldest_seq()
        node = self.node
        self._hello_streams = len(node.streams)
        self._hello_errors = len(node.config_errors)
        self._hello_at = now
        message = {"node": node.config["node"], "fw": self.fw_version, "cfg": self.config_hash,
                   "boot": self.boot, "tick": now, "streams": node.streams.entries(),
                   "errors": node.config_errors,
                   "lo": seq if oldest is None or seq_lt(seq, oldest) else oldest}
        try:
            frame = encode_frame(HELLO, seq, encode_message(HELLO, message),
                                 self.settings["max_payload"])
        except ValueError as exc:
            self.counters["oversize"] += 1
            print("[link] HELLO cannot be sent: %s" % (exc,))
            return
        await link.write(frame)
        self.counters["sent"] += 1
        self.counters["hello_sent"] += 1

    def _push(self, frame_type, message):
        """Encode `message` as the next seq into the ring. True when pushed; False (seq not used)
        when it is too big for a frame; None when it cannot be encoded at all (a reading of a type
        msgpack does not carry, say)."""
        ring = self.ring
        seq = self._next_seq
        size = ring.frame_max
        while True:
            oldest = ring.oldest_seq()
            message["lo"] = self._lo(seq if oldest is None else oldest)
            try:
                payload = encode_message(frame_type, message)
            except (TypeError, ValueError, OverflowError):  # LinkMessageError is a ValueError
                return None
            if len(payload) + OVERHEAD >= size:  # COBS only adds: no need to encode to know
                return False
            try:
                frame = encode_frame(frame_type, seq, payload, self.settings["max_payload"])
            except ValueError:
                return False
            if len(frame) > size:
                return False
            # Frames the new one pushes out are gone before its "lo" is written; a lo that moved
            # can only grow the frame by a few bytes, hence the loop (it ends: each pass drops).
            if not ring.make_room(len(frame)):
                break
        ring.push(self._take_seq(), frame)
        return True

    def _push_data(self, message):
        pushed = self._push(DATA, message)
        if pushed:
            return
        # Too big, or something in it cannot be encoded: halving isolates the culprit.
        halves = split_data(message)
        if halves is None:
            if pushed is None:
                self.counters["unencodable"] += 1
                print("[link] a reading cannot be encoded; dropped: %r" % (message,))
            else:
                self.counters["oversize"] += 1
                print("[link] a DATA message of one reading does not fit a %d-byte frame; dropped"
                      % self.ring.frame_max)
            return
        self._push_data(halves[0])
        self._push_data(halves[1])

    def _push_result(self, result):
        if self._push(RESULT, result):
            return
        text = result["msg"]
        small = {"id": result["id"], "ok": result["ok"],
                 "msg": text[:120] + (" (its data did not fit a frame)" if "data" in result else "")}
        if not self._push(RESULT, small):
            self.counters["oversize"] += 1

    def _push_health(self):
        message = build_health(self.node, self, self.devices, self.uptime.ms)
        for step in (0, 1, 2, 3):
            if step:
                trim_health(message, step)
            if self._push(HEALTH, message):
                return
        self.counters["oversize"] += 1
