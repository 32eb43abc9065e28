"""mpy-cross (the real compiler boards use) must accept every file in protocols/ and firmware/."""

from __future__ import annotations

from pathlib import Path

import pytest

from citynerve.mpy_toolchain import compile_file, micropython_sources
from tests.conftest import REPO_ROOT

SOURCES = micropython_sources(REPO_ROOT)


def test_there_is_micropython_code_to_check() -> None:
    assert any(p.parts[-2] == "protocols" for p in SOURCES)


@pytest.mark.parametrize("source", SOURCES, ids=[str(p.relative_to(REPO_ROOT)) for p in SOURCES])
def test_mpy_cross_accepts(source: Path, tmp_path: Path) -> None:
    out = compile_file(source, tmp_path / "out.mpy")
    assert out.stat().st_size > 0


def test_boards_get_no_line_tables_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flashed .mpy leaves out source line numbers (smaller on flash and in the heap it is
    loaded into); CITYNERVE_MPY_SOURCE_LINES=1 keeps them for debugging."""
    from citynerve.mpy_toolchain import SOURCE_LINES_ENV

    source = REPO_ROOT / "protocols" / "modbus_rtu.py"
    monkeypatch.delenv(SOURCE_LINES_ENV, raising=False)
    lean = compile_file(source, tmp_path / "lean.mpy").stat().st_size
    monkeypatch.setenv(SOURCE_LINES_ENV, "1")
    full = compile_file(source, tmp_path / "full.mpy").stat().st_size
    assert lean < full * 0.97, (lean, full)


def test_compile_tree_rebuilds_when_the_options_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from citynerve.mpy_toolchain import SOURCE_LINES_ENV, compile_tree

    root = tmp_path / "src"
    (root / "protocols").mkdir(parents=True)
    (root / "protocols" / "m.py").write_text("def f(x):\n    y = x + 1\n    return y * 2\n" * 20)
    monkeypatch.delenv(SOURCE_LINES_ENV, raising=False)
    [lean] = compile_tree(root, tmp_path / "build")
    lean_size = lean.stat().st_size
    monkeypatch.setenv(SOURCE_LINES_ENV, "1")
    [full] = compile_tree(root, tmp_path / "build")
    assert full.stat().st_size > lean_size


def test_the_vm_runs_code_compiled_without_line_tables(tmp_path: Path) -> None:
    from hil.micropython_vm import run_micropython

    source = tmp_path / "boom.py"
    source.write_text("def add(a, b):\n    return a + b\n\ndef boom():\n    raise ValueError('named')\n")
    out = compile_file(source, tmp_path / "boom.mpy", source_name="boom.py")
    proc = run_micropython("import boom\nprint('SUM', boom.add(2, 3))\nboom.boom()\n", [(out, "/lib/boom.mpy")])
    assert "SUM 5" in proc.stdout
    assert "in boom" in proc.stderr and "ValueError: named" in proc.stderr, proc.stderr


def test_a_board_names_each_file_without_its_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracebacks from a flashed .mpy name the file ("boom.py") and the function, not the folders:
    the bytes of the path are saved once per module. That names the place only while every file
    name under protocols/ and firmware/ is unique; with CITYNERVE_MPY_SOURCE_LINES=1 the whole path
    (and the line numbers) come back."""
    from citynerve.mpy_toolchain import SOURCE_LINES_ENV, recorded_name
    from hil.micropython_vm import run_micropython

    names = [p.name for p in SOURCES if p.name != "__init__.py"]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    monkeypatch.delenv(SOURCE_LINES_ENV, raising=False)
    assert recorded_name("firmware/drivers/loop_presence.py") == "loop_presence.py"
    assert recorded_name("firmware/drivers/loop_presence.py", True) == "firmware/drivers/loop_presence.py"
    source = tmp_path / "boom.py"
    source.write_text("def boom():\n    raise ValueError('named')\n")
    out = compile_file(source, tmp_path / "boom.mpy", source_name="firmware/drivers/boom.py")
    proc = run_micropython("import boom\nboom.boom()\n", [(out, "/lib/boom.mpy")])
    assert 'File "boom.py", line 1, in boom' in proc.stderr, proc.stderr  # the def's line: no table
    monkeypatch.setenv(SOURCE_LINES_ENV, "1")
    out = compile_file(source, tmp_path / "boom.mpy", source_name="firmware/drivers/boom.py")
    proc = run_micropython("import boom\nboom.boom()\n", [(out, "/lib/boom.mpy")])
    assert 'File "firmware/drivers/boom.py", line 2, in boom' in proc.stderr, proc.stderr
