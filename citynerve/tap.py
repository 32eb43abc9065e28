"""`citynerve tap`: subscribe to one gateway's topics and print what it publishes, decoded.

    citynerve tap --config boards.toml --node air-pico --stream 'pm*' --count 10

One line per reading, event, health or status message ("--json": one JSON object per line). cnb1
batches and JSON-mode batches (payloads starting with "{") are both decoded; a payload that does
not decode prints one line naming its topic and the byte offset, and tap goes on: the integrator
commissioning a junction wants to see the bad message, not lose the session over it.

The connection helper (`mqtt_client`) is shared with `citynerve status`. It is a clean, anonymous
session with a random client id: tap is a passer-by, it must never take over the gateway's or a
consumer's persistent session.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import secrets
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
import typer

from gateway.mqtt_settings import MqttSettings
from gateway.topics import GatewayTopics, parse_topic
from protocols.batch_cnb1 import BatchFormatError, decode_batch

__all__ = [
    "Record",
    "TapError",
    "decode_payload",
    "format_record",
    "load_target",
    "matches",
    "mqtt_client",
    "run_tap",
    "utc_text",
]


class TapError(Exception):
    """`where` cannot be used for `reason` (a config file, a broker)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Record:
    """One printable thing: kind is "m" (a reading), "e" (an event), "health", "status",
    "result" or "error" (a payload that did not decode); `data` is its JSON form."""

    kind: str
    node: str | None
    data: dict[str, Any]


def utc_text(utc_ms: int | float | None) -> str:
    """UTC milliseconds as 2026-11-28T22:01:03.120Z ("-" when unknown)."""
    if not isinstance(utc_ms, (int, float)):
        return "-"
    moment = datetime.fromtimestamp(utc_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def load_target(config: Path | None, broker: str | None) -> tuple[GatewayTopics, MqttSettings, Any]:
    """(topics, MQTT settings, GatewayConfig) from boards.toml, `broker` overriding its broker."""
    from gateway.config import ConfigError, load_gateway_config
    from gateway.mqtt_errors import MqttSettingsError

    path = config or Path("boards.toml")
    try:
        cfg = load_gateway_config(path)
        settings = cfg.mqtt_settings(broker=broker)
    except ConfigError as error:
        raise TapError(str(path), f"does not load ({error}); run `citynerve boards check {path}`") from None
    except MqttSettingsError as error:
        raise TapError(str(path), f"the broker settings are unusable ({error})") from None
    return GatewayTopics(cfg.site, cfg.gateway), settings, cfg


@asynccontextmanager
async def mqtt_client(settings: MqttSettings, *, client_id_prefix: str) -> AsyncIterator[aiomqtt.Client]:
    """A connected clean-session client for reading (never publishing); TapError naming the broker
    (never its credentials) when it cannot connect."""
    credentials = settings.credentials
    client = aiomqtt.Client(
        settings.host, settings.port,
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
        identifier=f"{client_id_prefix}-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5 if settings.protocol == "5" else aiomqtt.ProtocolVersion.V311,
        tls_context=settings.ssl_context(),
        keepalive=settings.keepalive,
        timeout=settings.connect_timeout,
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as error:
        raise TapError(f"MQTT broker {settings.broker}", f"cannot be reached ({error})") from None
    try:
        yield client
    finally:
        try:
            await client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass  # the broker went away first: nothing left to close


# -- decoding --------------------------------------------------------------------------------------


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BatchFormatError("not UTF-8 JSON", error.start) from None
    except json.JSONDecodeError as error:
        raise BatchFormatError(f"not JSON ({error.msg})", error.pos) from None
    if not isinstance(value, dict):
        raise BatchFormatError("JSON that is not an object", 0)
    return value


def _batch_records(node: str, batch: dict[str, Any]) -> list[Record]:
    node = str(batch.get("node") or node)
    out = []
    for m in batch.get("measurements") or []:
        out.append(Record("m", node, {"kind": "m", "node": node, "t": m.get("t"),
                                      "stream": m.get("stream"), "value": m.get("value"),
                                      "unit": m.get("unit"), "fault": m.get("fault")}))
    for e in batch.get("events") or []:
        out.append(Record("e", node, {"kind": "e", "node": node, "t": e.get("t"),
                                      "code": e.get("code"), "name": e.get("name"),
                                      "param": e.get("param")}))
    return out


def decode_payload(topic: str, payload: bytes) -> list[Record]:
    """Everything one message on a citynerve topic says, as records; a payload that does not
    decode is one "error" record naming the topic and, when known, the byte offset."""
    parsed = parse_topic(topic)
    if parsed is None:
        return []
    node, channel = parsed.node, parsed.channel
    try:
        if channel in ("m", "e"):
            batch = _json_object(payload) if payload[:1] == b"{" else decode_batch(payload)
            return _batch_records(str(node), batch)
        body = _json_object(payload)
    except BatchFormatError as error:
        return [Record("error", node, {"kind": "error", "node": node, "topic": topic,
                                       "offset": error.offset, "reason": error.reason,
                                       "bytes": len(payload)})]
    kind = {"cmd": "result"}.get(channel, channel)  # a command (cmd/{node}) is shown like a result
    return [Record(kind, node, {"kind": kind, "node": node, "topic": topic, "body": body})]


# -- filtering and formatting ----------------------------------------------------------------------


def _stream_matches(pattern: str, name: str | None) -> bool:
    if name is None:
        return False
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name.startswith(pattern)


def matches(record: Record, *, node: str | None = None, stream: str | None = None) -> bool:
    """Whether `record` passes --node (exact) and --stream (a prefix, or a glob with * ? [).
    Gateway-level records have no node and fail any --node; with --stream, readings match on
    their stream name, events on their event name, and health, status and results never."""
    if node is not None and record.node != node:
        return False
    if stream is None or record.kind == "error":
        return True
    if record.kind == "m":
        return _stream_matches(stream, record.data.get("stream"))
    if record.kind == "e":
        return _stream_matches(stream, record.data.get("name"))
    return False


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _health_text(body: dict[str, Any]) -> str:
    if body.get("source") == "gateway":
        link = "connected" if body.get("connected") else "disconnected"
        boot = body.get("boot")
        return (f"link {link} boot {'-' if boot is None else f'{boot:08x}'} fw {body.get('fw') or '-'} "
                f"cfg {body.get('cfg') or '-'}")
    if body.get("source") == "node":
        parts = [f"node health uptime {body.get('uptime_ms', '-')} ms heap_free {body.get('heap_free', '-')}"]
        for device, counters in sorted((body.get("dev") or {}).items()):
            if isinstance(counters, dict) and counters.get("last_fault"):
                parts.append(f"{device} last_fault {counters['last_fault']}")
        return ", ".join(parts)
    spool = body.get("spool") or {}
    publisher = body.get("publisher") or {}
    return (f"health spool {spool.get('pending_frames', '-')} frames "
            f"{spool.get('unacked_batches', '-')} batches unacked, "
            f"publisher {'connected' if publisher.get('connected') else 'not connected'}")


def format_record(record: Record) -> str:
    """The one-line text form of a record."""
    d = record.data
    who = record.node or "gateway"
    if record.kind == "m":
        head = f"{utc_text(d['t'])} {who} {d['stream']}"
        if d.get("fault") is not None:
            return f"{head} FAULT {d['fault']}"
        unit = f" {d['unit']}" if d.get("unit") else ""
        return f"{head} = {_number(d['value'])}{unit}"
    if record.kind == "e":
        name = d.get("name") or f"code_{d.get('code')}"
        return f"{utc_text(d['t'])} {who} event {name} {_event_param(name)} {d.get('param')}"
    if record.kind == "error":
        where = "" if d.get("offset") is None else f" at byte {d['offset']}"
        return (f"{utc_text(_now_ms())} {who} UNDECODABLE payload on {d['topic']}{where}: "
                f"{d['reason']} ({d['bytes']} bytes)")
    body = d.get("body") or {}
    when = utc_text(body.get("utc_ms") or body.get("at_ms") or body.get("since_ms") or _now_ms())
    if record.kind == "status":
        extra = f" ({body['reason']})" if body.get("reason") else ""
        return (f"{when} gateway status {body.get('state', '?')}{extra} boot {body.get('boot_id', '-')} "
                f"version {body.get('version', '-')}")
    if record.kind == "health":
        return f"{when} {who} {_health_text(body)}"
    return f"{when} {who} {record.kind} {json.dumps(body, sort_keys=True)}"


def _event_param(name: str) -> str:
    return "detector" if name.startswith("detector") else "phase"


def record_json(record: Record) -> str:
    """The --json form: the record's data with "utc" text beside the "t" milliseconds."""
    data = dict(record.data)
    if "t" in data:
        data["utc"] = utc_text(data["t"])
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


# -- running ---------------------------------------------------------------------------------------


async def run_tap(settings: MqttSettings, topics: GatewayTopics, *, node: str | None = None,
                  stream: str | None = None, as_json: bool = False, count: int | None = None,
                  timeout: float | None = None, out: TextIO = sys.stdout,
                  err: TextIO = sys.stderr) -> int:
    """Print decoded lines until `count` lines (exit code 0), or until `timeout` seconds pass
    without one (1, with a sentence on `err`); without either, until cancelled."""
    subscription = f"{topics.base}/#"
    printed = 0
    async with mqtt_client(settings, client_id_prefix="citynerve-tap") as client:
        await client.subscribe(subscription, qos=1)
        # Tests and scripts wait for this line before they make traffic.
        print(f"tap: listening on {subscription} at {settings.broker}", file=err, flush=True)
        messages = aiomqtt_messages(client)
        while count is None or printed < count:
            try:
                async with asyncio.timeout(timeout):
                    message = await anext(messages)
            except TimeoutError:
                got = "nothing arrived" if printed == 0 else f"only {printed} line(s) arrived, then nothing"
                print(f"tap: {got} on {subscription} at {settings.broker} within {timeout:g} s "
                      f"(is the gateway running and publishing there?)", file=err, flush=True)
                return 1
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            for record in decode_payload(str(message.topic), payload):
                if not matches(record, node=node, stream=stream):
                    continue
                print(record_json(record) if as_json else format_record(record), file=out, flush=True)
                printed += 1
                if count is not None and printed >= count:
                    break
    return 0


def aiomqtt_messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    return aiter(client.messages)


def lines_for(messages: Iterable[tuple[str, bytes]], **filters: Any) -> list[str]:
    """Text lines for already received (topic, payload) pairs: the offline form of tap."""
    return [format_record(r) for t, p in messages for r in decode_payload(t, p) if matches(r, **filters)]


def tap_command(
    config: Path = typer.Option(Path("boards.toml"), "--config", help="The junction's boards.toml."),
    broker: str = typer.Option(None, "--broker", help="Broker URL instead of boards.toml's."),
    node: str = typer.Option(None, "--node", help="Only this node's lines."),
    stream: str = typer.Option(None, "--stream", help="Only streams (or event names) with this prefix or glob."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    count: int = typer.Option(None, "--count", min=1, help="Stop after this many lines."),
    timeout: float = typer.Option(None, "--timeout", min=0.0,
                                  help="Exit 1 when no line arrives for this many seconds."),
) -> None:
    """Subscribe to the gateway's topics and print readings, events, health and status, decoded."""
    try:
        topics, settings, _cfg = load_target(config, broker)
        code = asyncio.run(run_tap(settings, topics, node=node, stream=stream, as_json=as_json,
                                   count=count, timeout=timeout))
    except TapError as error:
        typer.echo(f"tap: {error}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
