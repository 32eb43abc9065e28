"""Every shared vector case (tests/vectors/*.json) under CPython."""

from __future__ import annotations

import pytest
import run_vectors

from tests.protocols.vector_cases import all_cases, case_id

CASES = all_cases()


@pytest.mark.parametrize(("stem", "case"), CASES, ids=[case_id(s, c) for s, c in CASES])
def test_vector(stem: str, case: dict) -> None:
    run_vectors.run_case(run_vectors.checks_for(stem), case)
