"""`citynerve flash BOARD`: put a board's firmware and config on it, and see it come back.

    result = flash("air-pico", port="/dev/ttyACM0")

Steps, each refusing with one sentence that names the place when it cannot go on:
 1. check boards.toml whole (citynerve/boards_check.py): a file with problems is refused, with its
    problem lines, before the board is touched;
 2. build the bundle: the board's import closure (citynerve/firmware_bundle.py) compiled with the
    real mpy-cross into /lib, firmware/main.py as /main.py, and the board's generated /config.json
    (citynerve/inventory.py; plus the harness's "host" section when an emulated board is flashed)
    and /link.json (its id and link alone: what safe mode runs on if config.json is unusable);
 3. over the REPL with the real mpremote (its SerialTransport: Ctrl-C, raw REPL after a soft reset,
    which stops the running firmware but not a hardware watchdog it armed);
 4. the flash hold, when the board has a /main.py (a firmware that may have armed its watchdog):
    make /main.py the bundle's (temporary name, then one rename: the old firmware still boots
    with it), write /flash_hold, hard-reset the board (machine.reset(): the only thing that stops
    an RP2040's or ESP32's watchdog), reopen the port and check that the boot stayed in the REPL
    ("held", firmware/main.py). The rest of the flash then runs with no watchdog counting;
 5. read the manifest (/citynerve_files.json, citynerve/flash_manifest.py) and every bundle and
    manifest file's SHA-256 on the board in one pass;
 6. copy only the files whose hash differs, each to a temporary name (PATH.new), base64 in
    1 KB pieces (about 2.5x faster than mpremote's repr chunks over a 115200 baud console);
 7. rewrite the manifest "pending" (old files and new), then rename the new files into place in
    one step, so a failed copy leaves the old firmware whole (and its temporary files removed),
    and a failed rename says which files are new;
 8. read every bundle file's SHA-256 on the board again and compare them all;
 9. remove the files an older bundle left that this one does not have (listed in the manifest and
    unchanged on the board; a listed file edited on the board is kept and named; a file not in
    the manifest is never touched), then rewrite the manifest with exactly this bundle;
10. remove the hold, clear the crash-loop record (bootlog.json: a reflash ends safe mode),
    soft-reset from the friendly REPL (which runs /main.py on every MicroPython port), and wait for
    the node's HELLO wherever its link ends (a HelloWatch: the gateway's health on MQTT, or the
    harness's peer), keeping the console's last lines to say why when it does not come.
`dry_run` stops after step 2 and never opens the port: it cannot know what the board holds, so its
plan lists every file (flash copies only those that differ) and says which files may be removed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, NoReturn, Protocol

from citynerve.flash_console import (
    MKDIR_SCRIPT,
    REMOVE_SCRIPT,
    RENAME_SCRIPT,
    RMDIR_SCRIPT,
    CHUNK,
    TMP_SUFFIX,
    BoardConsole,
    BoardFile,
    FlashProgress,
    QuietProgress,
    check_port,
    printed_paths,
)
from citynerve.flash_errors import (
    BoardFullError,
    ConfigRefused,
    CopyError,
    FlashError,
    HelloTimeout,
    NoReplError,
    PortError,
)
from citynerve.flash_manifest import MANIFEST, Manifest, StalePlan, folders_of, stale_files
from citynerve.inventory import DEFAULT_BOARDS, REPO_ROOT, InventoryError, board_config, config_bytes

__all__ = [
    "CHUNK", "BoardConsole", "BoardFile", "BoardFullError", "ConfigRefused", "CopyError", "FlashError",
    "FlashPlan", "FlashProgress", "FlashResult", "HelloTimeout", "HelloWatch", "NoReplError", "PortError",
    "QuietProgress", "board_config_for", "build_bundle", "check_port", "config_hash", "flash",
]

BOOTLOG = "bootlog.json"  # firmware/safe_boot.py
LINK_FILE = "link.json"  # firmware/safe_boot.py: what safe mode reads when config.json is unusable
HOLD = "flash_hold"  # firmware/main.py
BACKENDS = ("machine", "host")


# -- what goes on the board ------------------------------------------------------------------------

@dataclass
class FlashPlan:
    board: str
    files: list[BoardFile]
    on_board: dict[str, str | None] | None = None  # path -> hex digest (None: absent); None: unread
    stale: StalePlan | None = None  # None: not read yet (a dry run)

    @property
    def to_copy(self) -> list[BoardFile]:
        if self.on_board is None:
            return list(self.files)
        return [f for f in self.files if self.on_board.get(f.path) != f.sha256]

    @property
    def copy_bytes(self) -> int:
        return sum(f.size for f in self.to_copy)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self) -> str:
        n, size = len(self.to_copy), _kb(self.copy_bytes)
        if self.on_board is None:
            return (f"{self.board}: {len(self.files)} files, {_kb(self.total_bytes)} "
                    "(copied when they differ from the board's)")
        if not n:
            return f"{self.board}: 0 files to copy, everything up to date ({len(self.files)} files)"
        return (f"{self.board}: {n} file{'s' * (n != 1)} to copy ({size}), "
                f"{len(self.files) - n} up to date")

    def lines(self) -> list[str]:
        """The plan, one file a line, then the summary and what is removed."""
        out = [f"  {f.path:<44} {f.size:>7} B  {f.sha256[:12]}" for f in self.to_copy]
        return out + [self.summary(), *self.removal_lines()]

    def removal_lines(self) -> list[str]:
        if self.stale is None:
            return [f"files an older citynerve bundle left on the board (listed in its /{MANIFEST} and "
                    "unchanged since) are removed once the new files are verified; files citynerve did "
                    "not put there are never touched"]
        if not self.stale.known:
            return [f"no /{MANIFEST} on the board (flashed before citynerve kept one): nothing is "
                    "removed this time; from now on it lists the files citynerve puts there"]
        out = [f"  remove {p} (left by an older bundle)" for p in self.stale.remove]
        out += [f"  keep {p}: changed on the board since citynerve put it there" for p in self.stale.kept]
        return out


@dataclass
class FlashResult:
    plan: FlashPlan
    port: str | None = None
    copied: list[str] = field(default_factory=list)
    verified: int = 0
    removed: list[str] = field(default_factory=list)
    held: bool = False  # the flash hold was used (step 4)
    bootlog_cleared: bool = False
    reset: bool = False
    hello: dict[str, Any] | None = None
    console: list[str] = field(default_factory=list)


class HelloWatch(Protocol):
    """Where the node's link ends: `arm()` just before the reset, then `wait()` for the first
    HELLO from `node` since then (the decoded HELLO message) or None at the timeout."""

    def arm(self) -> None: ...

    def wait(self, node: str, *, timeout: float) -> Mapping[str, Any] | None: ...


def config_hash(raw: bytes) -> str:
    """The config hash a node puts in its HELLO (firmware/app.py)."""
    return sha256(raw).hexdigest()[:16]


def default_build_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "citynerve" / "mpy"


def board_config_for(board_id: str, *, boards_file: Path, profiles: Path | None = None,
                     host: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check boards_file whole, then return `board_id`'s config (with the harness's host section)."""
    from citynerve.boards_check import check_file, profiles_folder
    from citynerve.inventory import load_inventory, load_profiles

    report = check_file(boards_file, profiles=profiles)
    if report.exit_code != 0:
        count = len(report.errors) or 1
        raise ConfigRefused(
            f"{boards_file} does not pass `citynerve boards check` ({count} problem{'s' * (count != 1)}): "
            "nothing was flashed; fix it first", lines=report.lines(), board=board_id)
    try:
        inventory = load_inventory(boards_file)
        folder = profiles or profiles_folder(inventory, Path(boards_file).parent)
        config = board_config(inventory, board_id, load_profiles(folder))
    except InventoryError as exc:
        raise FlashError(f"{boards_file}: {exc}", board=board_id) from None
    if host is not None:
        config["host"] = dict(host)
    return config


def build_bundle(config: dict[str, Any], *, backend: str = "machine", build_dir: Path | None = None,
                 root: Path = REPO_ROOT) -> list[BoardFile]:
    """The files a board running `config` needs, compiled with mpy-cross (cached in build_dir)."""
    from citynerve.firmware_bundle import board_files
    from citynerve.mpy_toolchain import MpyCompileError, compile_file

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    build_dir = Path(build_dir or default_build_dir())
    files = []
    for source in board_files(config, backend=backend, root=root):
        rel = source.relative_to(root)
        target = build_dir / rel.with_suffix(".mpy")
        if not (target.exists() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns):
            try:
                compile_file(source, target, source_name=rel.as_posix())
            except MpyCompileError as exc:
                raise FlashError(f"{exc}: fix the source before flashing", board=config.get("node")) from None
        files.append(BoardFile("lib/" + rel.with_suffix(".mpy").as_posix(), target.read_bytes()))
    files.append(BoardFile("main.py", (root / "firmware" / "main.py").read_bytes()))
    files.append(BoardFile("config.json", config_bytes(config)))
    files.append(BoardFile(LINK_FILE, link_file_bytes(config, backend=backend)))
    return files


def link_file_bytes(config: dict[str, Any], *, backend: str = "machine") -> bytes:
    """/link.json: the board's id and link section (and the harness's host section, which wires an
    emulated board's link). A node whose config.json cannot be read or used boots safe mode on it
    (firmware/safe_boot.py safe_link), so it still reaches its gateway, under its own id, and says
    why. The link is checked the way the firmware will read it: a board whose link the firmware
    cannot open (a `usb` link: firmware/hal_machine.py has no USB CDC link) is refused here rather
    than flashed to be silent; the harness's host backend opens whatever its host section says."""
    from firmware.safe_boot import link_problem

    link = config.get("link")
    problem = link_problem(link)
    if problem is not None and backend == "machine":
        raise FlashError(f"{config.get('node')}: {problem}: the firmware could not open this board's link (boards.toml "
                         "[[board]] link; a node opens uart or tcp links)", board=config.get("node"))
    saved: dict[str, Any] = {"node": config.get("node"), "link": link}
    if "host" in config:
        saved["host"] = config["host"]
    return config_bytes(saved)


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


# -- the whole flash ----------------------------------------------------------------------------------

def flash(
    board_id: str,
    *,
    port: str | None,
    boards_file: Path = DEFAULT_BOARDS,
    profiles: Path | None = None,
    backend: str = "machine",
    host: Mapping[str, Any] | None = None,
    build_dir: Path | None = None,
    dry_run: bool = False,
    reset: bool = True,
    hello: HelloWatch | None = None,
    hello_timeout: float = 30.0,
    repl_timeout: float = 10.0,
    progress: FlashProgress | None = None,
) -> FlashResult:
    """Flash `board_id` of `boards_file` through `port`; see the module docstring for the steps."""
    progress = progress or QuietProgress()
    config = board_config_for(board_id, boards_file=Path(boards_file), profiles=profiles, host=host)
    if not dry_run:
        if not port:
            raise PortError(f"no port given for {board_id}: say which with --port (e.g. /dev/ttyACM0)",
                            board=board_id)
        check_port(port, board=board_id)
    progress.step("compiling with mpy-cross")
    plan = FlashPlan(board_id, build_bundle(config, backend=backend, build_dir=build_dir))
    result = FlashResult(plan=plan, port=port)
    if dry_run:
        return result
    assert port is not None
    paths = [f.path for f in plan.files]
    with BoardConsole(port, board=board_id, repl_timeout=repl_timeout) as board:
        try:
            result.held = _hold(board, plan, progress)
            progress.step("reading the board's file hashes")
            old = Manifest.parse(board.read(MANIFEST))
            listed = sorted(set(old.files) - set(paths)) if old is not None else []
            plan.on_board = board.hashes(paths + listed)
            plan.stale = stale = stale_files(old, paths, plan.on_board)
            progress.step(plan.summary())
            for line in plan.removal_lines():
                progress.step(line.strip())
            owned = dict(old.files) if old is not None else {}
            owned.update({f.path: f.sha256 for f in plan.files})
            pending = Manifest(board_id, owned, pending=True)
            _copy(board, plan, result, progress, before_rename=lambda: _write_manifest(board, pending))
            progress.step("verifying every file's SHA-256 on the board")
            after = board.hashes(paths)
            wrong = [f.path for f in plan.files if after.get(f.path) != f.sha256]
            if wrong:
                raise CopyError(f"{len(wrong)} file{'s' * (len(wrong) != 1)} on {board_id} do not match after "
                                f"copying ({', '.join(wrong[:5])}): flash again", replaced=result.copied,
                                board=board_id, port=port)
        except FlashError as exc:
            if _old_firmware_whole(exc):
                _give_back(board, exc)
            raise
        result.verified = len(plan.files)
        if stale.remove:
            progress.step(f"removing {len(stale.remove)} file{'s' * (len(stale.remove) != 1)} "
                          "an older bundle left")
            out = board.exec(REMOVE_SCRIPT.format(paths=["/" + p for p in stale.remove]),
                             "removing the files an older bundle left")
            result.removed = printed_paths(out)
            board.exec(RMDIR_SCRIPT.format(dirs=["/" + d for d in folders_of(stale.remove)]),
                       "removing emptied folders")
        final = Manifest(board_id, {f.path: f.sha256 for f in plan.files})
        if old is None or old.to_bytes() != final.to_bytes():
            _write_manifest(board, final)
        cleared = board.exec(REMOVE_SCRIPT.format(paths=["/" + HOLD, "/" + BOOTLOG]),
                             "ending the flash hold and clearing the crash-loop record")
        result.bootlog_cleared = "/" + BOOTLOG in cleared.decode(errors="replace")
        if not reset:
            return result
        if hello is not None:
            hello.arm()
        progress.step("resetting the board")
        board.reset()
        result.reset = True
        if hello is None:
            return result
        progress.step(f"waiting up to {hello_timeout:g} s for {board_id}'s HELLO")
        message = hello.wait(board_id, timeout=hello_timeout)
        result.console = list(board.lines)
    if message is None:
        tail = " | ".join(result.console[-5:]) or "nothing (is the console the board's USB port?)"
        raise HelloTimeout(f"{board_id} was flashed and reset but no HELLO reached its link within "
                           f"{hello_timeout:g} s; its console said: {tail}", console=result.console,
                           board=board_id, port=port)
    result.hello = dict(message)
    expected = config_hash(config_bytes(config))
    if result.hello.get("cfg") != expected:
        raise FlashError(f"{board_id} said HELLO with config hash {result.hello.get('cfg')}, not the flashed "
                         f"config.json's {expected}: it did not load the new config", board=board_id, port=port)
    return result


def _hold(board: BoardConsole, plan: FlashPlan, progress: FlashProgress) -> bool:
    """Step 4 (module doc): stop a citynerve firmware's watchdog before copying. False when the
    board runs nothing of citynerve's at boot (no /main.py, or one that is not citynerve's)."""
    current = board.read("main.py")
    if current is None:
        return False
    if b"firmware.app" not in current:
        progress.step("/main.py on the board is not citynerve's: no flash hold (if that program arms a "
                      "watchdog, stop it before flashing)")
        return False
    progress.step("holding the board for the flash: hard reset, firmware not started, watchdog off")
    main = next(f for f in plan.files if f.path == "main.py")
    if current != main.data:  # an older main.py may not know the hold: this one does
        try:
            board.write(main, "/main.py" + TMP_SUFFIX, QuietProgress())
        except FlashError:
            with contextlib.suppress(FlashError):
                board.exec(REMOVE_SCRIPT.format(paths=["/main.py" + TMP_SUFFIX]), "removing /main.py.new")
            raise
        board.exec(RENAME_SCRIPT.format(pairs=[("/main.py" + TMP_SUFFIX, "/main.py")]), "moving /main.py into place")
    board.write(BoardFile(HOLD, b"hold"), "/" + HOLD, QuietProgress())
    board.hard_reset_and_reconnect()
    state = board.read(HOLD)
    if state != b"held":
        with contextlib.suppress(FlashError):
            board.exec(REMOVE_SCRIPT.format(paths=["/" + HOLD]), "removing the flash hold")
        raise FlashError(f"{plan.board} did not stay in its REPL after the hard reset for the flash (/{HOLD} "
                         f"{'is gone' if state is None else f'says {state.decode(errors=chr(63))!r}'}): its "
                         "firmware may be running with its watchdog on; nothing but /main.py was changed, the "
                         "old firmware still boots: flash again", board=plan.board, port=board.port)
    return True


def _old_firmware_whole(exc: FlashError) -> bool:
    return isinstance(exc, BoardFullError) or (isinstance(exc, CopyError) and not exc.replaced)


def _give_back(board: BoardConsole, exc: FlashError) -> None:
    """A flash that stopped with the old firmware whole restarts that firmware (ending the hold
    first, if any), so the board is as it was, not waiting in its REPL; the error says which."""
    try:
        board.exec(REMOVE_SCRIPT.format(paths=["/" + HOLD]), "ending the flash hold")
        board.reset()
    except Exception:  # noqa: BLE001 - the board stopped answering: say what state it is in
        exc.args = (f"{exc}; the board is waiting in its REPL: unplug it and plug it back in to run its "
                    "old firmware",)
        return
    exc.args = (f"{exc}; the board was restarted with its old firmware",)


def _write_manifest(board: BoardConsole, manifest: Manifest) -> None:
    """The manifest under a temporary name, then one rename: it is whole or the old one."""
    data = BoardFile(MANIFEST, manifest.to_bytes())
    board.write(data, "/" + MANIFEST + TMP_SUFFIX, QuietProgress())
    board.exec(RENAME_SCRIPT.format(pairs=[("/" + MANIFEST + TMP_SUFFIX, "/" + MANIFEST)]),
               f"moving /{MANIFEST} into place")


def _abandon_copy(board: BoardConsole, plan: FlashPlan, written: list[str],
                  exc: FlashError) -> NoReturn:
    """A copy that failed before any rename: remove its temporary files and say the old firmware
    is intact (a full board keeps its own, more precise error)."""
    with contextlib.suppress(FlashError):
        board.exec(REMOVE_SCRIPT.format(paths=written), "removing the temporary files")
    if isinstance(exc, BoardFullError):
        raise exc
    raise CopyError(f"{exc}; nothing was replaced, the old firmware is intact: flash again",
                    replaced=[], board=plan.board, port=board.port) from None


def _copy(board: BoardConsole, plan: FlashPlan, result: FlashResult, progress: FlashProgress, *,
          before_rename: Any = None) -> None:
    todo = plan.to_copy
    if not todo:
        return
    dirs = sorted({"/" + "/".join(f.path.split("/")[:i]) for f in todo for i in range(1, f.path.count("/") + 1)})
    board.exec(MKDIR_SCRIPT.format(dirs=dirs), "making folders")
    progress.copy_started(len(todo), plan.copy_bytes)
    written: list[str] = []
    try:
        for file in todo:
            target = "/" + file.path + TMP_SUFFIX
            written.append(target)
            board.write(file, target, progress)
    except FlashError as exc:
        _abandon_copy(board, plan, written, exc)
    finally:
        progress.copy_finished()
    if before_rename is not None:
        try:
            before_rename()
        except FlashError as exc:
            _abandon_copy(board, plan, written, exc)
    pairs = [("/" + f.path + TMP_SUFFIX, "/" + f.path) for f in todo]
    try:
        out = board.exec(RENAME_SCRIPT.format(pairs=pairs), "moving the new files into place")
    except CopyError as exc:
        done = exc.__cause__.status_code if exc.__cause__ is not None else b""  # type: ignore[attr-defined]
        replaced = printed_paths(done)
        raise CopyError(f"{plan.board}: only {len(replaced)} of {len(pairs)} new files were moved into "
                        f"place ({exc}); new: {', '.join(replaced) or 'none'}; flash again to finish",
                        replaced=replaced, board=plan.board, port=board.port) from None
    result.copied = printed_paths(out)
