"""Each device's health for `citynerve status`: the node's own HEALTH counters joined with the
last readings the gateway published for the device's streams.

    readings = DeviceReadings()
    readings.feed(decode_payload(topic, payload))           # every .../{node}/m batch
    device_lines("cab-pico", node_health, readings)
    ['aux2: FAULT timeout since 12:00:03.120Z; last good -; timeouts 8, CRC errors 0, exceptions 0; '
     'last fault: aux2: unit 2 did not answer within 119 ms', 'ctrl: ok; ...']

Where each part comes from:
  - state and last good value: the device's streams (named "{device}/{quantity}" by the drivers)
    in the measurement batches. A sample that the device failed to give carries a fault name
    ("timeout", "checksum", "modbus_exception:02", ...) instead of a value: the latest sample
    decides "ok" or "FAULT name"; the last good value is the newest sample per stream that had a
    value. Event-only devices (the signal controller) have no measurements: their state is "-".
  - counters: the node's HEALTH "dev" section, one dict per device, whatever its driver counts.
    The three a technician asks about are picked out under one name each, because the drivers
    count them under their own protocol's names: timeouts ("timeouts"), CRC errors ("crc_errors"
    of a Modbus unit, "bad_checksum" of a PMS5003/SDS011 frame parser) and Modbus exception replies
    ("exceptions"). A counter a driver does not have is not shown (a loop presence input has none).
  - last fault: the driver's own sentence, from HEALTH.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citynerve.tap import Record, utc_text

__all__ = ["DeviceReadings", "DeviceRow", "device_counts", "device_lines", "device_rows", "loss_line"]

# shown name -> the driver counters summed into it (firmware/modbus_master.py, protocols/pms5003.py
# and protocols/sds011.py parsers)
COUNTS = (
    ("timeouts", ("timeouts",)),
    ("CRC errors", ("crc_errors", "bad_checksum")),
    ("exceptions", ("exceptions",)),
)


@dataclass
class _Latest:
    t: int | None
    fault: str | None


@dataclass
class DeviceReadings:
    """The newest sample and the last good value of every stream, per (node, device)."""

    good: dict[tuple[str, str], dict[str, tuple[Any, str, int | None]]] = field(default_factory=dict)
    latest: dict[tuple[str, str], _Latest] = field(default_factory=dict)
    fault_since: dict[tuple[str, str], int | None] = field(default_factory=dict)

    def feed(self, records: Iterable[Record]) -> bool:
        """Take the readings among `records`; True when anything changed."""
        changed = False
        for record in records:
            if record.kind != "m" or record.node is None:
                continue
            stream = str(record.data.get("stream") or "")
            device, _, quantity = stream.partition("/")
            if not quantity:
                continue
            key = (record.node, device)
            t = record.data.get("t")
            latest = self.latest.get(key)
            if latest is not None and isinstance(t, int) and isinstance(latest.t, int) and t < latest.t:
                # An older sample (a batch resent after an outage): only a better last good value.
                if record.data.get("fault") is None:
                    old = self.good.setdefault(key, {}).get(quantity)
                    if old is None or (isinstance(old[2], int) and old[2] < t):
                        self.good[key][quantity] = (record.data.get("value"), record.data.get("unit") or "", t)
                        changed = True
                continue
            fault = record.data.get("fault")
            if fault is None:
                self.good.setdefault(key, {})[quantity] = (record.data.get("value"), record.data.get("unit") or "", t)
                self.fault_since.pop(key, None)
            elif latest is None or latest.fault is None:
                self.fault_since[key] = t
            self.latest[key] = _Latest(t, None if fault is None else str(fault))
            changed = True
        return changed

    def devices(self, node: str) -> set[str]:
        return {d for n, d in self.latest if n == node}


@dataclass(frozen=True)
class DeviceRow:
    """One device's health, each part as text ("" where the device has no such thing)."""

    device: str
    state: str  # "ok", "FAULT timeout since ...", "-" (no measurement seen)
    last_good: str  # "pm2_5 9 ug/m3, pm10 14 ug/m3 at ..." or "-"
    counts: dict[str, int]  # "timeouts", "CRC errors", "exceptions": only those the driver counts
    last_fault: str
    health: str  # "" when the node's HEALTH counted this device, else why there are no counters


    def text(self) -> str:
        parts = [f"{self.device}: {self.state}", f"last good {self.last_good}"]
        if self.health:
            parts.append(self.health)
        if self.counts:
            parts.append(", ".join(f"{k} {v}" for k, v in self.counts.items()))
        if self.last_fault:
            parts.append(f"last fault: {self.last_fault}")
        return "; ".join(parts)


def device_counts(counters: Mapping[str, Any]) -> dict[str, int]:
    """{"timeouts": 8, "CRC errors": 0, "exceptions": 0} from a HEALTH "dev" entry (only what it counts)."""
    out = {}
    for shown, keys in COUNTS:
        present = [counters[k] for k in keys if isinstance(counters.get(k), int)]
        if present:
            out[shown] = sum(present)
    return out


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _good_text(good: Mapping[str, tuple[Any, str, int | None]] | None) -> str:
    if not good:
        return "-"
    newest = max((t for _, _, t in good.values() if isinstance(t, int)), default=None)
    values = ", ".join(f"{q} {_value(v)}" + (f" {u}" if u else "") for q, (v, u, _) in sorted(good.items()))
    return f"{values} at {utc_text(newest)}"


def device_rows(node: str, health: Mapping[str, Any] | None, readings: DeviceReadings) -> list[DeviceRow]:
    """Every device of `node` that its HEALTH or its readings name, by id."""
    dev = {str(k): v for k, v in ((health or {}).get("dev") or {}).items() if isinstance(v, Mapping)}
    if health is None:
        missing = "no node HEALTH yet"
    elif ((health.get("loss") or {}).get("health_trimmed")):
        # firmware/link_client.py: a HEALTH too big for a ring slot goes without its device detail
        missing = "counters not sent (the node's HEALTH was too big for its ring slot)"
    else:
        missing = "not in the node's HEALTH"
    rows = []
    for device in sorted(set(dev) | readings.devices(node)):
        key = (node, device)
        latest = readings.latest.get(key)
        if latest is None:
            state = "-"
        elif latest.fault is None:
            state = "ok"
        else:
            state = f"FAULT {latest.fault} since {utc_text(readings.fault_since.get(key))}"
        counters = dev.get(device)
        rows.append(DeviceRow(device, state, _good_text(readings.good.get(key)),
                              device_counts(counters or {}), str((counters or {}).get("last_fault") or ""),
                              "" if counters is not None else missing))
    return rows


def device_lines(node: str, health: Mapping[str, Any] | None, readings: DeviceReadings) -> list[str]:
    """One line per device of `node`: state, last good value, counters, last fault."""
    return [row.text() for row in device_rows(node, health, readings)]


def loss_line(health: Mapping[str, Any] | None) -> str | None:
    """The node's non-zero loss counters that mean data is gone for good or was resent."""
    loss = {k: v for k, v in ((health or {}).get("loss") or {}).items()
            if k in ("ring_overflow", "outbox_dropped", "resent", "bad_frames_in", "health_trimmed") and v}
    if not loss:
        return None
    return "loss " + ", ".join(f"{k} {v}" for k, v in sorted(loss.items()))
