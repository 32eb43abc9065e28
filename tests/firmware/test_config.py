"""Boot-time validation of the generated board config: the demo boards are clean, and each broken
entry is reported with its key while the valid devices still run."""

from __future__ import annotations

import copy
import json

import pytest

from citynerve.inventory import board_config, boards, config_bytes, load_inventory, load_profiles
from firmware.config import FatalConfigError, load, validate

INVENTORY = load_inventory()
PROFILES = load_profiles()
BOARD_IDS = [b["id"] for b in boards(INVENTORY)]


@pytest.mark.parametrize("board_id", BOARD_IDS)
def test_demo_boards_validate_clean(board_id: str) -> None:
    config = load(config_bytes(board_config(INVENTORY, board_id, PROFILES)))
    devices, errors = validate(config)
    assert errors == []
    assert [d["id"] for d in devices] == [d["id"] for d in config["devices"]]


def cab() -> dict:
    return json.loads(config_bytes(board_config(INVENTORY, "cab-pico", PROFILES)))


def broken(mutate) -> tuple[list[str], list[list[str]]]:
    config = cab()
    mutate(config)
    devices, errors = validate(config)
    return [d["id"] for d in devices], errors


def test_a_bad_modbus_address_drops_only_that_device() -> None:
    ids, errors = broken(lambda c: c["devices"][0].update(address=300))
    assert errors == [["devices.ctrl", "address must be 1..247"]]
    assert ids == ["nb-lane1", "sb-lane1"]


def test_an_unknown_bus_is_named() -> None:
    ids, errors = broken(lambda c: c["devices"][0].update(bus="rs232"))
    assert errors == [["devices.ctrl", "bus 'rs232' is not a valid bus of this board"]]


def test_an_unsupported_baud_is_named_with_what_the_profile_allows() -> None:
    ids, errors = broken(lambda c: c["buses"]["rs485"].update(baud=4800))
    assert errors[0][0] == "devices.ctrl"
    assert "4800 is not supported by nema-phase-status" in errors[0][1]


def test_a_bad_framing_disables_the_bus_and_its_devices() -> None:
    ids, errors = broken(lambda c: c["buses"]["rs485"].update(framing="7E1"))
    assert ["buses.rs485.framing", "must be one of 8N1, 8E1, 8O1, 8N2"] in errors
    assert "ctrl" not in ids and "nb-lane1" in ids


def test_duplicate_device_ids_and_bad_pins() -> None:
    def mutate(c: dict) -> None:
        c["devices"].append(copy.deepcopy(c["devices"][1]))
        c["devices"][2]["pins"] = [1, 2, 3]

    ids, errors = broken(mutate)
    assert ["devices.nb-lane1", "duplicate device id"] in errors
    assert ["devices.sb-lane1", "pins must list one loop pin, or two (leading, trailing) for a speed trap"] in errors
    assert ids == ["ctrl", "nb-lane1"]


def test_an_interval_out_of_range_falls_back_to_30_s() -> None:
    config = cab()
    config["interval_s"] = 2
    _, errors = validate(config)
    assert errors == [["interval_s", "must be a whole number of seconds in 5..300; using 30"]]
    assert config["interval_s"] == 30


@pytest.mark.parametrize(("raw", "message"), [
    (None, "missing"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not an object"),
])
def test_unusable_files_are_fatal_with_a_reason(raw: bytes | None, message: str) -> None:
    with pytest.raises(FatalConfigError, match=message):
        load(raw)


def test_no_node_id_is_fatal() -> None:
    config = cab()
    del config["node"]
    with pytest.raises(FatalConfigError, match="node"):
        validate(config)
