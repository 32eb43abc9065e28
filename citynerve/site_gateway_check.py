"""The [site] and [gateway] sections of boards.toml: ids that can be MQTT topic levels, a broker
URL the publisher accepts, TLS files that fit the scheme, the metrics address and the batching
windows. The URL and id rules are the gateway's own (gateway/mqtt_settings.py, gateway/topics.py),
so a file that checks clean is one the gateway can start on.
"""

from __future__ import annotations

from typing import Any

from citynerve.table_checks import BOOL, INT, NUMBER, STR, TABLES, KeySpec, Scope, check_table, did_you_mean
from gateway.mqtt_errors import MqttSettingsError
from gateway.mqtt_settings import MqttSettings
from gateway.topics import RESERVED_NODE_IDS, TopicError, validate_id

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"  # gateway/config.py's default

SITE_KEYS = {
    "id": KeySpec(STR, 'id = "demo-city"', required=True),
    "junction": KeySpec(STR, 'junction = "Main St & 1st Ave"'),
    "description": KeySpec(STR, 'description = "..."'),
}
GATEWAY_KEYS = {
    "id": KeySpec(STR, 'id = "jn-main-1st"', required=True),
    "broker": KeySpec(STR, 'broker = "mqtts://broker.city.example:8883"'),
    "credentials_file": KeySpec(STR, 'credentials_file = "/etc/citynerve/mqtt.credentials"'),
    "ca_file": KeySpec(STR, 'ca_file = "/etc/citynerve/ca.pem"'),
    "cert_file": KeySpec(STR, 'cert_file = "/etc/citynerve/client.pem"'),
    "key_file": KeySpec(STR, 'key_file = "/etc/citynerve/client.key"'),
    "insecure": KeySpec(BOOL, "insecure = false"),
    "mqtt_protocol": KeySpec(STR, 'mqtt_protocol = "5"'),
    "client_id": KeySpec(STR, 'client_id = "citynerve-jn-main-1st"'),
    "keepalive_s": KeySpec(INT, "keepalive_s = 30"),
    "mqtt_reconnect_min_s": KeySpec(NUMBER, "mqtt_reconnect_min_s = 0.5"),
    "mqtt_reconnect_max_s": KeySpec(NUMBER, "mqtt_reconnect_max_s = 30"),
    "spool": KeySpec(STR, 'spool = "/var/lib/citynerve/spool.sqlite"'),
    "spool_max_mb": KeySpec(NUMBER, "spool_max_mb = 256"),
    "event_window_ms": KeySpec(INT, "event_window_ms = 100"),
    "measurement_interval_s": KeySpec(NUMBER, "measurement_interval_s = 10"),
    "batch_max_readings": KeySpec(INT, "batch_max_readings = 10000"),
    "batch_format": KeySpec(STR, 'batch_format = "cnb1"'),
    "codec": KeySpec(STR, 'codec = "deflate-dict"'),
    "health_interval_s": KeySpec(NUMBER, "health_interval_s = 30"),
    "command_timeout_s": KeySpec(NUMBER, "command_timeout_s = 30"),
    "tcp_bind": KeySpec(STR, 'tcp_bind = "0.0.0.0"'),
    "profiles": KeySpec(STR, 'profiles = "/etc/citynerve/profiles"'),
    "local_node": KeySpec(STR, 'local_node = "cabinet"'),
    "metrics": KeySpec(STR, 'metrics = "127.0.0.1:9108"'),
    "bus": KeySpec(TABLES, "[[gateway.bus]] sections"),
    "device": KeySpec(TABLES, "[[gateway.device]] sections"),
}
# The ranges gateway/config.py enforces when the gateway starts (the same numbers, so a file that
# checks clean also starts).
RANGES: dict[str, tuple[float, float, str]] = {
    "keepalive_s": (1, 65535, "s"),
    "mqtt_reconnect_min_s": (0.01, 3600, "s"),
    "mqtt_reconnect_max_s": (0.01, 3600, "s"),
    "spool_max_mb": (1, 1_000_000, "MB"),
    "event_window_ms": (1, 60_000, "ms"),
    "measurement_interval_s": (0.05, 86_400, "s"),
    "batch_max_readings": (1, 1_000_000, "readings"),
    "health_interval_s": (0.1, 86_400, "s"),
    "command_timeout_s": (0.1, 3600, "s"),
}
CHOICES = {"mqtt_protocol": ("3.1.1", "5"), "batch_format": ("cnb1", "json"),
           "codec": ("deflate-dict", "zlib", "zstd", "none")}
_TLS_FILES = ("ca_file", "cert_file", "key_file")


def check_topic_id(scope: Scope, key: str, value: str, what: str) -> None:
    """`value` must be usable as one MQTT topic level (the gateway's own rule)."""
    try:
        validate_id(what, value)
    except TopicError as exc:
        what_is_wrong = ("is empty" if not value
                         else f'"{value}" {exc.reason}, so it cannot be an MQTT topic level')
        scope.error(key, what_is_wrong, "use letters, digits, '-' and '_' only")


def check_site(scope: Scope, site: dict[str, Any]) -> None:
    good = check_table(scope, site, SITE_KEYS, what="[site]")
    if "id" in good:
        check_topic_id(scope, "id", good["id"], "site id")


def metrics_port(address: str) -> tuple[str, int] | None:
    """("host", port) of a "host:port" metrics address, or None when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") != host.endswith("]"):
        return None
    return host.strip("[]"), int(port)


def check_gateway(scope: Scope, gateway: dict[str, Any], board_ids: set[str]) -> dict[str, Any]:
    """Check [gateway] but its buses and devices; returns its well-typed keys."""
    good = check_table(scope, gateway, GATEWAY_KEYS, what="[gateway]")
    if "id" in good:
        check_topic_id(scope, "id", good["id"], "gateway id")
    if "local_node" in good:
        check_topic_id(scope, "local_node", good["local_node"], "node id")
        if good["local_node"] in RESERVED_NODE_IDS:
            scope.error("local_node", f'"{good["local_node"]}" is reserved in the MQTT topics',
                        f"use another id (not {', '.join(sorted(RESERVED_NODE_IDS))})")
    local = good.get("local_node", good.get("id"))
    if gateway.get("device") and isinstance(local, str) and local in board_ids:
        key = "local_node" if "local_node" in good else "id"
        scope.error(key, f'"{local}" is also a board id, so the gateway\'s own devices and that '
                         "board would publish under one node topic",
                    "set local_node to an id no board uses")
    scheme = None
    broker = good.get("broker", DEFAULT_BROKER)
    try:
        scheme = "mqtts" if MqttSettings(url=broker).tls else "mqtt"
    except MqttSettingsError as exc:
        scope.error("broker", exc.reason,
                    "write it as mqtt://host:port or mqtts://host:port (credentials go in "
                    "credentials_file or the CITYNERVE_MQTT_* environment)")
    if scheme == "mqtt":
        for key in _TLS_FILES:
            if key in good:
                scope.error(key, "is set but the broker is plain mqtt://",
                            "use an mqtts:// broker URL, or remove the TLS files")
    if "key_file" in good and "cert_file" not in good:
        scope.error("key_file", "is set without cert_file", "add cert_file (the client certificate)")
    for key, choices in CHOICES.items():
        if key in good and good[key] not in choices:
            guess = did_you_mean(good[key], choices)
            scope.error(key, f'"{good[key]}" is not one of {", ".join(choices)}',
                        f'did you mean "{guess}"?' if guess else f"use {' or '.join(choices)}")
    for key, (low, high, unit) in RANGES.items():
        if key in good and not low <= good[key] <= high:
            scope.error(key, f"{good[key]:g} {unit} is outside {low:g}..{high:g} {unit}",
                        f"use a value in {low:g}..{high:g}")
    low_s, high_s = good.get("mqtt_reconnect_min_s"), good.get("mqtt_reconnect_max_s", 30.0)
    if low_s is not None and low_s > high_s:
        scope.error("mqtt_reconnect_min_s", f"{low_s:g} s is more than mqtt_reconnect_max_s "
                                            f"({high_s:g} s)", "make the minimum at most the maximum")
    if "client_id" in good and not good["client_id"]:
        scope.error("client_id", "is empty", "remove it to derive one from the site and gateway ids")
    for key in ("spool", "tcp_bind", "profiles"):
        if key in good and not good[key]:
            scope.error(key, "is empty", f"remove it for the default, or write {GATEWAY_KEYS[key].example}")
    if "metrics" in good and metrics_port(good["metrics"]) is None:
        scope.error("metrics", f'"{good["metrics"]}" is not a host:port address',
                    'write it as "127.0.0.1:9108" (port 1..65535)')
    return good
