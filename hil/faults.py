"""The sans-IO model of one direction of a serial line: character timing and injected faults.

A `Line` is told which bytes a program wrote at one end and when (`feed(data, now)`), and answers
which bytes the other end receives and when (`next_deadline()`, `take_due(now)`). Time is always an
argument, so the model is exact and reproducible under test; `hil.wire` drives it with the event
loop's monotonic clock and real pseudo-terminals.

Timing: a UART sends one character at a time, so byte i starts when it was written or when byte i-1
finished, whichever is later, and is received when it finishes, one character time later. Deadlines
are absolute, so a late event loop releases a small burst instead of drifting, and a gap on the input
(a Modbus t3.5 silence) reaches the receiver intact.

Faults that belong to a byte (bit flips, drop, duplicate) are drawn when it is written, each from its
own seeded RNG, so a run reproduces for the same bytes whatever the event loop's timing. Faults that
belong to a moment (unplugged cable, stuck line, half-duplex collision) are judged at the instant
the byte finishes on the line.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

Direction = Literal["a_to_b", "b_to_a"]
DIRECTIONS: tuple[Direction, Direction] = ("a_to_b", "b_to_a")
FOREVER = math.inf


class WireError(Exception):
    """Base of the virtual wire's errors."""


class WireConfigError(WireError, ValueError):
    """A wire setting is out of range: `key` names it, `value` is what was given."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"virtual wire setting {key}={value!r}: {reason}")


@dataclass(frozen=True)
class Framing:
    """Character framing, e.g. 8N1: one start bit, data bits, optional parity bit, stop bits."""

    data_bits: int = 8
    parity: str = "N"
    stop_bits: int = 1

    @classmethod
    def parse(cls, text: str) -> Framing:
        """Read "8N1", "8E1", "8O1", "8N2" (data bits 5-8, parity N/E/O/M/S, stop bits 1-2)."""
        if len(text) != 3 or text[0] not in "5678" or text[1].upper() not in "NEOMS" or text[2] not in "12":
            raise WireConfigError("framing", text, "expected data bits 5-8, parity N/E/O/M/S and stop bits 1-2, like '8N1'")
        return cls(int(text[0]), text[1].upper(), int(text[2]))

    @property
    def bits_per_char(self) -> int:
        return 1 + self.data_bits + (0 if self.parity == "N" else 1) + self.stop_bits

    def char_time(self, baud: int | None) -> float | None:
        """Seconds one character occupies the line, or None for an untimed wire."""
        if baud is None:
            return None
        if baud <= 0:
            raise WireConfigError("baud", baud, "must be a positive number of bits per second, or None for no timing")
        return self.bits_per_char / baud

    def __str__(self) -> str:
        return f"{self.data_bits}{self.parity}{self.stop_bits}"


@dataclass(frozen=True, kw_only=True)
class FaultSettings:
    """Per-byte fault probabilities of one direction. Bit errors hit the data bits only: a flipped
    start, parity or stop bit would be a framing or parity error, which a pty cannot express."""

    bit_error_rate: float = 0.0
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0

    def __post_init__(self) -> None:
        for key in ("bit_error_rate", "drop_rate", "duplicate_rate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise WireConfigError(key, value, "must be a probability between 0 and 1")


@dataclass
class LineCounters:
    """What one direction did. Conservation: bytes_in + bytes_duplicated + bytes_stuck_injected
    = bytes_out + bytes_dropped + bytes_lost_unplugged + bytes_lost_stuck + bytes_lost_closed
    + bytes still in flight. Collided bytes are delivered garbled and also counted in bytes_out."""

    bytes_in: int = 0
    bytes_out: int = 0
    bits_flipped: int = 0
    bytes_dropped: int = 0
    bytes_duplicated: int = 0
    bytes_lost_unplugged: int = 0
    bytes_lost_stuck: int = 0
    bytes_stuck_injected: int = 0
    bytes_collided: int = 0
    bytes_lost_closed: int = 0

    def copy(self) -> LineCounters:
        return replace(self)


class FaultEvent(NamedTuple):
    """One ground-truth entry. `t` is the monotonic clock time the fault took effect; `where` is a
    direction ("a_to_b") or an end ("a"); `offset` is the byte's index in that direction's input
    stream, or -1 when the event is not about one byte."""

    t: float
    where: str
    kind: str
    offset: int
    detail: str


class _Slot:
    """One character on the line: sent from `start` to `end`; `value` None means it was dropped."""

    __slots__ = ("collided", "end", "offset", "start", "value")

    def __init__(self, start: float, end: float, value: int | None, offset: int) -> None:
        self.start = start
        self.end = end
        self.value = value
        self.offset = offset
        self.collided = False


class _Windows:
    """Time intervals [start, end) during which a condition held, kept until no byte can need them."""

    def __init__(self) -> None:
        self._spans: list[list[float]] = []

    def open(self, start: float, end: float) -> None:
        self.close(start)
        self._spans.append([start, end])

    def close(self, at: float) -> None:
        for span in self._spans:
            if span[1] > at:
                span[1] = max(span[0], at)

    def contains(self, t: float) -> bool:
        return any(start <= t < end for start, end in self._spans)

    def prune(self, before: float) -> None:
        self._spans = [s for s in self._spans if s[1] > before]


class Line:
    """One direction of a wire: feed it what the sender wrote, take what the receiver gets."""

    def __init__(
        self,
        *,
        direction: Direction,
        char_time: float | None,
        data_bits: int = 8,
        settings: FaultSettings | None = None,
        seed: int = 0,
        log: list[FaultEvent] | None = None,
    ) -> None:
        self.direction = direction
        self.char_time = char_time
        self.counters = LineCounters()
        self.peer: Line | None = None  # set for half duplex: both directions share one medium
        self._data_mask = (1 << data_bits) - 1
        self._data_bits = data_bits
        self._log = log
        # One RNG per fault kind, so changing one rate does not reshuffle the others.
        self._rng_bits = random.Random(f"{seed}/{direction}/bits")
        self._rng_drop = random.Random(f"{seed}/{direction}/drop")
        self._rng_dup = random.Random(f"{seed}/{direction}/duplicate")
        self._rng_collide = random.Random(f"{seed}/{direction}/collide")
        self._settings = FaultSettings()
        self._next_error = 0
        self._queue: deque[_Slot] = deque()
        self._line_free = -FOREVER
        self._burst_start = 0.0  # a busy line's deadlines are burst_start + k * char_time, exactly
        self._burst_chars = 0
        self._unplugged = _Windows()
        self._stuck = _Windows()
        self._babble: list[float] | None = None  # [next time, end time] while a stuck line babbles
        self._babble_value = 0
        self.last_due = -FOREVER  # when the last byte take_due returned finished on the line
        self.set_settings(settings or FaultSettings(), now=None)

    # -- settings and time-window faults -------------------------------------------------------

    @property
    def settings(self) -> FaultSettings:
        return self._settings

    def set_settings(self, settings: FaultSettings, *, now: float | None) -> None:
        """Apply new fault probabilities to bytes written from now on."""
        self._settings = settings
        self._next_error = self._geometric(settings.bit_error_rate)
        if now is not None:
            self._record(now, "settings", -1, repr(settings))

    def unplug(self, now: float, until: float = FOREVER) -> None:
        """No byte finishing in [now, until) reaches the receiver."""
        self._unplugged.open(now, until)
        self._record(now, "unplug", -1, "" if until == FOREVER else f"until {until:.6f}")

    def replug(self, now: float) -> None:
        self._unplugged.close(now)
        self._record(now, "replug", -1, "")

    def stick(self, now: float, until: float = FOREVER, value: int | None = None) -> None:
        """The receiver gets none of the sender's bytes in [now, until); with `value`, it gets that
        byte over and over at the line's character rate instead (a line stuck low babbles 0x00)."""
        if value is not None:
            if self.char_time is None:
                raise WireConfigError("stuck value", value, "a babbling stuck line needs a baud rate to pace it")
            if not 0 <= value <= 255:
                raise WireConfigError("stuck value", value, "must be a byte, 0..255")
            self._babble = [now + self.char_time, until]
            self._babble_value = value
        else:
            self._babble = None
        self._stuck.open(now, until)
        detail = "silent" if value is None else f"babbling 0x{value:02X}"
        self._record(now, "stuck", -1, detail if until == FOREVER else f"{detail} until {until:.6f}")

    def unstick(self, now: float) -> None:
        self._stuck.close(now)
        if self._babble is not None:
            self._babble[1] = min(self._babble[1], now)
        self._record(now, "unstuck", -1, "")

    def unplugged(self, now: float) -> bool:
        return self._unplugged.contains(now)

    def stuck(self, now: float) -> bool:
        return self._stuck.contains(now)

    # -- data path -----------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """The sender wrote `data` at time `now` (it reached the wire then)."""
        settings = self._settings
        for byte in data:
            offset = self.counters.bytes_in
            self.counters.bytes_in += 1
            mask = self._flip_mask()
            if settings.drop_rate and self._rng_drop.random() < settings.drop_rate:
                self.counters.bytes_dropped += 1
                self._record(now, "drop", offset, f"0x{byte:02X}")
                self._schedule(None, offset, now)  # the character still crossed the line
                continue
            if mask:
                self.counters.bits_flipped += mask.bit_count()
                self._record(now, "bit_flip", offset, f"0x{byte:02X}^0x{mask:02X}")
                byte ^= mask
            self._schedule(byte, offset, now)
            if settings.duplicate_rate and self._rng_dup.random() < settings.duplicate_rate:
                self.counters.bytes_duplicated += 1
                self._record(now, "duplicate", offset, f"0x{byte:02X}")
                self._schedule(byte, offset, now)

    def next_deadline(self) -> float | None:
        """When the receiver is next due a byte, or None when nothing is in flight."""
        times = []
        if self._queue:
            times.append(self._queue[0].end)
        if self._babble is not None and self._babble[0] < self._babble[1]:
            times.append(self._babble[0])
        return min(times) if times else None

    def take_due(self, now: float) -> bytes:
        """The bytes whose character has finished by `now`, in order."""
        received: list[tuple[float, int]] = []
        queue = self._queue
        while queue and queue[0].end <= now:
            slot = queue.popleft()
            if slot.value is None:
                continue
            if self._unplugged.contains(slot.end):
                self.counters.bytes_lost_unplugged += 1
                self._record(slot.end, "lost_unplugged", slot.offset, f"0x{slot.value:02X}")
                continue
            if self._stuck.contains(slot.end):
                self.counters.bytes_lost_stuck += 1
                self._record(slot.end, "lost_stuck", slot.offset, f"0x{slot.value:02X}")
                continue
            value = slot.value
            if slot.collided:
                value ^= self._rng_collide.randrange(1, self._data_mask + 1)
                self.counters.bytes_collided += 1
                self._record(slot.end, "collision", slot.offset, f"0x{slot.value:02X}->0x{value:02X}")
            received.append((slot.end, value))
        babble = self._babble
        if babble is not None:
            assert self.char_time is not None
            while babble[0] < babble[1] and babble[0] <= now:
                if not self._unplugged.contains(babble[0]):
                    received.append((babble[0], self._babble_value))
                    self.counters.bytes_stuck_injected += 1
                babble[0] += self.char_time
            if babble[0] >= babble[1]:
                self._babble = None
            received.sort(key=lambda item: item[0])
        self._unplugged.prune(now)
        self._stuck.prune(now)
        if received:
            self.last_due = received[-1][0]
        return bytes(value for _, value in received)

    def in_flight(self) -> int:
        """Bytes written but not yet received, lost or dropped (dropped slots excluded)."""
        return sum(1 for slot in self._queue if slot.value is not None)

    def busy(self) -> bool:
        return bool(self._queue) or self._babble is not None

    def count_delivered(self, n: int) -> None:
        self.counters.bytes_out += n

    def count_lost_closed(self, data: bytes, now: float, end: str) -> None:
        """The receiving program had its port closed: these bytes went nowhere."""
        self.counters.bytes_lost_closed += len(data)
        self._record(now, "lost_closed", -1, f"{len(data)} bytes, end {end} closed")

    # -- internals -----------------------------------------------------------------------------

    def _schedule(self, value: int | None, offset: int, now: float) -> None:
        if self.char_time is None:
            start = end = max(now, self._line_free)
        else:
            if now >= self._line_free:  # the line was idle: a new burst starts now
                self._burst_start, self._burst_chars = now, 0
            start = self._line_free if self._burst_chars else now
            self._burst_chars += 1
            end = self._burst_start + self._burst_chars * self.char_time
        self._line_free = end
        slot = _Slot(start, end, value, offset)
        if self.peer is not None:
            for other in self.peer._queue:  # sorted by start: stop at the first one after ours
                if other.start >= end:
                    break
                if other.end > start:
                    other.collided = slot.collided = True
        self._queue.append(slot)

    def _geometric(self, p: float) -> int:
        """How many error-free bits come before the next flipped one (exact for any rate)."""
        if p <= 0.0:
            return 1 << 62
        if p >= 1.0:
            return 0
        return int(math.log1p(-self._rng_bits.random()) / math.log1p(-p))

    def _flip_mask(self) -> int:
        pos = self._next_error
        if pos >= self._data_bits:
            self._next_error = pos - self._data_bits
            return 0
        p = self._settings.bit_error_rate
        mask = 0
        while pos < self._data_bits:
            mask |= 1 << pos
            pos += 1 + self._geometric(p)
        self._next_error = pos - self._data_bits
        return mask

    def _record(self, t: float, kind: str, offset: int, detail: str) -> None:
        if self._log is not None:
            self._log.append(FaultEvent(t, self.direction, kind, offset, detail))
