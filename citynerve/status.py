"""`citynerve status`: the commissioning view of one junction.

    citynerve status --config boards.toml           live, until Ctrl-C
    citynerve status --config boards.toml --once    one snapshot; exit 1 if the gateway is offline
                                                    or a board is not linked

Everything comes from what the gateway publishes: the retained `status` (online/offline, boot,
version), the gateway `health` (spool depth, publisher), each node's `health` topic, which
carries two documents: the gateway's view of the link ("source": "gateway": connected, boot id,
firmware, config hash, last frame) and the node's own HEALTH ("source": "node": per-device
counters and last fault), and each node's measurement batches (`m`), for every device's state and
last good value (citynerve/status_devices.py). Health is not retained, so a snapshot waits up to
one health interval (boards.toml [gateway] health_interval_s, plus a margin) unless everything has
arrived sooner: status, gateway health, every board's link and every linked board's own HEALTH.
Measurements are not waited for: --once shows the last values heard in its window ("last good -"
when none came), the live view fills them in as batches arrive.

The live view redraws on every message; Ctrl-C ends it with exit code 0 and no traceback.

The config hash a board should report is the one `citynerve flash` would write for it:
sha256(config_bytes(board_config(...)))[:16], the firmware's HELLO "cfg".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import typer

from citynerve.status_devices import DeviceReadings, device_lines, device_rows, loss_line
from citynerve.tap import TapError, decode_payload, load_target, mqtt_client, utc_text
from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics, parse_topic

__all__ = ["JunctionView", "expected_config_hashes", "run_status", "snapshot", "status_command"]

HEALTH_MARGIN_S = 2.0  # beyond one health interval: the gateway's publish is not instantaneous
REDRAW_MIN_S = 0.25  # the live view redraws at most this often (a busy junction sends many batches)


def expected_config_hashes(boards_file: Path) -> dict[str, str | None]:
    """Per board id, the config hash its HELLO should carry (None when its config cannot be built,
    e.g. a profile is missing: `citynerve boards check` says why)."""
    from citynerve.boards_check import profiles_folder
    from citynerve.inventory import InventoryError, board_config, boards, config_bytes, load_inventory, load_profiles

    inventory = load_inventory(boards_file)
    profiles = load_profiles(profiles_folder(inventory, boards_file.parent))
    out: dict[str, str | None] = {}
    for board in boards(inventory):
        board_id = str(board.get("id"))
        try:
            raw = config_bytes(board_config(inventory, board_id, profiles))
        except InventoryError:
            out[board_id] = None
            continue
        out[board_id] = hashlib.sha256(raw).hexdigest()[:16]
    return out


@dataclass
class JunctionView:
    """What has been heard so far about one gateway and its boards."""

    boards: list[str]
    expected_cfg: Mapping[str, str | None]
    site: str = "?"
    gateway: str = "?"
    status: dict[str, Any] | None = None
    gateway_health: dict[str, Any] | None = None
    link: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> "source": "gateway"
    node: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> "source": "node"
    readings: DeviceReadings = field(default_factory=DeviceReadings)

    def feed(self, topic: str, payload: bytes) -> bool:
        """Take one message; True when the view changed."""
        parsed = parse_topic(topic)
        if parsed is None:
            return False
        if parsed.channel == "m" and parsed.node is not None:
            return self.readings.feed(decode_payload(topic, payload))
        if parsed.channel not in ("status", "health"):
            return False
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False  # not ours to judge here: `citynerve tap` shows undecodable payloads
        if not isinstance(body, dict):
            return False
        if parsed.channel == "status":
            self.status = body
        elif parsed.node is None:
            self.gateway_health = body
        elif body.get("source") == "node":
            self.node[parsed.node] = body
        else:
            self.link[parsed.node] = body
        return True

    @property
    def online(self) -> bool:
        return bool(self.status and self.status.get("state") == "online")

    def complete(self) -> bool:
        """Everything a snapshot needs has arrived: the status, and while the gateway is online
        its health, every board's link and the own HEALTH of every linked board (measurements are
        not waited for: a board's interval may be longer than the snapshot's window)."""
        if self.status is None:
            return False
        if not self.online:
            return True
        return (self.gateway_health is not None and all(b in self.link for b in self.boards)
                and all(b in self.node for b in self.boards if self.connected(b)))

    def connected(self, board: str) -> bool | None:
        link = self.link.get(board)
        return None if link is None else bool(link.get("connected"))

    def problems(self) -> list[str]:
        """Why a snapshot exits 1 (empty: all well)."""
        out = []
        if self.status is None:
            out.append("no gateway status was received (never started on this broker?)")
        elif not self.online:
            out.append(f"the gateway is {self.status.get('state', 'in an unknown state')}"
                       + (f" ({self.status['reason']})" if self.status.get("reason") else ""))
        for board in self.boards:
            state = self.connected(board)
            if state is None and self.online:
                out.append(f"board {board}: no health from the gateway about it")
            elif state is False:
                out.append(f"board {board}: not linked to the gateway")
        return out

    # -- rows ------------------------------------------------------------------------------------

    def gateway_lines(self) -> list[str]:
        s = self.status or {}
        line = (f"gateway {s.get('gateway', self.gateway)} at {s.get('site', self.site)}: "
                f"{s.get('state', 'unknown')}" + (f" ({s['reason']})" if s.get("reason") else "")
                + f", boot {s.get('boot_id', '-')}, version {s.get('version', '-')}")
        h = self.gateway_health
        if h is None:
            return [line, "  health: not received yet"]
        spool = h.get("spool") or {}
        publisher = h.get("publisher") or {}
        return [line,
                f"  spool: {spool.get('pending_frames', '-')} frames pending, "
                f"{spool.get('unacked_batches', '-')} batches unacknowledged, "
                f"{spool.get('used_bytes', '-')} of {spool.get('max_bytes', '-')} bytes, "
                f"{spool.get('evicted_frames', 0)} frames evicted",
                f"  broker: {'connected' if publisher.get('connected') else 'not connected'}"
                f" (health at {utc_text(h.get('utc_ms'))})"]

    def board_row(self, board: str) -> dict[str, str]:
        link = self.link.get(board)
        expected = self.expected_cfg.get(board)
        if link is None:
            state, boot, last, fw, cfg = "unknown", "-", "-", "unknown", "unknown"
        else:
            state = "connected" if link.get("connected") else "disconnected"
            boot = "-" if link.get("boot") is None else f"{link['boot']:08x}"
            hellos = (link.get("counters") or {}).get("hellos", 0)
            last = f"{utc_text(link.get('last_frame_ms'))} ({hellos} HELLO)"
            fw = link.get("fw") or "unknown"
            got = link.get("cfg")
            if got is None or expected is None:
                cfg = f"unknown ({got or 'not reported'})"
            else:
                cfg = f"matches {got}" if got == expected else f"MISMATCH {got} != {expected}"
        return {"board": board, "link": state, "boot": boot, "last frame": last, "fw": fw,
                "cfg": cfg, "devices": "\n".join(self.device_lines(board))}

    def device_lines(self, board: str) -> list[str]:
        """One line per device (state, last good value, timeouts, CRC errors, exceptions, last
        fault), then the node's loss counters when any is not zero."""
        health = self.node.get(board)
        lines = device_lines(board, health, self.readings)
        loss = loss_line(health)
        if loss:
            lines.append(loss)
        if not lines:
            lines.append("no node HEALTH yet" if health is None else "no devices")
        return lines

    def device_text(self, board: str) -> str:
        return " | ".join(self.device_lines(board))

    def text(self) -> str:
        lines = self.gateway_lines()
        for board in self.boards:
            r = self.board_row(board)
            lines.append(f"board {board}: {r['link']}, boot {r['boot']}, last frame {r['last frame']}, "
                         f"fw {r['fw']}, cfg {r['cfg']}")
            lines.extend(f"  device {line}" for line in self.device_lines(board))
        for problem in self.problems():
            lines.append(f"PROBLEM: {problem}")
        return "\n".join(lines)

    def table(self) -> Any:
        """The live view: gateway lines, a table of boards, a table of their devices, problems."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        boards = Table(expand=True, title="boards", title_justify="left")
        for column in ("board", "link", "boot", "last frame", "fw", "cfg"):
            boards.add_column(column, overflow="fold")
        devices = Table(expand=True, title="devices", title_justify="left")
        for column in ("board", "device", "state", "last good", "timeouts", "CRC errors", "exceptions",
                       "last fault"):
            numeric = column in ("timeouts", "CRC errors", "exceptions")
            devices.add_column(column, overflow="fold", justify="right" if numeric else "left",
                               no_wrap=numeric)
        notes = []
        for board in self.boards:
            r = self.board_row(board)
            del r["devices"]
            style = {"connected": "green", "disconnected": "red"}.get(r["link"], "yellow")
            boards.add_row(*[Text(v, style=style if k == "link" else "") for k, v in r.items()])
            health = self.node.get(board)
            for row in device_rows(board, health, self.readings):
                state_style = "red" if row.state.startswith("FAULT") else "green" if row.state == "ok" else ""
                devices.add_row(board, row.device, Text(row.state, style=state_style), row.last_good,
                                *[str(row.counts.get(k, "")) for k in ("timeouts", "CRC errors", "exceptions")],
                                row.last_fault or row.health)
            loss = loss_line(health)
            if loss:
                notes.append(f"{board}: {loss}")
        return Group(Text("\n".join(self.gateway_lines())), boards, devices,
                     Text("\n".join(notes)), Text("\n".join(f"PROBLEM: {p}" for p in self.problems()), style="red"))


async def _collect(view: JunctionView, settings: MqttSettings, topics: GatewayTopics, *,
                   until_complete_s: float | None, on_change: Any = None) -> None:
    import aiomqtt

    async with mqtt_client(settings, client_id_prefix="citynerve-status") as client:
        try:
            await client.subscribe(f"{topics.base}/status", qos=1)
            await client.subscribe(f"{topics.base}/health", qos=1)
            await client.subscribe(f"{topics.base}/+/health", qos=1)
            await client.subscribe(f"{topics.base}/+/m", qos=1)
            deadline = None if until_complete_s is None else time.monotonic() + until_complete_s
            messages = aiter(client.messages)
            while deadline is None or not view.complete():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    async with asyncio.timeout(left):
                        message = await anext(messages)
                except TimeoutError:
                    return
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                if view.feed(str(message.topic), payload) and on_change is not None:
                    on_change()
        except aiomqtt.MqttError as error:
            raise TapError(f"MQTT broker {settings.broker}", f"the connection was lost ({error})") from None


async def snapshot(settings: MqttSettings, topics: GatewayTopics, view: JunctionView, *,
                   window_s: float) -> JunctionView:
    """Collect retained status and health for up to `window_s` seconds (less when complete)."""
    await _collect(view, settings, topics, until_complete_s=window_s)
    return view


async def run_live(settings: MqttSettings, topics: GatewayTopics, view: JunctionView, *,
                   redraws: int | None = None, out: TextIO = sys.stdout) -> int:
    """Redraw the view whenever something changed (at most every REDRAW_MIN_S), until cancelled
    or after `redraws` redraws. On a terminal the view is redrawn in place (rich); otherwise each
    redraw is a text snapshot under a "--- time" line, so `status | tee log` keeps a history."""
    from rich.console import Console
    from rich.live import Live

    changed = asyncio.Event()
    collector = asyncio.create_task(
        _collect(view, settings, topics, until_complete_s=None, on_change=changed.set), name="status collect")
    console = Console(file=out)
    live = Live(view.table(), console=console, auto_refresh=False, redirect_stdout=False,
                redirect_stderr=False) if console.is_terminal else None
    drawn = 0
    try:
        if live is not None:
            live.start(refresh=True)
        while redraws is None or drawn < redraws:
            waiter = asyncio.create_task(changed.wait())
            await asyncio.wait({waiter, collector}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if collector.done():
                collector.result()  # the broker went away: TapError
                return 2
            changed.clear()
            if live is not None:
                live.update(view.table(), refresh=True)
            else:
                print(f"--- {utc_text(time.time() * 1000)}\n{view.text()}", file=out, flush=True)
            drawn += 1
            await asyncio.sleep(REDRAW_MIN_S)
        return 0
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        if live is not None:
            live.stop()


async def run_status(settings: MqttSettings, topics: GatewayTopics, view: JunctionView, *,
                     once: bool, window_s: float, redraws: int | None = None, out: TextIO = sys.stdout) -> int:
    """--once: print one snapshot, 0 when all is well, 1 otherwise. Live: redraw until cancelled."""
    if once:
        await snapshot(settings, topics, view, window_s=window_s)
        print(view.text(), file=out, flush=True)
        return 1 if view.problems() else 0
    return await run_live(settings, topics, view, redraws=redraws, out=out)


def status_command(
    config: Path = typer.Option(Path("boards.toml"), "--config", help="The junction's boards.toml."),
    broker: str = typer.Option(None, "--broker", help="Broker URL instead of boards.toml's."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit (1 if the gateway is "
                                                    "offline or a board is not linked)."),
    wait: float = typer.Option(None, "--wait", min=0.1,
                               help="--once: collect for at most this many seconds (default: the "
                                    "gateway's health interval plus 2 s)."),
    redraws: int = typer.Option(None, "--redraws", min=1, metavar="N",
                                help="Live view: stop after N redraws (for scripts and tests)."),
) -> None:
    """The commissioning view: gateway state and spool, every board's link, firmware, config hash
    and device health."""
    try:
        topics, settings, cfg = load_target(config, broker)
        board_ids = [n.node for n in cfg.nodes]
        try:
            expected = expected_config_hashes(config)
        except Exception:  # noqa: BLE001 - a config that loads for the gateway but not for flash
            expected = {b: None for b in board_ids}
        view = JunctionView(board_ids, expected, site=topics.site, gateway=topics.gateway)
        window = wait if wait is not None else cfg.health_interval_s + HEALTH_MARGIN_S
        code = asyncio.run(run_status(settings, topics, view, once=once, window_s=window, redraws=redraws))
    except TapError as error:
        typer.echo(f"status: {error}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # Ctrl-C is how the live view ends
        code = 0
    raise typer.Exit(code)
