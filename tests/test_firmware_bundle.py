"""What `citynerve flash` puts on each demo board (citynerve/firmware_bundle.py): the board's modules
and nothing it never runs, compiled as flashed, and enough to import every module on the real
MicroPython VM with nothing else on its filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from citynerve.firmware_bundle import board_files, board_modules
from citynerve.inventory import board_config, boards, load_inventory, load_profiles
from citynerve.mpy_toolchain import compile_file
from hil.micropython_vm import run_micropython
from tests.conftest import REPO_ROOT

INVENTORY = load_inventory()
PROFILES = load_profiles()
BOARDS = [b["id"] for b in boards(INVENTORY)]
# Never on a board: the server side of Modbus and the whole codec around the master's part (a node
# carries modbus_adu and modbus_framing), the gateway's side of the link (the decoder with reasons,
# DATA read back), the gateway's batch format and bus budget, the harness's generators.
HOST_ONLY = {"protocols/modbus_server.py", "protocols/modbus_rtu.py", "protocols/modbus_receiver.py",
             "protocols/modbus_plan_time.py", "protocols/link_frame.py", "protocols/link_data.py",
             "protocols/batch_cnb1.py", "protocols/batch_builder.py", "protocols/batch_columns.py",
             "firmware/traffic_sim.py"}
MODBUS = {"protocols/modbus_adu.py", "protocols/modbus_framing.py", "protocols/modbus_plan.py",
          "protocols/modbus_timing.py", "firmware/modbus_master.py", "firmware/drivers/modbus_device.py"}


def _files(board: str, backend: str = "machine") -> set[str]:
    config = board_config(INVENTORY, board, PROFILES)
    return {p.relative_to(REPO_ROOT).as_posix() for p in board_files(config, backend=backend)}


@pytest.mark.parametrize("board", BOARDS)
def test_no_board_carries_host_only_modules(board: str) -> None:
    files = _files(board)
    assert not files & HOST_ONLY
    assert "firmware/hal_host.py" not in files and "firmware/hal_machine.py" in files


def test_each_board_carries_only_its_own_device_stacks() -> None:
    pico = _files("air-pico")  # one SDS011 on a UART: no Modbus device, no PMS5003
    assert not pico & MODBUS
    assert "protocols/pms5003.py" not in pico and "firmware/drivers/pms5003_driver.py" not in pico
    assert {"protocols/sds011.py", "firmware/drivers/uart_pm.py"} <= pico
    esp = _files("air-esp32")  # PMS5003 + SenseAir S8: both stacks, no SDS011, no presence pins
    assert MODBUS <= esp and "protocols/pms5003.py" in esp
    assert "protocols/sds011.py" not in esp and "firmware/presence_filter.py" not in esp
    cab = _files("cab-pico")  # signal controller + loop pairs: Modbus and presence, no frame sensors
    assert MODBUS <= cab and "firmware/presence_filter.py" in cab
    assert "firmware/drivers/uart_pm.py" not in cab and "firmware/wifi.py" not in cab
    # The controller's reads come from the planner: no write request, no field checks.
    assert "protocols/modbus_write.py" not in cab and "protocols/modbus_fields.py" not in cab
    assert {"protocols/modbus_write.py", "protocols/modbus_fields.py"} <= esp  # the S8's calibration


@pytest.mark.parametrize("board", BOARDS)
def test_the_bundle_imports_on_micropython_with_nothing_else(board: str, tmp_path: Path) -> None:
    """Every module of the board's bundle (host HAL variant, as the harness runs it) imports on the
    VM from the bundle's own .mpy files: the closure misses nothing a board would import."""
    config = board_config(INVENTORY, board, PROFILES)
    files = []
    for source in board_files(config, backend="host"):
        rel = source.relative_to(REPO_ROOT)
        out = compile_file(source, tmp_path / rel.with_suffix(".mpy"), source_name=rel.as_posix())
        files.append((out, "/lib/" + rel.with_suffix(".mpy").as_posix()))
    modules = [p.relative_to(REPO_ROOT).with_suffix("").as_posix().replace("/", ".")
               for p in board_files(config, backend="host")]
    modules = [m.removesuffix(".__init__") for m in modules]
    assert set(board_modules(config, backend="host")) <= set(modules)
    code = "".join(f"import {m}\n" for m in modules) + "print('IMPORTED', %d)\n" % len(modules)
    proc = run_micropython(code, files, timeout=60)
    assert f"IMPORTED {len(modules)}" in proc.stdout, proc.stderr[-2000:]
