"""`citynerve boards check`: boards.toml and the profiles it names, checked in one pass before
anything is flashed or started.

    report = check_file(Path("boards.toml"))
    print("\\n".join(report.lines())); raise SystemExit(report.exit_code)

Every problem is one line, `FILE:LINE: board BOARD, KEY: what is wrong — how to fix it`, found by
locating keys in the raw text (citynerve/toml_locations.py). The exit code is 0 when nothing is
wrong (warnings allowed), 1 when something is, 2 when the file cannot be read or is not TOML.

The parts: citynerve/site_gateway_check.py ([site], [gateway]), citynerve/board_check.py (each
[[board]], its link, buses, devices, pins and UARTs), citynerve/bus_time_check.py (poll cycles),
citynerve/profile_check.py (profiles/*.json), citynerve/board_types.py (what each board has).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from citynerve.board_check import check_board
from citynerve.check_report import Report, Unreadable
from citynerve.gateway_devices_check import check_gateway_devices
from citynerve.inventory import DEFAULT_PROFILES
from citynerve.profile_check import ProfileLibrary
from citynerve.site_gateway_check import check_gateway, check_site, metrics_port
from citynerve.table_checks import TABLE, TABLES, KeySpec, Scope, Sink, check_table
from citynerve.toml_locations import toml_locations

TOP_KEYS = {
    "site": KeySpec(TABLE, '[site] with id = "my-city"', required=True),
    "gateway": KeySpec(TABLE, '[gateway] with id and broker', required=True),
    "board": KeySpec(TABLES, "[[board]] sections"),
}
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_FIX = "fix the syntax there (a missing quote, bracket, comma or =, or a key given twice)"
# tomllib's wording for the commonest slips, said the way a technician would look for them.
_TOML_PLAIN = {
    "Illegal character '\\n'": "a string is not closed before the end of the line",
    "Cannot overwrite a value": "a key is given twice",
    "Cannot declare": "a table is declared twice",
}


def check_file(path: Path, *, profiles: Path | None = None, name: str | None = None) -> Report:
    """Check the boards file at `path`; `name` is how messages call it (default: `path` as given).
    `profiles` None finds the folder as the gateway does (see profiles_folder)."""
    name = str(path) if name is None else name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Report(file=name, unreadable=Unreadable(
            file=name, line=0, column=0, what="no such file", fix="give the path to boards.toml"))
    except (OSError, UnicodeDecodeError) as exc:
        return Report(file=name, unreadable=Unreadable(
            file=name, line=0, column=0, what=f"cannot be read ({exc})",
            fix="check the path and that the file is UTF-8 text"))
    return check_text(text, name=name, profiles=profiles, base=Path(path).parent)


def profiles_folder(inventory: dict[str, Any], base: Path) -> Path:
    """Where the gateway looks for profiles (gateway/config.py): [gateway] profiles (relative to
    boards.toml), else profiles/ beside boards.toml, else the folder shipped with citynerve."""
    gateway = inventory.get("gateway")
    named = gateway.get("profiles") if isinstance(gateway, dict) else None
    if isinstance(named, str) and named:
        return base / named
    beside = base / "profiles"
    return beside if beside.is_dir() else DEFAULT_PROFILES


def check_text(text: str, *, name: str = "boards.toml", profiles: Path | None = None,
               base: Path = Path(".")) -> Report:
    """Check boards.toml content `text`, reported as file `name`; relative paths in it start at
    `base` (the file's folder)."""
    try:
        inventory = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        line, column = (int(where.group(1)), int(where.group(2))) if where else (text.count("\n") + 1, 0)
        message = _TOML_WHERE.sub("", message).replace(" (at end of document)", " at the end of the file")
        message = next((plain for start, plain in _TOML_PLAIN.items() if message.startswith(start)),
                       message)
        return Report(file=name, unreadable=Unreadable(
            file=name, line=line, column=column, what=f"not valid TOML: {message}", fix=_TOML_FIX))
    sink = Sink(name, toml_locations(text))
    folder = profiles_folder(inventory, base) if profiles is None else Path(profiles)
    library = ProfileLibrary(folder)
    report = Report(file=name)
    top = Scope(sink, (), "top level")
    if not folder.is_dir():
        gateway_scope = Scope(sink, ("gateway",), "gateway")
        gateway_scope.error("profiles", f"{folder} is not a folder",
                            "give the folder of device profiles (relative paths start at boards.toml)")
    _check_inventory(top, inventory, library, report)
    problems = sorted(sink.problems, key=lambda p: p.line)
    for loaded in library.used():
        problems.extend(sorted(loaded.problems, key=lambda p: p.line))
    report.problems = problems
    return report


def _check_inventory(top: Scope, inventory: dict[str, Any], library: ProfileLibrary,
                     report: Report) -> None:
    good = check_table(top, inventory, TOP_KEYS, what="boards.toml")
    if "site" in good:
        check_site(Scope(top.sink, ("site",), "site"), good["site"])
    gateway: dict[str, Any] = good.get("gateway", {})
    board_ids: dict[str, int] = {}
    serial_ports: dict[str, str] = {}
    tcp_ports: list[tuple[Scope, int]] = []
    for index, board in enumerate(good.get("board", [])):
        board_id = board.get("id")
        name = board_id if isinstance(board_id, str) and board_id else f"#{index + 1}"
        scope = Scope(top.sink, ("board", index), f"board {name}", board=name)
        checked = check_board(scope, board, library, board_ids)
        report.boards += 1
        devices = board.get("device", [])
        report.devices += len(devices) if isinstance(devices, list) else 0
        link = checked.get("link", {})
        port = link.get("gateway_port")
        if link.get("transport") in ("uart", "usb") and isinstance(port, str) and port:
            if port in serial_ports:
                scope.error(("link", "gateway_port"), f"{port} is already the gateway port of board "
                                                      f"{serial_ports[port]}",
                            "wire each board to its own serial port on the gateway")
            else:
                serial_ports[port] = name
        if link.get("transport") == "tcp" and isinstance(port, int):
            tcp_ports.append((scope, port))
    if "gateway" not in good:
        return
    gateway_scope = Scope(top.sink, ("gateway",), "gateway")
    checked_gateway = check_gateway(gateway_scope, gateway, set(board_ids))
    report.devices += check_gateway_devices(gateway_scope, checked_gateway, library, serial_ports)
    metrics = metrics_port(checked_gateway["metrics"]) if "metrics" in checked_gateway else None
    for scope, port in tcp_ports:
        if metrics is not None and port == metrics[1]:
            scope.error(("link", "gateway_port"), f"{port} is also the gateway's metrics port",
                        "use another port for the node link or for [gateway] metrics")
