"""The gateway's command check: signature, time window and nonce (gateway/command_auth.py), then
the op's argument bounds and the writable-register rule (gateway/command_policy.py), as the one
`verify_command(payload)` hook GatewayService takes.

Without a configured key the gateway keeps its default hook, which refuses every command: an
unsigned command is never carried to a node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from citynerve.inventory import board_config, boards, load_inventory, load_profiles
from gateway.command_auth import CommandKeys, CommandVerifier, Rejection
from gateway.command_policy import PolicyRefusal, check, devices_of

Verify = Callable[[bytes], tuple[bool, str, Mapping[str, Any] | None]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def node_devices(boards_file: str, profiles_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """node id -> {device id -> profile}, what the policy checks commands against."""
    inventory = load_inventory(boards_file)
    profiles = load_profiles(profiles_dir) if profiles_dir else load_profiles()
    return {b["id"]: devices_of(board_config(inventory, b["id"], profiles)) for b in boards(inventory)}


def make_verify(keys: CommandKeys, devices: Mapping[str, Mapping[str, Any]], *,
                now: Callable[[], int] = _now_ms, verifier: CommandVerifier | None = None) -> Verify:
    """The hook: (True, "", {"id", "node", "op", "args"}) or (False, "reason: sentence", None)."""
    checker = verifier or CommandVerifier(keys, now=now, accept_from_ms=now())

    def verify(payload: bytes) -> tuple[bool, str, Mapping[str, Any] | None]:
        try:
            claimed = json.loads(payload).get("node", "")
        except (ValueError, AttributeError):
            claimed = ""  # the verifier rejects it as not JSON / wrong schema
        outcome = checker.verify(payload, claimed if isinstance(claimed, str) else "")
        if isinstance(outcome, Rejection):
            return False, f"{outcome.reason}: {outcome.msg}", None
        node_devs = devices.get(outcome.node)
        if node_devs is None:
            return False, f"unknown_node: {outcome.node} is not a board of this junction", None
        allowed = check(outcome.op, outcome.args, node_devs)
        if isinstance(allowed, PolicyRefusal):
            return False, f"{allowed.reason}: {allowed.msg}", None
        return True, "", {"id": outcome.id, "node": outcome.node, "op": allowed.op, "args": allowed.args}

    verify.verifier = checker  # type: ignore[attr-defined]  # its counters, for health and tests
    return verify
