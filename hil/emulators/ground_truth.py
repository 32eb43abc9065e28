"""The ground truth the emulators write, and the clock they stamp it with.

Every emulated device of a scenario appends what it really did to one `GroundTruthLog`: a record is
(t_utc_ms, source, kind, fields), kept in memory and, given a path, appended to a JSON-lines file
(one object a line, flushed as written, so a crashed run keeps everything it logged):

    {"t_utc_ms": 1700000000123, "source": "signal", "kind": "event", "fields": {"code": 1, ...}}

Times. Emulators schedule in host CLOCK_MONOTONIC microseconds, the time base the host HAL's
ticks come from (firmware/hal_host.py: t_us = time.monotonic_ns() // 1000), so an edge or an
interval change is stamped exactly as the node will stamp it; a record's fields carry that `t_us`.
`t_utc_ms` is the same instant in UTC milliseconds through one fixed monotonic-to-UTC offset taken
when the clock is made (a wall-clock step mid-run does not bend the log), which is what the
accounting compares with the UTC times the gateway publishes.

Clocks. `MonotonicClock` is the real one. `ManualClock` is a test clock: time stands still until
the test calls advance(), then every sleeper whose deadline has come is woken in deadline order,
so an emulator runs as fast as the test steps it and the same steps give the same log.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, Self

__all__ = [
    "Clock", "GroundTruthLog", "ManualClock", "MonotonicClock", "TruthLogError", "TruthRecord",
    "read_truth",
]

# A ManualClock starts at a monotonic-looking time, well past 2**30 us (where ticks_us wraps), and
# at a fixed UTC instant, so every run of a test stamps the same numbers.
MANUAL_START_US = 5_000_000_000
MANUAL_UTC_MS = 1_700_000_000_000
WAIT_POLL_S = 0.005


class TruthLogError(Exception):
    """The log cannot be written or read: `path` and a one-sentence `reason`."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"ground-truth log {path}: {reason}")


class Clock(Protocol):
    """Where emulators read time and wait for it."""

    def now_us(self) -> int:
        """Host CLOCK_MONOTONIC microseconds (the t_us of the pin control protocol)."""
        ...

    def utc_ms(self, t_us: int) -> int:
        """The UTC millisecond of a monotonic time."""
        ...

    async def sleep_until(self, t_us: int) -> None:
        """Return once now_us() >= t_us."""
        ...


class MonotonicClock:
    """The host's CLOCK_MONOTONIC, mapped to UTC through the offset seen when it was made."""

    def __init__(self) -> None:
        mono_ns = time.monotonic_ns()
        self._offset_us = time.time_ns() // 1000 - mono_ns // 1000

    def now_us(self) -> int:
        return time.monotonic_ns() // 1000

    def utc_ms(self, t_us: int) -> int:
        return (t_us + self._offset_us) // 1000

    async def sleep_until(self, t_us: int) -> None:
        # asyncio may fire a timer a clock-resolution early: look again until the time has come.
        while (left := t_us - self.now_us()) > 0:
            await asyncio.sleep(left / 1e6)


class ManualClock:
    """Test time: stands still until advance(); sleepers wake in deadline order."""

    def __init__(self, *, start_us: int = MANUAL_START_US, utc_ms_at_start: int = MANUAL_UTC_MS) -> None:
        self._now = start_us
        self._offset_us = utc_ms_at_start * 1000 - start_us
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_us(self) -> int:
        return self._now

    def utc_ms(self, t_us: int) -> int:
        return (t_us + self._offset_us) // 1000

    async def sleep_until(self, t_us: int) -> None:
        if t_us <= self._now:
            await asyncio.sleep(0)  # still a yield point, as a real sleep would be
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (t_us, next(self._order), future))
        await future

    def advance(self, seconds: float) -> int:
        """Move time forward by `seconds` (rounded to the microsecond); returns the new now_us()."""
        return self.set(self._now + round(seconds * 1e6))

    def set(self, t_us: int) -> int:
        """Move time forward to `t_us` (never back) and wake the sleepers now due."""
        if t_us < self._now:
            raise ValueError(f"a ManualClock never goes back: at {self._now} us, asked for {t_us} us")
        self._now = t_us
        while self._sleepers and self._sleepers[0][0] <= t_us:
            future = heapq.heappop(self._sleepers)[2]
            if not future.done():
                future.set_result(None)
        return t_us

    def next_deadline(self) -> int | None:
        """The earliest time a sleeper waits for, or None when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleeps
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None


@dataclass(frozen=True)
class TruthRecord:
    """One thing an emulator did: when (UTC ms), which emulator, what kind, and the details."""

    t_utc_ms: int
    source: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"t_utc_ms": self.t_utc_ms, "source": self.source, "kind": self.kind,
                           "fields": self.fields}, separators=(",", ":"), sort_keys=True)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


class GroundTruthLog:
    """An append-only ground-truth log shared by the emulators of one run; safe to append to from
    several threads. Use `with GroundTruthLog(path, clock=clock) as truth:` to have the file
    closed; without a path it only keeps records in memory."""

    def __init__(self, path: str | Path | None = None, *, clock: Clock | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._records: list[TruthRecord] = []
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            try:
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise TruthLogError(str(self.path), f"cannot open it for appending ({exc.strerror})") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def record(self, source: str, kind: str, *, t_us: int | None = None, **fields: Any) -> TruthRecord:
        """Append one record stamped at `t_us` (default: now); `t_us` is also kept in its fields.
        Field values must be JSON-serialisable."""
        if t_us is None:
            t_us = self.clock.now_us()
        entry = TruthRecord(self.clock.utc_ms(t_us), source, kind, {"t_us": t_us, **fields})
        line = entry.to_json() + "\n"  # serialised first: a bad field never half-writes a line
        with self._lock:
            self._records.append(entry)
            if self._file is not None:
                self._file.write(line)
                self._file.flush()
        return entry

    def records(self, source: str | None = None, kind: str | None = None) -> list[TruthRecord]:
        """The records so far, in the order written, optionally only one source and/or kind."""
        with self._lock:
            snapshot = list(self._records)
        return [r for r in snapshot
                if (source is None or r.source == source) and (kind is None or r.kind == kind)]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[TruthRecord]:
        return iter(self.records())

    async def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Poll `predicate` until it is true; TimeoutError after `timeout` seconds of real time."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(WAIT_POLL_S)


def read_truth(path: str | Path) -> list[TruthRecord]:
    """The records of a JSON-lines ground-truth file, in file order."""
    out: list[TruthRecord] = []
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    out.append(TruthRecord(int(obj["t_utc_ms"]), str(obj["source"]), str(obj["kind"]),
                                           dict(obj["fields"])))
                except (ValueError, KeyError, TypeError) as exc:
                    raise TruthLogError(str(path), f"line {number} is not a truth record ({exc})") from exc
    except OSError as exc:
        raise TruthLogError(str(path), f"cannot read it ({exc.strerror})") from exc
    return out
