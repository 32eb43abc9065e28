"""The junction's gateway as the field runs it: `citynerve gateway run` in its own process, with a
boards.toml written for the emulated junction (each board's link pointed at its virtual wire's
gateway end or at a free loopback TCP port, the harness's broker and spool), so a scenario can
SIGKILL it and start it again on the same spool, ports and wires.

    async with GatewayRunner(inventory=inv, links=field.gateway_links, broker=url,
                             workdir=tmp, settings={"measurement_interval_s": 2}) as gateway:
        gateway.kill()            # kill -9
        await gateway.start()     # same spool: nothing acknowledged is lost

The child logs JSON lines to gateway.log in the work directory; it runs in its own session (a
Ctrl-C in the demo's terminal reaches the harness, which stops it in order) and dies with the
harness (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

__all__ = ["GatewayRunError", "GatewayRunner", "toml_text"]

REPO_ROOT = Path(__file__).resolve().parent.parent
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PR_SET_PDEATHSIG = 1


class GatewayRunError(Exception):
    """The gateway process did not come up or died: `reason` and the end of its log."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"gateway process: {reason}" + (f"\n--- gateway log ---\n{log_tail}" if log_tail else ""))


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_text(tables: Mapping[str, Any]) -> str:
    """TOML for {"site": {...}, "gateway": {...}, "board": [{...}, ...]}: tables of scalars,
    inline tables and arrays, and arrays of tables (one level of nested arrays of tables)."""
    lines: list[str] = []

    def table(header: str, body: Mapping[str, Any], prefix: str) -> None:
        lines.append(header)
        nested = []
        for key, value in body.items():
            if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                nested.append((key, value))
            else:
                lines.append(f"{_key(key)} = {_value(value)}")
        lines.append("")
        for key, items in nested:
            for item in items:
                table(f"[[{prefix}.{key}]]", item, f"{prefix}.{key}")

    for name, body in tables.items():
        if isinstance(body, list):
            for item in body:
                table(f"[[{name}]]", item, name)
        else:
            table(f"[{name}]", body, name)
    return "\n".join(lines)


def gateway_boards(inventory: Mapping[str, Any], links: Mapping[str, Mapping[str, Any]], *,
                   broker: str, spool: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The gateway's view of the emulated junction: the inventory's site and [gateway] with the
    run's broker, spool and `settings`, and every board in `links` with its emulated link and its
    devices (ids, profiles, stream policies: what the gateway reads of a board)."""
    gateway = {k: v for k, v in inventory.get("gateway", {}).items() if k not in ("bus", "device")}
    gateway.update({"broker": broker, "spool": str(spool)}, **settings)
    boards = []
    for board in inventory.get("board", []):
        if board.get("id") not in links:
            continue
        devices = [{k: v for k, v in d.items() if k in ("id", "profile", "stream_policy")}
                   for d in board.get("device", [])]
        entry: dict[str, Any] = {"id": board["id"], "link": dict(links[board["id"]])}
        if devices:
            entry["device"] = devices
        boards.append(entry)
    return {"site": dict(inventory.get("site", {})), "gateway": gateway, "board": boards}


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class GatewayRunner:
    """`citynerve gateway run` for the emulated junction, restartable on the same spool."""

    def __init__(self, *, inventory: Mapping[str, Any], links: Mapping[str, Mapping[str, Any]],
                 broker: str, workdir: Path, settings: Mapping[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.config_path = self.workdir / "gateway-boards.toml"
        self.spool = self.workdir / "spool.sqlite"
        self.log_path = self.workdir / "gateway.log"
        self.boards = gateway_boards(inventory, links, broker=broker, spool=self.spool,
                                     settings=settings or {})
        self.site = str(self.boards["site"].get("id"))
        self.gateway_id = str(self.boards["gateway"].get("id"))
        self.starts: list[float] = []  # monotonic time of each start
        self.kills: list[float] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def write_config(self) -> Path:
        self.config_path.write_text(toml_text(self.boards))
        return self.config_path

    async def start(self, *, timeout: float = 30.0) -> None:
        """Start the process and wait until it logs "gateway running"."""
        if self.running:
            raise GatewayRunError("already running")
        self.write_config()
        with self.log_path.open("ab") as log:
            self._offset = self.log_path.stat().st_size
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from citynerve.cli import main; main()", "gateway", "run",
                 "--config", str(self.config_path), "--broker", self.broker, "--spool", str(self.spool),
                 "--log-format", "json"],
                stdout=log, stderr=log, cwd=REPO_ROOT, start_new_session=True,
                preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.starts.append(time.monotonic())
        deadline = time.monotonic() + timeout
        while not any(line.get("msg", "").startswith("gateway running") for line in self.log_lines()):
            if self._proc.poll() is not None:
                raise GatewayRunError(f"exited with status {self._proc.returncode} while starting",
                                      self.log_tail())
            if time.monotonic() > deadline:
                raise GatewayRunError(f"did not log \"gateway running\" within {timeout:g} s", self.log_tail())
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """kill -9, now."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
            self.kills.append(time.monotonic())

    async def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (the gateway publishes what it can within its grace); its exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_lines(self, *, this_start: bool = True) -> list[dict[str, Any]]:
        """The JSON log lines of this start (or of every start)."""
        try:
            raw = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in raw[self._offset if this_start else 0:].decode(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append({"msg": line})
        return out

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def errors(self) -> list[dict[str, Any]]:
        """Error and critical lines of every start."""
        return [line for line in self.log_lines(this_start=False)
                if line.get("level") in ("error", "critical")]
