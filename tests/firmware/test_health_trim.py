"""HEALTH too big for a frame loses detail in steps (firmware/health.py trim_health, driven by
LinkClient._push_health) instead of its whole device section. CPython, in process: the frames are
read back from the link client's ring and decoded with protocols/."""

from __future__ import annotations

from typing import Any

import pytest

from firmware import hal_host
from firmware.clock import GatewayClock
from firmware.health import FAULT_CHARS, trim_health
from firmware.link_client import LinkClient
from firmware.node_context import NodeContext
from firmware.outbox import Outbox
from firmware.streams import StreamTable
from protocols.link_frame import HEALTH, LinkFrameDecoder
from protocols.link_messages import decode_message


class Device:
    def __init__(self, fault: str | None, busy: bool) -> None:
        self.counters = {"ok": 1234, "timeouts": 7 if busy else 0, "crc_errors": 0, "exceptions": 0,
                         "no_reply": 0, "late": 3 if busy else 0, "restarts": 0}
        self.last_fault = fault


def _health(max_payload: int, devices: dict[str, Device]) -> tuple[dict[str, Any], LinkClient]:
    config = {"node": "n1", "link": {"max_payload": max_payload}}
    node = NodeContext(hal_host, config, StreamTable(), Outbox(), GatewayClock(hal_host.ticks_ms))
    link = LinkClient(node, config["link"], "0.1.0", "00" * 8, devices=devices)
    link._push_health()
    frames = [bytes(view) for _seq, view in link.ring.due(0, 1000)]
    decoded = [f for chunk in frames for f in LinkFrameDecoder(4096).feed(b"\x00" + chunk)]
    health = [decode_message(HEALTH, f.payload) for f in decoded if f.type == HEALTH]
    assert len(health) == len(frames) == 1
    return health[0], link


def _devices(n: int) -> dict[str, Device]:
    long_fault = "TimeoutError: no reply from unit 3 after 3 tries on bus rs485a at 9600 baud"
    return {"dev%d" % i: Device(long_fault, busy=i % 2 == 0) for i in range(n)}


def test_health_that_fits_goes_whole() -> None:
    health, _ = _health(1024, _devices(3))
    assert "health_trimmed" not in health["loss"]
    assert health["dev"]["dev0"]["last_fault"].endswith("9600 baud")
    assert health["dev"]["dev1"]["crc_errors"] == 0


@pytest.mark.parametrize(("max_payload", "step"), [(840, 1), (700, 2), (400, 3)])
def test_health_too_big_loses_detail_in_steps(max_payload: int, step: int) -> None:
    health, link = _health(max_payload, _devices(4))
    assert health["loss"]["health_trimmed"] == step
    assert link.counters["oversize"] == 0 and link.ring.overflow_frames == 0
    if step == 3:
        assert health["dev"] == {}
        return
    for did, report in health["dev"].items():
        assert len(report["last_fault"]) == FAULT_CHARS and report["last_fault"].endswith("...")
        assert report["ok"] == 1234
        if step == 2:
            assert all(v != 0 for v in report.values()), did
            assert ("timeouts" in report) == (did in ("dev0", "dev2"))
        else:
            assert report["crc_errors"] == 0


def test_trim_keeps_short_faults_and_non_text() -> None:
    message = {"loss": {}, "dev": {"a": {"last_fault": "short", "x": 0, "y": 2},
                                   "b": {"last_fault": None, "x": 0}}}
    trim_health(message, 2)
    assert message["dev"] == {"a": {"last_fault": "short", "y": 2}, "b": {"last_fault": None}}
    assert message["loss"]["health_trimmed"] == 2
