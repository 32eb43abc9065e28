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
