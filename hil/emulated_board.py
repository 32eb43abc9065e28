"""An emulated MicroPython board on a pseudo-terminal: what `citynerve flash` and the unmodified
`mpremote` talk to in the harness.

    with EmulatedBoard(tmp_path / "flash") as board:
        subprocess.run(["mpremote", "connect", board.port, "fs", "ls"])

The board is hil/micropython/board.mjs (the real MicroPython VM, WebAssembly port, in Node) with its
console on stdin/stdout; this wrapper owns a pseudo-terminal pair and joins the board's console to
it, so `.port` is a /dev/pts/N that pyserial and mpremote open like /dev/ttyACM0. The pty outlives
the Node process: `reset()` power-cycles the board behind the same port. The board's flash is the
folder `flash_dir` (it persists across soft resets, reboots and restarts); `host` is the harness
wiring the board's firmware reaches (the "host" section `citynerve flash` puts in its config.json).

Like a USB CDC port that no host reads, console output is dropped when nobody reads the port for
half a second, so an idle board never blocks on a full pty buffer.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import subprocess
import threading
import time
import tty
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from hil.micropython_vm import RUNNER_DIR, ensure_installed

BOARD_SCRIPT = RUNNER_DIR / "board.mjs"
DEFAULT_CAPACITY = 1024 * 1024  # bytes of flash filesystem (a Pico's is about 1.4 MB)
_STALL_S = 0.5  # a reader that takes no console output for this long is not there
_CONSOLE_KEEP = 16384


class EmulatedBoardError(RuntimeError):
    """The emulated board could not start or stopped answering; the message says which and why."""


class EmulatedBoard:
    def __init__(
        self,
        flash_dir: Path,
        *,
        host: Mapping[str, Any] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        boot_timeout: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self.flash_dir = Path(flash_dir)
        self.host: dict[str, Any] = dict(host or {})
        self.capacity = capacity
        self.boot_timeout = boot_timeout
        self.log_path = log_path
        self.log: deque[str] = deque(maxlen=500)  # the board's own account: boots, resets
        self.dropped = 0  # console bytes nobody read
        self._console = bytearray()  # the last _CONSOLE_KEEP bytes the board printed
        self._console_total = 0  # bytes printed since the board object was made
        self._console_lock = threading.Condition()
        self._master: int | None = None
        self._slave: int | None = None
        self._port: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> EmulatedBoard:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def port(self) -> str:
        """The pty device to give mpremote (valid from start() until close())."""
        if self._port is None:
            raise EmulatedBoardError("the emulated board has no port: start it first")
        return self._port

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Power the board on (creating its port the first time) and wait for its REPL banner."""
        if self.running:
            return
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        if self._master is None:
            self._open_pty()
        ensure_installed()
        self._drain_port()  # what was typed while the board was off is gone, as on a real one
        mark = self.console_mark()
        self._proc = subprocess.Popen(
            ["node", "--expose-gc", str(BOARD_SCRIPT), str(self.flash_dir), str(self.capacity)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
            cwd=RUNNER_DIR, start_new_session=True,
        )
        self._wake_r, self._wake_w = os.pipe()
        self._pump = threading.Thread(target=self._run_pump, name="emulated-board-console", daemon=True)
        self._pump.start()
        if not self.wait_for_output(b">>> ", timeout=self.boot_timeout, since=mark):
            tail = "; ".join(list(self.log)[-5:]) or "no output"
            self.stop()
            raise EmulatedBoardError(f"the emulated board did not boot within {self.boot_timeout:g} s ({tail})")

    def stop(self) -> None:
        """Power the board off; the port stays (nothing answers on it until start())."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._pump is not None:
            os.write(self._wake_w, b"x")
            self._pump.join(5)
            self._pump = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):  # a pipe to a process that is gone
                        stream.close()

    def reset(self) -> None:
        """A power cycle: the board boots from its flash and runs /main.py."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Power off and remove the port."""
        self.stop()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._port = None

    # -- what the board printed -----------------------------------------------------------------

    def console_text(self) -> str:
        """The last 16 KB the board printed on its console (whether or not anyone read them)."""
        with self._console_lock:
            return self._console.decode(errors="replace")

    def console_mark(self) -> int:
        """A position in the console output, for wait_for_output(since=...)."""
        with self._console_lock:
            return self._console_total

    def wait_for_output(self, needle: bytes, *, timeout: float, since: int = 0) -> bool:
        """Wait until the board printed `needle` after position `since`; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._console_lock:
            while True:
                start = max(0, len(self._console) - (self._console_total - since))
                if needle in self._console[start:]:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self.running:
                    return False
                self._console_lock.wait(min(left, 0.2))

    # -- the pty and the pump -------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw, no echo: otherwise the line discipline would echo the board's output back to it
        # while nobody has the port open. Keeping the slave open means the master never hangs up
        # between mpremote sessions.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._port = os.ttyname(slave)

    def _drain_port(self) -> None:
        assert self._master is not None
        try:
            while os.read(self._master, 4096):
                pass
        except BlockingIOError:
            pass

    def _record(self, data: bytes) -> None:
        with self._console_lock:
            self._console += data
            del self._console[:-_CONSOLE_KEEP]
            self._console_total += len(data)
            self._console_lock.notify_all()

    def _run_pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin and proc.stdout and proc.stderr and self._master is not None
        master = self._master
        sel = selectors.DefaultSelector()
        sel.register(master, selectors.EVENT_READ, "port")
        sel.register(proc.stdout, selectors.EVENT_READ, "console")
        sel.register(proc.stderr, selectors.EVENT_READ, "log")
        sel.register(self._wake_r, selectors.EVENT_READ, "stop")
        log_buf = b""
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "port":
                        try:
                            data = os.read(master, 4096)
                        except BlockingIOError:
                            continue
                        try:
                            view = memoryview(data)
                            while view:
                                view = view[os.write(proc.stdin.fileno(), view):]
                        except (OSError, ValueError):  # the board is powering off
                            sel.unregister(master)
                    elif key.data == "console":
                        data = os.read(proc.stdout.fileno(), 4096)
                        if not data:
                            sel.unregister(proc.stdout)
                            continue
                        self._record(data)
                        self._to_port(data)
                    else:
                        data = os.read(proc.stderr.fileno(), 4096)
                        if not data:
                            sel.unregister(proc.stderr)
                            continue
                        log_buf += data
                        *lines, log_buf = log_buf.split(b"\n")
                        for line in lines:
                            self._log(line.decode(errors="replace"))
        finally:
            sel.close()

    def _to_port(self, data: bytes) -> None:
        assert self._master is not None
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                _, ready, _ = select.select([], [self._master], [], _STALL_S)
                if not ready:
                    self.dropped += len(view)
                    return

    def _log(self, line: str) -> None:
        self.log.append(line)
        if self.log_path is not None:
            with self.log_path.open("a") as fh:
                fh.write(line + "\n")
