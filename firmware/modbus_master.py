"""The node's Modbus RTU master: one per bus, one transaction at a time, a dead unit never stalls it.

The bytes are protocols/' business (modbus_adu builds and checks ADUs, modbus_framing frames the
reply stream, modbus_plan merges registers into reads: the master's part of the codec, so the node
does not carry modbus_rtu's server side); this module owns the bus: time, retries, per-unit health
and counters.

- Silence: t3.5 of bus silence before each request (Modbus over Serial Line V1.02 §2.5.1.1:
  3.5 character times, fixed at 1.75 ms above 19200 baud; modbus_timing.t35_us).
- Framing: by length and CRC. A node cannot see the inter-character gaps the spec frames by:
  the UART's buffer (and, in the harness, a TCP hop) hands bytes over in chunks. Input left over
  from an earlier exchange is discarded before each request.
- Timeout: a reply must be complete within (request + reply characters) + the unit's turnaround
  (the profile's "turnaround_ms": how long the device takes to start answering) + timeout_ms of
  slack, counted from the write.
- Outcomes, each with its own counter and fault code: a reply (ok); an exception reply
  (ModbusException from protocols.modbus_adu, the device is alive: FAULT_MODBUS_EXCEPTION | code);
  a candidate reply that failed its CRC (crc_errors, FAULT_CHECKSUM); bytes that never formed a
  valid reply, or a reply that does not answer the request (framing_errors, FAULT_FRAMING);
  silence (timeouts, FAULT_TIMEOUT). Failures other than exceptions are retried.
- Backoff: after `offline_after` failed requests in a row a unit is offline; it is then tried once
  (no retries) per backoff window, which doubles after each failed try up to a cap. Requests in
  between fail at once with FAULT_UNAVAILABLE (skipped_backoff) without touching the bus. Any
  answer, even an exception, brings it back.
"""

import asyncio

from firmware.register_entry import register_words
from protocols.quality_codes import (
    FAULT_CHECKSUM, FAULT_FRAMING, FAULT_TIMEOUT, FAULT_UNAVAILABLE, modbus_fault)
from protocols.modbus_adu import (
    ANY_ADDRESS, ModbusException, ModbusFrameError, reply_length, reply_values, request_head)
from protocols.modbus_framing import RtuFramer
from protocols.modbus_plan import plan_reads
from protocols.modbus_timing import char_time_us, t35_us

DEFAULT_TIMEOUT_MS = 100  # slack beyond the wire time; USB adapters and OS latency fit in it
DEFAULT_RETRIES = 1
DEFAULT_OFFLINE_AFTER = 3
DEFAULT_BACKOFF_MS = 1000
DEFAULT_BACKOFF_MAX_MS = 30000
EXPIRY_NAP_MS = 20
_NO_DEADLINE_US = 60000000  # a deadline this far off stands for "none yet" (well inside ticks_diff)
BROADCAST_DELAY_MS = 100  # serial spec §2.4.1 "turnaround delay" after a broadcast (typ. 100-200 ms)

_KINDS = {FAULT_TIMEOUT: "timeouts", FAULT_CHECKSUM: "crc_errors", FAULT_FRAMING: "framing_errors"}


class ModbusError(Exception):
    """A request that got no usable answer: `fault` is FAULT_TIMEOUT, FAULT_CHECKSUM, FAULT_FRAMING
    or FAULT_UNAVAILABLE (protocols/quality_codes.py); `reason` is one sentence naming the unit."""

    def __init__(self, fault, unit, reason):
        self.fault = fault
        self.unit = unit
        self.reason = reason
        super().__init__(reason)


def fault_of(result):
    """(fault, detail) for a failed result (ModbusError or ModbusException), (0, 0) otherwise."""
    if isinstance(result, ModbusError):
        return result.fault, 0
    if isinstance(result, ModbusException):
        return modbus_fault(result.code), 0
    return 0, 0


def failed(result):
    return isinstance(result, (ModbusError, ModbusException))


def profile_plan(profile, entries):
    """A protocols.modbus_plan ReadPlan for `entries` (profile register dicts, in that order),
    honouring the profile's max_registers_per_request, one_register_per_request and max_gap."""
    wanted = []
    for entry in entries:
        wanted.append((entry.get("table", "holding"), entry["address"], register_words(entry)))
    return plan_reads(wanted, max_gap=profile.get("max_gap", 0),
                      max_quantity=profile.get("max_registers_per_request"),
                      one_register_per_request=bool(profile.get("one_register_per_request")))


class _Unit:
    def __init__(self, unit):
        self.unit = unit
        self.turnaround_us = 0
        self.timeout_ms = DEFAULT_TIMEOUT_MS
        self.retries = DEFAULT_RETRIES
        self.offline_after = DEFAULT_OFFLINE_AFTER
        self.backoff_ms = DEFAULT_BACKOFF_MS
        self.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS
        self.failures = 0  # failed requests in a row
        self.offline = False
        self.window = 0  # current backoff window, ms
        self.retry_at = 0  # tick (ms) from which the next try is allowed
        self.counters = {"requests": 0, "ok": 0, "timeouts": 0, "crc_errors": 0, "exceptions": 0,
                         "framing_errors": 0, "skipped_backoff": 0, "offline": 0}


class ModbusMaster:
    """ModbusMaster(hal, uart, baud, framing): the master of one bus (NodeContext.modbus())."""

    def __init__(self, hal, uart, baud, framing="8E1"):
        self.hal = hal
        self.uart = uart
        self.baud = baud
        self.framing = framing
        self._char_us = char_time_us(baud, framing)
        self._t35_us = int(t35_us(baud, framing)) + 1
        self._lock = asyncio.Lock()
        self._rx = RtuFramer()  # by length and CRC (see module doc)
        self._done = asyncio.Event()
        self._armed = asyncio.Event()  # a transaction set its deadline: the expiry task wakes
        self._deadline = 0  # ticks_us by which the awaited reply must be complete
        self._waiting = False
        self._frame = None
        self._crc_mark = 0
        self._idle_since = hal.ticks_us()  # the bus's last activity (ticks_us)
        # When the last good reply began (ticks_us): a unit samples what it reports just before
        # it answers, so this is the latest instant the reported state can be stamped with.
        self.reply_start_us = self._idle_since
        self._reader = None
        self._expiry = None
        self._units = {}
        self.counters = {"stale_frames": 0, "read_errors": 0}  # bus-wide

    # --- per-unit settings and state ----------------------------------------------------------

    def _unit(self, unit):
        st = self._units.get(unit)
        if st is None:
            st = _Unit(unit)
            self._units[unit] = st
        return st

    def configure(self, unit, turnaround_ms=None, timeout_ms=None, retries=None,
                  offline_after=None, backoff_ms=None, backoff_max_ms=None):
        """Set a unit's timing and backoff; None keeps the current value."""
        st = self._unit(unit)
        if turnaround_ms is not None:
            st.turnaround_us = int(turnaround_ms * 1000)
        if timeout_ms is not None:
            st.timeout_ms = timeout_ms
        if retries is not None:
            st.retries = retries
        if offline_after is not None:
            st.offline_after = max(1, offline_after)
        if backoff_ms is not None:
            st.backoff_ms = max(1, backoff_ms)
        if backoff_max_ms is not None:
            st.backoff_max_ms = max(st.backoff_ms, backoff_max_ms)
        return st.counters

    def counters_for(self, unit):
        """The unit's counters dict (live: requests, ok, timeouts, crc_errors, exceptions,
        framing_errors, skipped_backoff, offline = times it was marked offline)."""
        return self._unit(unit).counters

    def is_offline(self, unit):
        return self._unit(unit).offline

    def _skip(self, st):
        """A ModbusError when `st` is offline and its next try is not due yet, else None."""
        if not st.offline:
            return None
        wait = self.hal.ticks_diff(st.retry_at, self.hal.ticks_ms())
        if wait <= 0:
            return None
        st.counters["skipped_backoff"] += 1
        return ModbusError(FAULT_UNAVAILABLE, st.unit,
                           "unit %d is offline after %d failed requests; next try in %d ms"
                           % (st.unit, st.failures, wait))

    def _alive(self, st):
        st.failures = 0
        st.offline = False
        st.window = 0

    def _failed(self, st):
        st.failures += 1
        if st.offline:
            st.window = min(2 * st.window, st.backoff_max_ms)
        elif st.failures >= st.offline_after:
            st.offline = True
            st.window = st.backoff_ms
            st.counters["offline"] += 1
        else:
            return
        st.retry_at = self.hal.ticks_add(self.hal.ticks_ms(), st.window)

    # --- the bus --------------------------------------------------------------------------------

    def _start_reader(self):
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop())
            self._expiry = asyncio.create_task(self._expiry_loop())

    def close(self):
        """Stop the bus's reader and expiry tasks (the UART stays open: NodeContext owns it)."""
        if self._reader is not None:
            self._reader.cancel()
            self._expiry.cancel()
            self._reader = None
            self._expiry = None

    async def _read_loop(self):
        # One reader for the bus's lifetime: a wait that times out never cancels a pending read,
        # so no byte is lost between transactions (the host HAL's reads are JS promises in the VM).
        rx = self._rx
        while True:
            try:
                data = await self.uart.read(256)
            except Exception:  # noqa: BLE001 - a closed or failing port: requests time out
                self.counters["read_errors"] += 1
                await asyncio.sleep(0.05)
                continue
            if not data:
                await asyncio.sleep(0.001)
                continue
            self._idle_since = self.hal.ticks_us()
            items = rx.feed(data)
            if not self._waiting:
                for item in items:
                    if isinstance(item, bytes):
                        self.counters["stale_frames"] += 1
                continue
            for item in items:
                if isinstance(item, bytes):
                    self._frame = item
                    # Its first byte can have come no later than this: bytes cannot outrun the
                    # baud rate, so the estimate errs late, never before the unit's sample.
                    self.reply_start_us = self.hal.ticks_add(
                        self._idle_since, -int(len(item) * self._char_us))
                    break
            if self._frame is not None or rx.counters["bad_crc"] != self._crc_mark:
                self._waiting = False
                self._done.set()

    async def _expiry_loop(self):
        # One timer for the bus's lifetime rather than a task per transaction (~250 B each on
        # MicroPython): it ends the wait of whichever transaction is waiting once its deadline has
        # passed. It naps at most EXPIRY_NAP_MS, so a deadline set while it naps is seen at most
        # that late (a timeout only; a reply ends the wait through the reader at once).
        hal = self.hal
        while True:
            if not self._waiting:
                await self._armed.wait()
                self._armed.clear()
                continue
            left = hal.ticks_diff(self._deadline, hal.ticks_us())
            if left <= 0:
                self._waiting = False
                self._done.set()
                continue
            # Whole ms, rounded up (see _transact's t3.5 wait).
            await asyncio.sleep((min(left, EXPIRY_NAP_MS * 1000) + 999) // 1000 / 1000)

    async def _transact(self, st, head, adu, timeout_ms):
        """One request on the wire: its parsed reply, or ModbusException / ModbusError."""
        # t3.5 of quiet first, in whole ms, rounded up and checked again: MicroPython's
        # asyncio.sleep(s) is sleep_ms(int(s * 1000)), which cut t3.5 short (1 ms for 1.75 ms at
        # 115200 baud). Inline rather than a helper coroutine: one less object per transaction.
        while True:
            left = self._t35_us - self.hal.ticks_diff(self.hal.ticks_us(), self._idle_since)
            if left <= 0:
                break
            await asyncio.sleep(((left + 999) // 1000) / 1000)
        self.uart.discard_input()
        rx = self._rx
        reply_len = reply_length(head)
        if reply_len:
            rx.expect_reply(head)  # drops what is still buffered: it answers nothing we are waiting for
        self._frame = None
        self._crc_mark = rx.counters["bad_crc"]
        bytes_mark = rx.counters["bytes"]
        self._done.clear()
        # No deadline until the request is out (the write can take its own time).
        self._deadline = self.hal.ticks_add(self.hal.ticks_us(), _NO_DEADLINE_US)
        self._waiting = reply_len > 0
        st.counters["requests"] += 1
        try:
            await self.uart.write(adu)
            # The reader starts after the first write: the host HAL's Uart opens its connection
            # on first use, and a read racing that first write would open a second one. A reply
            # that comes first waits in the UART (or socket) buffer.
            self._start_reader()
            sent = self.hal.ticks_us()
            self._idle_since = self.hal.ticks_add(sent, int(len(adu) * self._char_us))
            if not reply_len:
                await asyncio.sleep(max(BROADCAST_DELAY_MS, st.turnaround_us // 1000) / 1000)
                return None
            wait_us = (len(adu) + reply_len) * self._char_us + st.turnaround_us + timeout_ms * 1000
            # The expiry task rather than asyncio.wait_for: MicroPython's wait_for cancels the
            # waiting task to wake it, which the WebAssembly port's top-level coroutine cannot take.
            self._deadline = self.hal.ticks_add(sent, int(wait_us))
            self._armed.set()
            await self._done.wait()
        finally:
            self._waiting = False
        frame = self._frame
        self._frame = None
        if frame is not None:
            try:
                return reply_values(head, frame)  # the framer checked the rest
            except ModbusFrameError as exc:
                raise ModbusError(FAULT_FRAMING, st.unit, "unit %d sent a reply that does not "
                                  "answer its request: %s" % (st.unit, exc.reason))
        if rx.counters["bad_crc"] != self._crc_mark:
            raise ModbusError(FAULT_CHECKSUM, st.unit, "unit %d's reply failed its CRC check"
                              % st.unit)
        if rx.counters["bytes"] != bytes_mark:
            raise ModbusError(FAULT_FRAMING, st.unit, "unit %d's reply was garbled: %d bytes "
                              "formed no valid frame" % (st.unit, rx.counters["bytes"] - bytes_mark))
        raise ModbusError(FAULT_TIMEOUT, st.unit, "unit %d did not answer within %d ms"
                          % (st.unit, int(wait_us // 1000)))

    async def request(self, unit, request_adu, timeout_ms=None, retries=None, any_address=False):
        """Send `request_adu` (a whole request ADU from protocols.modbus_adu's or modbus_rtu's
        builders, which check its fields; here only its CRC and length are, ModbusFrameError) to
        `unit` and return modbus_rtu.parse_response's values. Raises ModbusException for an
        exception reply and ModbusError (fault FAULT_TIMEOUT / CHECKSUM / FRAMING / UNAVAILABLE)
        otherwise."""
        st = self._unit(unit)
        head = request_head(request_adu)
        if head[0] == ANY_ADDRESS and not any_address:
            raise ValueError("unit 0xFE answers only devices whose profile sets any_address")
        err = self._skip(st)
        if err is not None:
            raise err
        timeout_ms = st.timeout_ms if timeout_ms is None else timeout_ms
        attempts = 1 if st.offline else 1 + (st.retries if retries is None else retries)
        # acquire/release rather than `async with`: the context manager's __aenter__/__aexit__
        # coroutines cost ~290 B per request on MicroPython, for the same lock.
        await self._lock.acquire()
        try:
            for _ in range(attempts):
                try:
                    values = await self._transact(st, head, request_adu, timeout_ms)
                except ModbusException:
                    st.counters["exceptions"] += 1
                    self._alive(st)
                    raise
                except ModbusError as exc:
                    st.counters[_KINDS[exc.fault]] += 1
                    err = exc
                    continue
                st.counters["ok"] += 1
                self._alive(st)
                return values
            self._failed(st)
        finally:
            self._lock.release()
        raise err

    async def read_plan(self, unit, plan, timeout_ms=None, retries=None, any_address=False):
        """Execute a protocols.modbus_plan ReadPlan at `unit`: for each of the plan's wanted
        entries, the list of its register values, or the ModbusError / ModbusException that
        kept it from being read (see fault_of). After a silence (timeout, or the unit offline)
        the plan's remaining reads are not tried: they share that fault."""
        reads = plan.reads
        results = [None] * len(reads)
        stop = None
        for i in range(len(reads)):
            if stop is not None:
                results[i] = stop
                continue
            adu = reads[i].request(unit, any_address)
            try:
                results[i] = await self.request(unit, adu, timeout_ms, retries, any_address)
            except (ModbusException, ModbusError) as exc:
                results[i] = exc
                if isinstance(exc, ModbusError) and exc.fault in (FAULT_TIMEOUT, FAULT_UNAVAILABLE):
                    stop = exc
        return plan.extract(results)
