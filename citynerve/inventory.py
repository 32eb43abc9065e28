"""boards.toml and the device profiles: loading, and each board's generated config.

`board_config()` is what `citynerve flash` writes to a board as /config.json and what the harness
hands a node it runs: the board's own part of the inventory plus the profiles its devices use, so a
node never needs the whole file or the profiles folder. The full validation of boards.toml (every
problem with file:line, board and key) lives in the `boards check` tool; this module refuses only
what would make a config impossible to build.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BOARDS = REPO_ROOT / "boards.toml"
DEFAULT_PROFILES = REPO_ROOT / "profiles"


class InventoryError(Exception):
    """boards.toml or a profile cannot be used; the message names the file and what is wrong."""


def load_inventory(path: Path = DEFAULT_BOARDS) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InventoryError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None


def load_profiles(folder: Path = DEFAULT_PROFILES) -> dict[str, dict[str, Any]]:
    profiles = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            profile = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InventoryError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        name = profile.get("profile")
        if name != path.stem:
            raise InventoryError(f"{path}: its \"profile\" is {name!r}; it must match the file name {path.stem!r}")
        profiles[name] = profile
    return profiles


def boards(inventory: dict[str, Any]) -> list[dict[str, Any]]:
    return list(inventory.get("board", []))


def find_board(inventory: dict[str, Any], board_id: str) -> dict[str, Any]:
    for board in boards(inventory):
        if board.get("id") == board_id:
            return board
    known = ", ".join(str(b.get("id")) for b in boards(inventory))
    raise InventoryError(f"no board {board_id!r} in the inventory (boards: {known})")


def board_config(inventory: dict[str, Any], board_id: str, profiles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config a node runs on: its link, buses, devices and the profiles they name."""
    board = copy.deepcopy(find_board(inventory, board_id))
    devices = board.get("device", [])
    used = {}
    for device in devices:
        name = device.get("profile")
        if name not in profiles:
            raise InventoryError(
                f"board {board_id}, device {device.get('id')}: profile {name!r} is not in profiles/ "
                f"(known: {', '.join(sorted(profiles))})")
        used[name] = profiles[name]
    return {
        "node": board_id,
        "type": board.get("type"),
        "site": inventory.get("site", {}).get("id"),
        "interval_s": board.get("interval_s", 30),
        "link": board.get("link", {}),
        "buses": {bus["id"]: bus for bus in board.get("bus", [])},
        "devices": devices,
        "profiles": used,
    }


def config_bytes(config: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the same config always gives the same bytes and
    so the same config hash in the node's HELLO."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
