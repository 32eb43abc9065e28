"""Shared fuzzing set-up: example budgets and a strategy for mutated valid frames.

Default runs use DEFAULT_EXAMPLES per decoder; the `long` marker's twin test uses LONG_EXAMPLES
(`pytest -m long`). The hypothesis database is off so a run's cost does not depend on past runs.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DEFAULT_EXAMPLES = 10_000
LONG_EXAMPLES = 1_000_000


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid frame from `seeds` with a few random byte flips, insertions, deletions or a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate", "duplicate")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "duplicate" and data:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 8))]
    return bytes(data)


def garbage_and_frames(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A byte stream of random garbage and (possibly mutated) frames, for incremental decoders."""
    piece = st.one_of(st.binary(max_size=40), mutated(seeds), st.sampled_from(seeds))
    return st.lists(piece, max_size=6).map(b"".join)
