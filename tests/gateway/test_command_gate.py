"""The gateway's command hook as `gateway run` builds it: the real HMAC verifier, then the op policy
against the demo junction's boards and profiles."""

from __future__ import annotations

import json
import os

from citynerve.inventory import DEFAULT_BOARDS
from gateway.command_auth import CommandKey, CommandKeys, sign_command
from gateway.command_gate import make_verify, node_devices

KEY = CommandKey(bytes(range(32)), "test")
NOW = 1_767_225_600_000


def hook():
    return make_verify(CommandKeys(KEY), node_devices(str(DEFAULT_BOARDS)), now=lambda: NOW)


def signed(node: str, op: str, args: dict, key: CommandKey = KEY) -> bytes:
    return sign_command(key, node=node, op=op, args=args, now_ms=NOW + 1000)


def test_a_signed_bounded_command_passes_with_its_checked_arguments() -> None:
    ok, reason, command = hook()(signed("cab-pico", "set_interval", {"interval_s": 60}))
    assert (ok, reason) == (True, "")
    assert command["node"] == "cab-pico" and command["op"] == "set_interval"
    assert command["args"] == {"interval_s": 60}


def test_a_wrong_key_is_a_bad_signature() -> None:
    other = CommandKey(os.urandom(32), "other")
    ok, reason, command = hook()(signed("cab-pico", "ping", {}, key=other))
    assert not ok and reason.startswith("bad_signature:") and command is None


def test_an_unsigned_command_is_refused() -> None:
    body = json.loads(signed("cab-pico", "ping", {}))
    del body["sig"]
    ok, reason, _ = hook()(json.dumps(body).encode())
    assert not ok and reason.startswith("unsigned:")


def test_a_controller_write_is_refused_because_the_profile_lists_nothing_writable() -> None:
    ok, reason, _ = hook()(signed("cab-pico", "write_register", {"device": "ctrl", "register": "greens", "value": 1}))
    assert not ok and reason.startswith("not_writable:")


def test_an_out_of_bounds_interval_and_an_unknown_node_are_refused() -> None:
    ok, reason, _ = hook()(signed("cab-pico", "set_interval", {"interval_s": 2}))
    assert not ok and reason.split(":")[0] in ("bad_args", "out_of_bounds")
    ok, reason, _ = hook()(signed("no-such-board", "ping", {}))
    assert not ok and reason.startswith("unknown_node:")


def test_a_replayed_command_is_refused_the_second_time() -> None:
    verify = hook()
    payload = signed("air-pico", "ping", {})
    assert verify(payload)[0] is True
    ok, reason, _ = verify(payload)
    assert not ok and reason.startswith("replayed:")
