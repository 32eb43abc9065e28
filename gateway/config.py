"""What the gateway needs from boards.toml: its [site]/[gateway] settings, which boards link to it
and how, per-stream publishing policy, and the Modbus devices wired to the gateway itself.

load_gateway_config() checks all of it in one pass and raises ConfigError listing *every* problem
(file, line, board or device, key, and how to fix it), so the gateway refuses to start on an invalid
file rather than failing on the first problem at 3 a.m. The full inventory check (pins, buses,
profiles against boards) is `citynerve boards check`; this keeps to what the gateway uses.

[gateway] keys (all optional except id; unknown keys are logged, not refused, since other tools
read this table too):

    id                      gateway id, an MQTT topic level
    broker                  mqtt://host[:port] or mqtts://... (default mqtt://127.0.0.1:1883)
    credentials_file, ca_file, cert_file, key_file, insecure, mqtt_protocol ("3.1.1" | "5"),
    client_id, keepalive_s, mqtt_reconnect_min_s, mqtt_reconnect_max_s
    spool                   spool file (relative paths are relative to boards.toml)
    spool_max_mb            spool size bound (default 256)
    event_window_ms         events are published within this of their arrival (default 100)
    measurement_interval_s  measurement batches are at most this old (default 10)
    batch_max_readings      a batch is sealed at once when it holds this many readings (10000)
    batch_format            "cnb1" (default) or "json"
    codec                   "deflate-dict" (default: deflate primed with the cnb1 dictionary,
                            protocols/batch_dictionary.py), "zlib" (plain RFC 1950, for
                            decoders without the dictionary), "zstd" (zlib when the zstandard
                            package is missing), "none"; a batch the codec does not shrink
                            goes uncompressed
    health_interval_s       gateway and per-node health on MQTT (default 30)
    command_timeout_s       how long a node has to answer a command (default 30)
    tcp_bind                address the TCP node listener binds (default 127.0.0.1: Wi-Fi nodes
                            need the cabinet's LAN address here, e.g. "0.0.0.0")
    profiles                device profile folder (default: profiles/ beside boards.toml, else
                            the one shipped with citynerve)
    local_node              node id under which gateway-wired devices publish (default: the
                            gateway id)

A board links over `link = { transport = "uart" | "usb", gateway_port = "/dev/ttyUSB0",
baud = 115200 }` (the gateway's serial device; usb baud defaults to 115200) or
`link = { transport = "tcp", gateway_port = 7700 }` (the gateway listens; a TCP node is told apart
by its HELLO; several boards may share a port).

Stream policy (deadband and heartbeat, default off): a profile's register or stream entry may carry
`deadband` (absolute, in the stream's unit), `deadband_pct` (percent of the last published value)
and `heartbeat_s` (publish at least this often even inside the deadband); a board device overrides
them per quantity: `stream_policy = { co2_ppm = { deadband = 5, heartbeat_s = 300 } }`.

Devices wired to the gateway (polled by gateway/modbus_poller.py):

    [[gateway.bus]]
    id = "cab-rs485"
    port = "/dev/ttyUSB0"        # Modbus RTU; or host = "10.0.0.9" (and tcp_port = 502) for TCP
    baud = 19200
    framing = "8E1"
    timeout_s = 0.5
    apply_framing = true         # false only for a virtual wire (a pty takes no parity)

    [[gateway.device]]
    id = "ctrl2"
    profile = "nema-phase-status"
    bus = "cab-rs485"
    address = 1
    poll_ms = 1000
"""

from __future__ import annotations

import logging
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from citynerve.inventory import DEFAULT_PROFILES, InventoryError, load_profiles
from gateway.modbus_errors import ModbusPollerError
from gateway.mqtt_errors import MqttSettingsError
from gateway.mqtt_settings import MqttSettings
from gateway.poll_plan import BusPlan, PolledDevice, SerialBus, TcpBus, plan_bus
from gateway.topics import RESERVED_NODE_IDS, TopicError, validate_id

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "NodeLink",
    "StreamPolicy",
    "load_gateway_config",
]

log = logging.getLogger("gateway.config")

SERIAL_TRANSPORTS = ("uart", "usb")
TRANSPORTS = SERIAL_TRANSPORTS + ("tcp",)
FORMATS = ("cnb1", "json")
CODECS = ("deflate-dict", "zlib", "zstd", "none")
DEFAULT_USB_BAUD = 115200  # USB CDC ignores it; pyserial still wants one
_KNOWN_GATEWAY_KEYS = {
    "id", "broker", "credentials_file", "ca_file", "cert_file", "key_file", "insecure",
    "mqtt_protocol", "client_id", "keepalive_s", "mqtt_reconnect_min_s", "mqtt_reconnect_max_s",
    "spool", "spool_max_mb", "event_window_ms", "measurement_interval_s", "batch_max_readings",
    "batch_format", "codec", "health_interval_s", "command_timeout_s", "tcp_bind", "profiles",
    "local_node", "metrics", "bus", "device",
}  # fmt: skip
_POLICY_KEYS = ("deadband", "deadband_pct", "heartbeat_s")


@dataclass(frozen=True)
class StreamPolicy:
    """When a stream's readings may be left out: inside the deadband (absolute, or percent of the
    last published value) and unless `heartbeat_s` has passed since the last one published."""

    deadband: float | None = None
    deadband_pct: float | None = None
    heartbeat_s: float | None = None

    @property
    def active(self) -> bool:
        return self.deadband is not None or self.deadband_pct is not None


@dataclass(frozen=True)
class NodeLink:
    """How one board reaches the gateway."""

    node: str
    transport: str  # "uart", "usb" or "tcp"
    serial_port: str | None = None
    baud: int | None = None
    tcp_port: int | None = None

    @property
    def serial(self) -> bool:
        return self.transport in SERIAL_TRANSPORTS


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """The gateway's settings, checked. Build with load_gateway_config()."""

    path: Path
    site: str
    gateway: str
    broker: str = "mqtt://127.0.0.1:1883"
    credentials_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    mqtt_protocol: str = "3.1.1"
    client_id: str | None = None
    keepalive_s: int = 30
    mqtt_reconnect_min_s: float = 0.5
    mqtt_reconnect_max_s: float = 30.0
    spool: Path = Path("/var/lib/citynerve/spool.sqlite")
    spool_max_bytes: int = 256 * 1024 * 1024
    event_window_ms: int = 100
    measurement_interval_s: float = 10.0
    batch_max_readings: int = 10_000
    batch_format: str = "cnb1"
    codec: str = "deflate-dict"
    health_interval_s: float = 30.0
    command_timeout_s: float = 30.0
    tcp_bind: str = "127.0.0.1"
    metrics: str | None = None  # "host:port" of the Prometheus endpoint; None: off
    local_node: str = ""
    nodes: tuple[NodeLink, ...] = ()
    modbus: tuple[BusPlan, ...] = ()
    # (node, device id, quantity) -> policy; see policy_for
    policies: Mapping[tuple[str, str, str], StreamPolicy] = field(default_factory=dict)

    def node(self, node_id: str) -> NodeLink | None:
        for link in self.nodes:
            if link.node == node_id:
                return link
        return None

    @property
    def tcp_ports(self) -> tuple[int, ...]:
        """The distinct TCP ports to listen on, in file order."""
        ports: list[int] = []
        for link in self.nodes:
            if link.tcp_port is not None and link.tcp_port not in ports:
                ports.append(link.tcp_port)
        return tuple(ports)

    def policy_for(self, node: str, stream: str) -> StreamPolicy | None:
        """The policy of stream "<device>/<quantity>[/<channel>]" of `node`, or None (publish all)."""
        device, _, quantity = stream.partition("/")
        policy = self.policies.get((node, device, quantity))
        if policy is None and "/" in quantity:
            policy = self.policies.get((node, device, quantity.partition("/")[0]))
        return policy

    def mqtt_settings(self, *, broker: str | None = None) -> MqttSettings:
        """MqttSettings for the broker (or `broker`, overriding the file); credentials from
        credentials_file or the CITYNERVE_MQTT_* environment."""
        return MqttSettings.load(
            credentials_file=self.credentials_file,
            url=broker or self.broker,
            client_id=self.client_id,
            keepalive=self.keepalive_s,
            protocol=self.mqtt_protocol,  # type: ignore[arg-type]
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            insecure=self.insecure,
            reconnect_min=self.mqtt_reconnect_min_s,
            reconnect_max=self.mqtt_reconnect_max_s,
        )


class ConfigProblem(NamedTuple):
    """One thing wrong in the file: where (file, line, board/device), which key, what, and the fix."""

    file: str
    line: int | None
    where: str  # "[gateway]", "board air-esp32", "board cab-pico, device ctrl", ...
    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}" if self.line else self.file
        return f"{at}: {self.where}, key {self.key}: {self.problem}; {self.fix}"


class ConfigError(Exception):
    """The file cannot run a gateway; `problems` lists every reason found."""

    def __init__(self, path: Path | str, problems: list[ConfigProblem]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(
            f"{self.path}: {count} problem{'s' if count != 1 else ''}; the gateway will not "
            f"start until {'they are' if count != 1 else 'it is'} fixed:\n{lines}"
        )


# -- where keys are in the raw text --------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
Section = tuple[object, ...]


class _Lines:
    """Line numbers of tables and keys, found by scanning the text (tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.sections: dict[Section, tuple[int, int]] = {}  # section -> (header line, end line)
        counts: dict[str, int] = {}
        current: Section = ()
        start = 0
        board = -1
        for number, raw in enumerate(self.lines, start=1):
            match = _HEADER.match(raw)
            if not match:
                continue
            self.sections[current] = (start, number - 1)
            name = match.group(2).replace(" ", "")
            array = match.group(1) == "[["
            if name == "board" and array:
                board += 1
                counts = {}
                current = ("board", board)
            elif name.startswith("board.") and array:
                sub = name.split(".", 1)[1]
                counts[sub] = counts.get(sub, -1) + 1
                current = ("board", board, sub, counts[sub])
            elif name.startswith("gateway.") and array:
                sub = name.split(".", 1)[1]
                key = "gateway." + sub
                counts[key] = counts.get(key, -1) + 1
                current = ("gateway", sub, counts[key])
            else:
                current = (name,)
            start = number
        self.sections[current] = (start, len(self.lines))

    def line(self, section: Section, key: str | None = None) -> int | None:
        span = self.sections.get(section)
        if span is None:
            return None
        first, last = span
        if key is not None:
            pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
            for number in range(max(first, 1), last + 1):
                if pattern.match(self.lines[number - 1]):
                    return number
        return first or None


# -- the checker -----------------------------------------------------------------------------------


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.file = str(path)
        self.lines = _Lines(text)
        self.problems: list[ConfigProblem] = []

    def fail(self, section: Section, where: str, key: str, problem: str, fix: str) -> None:
        line = self.lines.line(section, key.split(".")[0])
        self.problems.append(ConfigProblem(self.file, line, where, key, problem, fix))

    def number(self, table: Mapping[str, Any], key: str, default: float, *, section: Section,
               where: str, low: float, high: float, integer: bool = False) -> float:
        value = table.get(key, default)
        kind = "a whole number" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or not (low <= value <= high) or (
            isinstance(value, float) and math.isnan(value)
        ):
            self.fail(section, where, key, f"{value!r} is not {kind} in {low:g}..{high:g}",
                      f"set it to {kind} in that range (default {default:g})")
            return default
        return value

    def string(self, table: Mapping[str, Any], key: str, default: str | None, *,
               section: Section, where: str, choices: tuple[str, ...] = ()) -> str | None:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or (choices and value not in choices):
            allowed = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
            self.fail(section, where, key, f"{value!r} is not {allowed}", f"use {allowed}")
            return default
        return value

    def file_path(self, table: Mapping[str, Any], key: str, *, section: Section, where: str,
                  must_exist: bool) -> Path | None:
        value = self.string(table, key, None, section=section, where=where)
        if value is None:
            return None
        path = Path(value)
        if not path.is_absolute():
            path = self.path.parent / path
        if must_exist and not path.exists():
            self.fail(section, where, key, f"{path} does not exist",
                      "create it or correct the path (relative paths start at boards.toml)")
        return path

    def topic_id(self, value: object, what: str, *, section: Section, where: str, key: str,
                 node: bool = False) -> str | None:
        try:
            validate_id(what, value)  # type: ignore[arg-type]
        except TopicError as error:
            self.fail(section, where, key, error.reason,
                      "use letters, digits, '-' or '_' (it becomes an MQTT topic level)")
            return None
        if node and value in RESERVED_NODE_IDS:
            self.fail(section, where, key, f"{value!r} is reserved for gateway topics",
                      f"pick another id ({', '.join(sorted(RESERVED_NODE_IDS))} are reserved)")
            return None
        return str(value)


def load_gateway_config(path: str | Path, *, spool: str | Path | None = None) -> GatewayConfig:
    """Read and check `path` (boards.toml); ConfigError lists every problem found. `spool`
    overrides [gateway] spool (the CLI's --spool)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(path, [ConfigProblem(str(path), None, "file", "-",
                                               f"cannot be read ({error.strerror})",
                                               "check the path given to --config")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line = getattr(error, "lineno", None) or _toml_error_line(str(error))
        raise ConfigError(path, [ConfigProblem(str(path), line, "file", "-",
                                               f"is not valid TOML ({error})",
                                               "fix the syntax at that line")]) from None
    check = _Checker(path, text)
    site = data.get("site") if isinstance(data.get("site"), dict) else {}
    gw = data.get("gateway") if isinstance(data.get("gateway"), dict) else None
    if gw is None:
        check.fail(("gateway",), "[gateway]", "gateway", "the [gateway] table is missing",
                   "add a [gateway] table with at least id = \"...\"")
        gw = {}
    site_id = check.topic_id(site.get("id"), "site id", section=("site",), where="[site]",
                             key="id")
    gateway_id = check.topic_id(gw.get("id"), "gateway id", section=("gateway",),
                                where="[gateway]", key="id")
    settings = _gateway_settings(check, gw)
    if spool is not None:
        settings["spool"] = Path(spool)
    profiles = _profiles(check, gw)
    local_node = gw.get("local_node", gateway_id)
    if "local_node" in gw:
        local_node = check.topic_id(local_node, "node id", section=("gateway",),
                                    where="[gateway]", key="local_node", node=True)
    nodes, policies = _boards(check, data, profiles)
    if gw.get("device") and local_node in {n.node for n in nodes}:
        check.fail(("gateway",), "[gateway]", "local_node",
                   f"{local_node!r} is also a board id, so two sources would share its topics",
                   "set local_node to an id no board uses")
    modbus = _gateway_devices(check, gw, profiles, local_node or "", policies)
    for key in sorted(set(gw) - _KNOWN_GATEWAY_KEYS):
        log.warning("config %s: [gateway] key %s is not one the gateway reads (ignored)",
                    path, key)
    if check.problems:
        raise ConfigError(path, check.problems)
    assert site_id is not None and gateway_id is not None
    return GatewayConfig(path=path, site=site_id, gateway=gateway_id,
                         local_node=local_node or gateway_id, nodes=tuple(nodes),
                         modbus=tuple(modbus), policies=policies, **settings)


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _gateway_settings(check: _Checker, gw: Mapping[str, Any]) -> dict[str, Any]:
    s: Section = ("gateway",)
    w = "[gateway]"
    out: dict[str, Any] = {}
    broker = check.string(gw, "broker", "mqtt://127.0.0.1:1883", section=s, where=w)
    if broker is not None:
        try:
            MqttSettings(url=broker)
        except MqttSettingsError as error:
            check.fail(s, w, "broker", error.reason,
                       "write mqtt://host[:port] or mqtts://host[:port]; credentials go in "
                       "credentials_file or the CITYNERVE_MQTT_* environment")
        out["broker"] = broker
    for key in ("credentials_file", "ca_file", "cert_file", "key_file"):
        out[key] = check.file_path(gw, key, section=s, where=w, must_exist=True)
    insecure = gw.get("insecure", False)
    if not isinstance(insecure, bool):
        check.fail(s, w, "insecure", f"{insecure!r} is not true or false", "write true or false")
        insecure = False
    out["insecure"] = insecure
    out["mqtt_protocol"] = check.string(gw, "mqtt_protocol", "3.1.1", section=s, where=w,
                                        choices=("3.1.1", "5"))
    out["client_id"] = check.string(gw, "client_id", None, section=s, where=w)
    out["keepalive_s"] = int(check.number(gw, "keepalive_s", 30, section=s, where=w, low=1,
                                          high=65535, integer=True))
    out["mqtt_reconnect_min_s"] = check.number(gw, "mqtt_reconnect_min_s", 0.5, section=s,
                                               where=w, low=0.01, high=3600)
    out["mqtt_reconnect_max_s"] = check.number(gw, "mqtt_reconnect_max_s", 30.0, section=s,
                                               where=w, low=0.01, high=3600)
    if out["mqtt_reconnect_min_s"] > out["mqtt_reconnect_max_s"]:
        check.fail(s, w, "mqtt_reconnect_min_s", "is larger than mqtt_reconnect_max_s",
                   "make the minimum at most the maximum")
    spool = check.file_path(gw, "spool", section=s, where=w, must_exist=False)
    if spool is not None:
        out["spool"] = spool
    mb = check.number(gw, "spool_max_mb", 256, section=s, where=w, low=1, high=1_000_000)
    out["spool_max_bytes"] = int(mb * 1024 * 1024)
    out["event_window_ms"] = int(check.number(gw, "event_window_ms", 100, section=s, where=w,
                                              low=1, high=60_000, integer=True))
    out["measurement_interval_s"] = check.number(gw, "measurement_interval_s", 10.0, section=s,
                                                 where=w, low=0.05, high=86_400)
    out["batch_max_readings"] = int(check.number(gw, "batch_max_readings", 10_000, section=s,
                                                 where=w, low=1, high=1_000_000, integer=True))
    out["batch_format"] = check.string(gw, "batch_format", "cnb1", section=s, where=w,
                                       choices=FORMATS)
    out["codec"] = check.string(gw, "codec", "deflate-dict", section=s, where=w, choices=CODECS)
    out["health_interval_s"] = check.number(gw, "health_interval_s", 30.0, section=s, where=w,
                                            low=0.1, high=86_400)
    out["command_timeout_s"] = check.number(gw, "command_timeout_s", 30.0, section=s, where=w,
                                            low=0.1, high=3600)
    out["tcp_bind"] = check.string(gw, "tcp_bind", "127.0.0.1", section=s, where=w)
    out["metrics"] = check.string(gw, "metrics", None, section=s, where=w)
    return out


def _profiles(check: _Checker, gw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    folder = check.file_path(gw, "profiles", section=("gateway",), where="[gateway]",
                             must_exist=True)
    if folder is None:
        beside = check.path.parent / "profiles"
        folder = beside if beside.is_dir() else DEFAULT_PROFILES
    try:
        return load_profiles(folder)
    except InventoryError as error:
        check.fail(("gateway",), "[gateway]", "profiles", str(error),
                   "fix that profile file (it must be valid JSON whose \"profile\" matches "
                   "its file name)")
        return {}


def _policy(check: _Checker, raw: object, *, section: Section, where: str,
            key: str) -> StreamPolicy | None:
    if not isinstance(raw, Mapping):
        check.fail(section, where, key, f"{raw!r} is not a table",
                   "write { deadband = 1.5, heartbeat_s = 300 } (any of deadband, "
                   "deadband_pct, heartbeat_s)")
        return None
    values: dict[str, float] = {}
    for name in raw:
        if name not in _POLICY_KEYS:
            check.fail(section, where, f"{key}.{name}", "is not a stream policy key",
                       f"use {', '.join(_POLICY_KEYS)}")
            continue
        value = raw[name]
        low = 0.001 if name == "heartbeat_s" else 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value < math.inf
        ):
            check.fail(section, where, f"{key}.{name}", f"{value!r} is not a number >= {low:g}",
                       "give a non-negative number (omit the key to turn it off)")
            continue
        values[name] = float(value)
    return StreamPolicy(**values) if values else None


def _profile_policies(check: _Checker, profile: Mapping[str, Any]) -> dict[str, StreamPolicy]:
    out: dict[str, StreamPolicy] = {}
    for entry in list(profile.get("registers", ())) + list(profile.get("streams", ())):
        if not isinstance(entry, Mapping) or not any(k in entry for k in _POLICY_KEYS):
            continue
        name = str(entry.get("name"))
        policy = _policy(check, {k: entry[k] for k in _POLICY_KEYS if k in entry},
                         section=("gateway",), where=f"profile {profile.get('profile')}",
                         key=f"{name}")
        if policy is not None:
            out[name] = policy
    return out


def _device_policies(check: _Checker, node: str, device: Mapping[str, Any],
                     profile: Mapping[str, Any] | None, section: Section, where: str,
                     policies: dict[tuple[str, str, str], StreamPolicy]) -> None:
    device_id = str(device.get("id"))
    merged = _profile_policies(check, profile) if profile else {}
    overrides = device.get("stream_policy", {})
    if not isinstance(overrides, Mapping):
        check.fail(section, where, "stream_policy", f"{overrides!r} is not a table",
                   "write stream_policy = { <quantity> = { deadband = 1, heartbeat_s = 300 } }")
        overrides = {}
    for quantity, raw in overrides.items():
        policy = _policy(check, raw, section=section, where=where,
                         key=f"stream_policy.{quantity}")
        if policy is None:
            continue
        base = merged.get(quantity, StreamPolicy())
        merged[quantity] = StreamPolicy(
            deadband=policy.deadband if policy.deadband is not None else base.deadband,
            deadband_pct=(policy.deadband_pct if policy.deadband_pct is not None
                          else base.deadband_pct),
            heartbeat_s=policy.heartbeat_s if policy.heartbeat_s is not None else base.heartbeat_s,
        )
    for quantity, policy in merged.items():
        policies[(node, device_id, quantity)] = policy


def _boards(check: _Checker, data: Mapping[str, Any], profiles: Mapping[str, Any]
            ) -> tuple[list[NodeLink], dict[tuple[str, str, str], StreamPolicy]]:
    nodes: list[NodeLink] = []
    policies: dict[tuple[str, str, str], StreamPolicy] = {}
    seen: dict[str, int] = {}
    serial_ports: dict[str, str] = {}
    boards = data.get("board", [])
    if not isinstance(boards, list):
        check.fail(("board",), "file", "board", "is not an array of tables",
                   "write each board as a [[board]] table")
        return nodes, policies
    for index, board in enumerate(boards):
        section: Section = ("board", index)
        raw_id = board.get("id") if isinstance(board, dict) else None
        where = f"board {raw_id}" if raw_id else f"board #{index + 1}"
        node = check.topic_id(raw_id, "node id", section=section, where=where, key="id",
                              node=True)
        if node is None:
            continue
        if node in seen:
            check.fail(section, where, "id", f"board id {node!r} is used twice",
                       "give every board its own id")
            continue
        seen[node] = index
        link = _link(check, node, board.get("link"), section, where, serial_ports)
        if link is not None:
            nodes.append(link)
        for d_index, device in enumerate(board.get("device", [])):
            if not isinstance(device, dict):
                continue
            d_section: Section = ("board", index, "device", d_index)
            d_where = f"{where}, device {device.get('id')}"
            profile = profiles.get(str(device.get("profile")))
            _device_policies(check, node, device, profile, d_section, d_where, policies)
    return nodes, policies


def _link(check: _Checker, node: str, link: object, section: Section, where: str,
          serial_ports: dict[str, str]) -> NodeLink | None:
    if not isinstance(link, Mapping):
        check.fail(section, where, "link", "is missing or not a table",
                   "add link = { transport = \"uart\", gateway_port = \"/dev/ttyUSB0\", "
                   "baud = 115200 } or link = { transport = \"tcp\", gateway_port = 7700 }")
        return None
    transport = link.get("transport")
    if transport not in TRANSPORTS:
        check.fail(section, where, "link.transport", f"{transport!r} is not a link transport",
                   f"use one of {', '.join(TRANSPORTS)}")
        return None
    port = link.get("gateway_port")
    if transport == "tcp":
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            check.fail(section, where, "link.gateway_port", f"{port!r} is not a TCP port",
                       "give the port the gateway listens on, 1..65535 (e.g. 7700)")
            return None
        return NodeLink(node, "tcp", tcp_port=port)
    if not isinstance(port, str) or not port:
        check.fail(section, where, "link.gateway_port",
                   f"{port!r} is not the gateway's serial device",
                   "give the gateway-side device path, e.g. \"/dev/ttyUSB0\"")
        return None
    if port in serial_ports:
        check.fail(section, where, "link.gateway_port",
                   f"{port} is already the link of board {serial_ports[port]}",
                   "give each serially linked board its own gateway port")
        return None
    serial_ports[port] = node
    default_baud = DEFAULT_USB_BAUD if transport == "usb" else None
    baud = link.get("baud", default_baud)
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        check.fail(section, where, "link.baud", f"{baud!r} is not a baud rate",
                   "give the link's baud rate, e.g. 115200")
        return None
    return NodeLink(node, transport, serial_port=port, baud=baud)


def _gateway_devices(check: _Checker, gw: Mapping[str, Any], profiles: Mapping[str, Any],
                     local_node: str, policies: dict[tuple[str, str, str], StreamPolicy]
                     ) -> list[BusPlan]:
    buses: dict[str, SerialBus | TcpBus] = {}
    for index, raw in enumerate(gw.get("bus", []) or []):
        section: Section = ("gateway", "bus", index)
        bus_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"gateway bus {bus_id}"
        if not isinstance(bus_id, str) or not bus_id or bus_id in buses:
            check.fail(section, where, "id", f"{bus_id!r} is missing or used twice",
                       "give every [[gateway.bus]] its own id")
            continue
        timeout = check.number(raw, "timeout_s", 0.5, section=section, where=where, low=0.001,
                               high=60)
        if "host" in raw:
            port = check.number(raw, "tcp_port", 502, section=section, where=where, low=1,
                                high=65535, integer=True)
            buses[bus_id] = TcpBus(id=bus_id, host=str(raw["host"]), port=int(port),
                                   timeout_s=timeout)
            continue
        port_path = check.string(raw, "port", None, section=section, where=where)
        if not port_path:
            check.fail(section, where, "port", "is missing",
                       "give the serial device (port = \"/dev/ttyUSB0\") or host = for Modbus TCP")
            continue
        baud = check.number(raw, "baud", 19200, section=section, where=where, low=1,
                            high=10_000_000, integer=True)
        framing = check.string(raw, "framing", "8E1", section=section, where=where,
                               choices=("8E1", "8N1", "8N2", "8O1"))
        apply = raw.get("apply_framing", True)
        buses[bus_id] = SerialBus(id=bus_id, port=port_path, baud=int(baud),
                                  framing=framing or "8E1", timeout_s=timeout,
                                  apply_framing=bool(apply))
    on_bus: dict[str, list[PolledDevice]] = {}
    for index, raw in enumerate(gw.get("device", []) or []):
        section = ("gateway", "device", index)
        device_id = raw.get("id") if isinstance(raw, dict) else None
        where = f"gateway device {device_id}"
        if not isinstance(device_id, str) or not device_id or "/" in device_id:
            check.fail(section, where, "id", f"{device_id!r} is not a device id",
                       "give the device an id without '/' (it prefixes its stream names)")
            continue
        profile = profiles.get(str(raw.get("profile")))
        if profile is None:
            check.fail(section, where, "profile", f"{raw.get('profile')!r} is not a profile",
                       f"use one of {', '.join(sorted(profiles)) or '(none found)'}")
            continue
        bus_id = raw.get("bus")
        if bus_id not in buses:
            check.fail(section, where, "bus", f"{bus_id!r} is not a [[gateway.bus]] id",
                       f"use one of {', '.join(sorted(buses)) or '(define a [[gateway.bus]])'}")
            continue
        address = check.number(raw, "address", 1, section=section, where=where, low=0,
                               high=255, integer=True)
        poll_ms = check.number(raw, "poll_ms", 1000, section=section, where=where, low=1,
                               high=86_400_000)
        on_bus.setdefault(str(bus_id), []).append(
            PolledDevice(id=device_id, address=int(address), profile=profile, poll_ms=poll_ms))
        _device_policies(check, local_node, raw, profile, section, where, policies)
    plans: list[BusPlan] = []
    for bus_id, devices in on_bus.items():
        try:
            plans.append(plan_bus(buses[bus_id], devices))
        except ModbusPollerError as error:
            index = list(buses).index(bus_id)
            check.fail(("gateway", "bus", index), f"gateway bus {bus_id}", "device",
                       error.reason, "change the devices' poll_ms, the baud rate or the bus")
    return plans
