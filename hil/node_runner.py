"""Runs one emulated node: the real firmware (firmware/app.py) under CPython with the host HAL or
under the MicroPython VM, as a child process with its own "flash" folder.

The runner writes the board's generated config (citynerve.inventory.board_config) plus the
harness's "host" section (loopback addresses of the node's UART buses, link and pin control) to
the node's flash as config.json, starts the firmware, and restarts it whenever it exits with the
host HAL's reset code (a reboot: the node comes back with a new boot id, its flash intact).
Every output line is kept (the last `keep_lines`) and, if given, appended to a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import deque
from pathlib import Path
from typing import Any

from citynerve.inventory import config_bytes
from hil.firmware_process import RUNTIMES, firmware_command

RESET_EXIT_CODE = 75  # firmware/hal_host.py: the node asked to be reset


class NodeRunner:
    def __init__(
        self,
        *,
        config: dict[str, Any],
        host: dict[str, Any],
        runtime: str,
        workdir: Path,
        log_path: Path | None = None,
        keep_lines: int = 2000,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.node_id = config["node"]
        self.runtime = runtime
        self.workdir = Path(workdir)
        self.flash = self.workdir / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.boots = 0
        self.exit_codes: list[int] = []
        self._config = dict(config, host=host)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._line_waiters: list[tuple[str, asyncio.Future[str]]] = []

    def write_config(self) -> None:
        (self.flash / "config.json").write_bytes(config_bytes(self._config))

    async def __aenter__(self) -> NodeRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.write_config()
        self._stopping = False
        self._task = asyncio.create_task(self._supervise())

    async def _spawn(self) -> asyncio.subprocess.Process:
        source = "from firmware.app import main\n"
        if self.runtime == "cpython":
            source = (f"from firmware import hal_host\nhal_host.configure({{'fs_root': {str(self.flash)!r}}})\n"
                      + source)
        argv, env, cwd = firmware_command(self.runtime, source, "main()", build_dir=self.workdir,
                                          fs_root=self.flash)
        return await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)

    async def _supervise(self) -> None:
        while not self._stopping:
            self.boots += 1
            self._proc = await self._spawn()
            assert self._proc.stdout is not None
            async for raw in self._proc.stdout:
                self._record(raw.decode(errors="replace").rstrip("\n"))
            code = await self._proc.wait()
            self.exit_codes.append(code)
            self._record(f"[runner] {self.node_id} exited with code {code}")
            if code != RESET_EXIT_CODE:
                return

    def _record(self, line: str) -> None:
        self.lines.append(line)
        if self.log_path is not None:
            with self.log_path.open("a") as fh:
                fh.write(line + "\n")
        for needle, fut in list(self._line_waiters):
            if needle in line and not fut.done():
                fut.set_result(line)

    async def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        """The first output line (from now on, or already kept) containing `needle`."""
        for line in self.lines:
            if needle in line:
                return line
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (needle, fut)
        self._line_waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            tail = "\n".join(list(self.lines)[-20:])
            raise TimeoutError(f"node {self.node_id} ({self.runtime}) never printed {needle!r}; last lines:\n{tail}") from None
        finally:
            self._line_waiters.remove(entry)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def kill(self) -> None:
        """SIGKILL the node now (a power cut); the supervisor does not restart it."""
        self._stopping = True
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"node": self.node_id, "runtime": self.runtime, "boots": self.boots,
                "running": self.running, "exit_codes": self.exit_codes}


def describe(runner: NodeRunner) -> str:
    return json.dumps(runner.status())
