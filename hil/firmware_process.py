"""Run firmware code as a separate process under either runtime: CPython with the host HAL, or the
MicroPython WebAssembly VM in Node (protocols/ and firmware/ compiled with mpy-cross, as flashed).

Both get the same Python source to run; `await main()`-style entry code is wrapped for each
runtime (CPython needs asyncio.run; the VM awaits at top level). Used by the firmware tests and by
the node runners of the harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hil.micropython_vm import ensure_installed, micropython_tree_files

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = ("cpython", "micropython")
VM_HEAPSIZE = 1024 * 1024


def build_micropython_files(build_dir: Path) -> list[tuple[Path, str]]:
    return micropython_tree_files(build_dir, REPO_ROOT)


def firmware_command(
    runtime: str,
    source: str,
    coroutine: str,
    *,
    build_dir: Path,
    fs_root: Path | None = None,
    extra_files: list[tuple[Path, str]] = (),
) -> tuple[list[str], dict[str, str], Path]:
    """The argv, environment and working directory that run `source` then await `coroutine`
    (an expression such as "main(cfg)") under `runtime`."""
    if runtime == "cpython":
        code = f"{source}\nimport asyncio\nasyncio.run({coroutine})\n"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        return [sys.executable, "-c", code], env, REPO_ROOT
    if runtime == "micropython":
        runner = ensure_installed()
        files = build_micropython_files(build_dir) + list(extra_files)
        spec = {
            "files": [[str(h), v] for h, v in files],
            "code": f"{source}\nawait {coroutine}\n",
            "fs_root": str(fs_root) if fs_root else None,
            # The VM's heap grows on demand; starting at 1 MiB rather than run.mjs's 8 MiB makes
            # each gc.collect() and gc.mem_alloc() (which walk the whole heap) ~4x cheaper, and a
            # node runs in well under 1 MiB.
            "heapsize": VM_HEAPSIZE,
        }
        fd, spec_path = tempfile.mkstemp(suffix=".json", dir=build_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        return ["node", "--expose-gc", str(runner), spec_path], dict(os.environ), runner.parent
    raise ValueError(f"unknown runtime {runtime!r}: use one of {RUNTIMES}")


def run_firmware(
    runtime: str,
    source: str,
    coroutine: str,
    *,
    build_dir: Path,
    timeout: float = 60.0,
    fs_root: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run to completion and return the finished process (stdout/stderr captured as text)."""
    argv, env, cwd = firmware_command(runtime, source, coroutine, build_dir=build_dir, fs_root=fs_root)
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_firmware(
    runtime: str,
    source: str,
    coroutine: str,
    *,
    build_dir: Path,
    fs_root: Path | None = None,
) -> subprocess.Popen[str]:
    """Start in the background (the caller must terminate it: use it as a context manager)."""
    argv, env, cwd = firmware_command(runtime, source, coroutine, build_dir=build_dir, fs_root=fs_root)
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
