"""The frame-sensor driver base that the PMS5003 and SDS011 drivers share
(firmware/drivers/pms5003_driver.py, firmware/drivers/sds011_driver.py): one module per job, so a
board with an SDS011 carries neither the PMS5003 driver nor protocols/pms5003.py.

A frame sensor streams (active mode) or answers a poll (passive / query mode) with checksummed
frames. The driver owns one UART bus, runs two tasks and publishes one sample per reading on each
of the profile's "streams" (named "<device id>/<name>", value = the reading's `field`):

- reader: bytes -> the protocol module's incremental parser -> readings, acks, errors;
- ticker (every TICK_S): the passive poll every poll_ms, and silence detection.

Quality (DESIGN.md "Quality"): a reading within warmup_s of wake is published as FAULT_WARMING_UP,
never as a number; a checksum failure as FAULT_CHECKSUM and other garbled input (bad length,
garbage between frames) as FAULT_FRAMING, at most once per expected period however noisy the line;
no byte at all for silence_timeout_s (plus poll_ms when polled) gives FAULT_TIMEOUT, once per
expected period while it lasts (not a flood). Nothing is published while the sensor is asleep on
purpose. A silence may be a power cut: its first timeout re-sends wake and mode, and the readings
after it count as warm-up again.

Device keys: bus, mode (one of the profile's "modes"; default the first), poll_ms (passive poll
period, default 1000), period_ms (expected active-mode period, default 1000: both sensors report
about once a second), set_pin (PMS5003 SET: low = sleep), warmup_s / silence_timeout_s (override
the profile's). command(op, args): "sleep", "wake", "mode" (args {"mode": name} or the name).
"""

import asyncio

from protocols.quality_codes import FAULT_CHECKSUM, FAULT_FRAMING, FAULT_TIMEOUT, FAULT_WARMING_UP
from protocols.ticks import ticks_add, ticks_diff

TICK_S = 0.05  # ticker period: the poll and timeout resolution
ACK_TIMEOUT_S = 1.0  # how long a command waits for the sensor's acknowledgement
READ_SIZE = 64
READ_RETRY_S = 1.0  # back-off after the bus itself failed (closed, unplugged)

_ITEM_READING = 1
_ITEM_ACK = 2
_ITEM_ERROR = 3


def _ms(seconds, default):
    if seconds is None:
        seconds = default
    return int(seconds * 1000)


class UartPmDriver:
    """The shared shape of a frame-sensor driver; subclasses fill in the protocol hooks:

    _new_parser(), _classify(item) -> _ITEM_*, _cmd_mode(name), _cmd_poll(), _cmd_sleep(),
    _cmd_wake(), _ack_is(item, op, arg), POLLED_MODE (the mode that needs polling), NAME.
    """

    POLLED_MODE = "passive"
    NAME = "sensor"
    WAKE_NEEDS_ACK = False

    def __init__(self, device_cfg, profile, node):
        self.node = node
        self.id = device_cfg["id"]
        self.bus_id = device_cfg.get("bus")
        modes = profile.get("modes") or ["active", self.POLLED_MODE]
        mode = device_cfg.get("mode", modes[0])
        if mode not in modes:
            node.config_error("devices.%s.mode" % self.id,
                              "%r is not a mode of %s (%s); using %s"
                              % (mode, profile.get("profile"), ", ".join(modes), modes[0]))
            mode = modes[0]
        self.mode = mode
        self._modes = modes
        self._poll_ms = int(device_cfg.get("poll_ms", 1000))
        self._active_ms = int(device_cfg.get("period_ms", 1000))
        self._warmup_ms = _ms(device_cfg.get("warmup_s"), profile.get("warmup_s", 30))
        self._silence_ms = _ms(device_cfg.get("silence_timeout_s"),
                               profile.get("silence_timeout_s", 5))
        self._set_pin_no = device_cfg.get("set_pin")
        self._set_pin = None
        self._outputs = []  # (sid, field)
        for s in profile.get("streams", []):
            sid = node.streams.add(self.id + "/" + s["name"], s.get("unit", ""),
                                   s.get("kind", "gauge"), s.get("dec"))
            self._outputs.append((sid, s.get("field", s["name"])))
        self._parser = self._new_parser()
        # The parser's own counters (frames, bad_checksum, garbage_bytes, ...) are mirrored here.
        self.counters = {"acks": 0, "timeouts": 0, "warmup_dropped": 0, "read_errors": 0,
                         "write_errors": 0, "asleep_dropped": 0, "driver_errors": 0}
        for key in self._parser.counters:
            self.counters[key] = 0
        self.last_fault = None
        self.awake = True
        self._uart = None
        self._ticks = node.hal.ticks_ms
        now = self._ticks()
        self._wake_tick = now
        self._last_rx = now
        self._next_poll = now
        self._next_timeout = None  # when the next timeout fault is due, while silent
        self._next_garble = now  # rate limit of checksum / framing fault samples
        self._ack_want = None  # (op, arg) a command waits for
        self._ack_event = None
        self._lock = asyncio.Lock()

    # The protocol hooks are the subclass's (see the class doc); no stubs here: a board carries
    # this module, and a missing hook fails as loudly with AttributeError.

    # -- tasks -------------------------------------------------------------------------------

    @property
    def period_ms(self):
        """The expected time between readings: also the pace of fault samples."""
        return self._poll_ms if self.mode == self.POLLED_MODE else self._active_ms

    async def run(self):
        self._uart = self.node.bus(self.bus_id)
        if self._set_pin_no is not None:
            self._set_pin = self.node.hal.OutputPin(self._set_pin_no)
            self._set_pin.value(1)
        # Wake and set the mode before the reader starts: the first write opens the bus, and the
        # sensor may have been left asleep or in the other mode by a previous boot.
        await self._write(self._cmd_wake())
        await self._write(self._cmd_mode(self.mode))
        self._woke(self._ticks())
        asyncio.create_task(self._reader())
        while True:
            await asyncio.sleep(TICK_S)
            await self._tick(self._ticks())

    async def _reader(self):
        parser = self._parser
        while True:
            try:
                data = await self._uart.read(READ_SIZE)
            except Exception as exc:  # the bus itself failed: count it, never crash the node
                self.counters["read_errors"] += 1
                self.last_fault = "%s: reading its UART failed (%s)." % (self.id, exc)
                await asyncio.sleep(READ_RETRY_S)
                continue
            now = self._ticks()
            self._last_rx = now
            if self._next_timeout is not None:
                # Back after a silence that may have been a power cut: warm up again.
                self._next_timeout = None
                self._wake_tick = now
            for item in parser.feed(data):
                try:
                    self._handle(item, now)
                except Exception as exc:  # a bug must not stop the readings for good
                    self.counters["driver_errors"] += 1
                    self.last_fault = "%s: handling a frame failed (%r)." % (self.id, exc)
            c = parser.counters
            for key in c:
                self.counters[key] = c[key]

    async def _tick(self, now):
        if not self.awake:
            return
        if self.mode == self.POLLED_MODE and ticks_diff(now, self._next_poll) >= 0:
            self._next_poll = ticks_add(self._next_poll, self._poll_ms)
            if ticks_diff(now, self._next_poll) >= 0:  # fell behind: do not burst to catch up
                self._next_poll = ticks_add(now, self._poll_ms)
            await self._write(self._cmd_poll())
        limit = self._silence_ms
        if self.mode == self.POLLED_MODE:
            limit += self._poll_ms  # a polled sensor is quiet between polls by design
        if ticks_diff(now, self._last_rx) < limit:
            self._next_timeout = None
            return
        first = self._next_timeout is None
        if not first and ticks_diff(now, self._next_timeout) < 0:
            return
        self._next_timeout = ticks_add(now, self.period_ms)
        self.counters["timeouts"] += 1
        self.last_fault = "%s: no data from the %s for %d ms." % (
            self.id, self.NAME, ticks_diff(now, self._last_rx))
        self._fault_all(FAULT_TIMEOUT, now)
        if first:
            # A sensor that lost power comes back awake in its default mode.
            await self._write(self._cmd_wake())
            await self._write(self._cmd_mode(self.mode))

    # -- input -------------------------------------------------------------------------------

    def _handle(self, item, now):
        kind = self._classify(item)
        if kind == _ITEM_READING:
            self._reading(item, now)
        elif kind == _ITEM_ACK:
            self.counters["acks"] += 1
            want = self._ack_want
            if want is not None and self._ack_is(item, want[0], want[1]):
                self._ack_want = None
                self._ack_event.set()
        else:
            self._garbled(item, now)

    def _reading(self, reading, now):
        if not self.awake:
            # A frame already on the way when the sleep command went out.
            self.counters["asleep_dropped"] += 1
            return
        node = self.node
        if ticks_diff(now, self._wake_tick) < self._warmup_ms:
            self.counters["warmup_dropped"] += 1
            self._fault_all(FAULT_WARMING_UP, now)
            return
        for sid, field in self._outputs:
            node.sample(sid, getattr(reading, field), 0, 0, now)

    def _garbled(self, error, now):
        kind = error.kind
        self.last_fault = "%s: %s." % (self.id, error.reason)
        if ticks_diff(now, self._next_garble) < 0:
            return
        self._next_garble = ticks_add(now, self.period_ms)
        self._fault_all(FAULT_CHECKSUM if kind == "bad_checksum" else FAULT_FRAMING, now)

    def _fault_all(self, fault, now):
        node = self.node
        for sid, _field in self._outputs:
            node.sample(sid, None, fault, 0, now)

    # -- output ------------------------------------------------------------------------------

    async def _write(self, frame):
        try:
            await self._uart.write(frame)
            return True
        except Exception as exc:
            self.counters["write_errors"] += 1
            self.last_fault = "%s: writing its UART failed (%s)." % (self.id, exc)
            return False

    async def _send_and_wait(self, frame, op, arg):
        """Send a command and wait for its acknowledgement; True when it came."""
        self._ack_event = asyncio.Event()
        self._ack_want = (op, arg)  # before the write: the ack may beat the await below
        if not await self._write(frame):
            self._ack_want = None
            return False
        try:
            await asyncio.wait_for(self._ack_event.wait(), ACK_TIMEOUT_S)
            return True
        except asyncio.TimeoutError:
            self._ack_want = None
            return False

    def _woke(self, now):
        self.awake = True
        self._wake_tick = now
        self._last_rx = now  # silence is counted from the wake, not from before the sleep
        self._next_timeout = None
        self._next_poll = now

    async def command(self, op, args=None):
        """"sleep", "wake" or "mode" (args: {"mode": name} or the name): returns (ok, message)."""
        if self._uart is None:
            return False, "%s has not started yet." % self.id
        async with self._lock:
            if op == "sleep":
                return await self._sleep()
            if op == "wake":
                return await self._wake()
            if op == "mode":
                mode = args.get("mode") if isinstance(args, dict) else args
                return await self._set_mode(mode)
        return False, "%s has no command %r (sleep, wake, mode)." % (self.id, op)

    async def _sleep(self):
        self.awake = False  # first, so no poll or timeout fault races the sleep
        if self._set_pin is not None:
            # The pin alone sleeps the sensor; a sleeping sensor would not answer a command.
            self._set_pin.value(0)
            return True, "%s is asleep (SET pin low)." % self.id
        if await self._send_and_wait(self._cmd_sleep(), "sleep", None):
            return True, "%s is asleep." % self.id
        return False, "%s did not acknowledge the sleep command." % self.id

    async def _wake(self):
        if self._set_pin is not None:
            self._set_pin.value(1)
            # Also the command: a previous boot may have put it to sleep that way.
            acked = await self._write(self._cmd_wake())
        else:
            acked = await self._send_and_wait(self._cmd_wake(), "wake", None)
        # The mode is re-sent: a sensor power-cycled while asleep comes back in its default mode.
        await self._write(self._cmd_mode(self.mode))
        self._woke(self._ticks())
        if acked or not self.WAKE_NEEDS_ACK:
            return True, "%s is awake; readings count after its %d s warm-up." % (
                self.id, self._warmup_ms // 1000)
        return False, "%s did not acknowledge the wake command." % self.id

    async def _set_mode(self, mode):
        if mode not in self._modes:
            return False, "%s has no mode %r (%s)." % (self.id, mode, ", ".join(self._modes))
        if not await self._send_and_wait(self._cmd_mode(mode), "mode", mode):
            return False, "%s did not acknowledge the %s mode command." % (self.id, mode)
        self.mode = mode
        self._next_poll = self._ticks()
        self._next_timeout = None
        return True, "%s is in %s mode." % (self.id, mode)
