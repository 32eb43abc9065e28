"""Run Python code under the real MicroPython VM: the WebAssembly port from the npm registry, in Node.

One VM per Node process (two instances in one JS realm break each other). Files are copied into the
VM's in-memory filesystem before the code runs. `ensure_installed()` installs the npm package from
the committed lock file when it is missing, so a fresh clone needs only Node and npm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

RUNNER_DIR = Path(__file__).resolve().parent / "micropython"
PACKAGE = "@micropython/micropython-webassembly-pyscript"


class MicroPythonUnavailable(RuntimeError):
    """Node, npm or the MicroPython package is missing and could not be installed."""


def ensure_installed() -> Path:
    """Return the runner script, installing the pinned npm package first if it is missing."""
    node = shutil.which("node")
    if node is None:
        raise MicroPythonUnavailable("node is not on PATH: install Node.js 20 or newer (Debian: apt-get install nodejs npm)")
    if not (RUNNER_DIR / "node_modules" / PACKAGE / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise MicroPythonUnavailable("npm is not on PATH: install it (Debian: apt-get install npm)")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(RUNNER_DIR)],
            capture_output=True, text=True, timeout=300,
        )
        if proc.returncode != 0:
            raise MicroPythonUnavailable(f"npm ci in {RUNNER_DIR} failed: {proc.stderr.strip()[-500:]}")
    return RUNNER_DIR / "run.mjs"


def micropython_tree_files(build_dir: Path, root: Path) -> list[tuple[Path, str]]:
    """protocols/ and firmware/ compiled with mpy-cross into build_dir, as (host, VM path) pairs
    under /lib, the way a flashed board holds them."""
    from citynerve.mpy_toolchain import compile_tree

    return [(mpy, "/lib/" + mpy.relative_to(build_dir).as_posix()) for mpy in compile_tree(root, build_dir)]


def run_micropython(
    code: str,
    files: Iterable[tuple[Path, str]] = (),
    *,
    timeout: float = 120.0,
    heapsize: int = 8 * 1024 * 1024,
    fs_root: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh MicroPython VM with `files` ((host path, VM path) pairs) in place.

    `fs_root` is the host folder behind the VM's hostbridge.read_file/write_file (a node's flash
    that survives its reboot)."""
    runner = ensure_installed()
    spec = {"files": [[str(h), v] for h, v in files], "code": code, "heapsize": heapsize,
            "fs_root": str(fs_root) if fs_root else None}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    try:
        return subprocess.run(
            ["node", str(runner), spec_path], capture_output=True, text=True, timeout=timeout,
            cwd=RUNNER_DIR,
        )
    finally:
        Path(spec_path).unlink(missing_ok=True)
