"""`citynerve flash` with the real mpremote and the real mpy-cross, onto emulated boards (the real
MicroPython VM behind a pseudo-terminal, hil/emulated_board.py).

One board serves the flash-and-reflash story in order: the demo's air-pico flashed onto it fresh
boots and its HELLO reaches a test gateway peer; a second flash through the command copies nothing
and still verifies, and the board says HELLO again from a new boot; a file changed behind the
board's back (while it was off) is the only one copied. Then the refusals: a dry run, a wrong port,
a boards.toml with a problem, a full filesystem, a port where no REPL answers, a HELLO that never
comes. The bundle is compiled once for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator, Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from citynerve.flash import (
    BoardFullError,
    HelloTimeout,
    NoReplError,
    PortError,
    FlashError,
    board_config_for,
    build_bundle,
    config_hash,
    flash,
    link_file_bytes,
)
from citynerve.flash_cli import GatewayHealthHello
from citynerve.flash_manifest import MANIFEST, Manifest
from citynerve.inventory import DEFAULT_BOARDS, config_bytes
from hil.broker import Mosquitto, mosquitto_executable
from hil.emulated_board import EmulatedBoard
from hil.emulators.sds011_emulator import Sds011Emulator
from protocols.link_frame import HELLO
from hil.link_peer import LinkPeer

REPO = Path(__file__).resolve().parents[2]
CITYNERVE = Path(sys.executable).parent / "citynerve"
BOARD = "air-pico"
SERIES = [(123, 261), (124, 262), (130, 270)]


class PeerHello:
    """A HelloWatch on a LinkPeer that runs on `loop` (flash runs in a worker thread)."""

    def __init__(self, peer: LinkPeer, loop: asyncio.AbstractEventLoop) -> None:
        self.peer, self.loop, self.seen = peer, loop, 0

    def arm(self) -> None:
        self.seen = len(self.peer.of_type(HELLO))

    def wait(self, node: str, *, timeout: float) -> Mapping[str, Any] | None:
        def fresh() -> list[Any]:
            return [r.message for r in self.peer.of_type(HELLO)[self.seen:] if r.message["node"] == node]

        future = asyncio.run_coroutine_threadsafe(self.peer.wait_for(fresh, "HELLO", timeout), self.loop)
        try:
            return future.result()[0]
        except AssertionError:
            return None


class NoGateway:
    """A HelloWatch where nothing ever arrives: the board's link points elsewhere."""

    def __init__(self) -> None:
        self._never = threading.Event()

    def arm(self) -> None:
        pass

    def wait(self, node: str, *, timeout: float) -> Mapping[str, Any] | None:
        self._never.wait(timeout)
        return None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CITYNERVE), "flash", *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO, env=dict(os.environ, COLUMNS="200"))


def bundle_snapshot(flash_dir: Path) -> dict[str, bytes]:
    """The firmware files on a board's flash (bootlog.json is the firmware's own, citynerve_files.json
    flash's record of them)."""
    return {p.relative_to(flash_dir).as_posix(): p.read_bytes() for p in sorted(flash_dir.rglob("*"))
            if p.is_file() and p.name not in ("bootlog.json", MANIFEST)}


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpy")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedBoard]:
    with EmulatedBoard(tmp_path_factory.mktemp("board") / "flash") as emulated:
        yield emulated


@pytest.fixture(scope="module")
def dead_host() -> Iterator[dict[str, Any]]:
    """A host section whose link and UART go to a bound port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % sock.getsockname()[1]
        yield {"link": address, "uarts": {"sds-uart": address}}


async def test_a_fresh_board_is_flashed_boots_and_a_reflash_copies_nothing(
        board: EmulatedBoard, build_dir: Path, tmp_path: Path) -> None:
    async with Sds011Emulator(SERIES, period_s=0.2) as sensor, LinkPeer() as peer:
        host = {"uarts": {"sds-uart": sensor.address}, "link": peer.address}
        watch = PeerHello(peer, asyncio.get_running_loop())
        result = await asyncio.to_thread(flash, BOARD, port=board.port, backend="host", host=host,
                                         build_dir=build_dir, hello=watch, hello_timeout=30)
        files = result.plan.files
        assert result.copied == [f.path for f in files], "a fresh board gets every file"
        assert result.verified == len(files) and result.reset
        paths = {f.path for f in files}
        assert {"main.py", "config.json", "lib/firmware/app.mpy", "lib/firmware/hal_host.mpy"} <= paths
        assert result.hello is not None and result.hello["node"] == BOARD and result.hello["fw"] == "0.1.0"
        assert {"pm2/pm2_5", "pm2/pm10"} <= {entry[1] for entry in result.hello["streams"]}
        assert result.hello["errors"] == [], "the flashed config is whole: no config errors"
        config = json.loads(next(f.data for f in files if f.path == "config.json"))
        assert config["host"] == host and result.hello["cfg"] == config_hash(config_bytes(config))
        saved = json.loads(next(f.data for f in files if f.path == "link.json"))
        assert saved == {"node": BOARD, "link": config["link"], "host": host}, "safe mode's link, beside the config"
        assert bundle_snapshot(board.flash_dir) == {f.path: f.data for f in files}, "the flash persisted on the host"
        manifest = Manifest.parse((board.flash_dir / MANIFEST).read_bytes())
        assert manifest is not None and not manifest.pending and manifest.board == BOARD
        assert manifest.files == {f.path: f.sha256 for f in files}, "the manifest lists exactly the bundle"
        assert not result.held, "a fresh board runs nothing at boot: no hold needed"
        first_boot = result.hello["boot"]

        # The same flash again, through the command: nothing differs, everything is verified,
        # and the reset board says HELLO from a new boot.
        host_json = tmp_path / "host.json"
        host_json.write_text(json.dumps(host))
        proc = await asyncio.create_subprocess_exec(
            str(CITYNERVE), "flash", BOARD, "--port", board.port, "--backend", "host", "--host-json",
            str(host_json), "--build-dir", str(build_dir), cwd=REPO, env=dict(os.environ, COLUMNS="200"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), 120))[0].decode()
        assert proc.returncode == 0, out
        assert f"{BOARD}: 0 files to copy, everything up to date ({len(files)} files)" in out
        assert f"flashed {BOARD} on {board.port}: 0 copied, {len(files)} verified, held (watchdog off) while copying" in out
        await peer.wait_for(lambda: {h.message["boot"] for h in peer.of_type(HELLO)} - {first_boot},
                            "a HELLO from the board's next boot")


def test_only_a_file_that_differs_is_copied(board: EmulatedBoard, build_dir: Path, dead_host: dict[str, Any]) -> None:
    flash(BOARD, port=board.port, backend="host", host=dead_host, build_dir=build_dir, reset=False)
    target = board.flash_dir / "lib" / "firmware" / "clock.mpy"
    good = target.read_bytes()
    board.stop()
    target.write_bytes(b"not the compiled clock")  # changed while the board was off
    board.start()
    result = flash(BOARD, port=board.port, backend="host", host=dead_host, build_dir=build_dir, reset=False)
    assert result.plan.on_board is not None
    assert result.plan.on_board["lib/firmware/clock.mpy"] == sha256(b"not the compiled clock").hexdigest()
    assert result.copied == ["lib/firmware/clock.mpy"]
    assert result.verified == len(result.plan.files)
    assert target.read_bytes() == good
    assert not list(board.flash_dir.rglob("*.new")), "no temporary file is left"


def test_a_dry_run_prints_the_plan_and_touches_nothing(board: EmulatedBoard, build_dir: Path) -> None:
    before, boots = bundle_snapshot(board.flash_dir), list(board.log)
    done = run_cli(BOARD, "--port", board.port, "--dry-run", "--build-dir", str(build_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    files = build_bundle(board_config_for(BOARD, boards_file=DEFAULT_BOARDS), build_dir=build_dir)
    for f in files:
        if f.path != "config.json":
            assert f"{f.path} " in done.stdout and f" {f.size} B" in done.stdout
    assert f"total: {len(files)} files, " in done.stdout
    assert "dry run: nothing was sent" in done.stdout
    assert ("files an older citynerve bundle left on the board (listed in its /citynerve_files.json and "
            "unchanged since) are removed once the new files are verified; files citynerve did not put "
            "there are never touched") in " ".join(done.stdout.split())
    assert bundle_snapshot(board.flash_dir) == before
    assert list(board.log) == boots, "no reset, no interrupt: the port was not opened"


def test_a_wrong_port_is_one_sentence() -> None:
    done = run_cli(BOARD, "--port", "/dev/ttyNOPE7")
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == [
        "flash: there is no serial port /dev/ttyNOPE7: is the board plugged in? "
        "(`ls /dev/ttyACM* /dev/ttyUSB*` lists the ports)"]
    assert "Traceback" not in done.stderr


def test_a_boards_file_with_a_problem_is_refused_before_the_board(board: EmulatedBoard, tmp_path: Path) -> None:
    text = DEFAULT_BOARDS.read_text()
    assert text.count('profile = "sds011"') == 1
    broken = tmp_path / "boards.toml"
    broken.write_text(text.replace('profile = "sds011"', 'profile = "sds012"'))
    line = text[:text.index('profile = "sds011"')].count("\n") + 1
    before, boots = bundle_snapshot(board.flash_dir), list(board.log)
    done = run_cli(BOARD, "--port", board.port, "--config", str(broken), "--profiles", str(REPO / "profiles"))
    assert done.returncode == 1
    assert f"{broken}:{line}: board air-pico" in done.stdout and "sds012" in done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith(f"flash: {broken} does not pass `citynerve boards check`")
    assert "nothing was flashed" in done.stdout
    assert bundle_snapshot(board.flash_dir) == before and list(board.log) == boots


def test_a_full_filesystem_leaves_the_old_firmware(tmp_path: Path, build_dir: Path, dead_host: dict[str, Any]) -> None:
    flash_dir = tmp_path / "flash"
    flash_dir.mkdir()
    (flash_dir / "main.py").write_text("print('old firmware')\n")
    with EmulatedBoard(flash_dir, capacity=16 * 1024, host=dead_host) as small:
        mark = small.console_mark()
        with pytest.raises(BoardFullError) as caught:
            flash(BOARD, port=small.port, backend="host", host=small.host, build_dir=build_dir, reset=False)
        message = str(caught.value)
        assert message.startswith(f"the filesystem of {BOARD} is full (OSError 28, no space left) while writing /lib/")
        assert message.endswith(".new; nothing was replaced: the old firmware is intact; "
                                "the board was restarted with its old firmware")
        assert "\n" not in message
        assert small.wait_for_output(b"old firmware", timeout=10, since=mark), "its main.py runs again"
    assert bundle_snapshot(flash_dir) == {"main.py": b"print('old firmware')\n"}, "old firmware kept"
    assert sorted(p.name for p in flash_dir.rglob("*") if p.is_file()) == ["main.py"]


def test_a_port_where_no_repl_answers(build_dir: Path) -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        with pytest.raises(NoReplError) as caught:
            flash(BOARD, port=os.ttyname(slave), backend="host", build_dir=build_dir, repl_timeout=1.5)
        assert str(caught.value) == (
            f"the board on {os.ttyname(slave)} does not answer as a MicroPython REPL within 1.5 s: "
            "check it runs MicroPython and that nothing else uses the port")
    finally:
        os.close(slave)
        os.close(master)
    with pytest.raises(PortError, match="there is no serial port /dev/ttyNOPE7"):
        flash(BOARD, port="/dev/ttyNOPE7", build_dir=build_dir)


def test_a_hello_that_never_comes_says_what_the_board_printed(
        board: EmulatedBoard, build_dir: Path, dead_host: dict[str, Any]) -> None:
    with pytest.raises(HelloTimeout) as caught:
        flash(BOARD, port=board.port, backend="host", host=dead_host, build_dir=build_dir,
              hello=NoGateway(), hello_timeout=3)
    error = caught.value
    assert str(error).startswith(f"{BOARD} was flashed and reset but no HELLO reached its link within 3 s; "
                                 "its console said: ")
    assert any("[link] cannot open the link" in line for line in error.console), error.console
    assert "cannot open the link" in str(error)


@pytest.mark.skipif(mosquitto_executable() is None, reason="mosquitto is not installed")
def test_wait_hello_reads_the_gateways_report_of_a_new_boot(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    with Mosquitto() as broker:
        boards = tmp_path / "boards.toml"
        boards.write_text(DEFAULT_BOARDS.read_text().replace('"mqtt://127.0.0.1:1883"', f'"{broker.url}"'))
        topic = "citynerve/v1/demo-city/jn-main-1st/air-pico/health"
        gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        gateway.connect(broker.host, broker.port)
        gateway.loop_start()

        def report(boot: int, source: str = "gateway") -> None:
            body = {"source": source, "node": BOARD, "boot": boot, "fw": "0.1.0", "cfg": f"cfg{boot}"}
            gateway.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

        try:
            with GatewayHealthHello(boards, BOARD) as watch:
                report(7)  # the old firmware, before the reset
                deadline = time.monotonic() + 5
                while not watch.reports and time.monotonic() < deadline:
                    time.sleep(0.01)  # polling the watch's inbox, with a deadline
                assert [r["boot"] for _, r in watch.reports] == [7]
                watch.arm()
                report(7)  # still the old boot: the node has not said HELLO yet
                report(8, source="node")  # the node's own HEALTH is not the gateway's word
                assert watch.wait(BOARD, timeout=0.5) is None
                report(8)
                assert watch.wait(BOARD, timeout=5) == {"node": BOARD, "boot": 8, "fw": "0.1.0", "cfg": "cfg8"}
        finally:
            gateway.loop_stop()
            gateway.disconnect()


LOOP_ON_AIR_PICO = """
  [[board.device]]
  id = "lane9"
  profile = "loop-presence"
  pins = [10, 11]
  lane = 9
  approach = "NB"
  detector = [9, 10]
  trap_spacing_ft = 20
  loop_length_ft = 6
"""


def boards_with_a_loop_on_air_pico(folder: Path) -> Path:
    """The demo boards.toml with a loop presence input added to air-pico: a bigger bundle (the loop
    driver and its measures), so flashing the demo's own boards.toml afterwards leaves files stale."""
    text = DEFAULT_BOARDS.read_text()
    anchor = 'profile = "sds011"\n  bus = "sds-uart"\n  mode = "active"\n'
    assert text.count(anchor) == 1
    path = folder / "boards-with-loop.toml"
    path.write_text(text.replace(anchor, anchor + LOOP_ON_AIR_PICO))
    return path


async def test_a_reflash_holds_the_board_and_removes_only_what_an_older_bundle_left(
        build_dir: Path, tmp_path: Path, dead_host: dict[str, Any]) -> None:
    bigger = boards_with_a_loop_on_air_pico(tmp_path)
    with EmulatedBoard(tmp_path / "flash") as emulated:
        flash_dir = emulated.flash_dir
        first = await asyncio.to_thread(flash, BOARD, port=emulated.port, boards_file=bigger,
                                        profiles=REPO / "profiles", backend="host", host=dead_host,
                                        build_dir=build_dir, reset=False)
        older = {f.path for f in first.plan.files}
        current = {f.path for f in build_bundle(board_config_for(BOARD, boards_file=DEFAULT_BOARDS),
                                                backend="host", build_dir=build_dir)}
        stale = sorted(older - current)
        assert "lib/firmware/drivers/loop_presence.mpy" in stale and len(stale) >= 2, stale
        edited = stale[-1]

        # While the board is off: the user's own files beside citynerve's, and one of the files the
        # older bundle put there edited by hand.
        emulated.stop()
        (flash_dir / "notes.txt").write_text("cabinet key is with the signal shop\n")
        (flash_dir / "lib" / "firmware" / "my_patch.py").write_text("PATCHED = True\n")
        (flash_dir / edited).write_bytes(b"edited on the board")
        mark = emulated.console_mark()
        emulated.start()  # boots the older firmware, which runs (and would arm its watchdog)
        assert emulated.wait_for_output(b"[link] cannot open the link", timeout=20, since=mark)

        async with Sds011Emulator(SERIES, period_s=0.2) as sensor, LinkPeer() as peer:
            host = {"uarts": {"sds-uart": sensor.address}, "link": peer.address}
            mark = emulated.console_mark()
            result = await asyncio.to_thread(flash, BOARD, port=emulated.port, backend="host", host=host,
                                             build_dir=build_dir, hello=PeerHello(peer, asyncio.get_running_loop()),
                                             hello_timeout=30)
        assert result.held, "a board running citynerve's firmware is held before copying"
        assert emulated.wait_for_output(b"[boot] held for citynerve flash", timeout=1, since=mark)
        assert result.plan.stale is not None and result.plan.stale.known
        assert result.plan.stale.kept == [edited], "a file edited on the board is kept"
        assert result.removed == [p for p in stale if p != edited]
        for path in result.removed:
            assert not (flash_dir / path).exists(), f"{path} was left by the older bundle: removed"
        assert (flash_dir / edited).read_bytes() == b"edited on the board"
        assert (flash_dir / "notes.txt").read_text() == "cabinet key is with the signal shop\n"
        assert (flash_dir / "lib" / "firmware" / "my_patch.py").read_text() == "PATCHED = True\n"
        assert not (flash_dir / "flash_hold").exists(), "the hold ends before the reset"
        manifest = Manifest.parse((flash_dir / MANIFEST).read_bytes())
        assert manifest is not None and not manifest.pending
        assert manifest.files == {f.path: f.sha256 for f in result.plan.files}
        assert result.hello is not None and result.hello["node"] == BOARD and result.hello["errors"] == []
        assert not list(flash_dir.rglob("*.new")), "no temporary file is left"


def test_the_flash_hold_keeps_the_firmware_stopped_for_one_boot_only(
        build_dir: Path, tmp_path: Path, dead_host: dict[str, Any]) -> None:
    """firmware/main.py on the real MicroPython VM: a "hold" boot stays in the REPL and marks it
    "held"; the next boot (a flash that never finished) removes it and starts the firmware."""
    with EmulatedBoard(tmp_path / "flash") as emulated:
        flash(BOARD, port=emulated.port, backend="host", host=dead_host, build_dir=build_dir, reset=False)
        hold = emulated.flash_dir / "flash_hold"
        emulated.stop()
        hold.write_text("hold")
        mark = emulated.console_mark()
        emulated.start()
        assert emulated.wait_for_output(b"[boot] held for citynerve flash", timeout=20, since=mark)
        assert hold.read_text() == "held"
        assert not emulated.wait_for_output(b"[link]", timeout=2, since=mark), "the firmware did not start"

        emulated.stop()  # the flash never came back: the next boot runs the firmware
        mark = emulated.console_mark()
        emulated.start()
        assert emulated.wait_for_output(b"[link] cannot open the link", timeout=20, since=mark)
        assert b"an unfinished flash hold was removed" in emulated.console_text().encode()
        assert not hold.exists()


def test_a_flash_that_fails_after_the_hold_gives_the_board_back_to_its_old_firmware(
        build_dir: Path, tmp_path: Path, dead_host: dict[str, Any]) -> None:
    flash_dir = tmp_path / "flash"
    with EmulatedBoard(flash_dir) as emulated:
        flash(BOARD, port=emulated.port, backend="host", host=dead_host, build_dir=build_dir, reset=False)
    before = bundle_snapshot(flash_dir)
    used = sum(p.stat().st_size for p in flash_dir.rglob("*") if p.is_file())
    bigger = boards_with_a_loop_on_air_pico(tmp_path)  # about 12 KB more than fits below
    with EmulatedBoard(flash_dir, capacity=used + 6000) as small:
        assert small.wait_for_output(b"[link] cannot open the link", timeout=20), "the old firmware runs"
        with pytest.raises(BoardFullError) as caught:
            flash(BOARD, port=small.port, boards_file=bigger, profiles=REPO / "profiles", backend="host",
                  host=dead_host, build_dir=build_dir)
        message = str(caught.value)
        assert "nothing was replaced: the old firmware is intact; the board was restarted with its old firmware" \
            in message, message

        def since_hold() -> str:
            text = small.console_text()
            return text[text.rindex("[boot] held for citynerve flash"):]

        deadline = time.monotonic() + 20
        while "[link] cannot open the link" not in since_hold() and time.monotonic() < deadline:
            small.wait_for_output(b"[link]", timeout=0.5, since=small.console_mark())
        assert "[link] cannot open the link" in since_hold(), "the old firmware runs again after the error"
    assert bundle_snapshot(flash_dir) == before, "the board is as it was"
    assert not (flash_dir / "flash_hold").exists()
    assert not list(flash_dir.rglob("*.new"))


def test_a_board_with_an_older_main_py_gets_the_new_one_before_the_hold(
        build_dir: Path, tmp_path: Path, dead_host: dict[str, Any]) -> None:
    """The main.py of citynerve before the hold existed starts the firmware whatever /flash_hold
    says: flash replaces it first (it still starts the old firmware), then holds the board."""
    with EmulatedBoard(tmp_path / "flash") as emulated:
        flash(BOARD, port=emulated.port, backend="host", host=dead_host, build_dir=build_dir, reset=False)
        emulated.stop()
        legacy = "# Board entry point\nfrom firmware.app import run\n\nrun()\n"
        (emulated.flash_dir / "main.py").write_text(legacy)
        mark = emulated.console_mark()
        emulated.start()
        assert emulated.wait_for_output(b"[link] cannot open the link", timeout=20, since=mark)
        mark = emulated.console_mark()
        result = flash(BOARD, port=emulated.port, backend="host", host=dead_host, build_dir=build_dir,
                       reset=False)
        assert result.held and emulated.wait_for_output(b"[boot] held for citynerve flash", timeout=1, since=mark)
        assert result.copied == [], "main.py was already replaced for the hold"
        assert (emulated.flash_dir / "main.py").read_bytes() == (REPO / "firmware" / "main.py").read_bytes()


def test_link_json_holds_the_id_and_link_and_a_link_the_firmware_cannot_open_is_refused() -> None:
    """/link.json (what safe mode runs on when config.json is unusable): the board's id and link
    section alone; a `usb` link, which firmware/hal_machine.py cannot open, is refused for a board
    (the harness's host backend opens whatever its host section says)."""
    config = board_config_for(BOARD, boards_file=DEFAULT_BOARDS)
    assert json.loads(link_file_bytes(config)) == {"node": BOARD, "link": config["link"]}
    usb = dict(config, link={"transport": "usb", "gateway_port": "/dev/ttyACM0"})
    with pytest.raises(FlashError, match=f"^{BOARD}: link.transport 'usb' is not one a node opens"):
        link_file_bytes(usb)
    assert json.loads(link_file_bytes(usb, backend="host"))["link"]["transport"] == "usb"
