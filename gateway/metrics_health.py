"""The gateway's health document as Prometheus metrics (labels node, device, kind).

    page = health_metrics(await service.health())      # an Exposition; .render() is the page

The input is what GatewayService.health() returns (the .../health topic's JSON), optionally with
"nodes": {node id: NodeSession.health() plus "connected", and where known "last_hello_ms" and
"node_health" (the node's last HEALTH message: uptime_ms, heap_*, loss, dev)}. Every section is
optional and every value is checked: a missing or malformed part leaves its samples out, never
the page, so the endpoint keeps working while the health document grows.

Naming: citynerve_<part>_<what>[_unit][_total]; counters end in _total and are cumulative (the
spool's over the spool file's life, the rest over the gateway process's life, the node's over its
boot); `kind` tells causes apart within one family. Spool and batcher kinds are spelled out:
"m" -> measurements, "e" -> events, "h" -> health.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.metrics_exposition import Exposition

__all__ = ["health_metrics"]

_KINDS = {"m": "measurements", "e": "events", "h": "health"}

# Device counters (node drivers' and the gateway poller's) that are faults, by the kind label
# they get in citynerve_device_faults_total. Everything else numeric goes to
# citynerve_device_counter (untyped: a driver's counters are not all monotonic).
_DEVICE_FAULTS = {
    "timeouts": "timeout", "crc_errors": "crc", "exceptions": "exception",
    "framing_errors": "framing", "connection_errors": "connection", "read_errors": "read",
    "write_errors": "write", "poll_faults": "poll", "driver_errors": "driver",
}  # fmt: skip
_DEVICE_STATE = {  # the gateway poller's state fields: gauges, not counters
    "in_backoff": ("citynerve_device_in_backoff", "1 while the device is skipped after failures."),
    "backoff_s": ("citynerve_device_backoff_seconds", "The device's current backoff window."),
    "consecutive_failures": ("citynerve_device_consecutive_failures",
                             "Failed requests in a row."),
}
_DEVICE_POLLS = {"polls": "attempted", "skipped": "skipped", "overruns": "overrun"}

_SPOOL_GAUGES = [
    ("used_bytes", "citynerve_spool_used_bytes", "Payload bytes the spool holds."),
    ("max_bytes", "citynerve_spool_max_bytes", "The spool's byte budget; beyond it, eviction."),
    ("pending_frames", "citynerve_spool_pending_frames", "Frames spooled, not yet in a batch."),
    ("pending_bytes", "citynerve_spool_pending_bytes", "Bytes of the frames not yet in a batch."),
    ("batched_frames", "citynerve_spool_batched_frames", "Frames in batches awaiting PUBACK."),
    ("batched_bytes", "citynerve_spool_batched_bytes", "Bytes of frames in batches awaiting PUBACK."),
    ("unacked_batches", "citynerve_spool_unacked_batches", "Sealed batches awaiting PUBACK."),
    ("unacked_batch_bytes", "citynerve_spool_unacked_batch_bytes",
     "Encoded bytes of the batches awaiting PUBACK."),
]
_PUBLISHER_COUNTERS = [
    ("published", "citynerve_mqtt_published_total", "PUBLISH packets sent, resends included."),
    ("acked", "citynerve_mqtt_acked_total", "PUBACKs received."),
    ("refused", "citynerve_mqtt_refused_total", "Negative PUBACKs (MQTT 5)."),
    ("publish_errors", "citynerve_mqtt_publish_errors_total",
     "Publishes whose connection dropped before the PUBACK (each is sent again)."),
    ("connects", "citynerve_mqtt_connects_total", "Successful broker connections."),
    ("reconnects", "citynerve_mqtt_reconnects_total", "Successful connections after the first."),
    ("disconnects", "citynerve_mqtt_disconnects_total", "Broker connections lost."),
    ("connect_failures", "citynerve_mqtt_connect_failures_total", "Failed connection attempts."),
    ("commands_received", "citynerve_mqtt_commands_received_total",
     "Messages received on the command topics."),
    ("commands_dropped", "citynerve_mqtt_commands_dropped_total",
     "Commands dropped because the command queue was full."),
]
_BATCHER_COUNTERS = [
    ("filtered", "citynerve_batcher_filtered_total", "Readings left out by a deadband."),
    ("unpublished_batches", "citynerve_batcher_unpublished_batches_total",
     "Batches sealed with nothing left to publish."),
    ("bad_records", "citynerve_batcher_bad_records_total",
     "Spool records or readings dropped as malformed."),
    ("seal_retries", "citynerve_batcher_seal_retries_total", "Seals retried after an eviction."),
    ("seal_failures", "citynerve_batcher_seal_failures_total", "Seals that failed (retried later)."),
]
_LINK_COUNTERS = [
    ("connects", "citynerve_link_connects_total", "Link connections (or serial port opens)."),
    ("disconnects", "citynerve_link_disconnects_total", "Link connections lost or closed."),
    ("open_failures", "citynerve_link_open_failures_total", "Serial port opens that failed."),
    ("bytes_in", "citynerve_link_received_bytes_total", "Bytes received on the link."),
    ("frames_in", "citynerve_link_frames_total", "Good node frames received on the link."),
    ("unexpected", "citynerve_link_unexpected_frames_total",
     "ACK or CMD frames received from a node."),
    ("before_hello", "citynerve_link_before_hello_total",
     "Frames on a TCP connection before its HELLO (and connections dropped for silence)."),
    ("unknown_node", "citynerve_link_unknown_node_total",
     "TCP HELLOs from nodes not linked on that port."),
    ("replaced", "citynerve_link_replaced_total",
     "Connections closed because the node connected again."),
    ("write_errors", "citynerve_link_write_errors_total", "Writes to the link that failed."),
    ("handler_errors", "citynerve_link_handler_errors_total", "Frame handling failures (bugs)."),
]
_SESSION_FRAMES = {"hellos": "hello", "data_frames": "data", "health_frames": "health",
                   "results": "result"}
_SESSION_HELD = {"awaiting_hello": "awaiting_hello", "unknown_stream": "unknown_stream"}
_SESSION_REJECTED = {"bad_messages": "bad_message", "bad_readings": "bad_reading",
                     "bad_streams": "bad_stream", "wrong_node": "wrong_node"}
_SESSION_COUNTERS = [
    ("stored_frames", "citynerve_node_stored_frames_total", "Node frames committed to the spool."),
    ("duplicates", "citynerve_node_duplicate_frames_total",
     "Frames dropped as duplicates (resends of settled seqs)."),
    ("spool_errors", "citynerve_node_spool_errors_total",
     "Frames not stored because the spool failed (not acknowledged; the node resends)."),
    ("late_results", "citynerve_node_late_results_total", "RESULTs for no waiting command."),
    ("acks", "citynerve_node_acks_total", "ACKs sent to the node."),
    ("reboots", "citynerve_node_reboots_total", "New boot ids seen after the first."),
]
_NODE_LOSS = {  # the node's own HEALTH "loss" map
    "ring_overflow": ("citynerve_node_ring_overflow_frames_total",
                      "DATA frames the node's resend ring dropped unacknowledged (lost)."),
    "outbox_dropped": ("citynerve_node_outbox_dropped_total",
                       "Readings the node's outbox dropped before framing (lost)."),
    "resent": ("citynerve_node_resent_frames_total", "Frames the node sent again."),
    "bad_frames_in": ("citynerve_node_bad_frames_in_total",
                      "Bad frames the node received from the gateway."),
}
_SERVICE_COMMANDS = {"commands_received": "received", "commands_rejected": "rejected",
                     "commands_failed": "failed", "commands_answered": "answered"}
_SERVICE_COUNTERS = [
    ("health_published", "citynerve_health_published_total", "Health reports published."),
    ("health_skipped", "citynerve_health_skipped_total",
     "Health reports skipped while the broker was away."),
    ("samples_spooled", "citynerve_modbus_samples_spooled_total",
     "Samples of gateway-wired devices spooled."),
    ("samples_lost", "citynerve_modbus_samples_lost_total",
     "Samples of gateway-wired devices lost (the spool refused them)."),
]


def _num(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _age_s(now_ms: int | float | None, then_ms: Any) -> float | None:
    then = _num(then_ms)
    if now_ms is None or then is None:
        return None
    return max(0.0, (now_ms - then) / 1000)


def health_metrics(health: Mapping[str, Any]) -> Exposition:
    """The metrics of one health document (see the module doc)."""
    page = Exposition()
    now = _num(health.get("utc_ms"))
    _gateway(page, health)
    _spool(page, _map(health.get("spool")))
    _publisher(page, _map(health.get("publisher")))
    _batcher(page, _map(health.get("batcher")))
    _links(page, _map(health.get("links")))
    nodes = _map(health.get("nodes"))
    for node, state in nodes.items():
        _session(page, str(node), _map(state), now)
    local = health.get("local_node") or health.get("gateway") or ""
    for device, counters in _map(health.get("modbus")).items():
        _device(page, str(local), str(device), _map(counters), gateway_poller=True)
    _service(page, _map(health.get("service")))
    return page


def _gateway(page: Exposition, health: Mapping[str, Any]) -> None:
    page.gauge("citynerve_gateway_info", "The gateway's identity; always 1.",
               1, site=health.get("site"), gateway=health.get("gateway"),
               version=health.get("version"))
    page.gauge("citynerve_gateway_boot_id", "The gateway boot id (first half of batch ids).",
               _num(health.get("boot_id")))
    uptime = _num(health.get("uptime_ms"))
    page.gauge("citynerve_gateway_uptime_seconds", "Seconds since the gateway started.",
               None if uptime is None else uptime / 1000)


def _spool(page: Exposition, spool: Mapping[str, Any]) -> None:
    for key, name, text in _SPOOL_GAUGES:
        page.gauge(name, text, _num(spool.get(key)))
    age = _num(spool.get("oldest_age_ms"))
    page.gauge("citynerve_spool_oldest_age_seconds",
               "Age of the oldest frame not yet acknowledged by the broker.",
               None if age is None else age / 1000)
    page.counter("citynerve_spool_evicted_batches_total",
                 "Unpublished batches evicted to stay within the byte budget.",
                 _num(spool.get("evicted_batches")))
    page.counter("citynerve_spool_evicted_batch_bytes_total",
                 "Encoded bytes of the evicted batches.", _num(spool.get("evicted_batch_bytes")))
    # Declared even before the first eviction or duplicate, so dashboards find the families.
    page.counter("citynerve_spool_evicted_frames_total",
                 "Frames evicted unpublished (lost), by node and kind.", None)
    page.counter("citynerve_spool_evicted_bytes_total", "Bytes of the evicted frames.", None)
    page.counter("citynerve_spool_duplicate_frames_total",
                 "Frames the spool dropped as already seen, by node and kind.", None)
    for node, kinds in _map(spool.get("nodes")).items():
        for kind, entry in _map(kinds).items():
            entry = _map(entry)
            labels = {"node": node, "kind": _KINDS.get(kind, kind)}
            page.counter("citynerve_spool_evicted_frames_total", "", _num(
                entry.get("evicted_frames")), **labels)
            page.counter("citynerve_spool_evicted_bytes_total", "", _num(
                entry.get("evicted_bytes")), **labels)
            page.counter("citynerve_spool_duplicate_frames_total", "", _num(
                entry.get("duplicate_frames")), **labels)


def _publisher(page: Exposition, stats: Mapping[str, Any]) -> None:
    page.gauge("citynerve_mqtt_connected", "1 while connected to the broker.",
               _num(stats.get("connected")) if stats else 0)
    page.gauge("citynerve_mqtt_in_flight", "Publishes awaiting their PUBACK.",
               _num(stats.get("in_flight")))
    for key, name, text in _PUBLISHER_COUNTERS:
        page.counter(name, text, _num(stats.get(key)))


def _batcher(page: Exposition, counters: Mapping[str, Any]) -> None:
    for key, kind in (("measurement_batches", "m"), ("event_batches", "e"),
                      ("health_batches", "h")):
        page.counter("citynerve_batcher_batches_total", "Batches sealed, by kind.",
                     _num(counters.get(key)), kind=_KINDS[kind])
    for key, kind in (("readings", "m"), ("events", "e")):
        page.counter("citynerve_batcher_readings_total", "Readings sealed into batches, by kind.",
                     _num(counters.get(key)), kind=_KINDS[kind])
    for key, name, text in _BATCHER_COUNTERS:
        page.counter(name, text, _num(counters.get(key)))


def _links(page: Exposition, links: Mapping[str, Any]) -> None:
    page.counter("citynerve_link_bad_frames_total",
                 "Received frames skipped by the link decoder, by node and kind.", None)
    for node, entry in _map(links.get("nodes")).items():
        entry = _map(entry)
        page.gauge("citynerve_link_connected", "1 while the node's link is up.",
                   _num(entry.get("connected")), node=node, transport=entry.get("transport"))
        for key, name, text in _LINK_COUNTERS:
            page.counter(name, text, _num(entry.get(key)), node=node)
        for kind, count in _map(entry.get("rx")).items():
            page.counter("citynerve_link_bad_frames_total", "", _num(count), node=node, kind=kind)
    # Connections that never said which node they are: counted per listening port.
    for port, entry in _map(links.get("tcp_ports")).items():
        entry = _map(entry)
        for key in ("before_hello", "unknown_node", "bytes_in"):
            page.counter(f"citynerve_tcp_port_{key}_total",
                         f"Anonymous TCP connections' {key.replace('_', ' ')}, by port.",
                         _num(entry.get(key)), port=port)
        for kind, count in _map(entry.get("rx")).items():
            page.counter("citynerve_tcp_port_bad_frames_total",
                         "Bad frames on anonymous TCP connections, by port and kind.",
                         _num(count), port=port, kind=kind)


def _session(page: Exposition, node: str, state: Mapping[str, Any], now: int | float | None) -> None:
    page.gauge("citynerve_node_boot_id", "The node's current boot id.", _num(state.get("boot")),
               node=node)
    page.gauge("citynerve_node_streams", "Streams in the node's HELLO table.",
               _num(state.get("streams")), node=node)
    errors = state.get("config_errors")
    page.gauge("citynerve_node_config_errors", "Config entries the node refused at boot.",
               len(errors) if isinstance(errors, list) else None, node=node)
    page.gauge("citynerve_node_acked_seq", "The node's highest seq acknowledged (cumulative).",
               _num(state.get("acked_through")), node=node)
    offset = _num(state.get("clock_offset_ms"))
    page.gauge("citynerve_node_clock_offset_seconds", "UTC minus the node's unwrapped tick.",
               None if offset is None else offset / 1000, node=node)
    page.gauge("citynerve_node_last_frame_age_seconds", "Seconds since the node's last frame.",
               _age_s(now, state.get("last_frame_ms")), node=node)
    page.gauge("citynerve_node_last_hello_age_seconds", "Seconds since the node's last HELLO.",
               _age_s(now, state.get("last_hello_ms")), node=node)
    counters = _map(state.get("counters"))
    for key, kind in _SESSION_FRAMES.items():
        page.counter("citynerve_node_frames_total", "Node frames handled, by kind.",
                     _num(counters.get(key)), node=node, kind=kind)
    for key, kind in (("readings", "m"), ("events", "e")):
        page.counter("citynerve_node_readings_total", "Readings spooled, by kind.",
                     _num(counters.get(key)), node=node, kind=_KINDS[kind])
    for key, kind in _SESSION_HELD.items():
        page.counter("citynerve_node_held_frames_total",
                     "Frames held back (not acknowledged; the node resends them), by cause.",
                     _num(counters.get(key)), node=node, kind=kind)
    for key, kind in _SESSION_REJECTED.items():
        page.counter("citynerve_node_rejected_total",
                     "Malformed messages, readings or stream entries from the node, by kind.",
                     _num(counters.get(key)), node=node, kind=kind)
    for key, name, text in _SESSION_COUNTERS:
        page.counter(name, text, _num(counters.get(key)), node=node)
    _node_health(page, node, _map(state.get("node_health")))


def _node_health(page: Exposition, node: str, report: Mapping[str, Any]) -> None:
    if not report:
        return
    uptime = _num(report.get("uptime_ms"))
    page.gauge("citynerve_node_uptime_seconds", "The node's uptime, from its last HEALTH.",
               None if uptime is None else uptime / 1000, node=node)
    for key in ("heap_free", "heap_min", "heap_peak"):
        value = _num(report.get(key))
        page.gauge(f"citynerve_node_{key}_bytes", f"The node's {key.replace('_', ' ')} "
                   "(from its last HEALTH).", None if value is None or value < 0 else value,
                   node=node)
    loss = _map(report.get("loss"))
    for key, (name, text) in _NODE_LOSS.items():
        page.counter(name, text, _num(loss.get(key)), node=node)
    for device, counters in _map(report.get("dev")).items():
        _device(page, node, str(device), _map(counters), gateway_poller=False)


def _device(page: Exposition, node: str, device: str, counters: Mapping[str, Any], *,
            gateway_poller: bool) -> None:
    labels = {"node": node, "device": device}
    for key, raw in counters.items():
        value = _num(raw)
        if value is None or isinstance(raw, bool) and key != "in_backoff":
            continue
        if key in _DEVICE_FAULTS:
            page.counter("citynerve_device_faults_total", "Device faults, by kind.", value,
                         kind=_DEVICE_FAULTS[key], **labels)
        elif key == "requests":
            page.counter("citynerve_device_requests_total", "Requests sent to the device.",
                         value, **labels)
        elif key == "ok":
            page.counter("citynerve_device_ok_total", "Requests the device answered with data.",
                         value, **labels)
        elif gateway_poller and key in _DEVICE_STATE:
            name, text = _DEVICE_STATE[key]
            page.gauge(name, text, value, **labels)
        elif gateway_poller and key in _DEVICE_POLLS:
            page.counter("citynerve_device_polls_total", "Device polls, by outcome.", value,
                         kind=_DEVICE_POLLS[key], **labels)
        else:
            page.untyped("citynerve_device_counter",
                         "Other device counters as the driver reports them, by name.", value,
                         kind=key, **labels)


def _service(page: Exposition, counters: Mapping[str, Any]) -> None:
    for key, kind in _SERVICE_COMMANDS.items():
        page.counter("citynerve_commands_total", "Commands, by outcome.",
                     _num(counters.get(key)), kind=kind)
    for key, name, text in _SERVICE_COUNTERS:
        page.counter(name, text, _num(counters.get(key)))
