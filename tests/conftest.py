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
