"""Collects the shared vector cases so both runtimes' tests parametrize over the same list."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import VECTOR_DIR


def vector_stems() -> list[str]:
    return sorted(p.stem for p in VECTOR_DIR.glob("*.json"))


def all_cases() -> list[tuple[str, dict]]:
    cases = []
    for stem in vector_stems():
        data = json.loads((VECTOR_DIR / f"{stem}.json").read_text())
        ids = [c["id"] for c in data["cases"]]
        duplicated = {i for i in ids if ids.count(i) > 1}
        if duplicated:
            raise ValueError(f"{stem}.json: duplicate case ids {sorted(duplicated)}")
        cases.extend((stem, case) for case in data["cases"])
    return cases


def case_id(stem: str, case: dict) -> str:
    return f"{stem}:{case['id']}"
