"""Deadband and heartbeat settings (gateway/config.py's stream policy): on a profile's register or
stream entry, and per device as `stream_policy = { <quantity> = { deadband = 5, heartbeat_s = 300 } }`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from citynerve.table_checks import Scope, describe, did_you_mean, is_number

# key -> least value the gateway accepts (heartbeat 0 would mean "publish constantly").
POLICY_KEYS = {"deadband": 0.0, "deadband_pct": 0.0, "heartbeat_s": 0.001}


def check_policy_values(scope: Scope, entry: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> None:
    """The policy keys present in `entry` must be numbers at or above their least value."""
    for key, least in POLICY_KEYS.items():
        if key not in entry:
            continue
        value = entry[key]
        if not is_number(value):
            scope.error(prefix + (key,), f"{describe(value)} is not a number", f"write {key} = 5")
        elif value < least:
            scope.error(prefix + (key,), f"{value:g} is below {least:g}",
                        "give a non-negative number (leave the key out to turn it off)")


def check_stream_policy(scope: Scope, value: Any, quantities: Iterable[str]) -> None:
    """A device's `stream_policy` table: known quantities, each a table of policy keys."""
    known = list(quantities)
    if not isinstance(value, dict):
        scope.error("stream_policy", f"{describe(value)} is not a table",
                    "write stream_policy = { <quantity> = { deadband = 1, heartbeat_s = 300 } }")
        return
    for quantity, policy in value.items():
        key = ("stream_policy", quantity)
        if known and quantity not in known:
            guess = did_you_mean(quantity, known)
            scope.error(key, f"{quantity} is not a quantity of this device",
                        f"did you mean {guess}?" if guess else f"use one of {', '.join(known)}")
            continue
        if not isinstance(policy, dict):
            scope.error(key, f"{describe(policy)} is not a table",
                        f"write {quantity} = {{ deadband = 1, heartbeat_s = 300 }}")
            continue
        for name in policy:
            if name not in POLICY_KEYS:
                guess = did_you_mean(name, POLICY_KEYS)
                scope.error(key + (name,), "is not a stream policy key",
                            f"did you mean {guess}?" if guess else f"use {', '.join(POLICY_KEYS)}")
        check_policy_values(scope, policy, key)


def quantities(profile: Mapping[str, Any]) -> list[str]:
    """The quantity names a device with this profile publishes (register or stream names)."""
    entries = list(profile.get("registers") or []) + list(profile.get("streams") or [])
    return [str(e["name"]) for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
