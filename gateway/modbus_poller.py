"""The gateway's Modbus poller: devices wired to the Pi itself, read on schedule, as samples.

    plan = plan_bus(SerialBus(id="rs485", port="/dev/ttyUSB0", baud=19200), devices)
    async with ModbusPoller([plan], sink=spool_writer) as poller:
        ...                      # samples flow to `sink` (or poller.samples, an asyncio.Queue)
        poller.counters()        # per device: requests, ok, timeouts, exceptions, ...

Plans come from gateway.poll_plan (which refuses a plan that cannot fit its interval); each bus
runs in its own task (gateway.poll_bus: schedule, backoff, quality of every sample).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Self

from gateway.modbus_errors import ModbusPollerError
from gateway.poll_backoff import BackoffPolicy
from gateway.poll_bus import BusRunner, DeviceCounters, Sample
from gateway.poll_plan import BusPlan

__all__ = ["DeviceCounters", "ModbusPoller", "Sample"]


class ModbusPoller:
    """Polls every bus of `plans` (from poll_plan.plan_bus) on schedule, as an `async with`
    resource. Samples go to `sink(sample)` when given, else to `self.samples` (an asyncio.Queue
    of `queue_size`; when full the oldest sample is dropped and counted in `dropped_samples`).
    `schedule=False` connects without polling, for poll_once. `clock` gives UTC seconds."""

    def __init__(
        self,
        plans: Sequence[BusPlan],
        *,
        sink: Callable[[Sample], object] | None = None,
        backoff: BackoffPolicy | None = None,
        clock: Callable[[], float] = time.time,
        queue_size: int = 100_000,
        schedule: bool = True,
    ) -> None:
        seen: dict[str, str] = {}
        for plan in plans:  # plan_bus already refused a device id twice on one bus
            for device_plan in plan.devices:
                device = device_plan.device.id
                if device in seen:
                    raise ModbusPollerError(
                        f"device id {device} is on bus {seen[device]} and bus {plan.bus.id}: "
                        f"device ids name streams and must be unique")
                seen[device] = plan.bus.id
        bus_ids = [p.bus.id for p in plans]
        if len(set(bus_ids)) != len(bus_ids):
            raise ModbusPollerError(f"bus ids {bus_ids} repeat: give each bus its own id")
        self.plans = tuple(plans)
        self._sink = sink
        self._backoff = backoff or BackoffPolicy()
        self._clock = clock
        self._schedule = schedule
        self.samples: asyncio.Queue[Sample] = asyncio.Queue(queue_size)
        self.dropped_samples = 0
        self._runners: list[BusRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._state = "not started"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open every bus's client and, unless schedule=False, start polling."""
        if self._state != "not started":
            raise ModbusPollerError(f"the Modbus poller is {self._state} and cannot start again")
        self._state = "running"
        self._runners = [BusRunner(p, backoff=self._backoff, clock=self._clock) for p in self.plans]
        try:
            await asyncio.gather(*(r.connect() for r in self._runners))
        except BaseException:
            for runner in self._runners:
                runner.close()
            raise
        if self._schedule:
            self._tasks = [asyncio.create_task(r.run(self._stop, self._emit),
                                               name=f"modbus-bus-{r.plan.bus.id}")
                           for r in self._runners]

    async def close(self, *, grace_s: float | None = None) -> None:
        """Stop polling: each bus finishes the poll it is in (at most `grace_s`, default one
        reply timeout per read of its longest poll), then the clients close. A bus task that
        failed re-raises here."""
        if self._state != "running":
            self._state = "closed"
            return
        self._state = "closed"
        self._stop.set()
        try:
            if self._tasks:
                if grace_s is None:
                    grace_s = max(r.plan.bus.timeout_s * max(d.request_count for d in r.plan.devices)
                                  for r in self._runners) + 1.0
                _done, pending = await asyncio.wait(self._tasks, timeout=grace_s)
                for task in pending:
                    task.cancel()
                results = await asyncio.gather(*self._tasks, return_exceptions=True)
                failures = [r for r in results if isinstance(r, Exception)]
                if failures:
                    raise failures[0]
        finally:
            for runner in self._runners:
                runner.close()

    async def poll_once(self, device_id: str) -> list[Sample]:
        """Poll one device now, whatever its backoff, and return its samples (they do not go to
        the sink). The bus's schedule waits while it runs."""
        if self._state != "running":
            raise ModbusPollerError(f"the Modbus poller is {self._state}: poll_once needs it running")
        for runner in self._runners:
            for state in runner.states:
                if state.plan.device.id == device_id:
                    return await runner.poll(state, force=True)
        raise ModbusPollerError(f"no polled device {device_id}: it is on none of the buses "
                                f"{', '.join(p.bus.id for p in self.plans)}")

    def counters(self) -> dict[str, DeviceCounters]:
        """A snapshot of every device's counters and backoff state, by device id."""
        out: dict[str, DeviceCounters] = {}
        for runner in self._runners:
            for state in runner.states:
                b = state.backoff
                out[state.plan.device.id] = replace(
                    state.counters, in_backoff=b.active, backoff_s=b.window_s,
                    consecutive_failures=b.consecutive_failures, backoffs=b.entered)
        return out

    def _emit(self, samples: list[Sample]) -> None:
        if self._sink is not None:
            for sample in samples:
                self._sink(sample)
            return
        for sample in samples:
            if self.samples.full():
                self.samples.get_nowait()
                self.dropped_samples += 1
            self.samples.put_nowait(sample)
