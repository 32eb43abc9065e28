"""Shared pytest setup: the portable vector checks are importable under their own names, exactly as
they are inside the MicroPython VM (where they sit in /lib)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PORTABLE_DIR = REPO_ROOT / "tests" / "portable"
VECTOR_DIR = REPO_ROOT / "tests" / "vectors"

if str(PORTABLE_DIR) not in sys.path:
    sys.path.insert(0, str(PORTABLE_DIR))

# The default run's 300 s per-test timeout catches a hang; a `long` run (a million-example fuzzer,
# a soak) legitimately takes longer than that on two loaded cores, so it gets an hour instead.
LONG_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items) -> None:  # type: ignore[no-untyped-def]
    import pytest

    for item in items:
        if item.get_closest_marker("long") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))
