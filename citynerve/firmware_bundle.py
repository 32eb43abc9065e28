"""Which firmware files a board needs: the import closure of its entry point, its HAL backend and
the drivers its devices use, so a board's flash holds nothing it does not run (the gateway-only
cnb1 encoder, the harness's host HAL and test generators stay off it).

The closure is computed from the sources' import statements (ast), including imports inside
functions (drivers are imported lazily), restricted to protocols/ and firmware/. A package
__init__.py that holds nothing but its docstring stays off the board: MicroPython imports a
folder without one as a namespace package (tests/test_firmware_bundle.py imports every bundle on
the VM that way).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from citynerve.inventory import REPO_ROOT

PACKAGES = ("protocols", "firmware")


def _module_path(module: str, root: Path) -> Path | None:
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    as_file = root.joinpath(*parts).with_suffix(".py")
    if as_file.exists():
        return as_file
    as_package = root.joinpath(*parts, "__init__.py")
    return as_package if as_package.exists() else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text(), str(path)).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def closure(modules: list[str], root: Path = REPO_ROOT, *, exclude: set[str] = frozenset()) -> list[Path]:
    """Source files of `modules` and everything they import from protocols/ and firmware/,
    package __init__ files included unless they are only a docstring, leaving out modules named
    in `exclude`."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or name in exclude:
            continue
        path = _module_path(name, root)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(path))
    return sorted(p for p in set(seen.values()) if not (p.name == "__init__.py" and _docstring_only(p)))


def board_modules(config: dict[str, Any], *, backend: str = "machine") -> list[str]:
    """The modules a board running `config` imports at some point."""
    from firmware.config import driver_for

    modules = ["firmware.app", "firmware.link_client", f"firmware.hal_{backend}"]
    for device in config.get("devices", []):
        found = driver_for(device, config["profiles"][device["profile"]])
        if found:
            modules.append(found[0])
    if backend == "machine" and config.get("link", {}).get("transport") == "tcp":
        modules.append("firmware.wifi")
    return modules


def board_files(config: dict[str, Any], *, backend: str = "machine", root: Path = REPO_ROOT) -> list[Path]:
    other = "host" if backend == "machine" else "machine"
    exclude = {f"firmware.hal_{other}", "firmware.wifi"} - set(board_modules(config, backend=backend))
    return closure(board_modules(config, backend=backend), root, exclude=exclude)
