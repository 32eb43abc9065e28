"""Each board's node config for a scenario run: what `citynerve flash` would write to the board
(citynerve.inventory.board_config) with the scenario's node settings, link settings and device
changes applied, and the devices its dead_unit faults add to a bus."""

from __future__ import annotations

import copy
from typing import Any

from citynerve.inventory import board_config, boards
from hil.scenario import FaultSpec, Scenario, ScenarioError

__all__ = ["dead_unit_id", "node_configs"]


def node_configs(inventory: dict[str, Any], profiles: dict[str, dict[str, Any]],
                 scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Each board's node config (citynerve.inventory.board_config) with the scenario's settings,
    link settings, device changes and dead units applied."""
    out = {}
    for board in boards(inventory):
        config = board_config(inventory, board["id"], profiles)
        config.update(copy.deepcopy(dict(scenario.node_settings)))
        config["link"] = {**config["link"], **scenario.link}
        for device in config["devices"]:
            device.update(copy.deepcopy(dict(scenario.devices.get(device["id"], {}))))
        for fault in scenario.faults_of("dead_unit"):
            if fault.board != board["id"]:
                continue
            if fault.profile not in profiles:
                raise ScenarioError(scenario.path or scenario.name, "fault.profile",
                                    f"{fault.profile!r} is not a profile")
            config["devices"].append({"id": dead_unit_id(fault), "profile": fault.profile,
                                      "bus": fault.bus, "address": fault.address, "poll_ms": fault.poll_ms})
            config["profiles"][fault.profile] = profiles[fault.profile]
        out[board["id"]] = config
    return out


def dead_unit_id(fault: FaultSpec) -> str:
    return f"aux{fault.address}"
