"""A board's REPL for `citynerve flash`, over the real mpremote's SerialTransport: the small
scripts flash runs on the board (hashes, folders, renames, removals, a file's bytes, the hard
reset), base64 file writes in 1 KB pieces, the soft reset that starts the new firmware, the hard
reset and reconnect of the flash hold, and the console lines after the reset.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Protocol

from citynerve.flash_errors import BoardFullError, CopyError, FlashError, NoReplError, PortError

CHUNK = 1024  # data bytes per exec: 1368 base64 characters, well inside any raw REPL buffer
TMP_SUFFIX = ".new"
HOLD_REOPEN_S = 20.0  # a board's USB port comes back within a few seconds of a hard reset
SETTLE_QUIET_S = 0.3  # after the hold's reset: this long without output means the boot is done
SETTLE_MAX_S = 3.0
_URL_PORTS = ("socket://", "rfc2217://", "loop://")


@dataclass(frozen=True)
class BoardFile:
    path: str  # on the board, from its root: "lib/firmware/app.mpy", "main.py", "config.json"
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return sha256(self.data).hexdigest()


class FlashProgress(Protocol):
    """What flash tells whoever shows it (the CLI: rich progress; tests: nothing)."""

    def step(self, text: str) -> None: ...

    def copy_started(self, files: int, total_bytes: int) -> None: ...

    def copied(self, path: str, nbytes: int, *, file_done: bool) -> None: ...

    def copy_finished(self) -> None: ...


class QuietProgress:
    def step(self, text: str) -> None:
        pass

    def copy_started(self, files: int, total_bytes: int) -> None:
        pass

    def copied(self, path: str, nbytes: int, *, file_done: bool) -> None:
        pass

    def copy_finished(self) -> None:
        pass


HASH_SCRIPT = """\
import os, hashlib, binascii
def _cn_hash(p):
    try:
        n = os.stat(p)[6]
    except OSError:
        print(repr((p, None)))
        return
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            h.update(m[:k])
    print(repr((p, binascii.hexlify(h.digest()).decode())))
for _cn_p in {paths!r}:
    _cn_hash(_cn_p)
"""

MKDIR_SCRIPT = """\
import os
for _cn_d in {dirs!r}:
    try:
        os.mkdir(_cn_d)
    except OSError as e:
        if e.errno != 17:
            raise
"""

RENAME_SCRIPT = """\
import os
for _cn_a, _cn_b in {pairs!r}:
    os.rename(_cn_a, _cn_b)
    print(repr(_cn_b))
"""

REMOVE_SCRIPT = """\
import os
for _cn_p in {paths!r}:
    try:
        os.remove(_cn_p)
        print(repr(_cn_p))
    except OSError:
        pass
"""


READ_SCRIPT = """\
try:
    with open({path!r}, 'rb') as _cn_f:
        print(repr(_cn_f.read()))
except OSError:
    print(repr(None))
"""

RMDIR_SCRIPT = """\
import os
for _cn_d in {dirs!r}:
    try:
        if not os.listdir(_cn_d):
            os.rmdir(_cn_d)
            print(repr(_cn_d))
    except OSError:
        pass
"""

# machine.reset() is the reset that stops the watchdog; the harness's emulated board has no
# machine module and reboots when its host bridge is told to exit (hil/micropython/board.mjs).
HARD_RESET_SCRIPT = """\
try:
    import machine
except ImportError:
    machine = None
if machine is not None:
    machine.reset()
else:
    import hostbridge
    hostbridge.exit(75)
"""


class BoardConsole:
    """A board's REPL over the real mpremote's SerialTransport, in the raw REPL while open."""

    def __init__(self, port: str, *, board: str, repl_timeout: float = 10.0) -> None:
        self.port, self.board, self.repl_timeout = port, board, repl_timeout
        self.transport: Any = None
        self.lines: deque[str] = deque(maxlen=20)  # console output after the reset
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> BoardConsole:
        self._connect()
        return self

    def _connect(self, *, settle: bool = False) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        check_port(self.port, board=self.board)
        try:
            with _quiet():
                # A read timeout, so a board that stops answering is an error, not a hang (mpremote
                # reads a pty without one); long enough for a busy board to say "OK".
                self.transport = SerialTransport(self.port, baudrate=115200,
                                                 timeout=min(5.0, max(0.5, self.repl_timeout / 2)))
        except TransportError:
            raise PortError(f"cannot open {self.port}: another program holds it (the gateway, screen, "
                            "minicom?) or you may not use it (add yourself to the dialout group)",
                            board=self.board, port=self.port) from None
        if settle:
            self._settle()
        try:
            with _quiet():
                self.transport.enter_raw_repl(soft_reset=True, timeout_overall=self.repl_timeout)
        except (TransportError, OSError):
            self.transport.close()
            raise NoReplError(f"the board on {self.port} does not answer as a MicroPython REPL within "
                              f"{self.repl_timeout:g} s: check it runs MicroPython and that nothing else "
                              "uses the port", board=self.board, port=self.port) from None

    def _settle(self) -> None:
        """Listen until the board has been quiet for SETTLE_QUIET_S (at most SETTLE_MAX_S): a board
        that is still booting (an ESP32's boot loader, then main.py finding the hold) must not get
        the Ctrl-C that enters the raw REPL before main.py has marked the hold."""
        import time

        serial = self.transport.serial
        saved, serial.timeout = serial.timeout, SETTLE_QUIET_S
        end = time.monotonic() + SETTLE_MAX_S
        try:
            while time.monotonic() < end:
                if not serial.read(256):
                    return
        except Exception:  # noqa: BLE001 - the port went away again: entering the REPL will say so
            return
        finally:
            with contextlib.suppress(Exception):
                serial.timeout = saved

    def hard_reset_and_reconnect(self, *, reopen_s: float = HOLD_REOPEN_S) -> None:
        """machine.reset(), then the port again (a USB board's port goes away and comes back)."""
        import time

        from mpremote.transport import TransportError

        try:
            self.transport.exec_raw_no_follow(HARD_RESET_SCRIPT)
        except (TransportError, OSError):
            pass  # the board may reset before it says OK
        with contextlib.suppress(Exception):
            self.transport.close()
        self.transport = None
        time.sleep(0.5)  # the board is resetting: a port that is still there would take our Ctrl-C now
        deadline = time.monotonic() + reopen_s
        while True:
            try:
                self._connect(settle=True)
                return
            except (PortError, NoReplError):
                if time.monotonic() > deadline:
                    raise NoReplError(
                        f"{self.board} was hard-reset for the flash and did not come back on {self.port} "
                        f"within {reopen_s:g} s; it is waiting in its REPL with its old firmware: unplug it "
                        "and plug it back in to run that firmware, or flash again", board=self.board,
                        port=self.port) from None
                time.sleep(0.5)

    def read(self, path: str) -> bytes | None:
        out = self.exec(READ_SCRIPT.format(path="/" + path), f"reading /{path}")
        line = out.decode(errors="replace").strip().splitlines()[-1:] or ["None"]
        value = ast.literal_eval(line[0])
        return value if isinstance(value, bytes) else None

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(3)
        with contextlib.suppress(Exception):
            if self.transport.in_raw_repl:
                self.transport.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.transport.close()

    def exec(self, script: str, what: str) -> bytes:
        """Run `script` on the board; a traceback becomes one sentence (ENOSPC: BoardFullError)."""
        from mpremote.transport import TransportError, TransportExecError

        try:
            return self.transport.exec(script)
        except TransportExecError as exc:
            last = (exc.error_output.strip().splitlines() or ["?"])[-1]
            if "Errno 28" in last or "ENOSPC" in last or last.endswith("OSError: 28"):
                raise BoardFullError(f"the filesystem of {self.board} is full (OSError 28, no space left) "
                                     f"while {what}; nothing was replaced: the old firmware is intact",
                                     board=self.board, port=self.port) from exc
            raise CopyError(f"{self.board} failed while {what}: {last}", replaced=[],
                            board=self.board, port=self.port) from exc
        except TransportError as exc:
            raise NoReplError(f"the board on {self.port} stopped answering while {what} ({exc})",
                              board=self.board, port=self.port) from None

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        out = self.exec(HASH_SCRIPT.format(paths=["/" + p for p in paths]), "reading file hashes")
        found: dict[str, str | None] = {}
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("("):
                path, digest = ast.literal_eval(line)
                found[path[1:]] = digest
        return found

    def write(self, file: BoardFile, target: str, progress: FlashProgress) -> None:
        self.exec(f"import binascii\n_cn_f = open({target!r}, 'wb')\n_cn_w = _cn_f.write\n"
                  "_cn_a = binascii.a2b_base64", f"opening {target}")
        try:
            for at in range(0, file.size, CHUNK):
                piece = file.data[at:at + CHUNK]
                self.exec(f"_cn_w(_cn_a({base64.b64encode(piece)!r}))", f"writing {target}")
                progress.copied(file.path, len(piece), file_done=at + CHUNK >= file.size)
        finally:
            with contextlib.suppress(FlashError):
                self.exec("_cn_f.close()", f"closing {target}")
        if not file.size:
            progress.copied(file.path, 0, file_done=True)

    def reset(self) -> None:
        """Soft-reset from the friendly REPL (runs /main.py), then keep reading the console."""
        self.transport.exit_raw_repl()
        self.transport.serial.write(b"\x04")
        seen = self.transport.read_until(1, b"soft reboot\r\n", timeout=5)
        if not seen.endswith(b"soft reboot\r\n"):
            raise NoReplError(f"the board on {self.port} did not soft-reset when asked (Ctrl-D); "
                              "unplug it and plug it back in to start the new firmware",
                              board=self.board, port=self.port)
        self.transport.serial.timeout = 0.2
        self._reader = threading.Thread(target=self._read_console, name="flash-console", daemon=True)
        self._reader.start()

    def _read_console(self) -> None:
        partial = b""
        while not self._stop.is_set():
            try:
                data = self.transport.serial.read(256)
            except Exception:  # noqa: BLE001 - the port went away: nothing more to read
                return
            partial += data
            *done, partial = partial.split(b"\n")
            for line in done:
                text = line.decode(errors="replace").strip()
                if text:
                    self.lines.append(text)


def check_port(port: str, *, board: str) -> None:
    """Refuse a port that does not exist (pyserial URLs such as socket:// are taken as given)."""
    if not port.startswith(_URL_PORTS) and not os.path.exists(port):
        raise PortError(f"there is no serial port {port}: is the board plugged in? "
                        "(`ls /dev/ttyACM* /dev/ttyUSB*` lists the ports)", board=board, port=port)


@contextlib.contextmanager
def _quiet() -> Any:
    """mpremote prints raw bytes to stdout when it cannot reach the raw REPL; they are not for the
    technician (the error says it). Only around connecting: this swaps sys.stdout for every thread."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def printed_paths(out: bytes) -> list[str]:
    """The paths a board script printed with repr(), one a line, without their leading "/"."""
    return [ast.literal_eval(x)[1:] for x in out.decode(errors="replace").splitlines() if x.startswith("'")]
