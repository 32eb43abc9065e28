"""`citynerve status`: the commissioning view of one junction.

    citynerve status --config boards.toml           live, until Ctrl-C
    citynerve status --config boards.toml --once    one snapshot; exit 1 if the gateway is offline
                                                    or a board is not linked

Everything comes from what the gateway publishes: the retained `status` (online/offline, boot,
version), the gateway `health` (spool depth, publisher) and each node's `health` topic, which
carries two documents: the gateway's view of the link ("source": "gateway": connected, boot id,
firmware, config hash, last frame) and the node's own HEALTH ("source": "node": per-device
counters and last fault). Health is not retained, so a snapshot waits up to one health interval
(boards.toml [gateway] health_interval_s, plus a margin) unless everything has arrived sooner.

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

from citynerve.tap import TapError, load_target, mqtt_client, utc_text
from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics, parse_topic

__all__ = ["JunctionView", "expected_config_hashes", "run_status", "snapshot", "status_command"]

HEALTH_MARGIN_S = 2.0  # beyond one health interval: the gateway's publish is not instantaneous


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

    def feed(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(topic)
        if parsed is None or parsed.channel not in ("status", "health"):
            return
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return  # not ours to judge here: `citynerve tap` shows undecodable payloads
        if not isinstance(body, dict):
            return
        if parsed.channel == "status":
            self.status = body
        elif parsed.node is None:
            self.gateway_health = body
        elif body.get("source") == "node":
            self.node[parsed.node] = body
        else:
            self.link[parsed.node] = body

    @property
    def online(self) -> bool:
        return bool(self.status and self.status.get("state") == "online")

    def complete(self) -> bool:
        """Everything a snapshot needs has arrived (node HEALTH frames are a bonus: a node sends
        them on its own schedule)."""
        return (self.status is not None and (not self.online or self.gateway_health is not None)
                and (not self.online or all(b in self.link for b in self.boards)))

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
                "cfg": cfg, "devices": self.device_text(board)}

    def device_text(self, board: str) -> str:
        health = self.node.get(board)
        if health is None:
            return "no node HEALTH yet"
        parts = []
        for device, c in sorted((health.get("dev") or {}).items()):
            if not isinstance(c, dict):
                continue
            counts = " ".join(f"{k} {c[k]}" for k in ("timeouts", "checksum", "crc_errors", "exceptions")
                              if c.get(k))
            fault = f"last fault {c['last_fault']}" if c.get("last_fault") else "ok"
            parts.append(f"{device}: {fault}" + (f", {counts}" if counts else ""))
        loss = {k: v for k, v in (health.get("loss") or {}).items() if v}
        if loss:
            parts.append("loss " + " ".join(f"{k} {v}" for k, v in sorted(loss.items())))
        return "; ".join(parts) or "no devices"

    def text(self) -> str:
        lines = self.gateway_lines()
        for board in self.boards:
            r = self.board_row(board)
            lines.append(f"board {board}: {r['link']}, boot {r['boot']}, last frame {r['last frame']}, "
                         f"fw {r['fw']}, cfg {r['cfg']}")
            lines.append(f"  devices: {r['devices']}")
        for problem in self.problems():
            lines.append(f"PROBLEM: {problem}")
        return "\n".join(lines)

    def table(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=True)
        for column in ("board", "link", "boot", "last frame", "fw", "cfg", "devices"):
            table.add_column(column, overflow="fold")
        for board in self.boards:
            r = self.board_row(board)
            style = {"connected": "green", "disconnected": "red"}.get(r["link"], "yellow")
            table.add_row(*[Text(v, style=style if k == "link" else "") for k, v in r.items()])
        return Group(Text("\n".join(self.gateway_lines())), table,
                     Text("\n".join(f"PROBLEM: {p}" for p in self.problems()), style="red"))


async def _collect(view: JunctionView, settings: MqttSettings, topics: GatewayTopics, *,
                   until_complete_s: float | None, on_change: Any = None) -> None:
    async with mqtt_client(settings, client_id_prefix="citynerve-status") as client:
        await client.subscribe(f"{topics.base}/status", qos=1)
        await client.subscribe(f"{topics.base}/health", qos=1)
        await client.subscribe(f"{topics.base}/+/health", qos=1)
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
            view.feed(str(message.topic), payload)
            if on_change is not None:
                on_change()


async def snapshot(settings: MqttSettings, topics: GatewayTopics, view: JunctionView, *,
                   window_s: float) -> JunctionView:
    """Collect retained status and health for up to `window_s` seconds (less when complete)."""
    await _collect(view, settings, topics, until_complete_s=window_s)
    return view


async def run_status(settings: MqttSettings, topics: GatewayTopics, view: JunctionView, *,
                     once: bool, window_s: float, out: TextIO = sys.stdout) -> int:
    """--once: print one snapshot, 0 when all is well, 1 otherwise. Live: redraw until cancelled."""
    if once:
        await snapshot(settings, topics, view, window_s=window_s)
        print(view.text(), file=out, flush=True)
        return 1 if view.problems() else 0
    from rich.live import Live

    with Live(view.table(), refresh_per_second=2) as live:
        await _collect(view, settings, topics, until_complete_s=None,
                       on_change=lambda: live.update(view.table()))
    return 0


def status_command(
    config: Path = typer.Option(Path("boards.toml"), "--config", help="The junction's boards.toml."),
    broker: str = typer.Option(None, "--broker", help="Broker URL instead of boards.toml's."),
    once: bool = typer.Option(False, "--once", help="Print one snapshot and exit (1 if the gateway is "
                                                    "offline or a board is not linked)."),
    wait: float = typer.Option(None, "--wait", min=0.1,
                               help="--once: collect for at most this many seconds (default: the "
                                    "gateway's health interval plus 2 s)."),
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
        code = asyncio.run(run_status(settings, topics, view, once=once, window_s=window))
    except TapError as error:
        typer.echo(f"status: {error}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
