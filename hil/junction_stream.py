"""What the brain would see: an MQTT subscriber on citynerve/v1/{site}/{gateway}/# that decodes
every batch the moment it arrives and stamps it with its arrival (UTC ms), for the accounting and
the live view.

A paho client in its own thread with a persistent session (clean_session=0, QoS 1), so what the
gateway publishes while a broker restart keeps the subscriber away is delivered when it is back
(with mosquitto's persistence; an amqtt restart forgets sessions). Batches are kept once per batch
id: a batch id seen again with the same bytes is an explained duplicate (a whole re-sent batch),
with other bytes a conflict; a payload that does not decode is counted as undecodable.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import paho.mqtt.client as paho

from gateway.topics import parse_topic
from protocols.batch_cnb1 import BatchFormatError, decode_batch

__all__ = ["Reading", "StreamRecorder", "StreamStats"]


def utc_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Reading:
    """One decoded measurement ("m") or event ("e") of one batch, with when it arrived."""

    kind: str
    node: str
    node_boot: int
    batch: tuple[int, int]
    t: int  # UTC ms the gateway stamped
    recv_ms: int  # UTC ms the subscriber got the batch
    stream: str | None = None  # measurements
    unit: str | None = None
    value: float | int | None = None
    fault: str | None = None
    code: int | None = None  # events
    param: int | None = None


@dataclass
class StreamStats:
    messages: int = 0
    batches: int = 0
    explained_duplicates: int = 0  # whole batches re-sent under the same batch id, same bytes
    conflicting_batches: int = 0  # a batch id seen with different bytes
    undecodable: int = 0
    topics: dict[str, int] = field(default_factory=dict)


class StreamRecorder:
    """Subscribes to one gateway's topics and keeps everything, decoded; a context manager."""

    def __init__(self, url: str, *, site: str, gateway: str, client_id: str | None = None) -> None:
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        self.host, self.port = host, int(port)
        self.site, self.gateway = site, gateway
        self.topic_filter = f"citynerve/v1/{site}/{gateway}/#"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"citynerve-hil-{random.randrange(1 << 30)}",
                                  clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.stats = StreamStats()
        self._readings: list[Reading] = []
        self._batches: dict[tuple[int, int], bytes] = {}
        self._payloads: list[tuple[str, str, bytes]] = []
        self.health: dict[tuple[str, str], dict[str, Any]] = {}  # (node or "", source) -> latest
        self.status: dict[str, Any] | None = None
        self.first_seen: dict[str, int] = {}  # node -> arrival of its first batch
        self.batch_log: list[tuple[int, str, str, tuple[int, int], int]] = []  # recv, node, m/e, id, n

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        self.client.connect(self.host, self.port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"no SUBACK from the broker at {self.host}:{self.port} within {timeout:g} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    # -- arrival ---------------------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        recv = utc_ms()
        payload = bytes(message.payload)
        parsed = parse_topic(message.topic)
        with self._lock:
            self.stats.messages += 1
            channel = parsed.channel if parsed is not None else "?"
            self.stats.topics[channel] = self.stats.topics.get(channel, 0) + 1
            if parsed is None:
                return
            if channel in ("m", "e"):
                self._batch(payload, recv)
            elif channel in ("health", "status"):
                try:
                    body = json.loads(payload)
                except ValueError:
                    return
                if channel == "status":
                    self.status = body
                else:
                    key = (parsed.node or "", str(body.get("source", "gateway")))
                    self.health[key] = dict(body, recv_ms=recv)
                    if parsed.node is not None and key[1] == "node":
                        self.first_seen.setdefault(parsed.node, recv)

    def _batch(self, payload: bytes, recv: int) -> None:
        try:
            decoded = decode_batch(payload)
        except BatchFormatError:
            self.stats.undecodable += 1
            return
        bid = (int(decoded["gateway_boot"]), int(decoded["seq"]))
        seen = self._batches.get(bid)
        if seen is not None:
            if seen == payload:
                self.stats.explained_duplicates += 1
            else:
                self.stats.conflicting_batches += 1
            return
        self._batches[bid] = payload
        self.stats.batches += 1
        node, boot = str(decoded["node"]), int(decoded["node_boot"])
        self._payloads.append((node, "e" if decoded["events"] and not decoded["measurements"] else "m", payload))
        self.first_seen.setdefault(node, recv)
        for m in decoded["measurements"]:
            self._readings.append(Reading("m", node, boot, bid, int(m["t"]), recv, stream=m["stream"],
                                          unit=m["unit"], value=m["value"], fault=m["fault"]))
        for e in decoded["events"]:
            self._readings.append(Reading("e", node, boot, bid, int(e["t"]), recv, code=int(e["code"]),
                                          param=int(e["param"])))
        kind = "e" if decoded["events"] and not decoded["measurements"] else "m"
        self.batch_log.append((recv, node, kind, bid,
                               len(decoded["measurements"]) + len(decoded["events"])))

    # -- reading ---------------------------------------------------------------------------------

    def readings(self) -> list[Reading]:
        """Every decoded reading so far, once per batch id, in arrival order."""
        with self._lock:
            return list(self._readings)

    def snapshot(self) -> tuple[list[Reading], StreamStats]:
        with self._lock:
            stats = StreamStats(self.stats.messages, self.stats.batches, self.stats.explained_duplicates,
                                self.stats.conflicting_batches, self.stats.undecodable,
                                dict(self.stats.topics))
            return list(self._readings), stats

    def payloads(self) -> list[tuple[str, str, bytes]]:
        """Every distinct m/e batch payload so far, once per batch id, with its node and kind
        (what bench/wire_size.py --live measures)."""
        with self._lock:
            return list(self._payloads)

    def nodes_seen(self) -> set[str]:
        with self._lock:
            return set(self.first_seen)

    def node_health(self, node: str, source: str = "node") -> dict[str, Any] | None:
        with self._lock:
            return self.health.get((node, source))
