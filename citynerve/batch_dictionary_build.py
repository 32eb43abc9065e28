"""How protocols/batch_dictionary.py was built (cnb1 codec 3, "deflate-dict"): run it to see.

    .venv/bin/python -m citynerve.batch_dictionary_build      # prints the module's DICTIONARY_1

The dictionary holds what every batch of a citynerve node repeats, and nothing of any one site:
for each shipped profile (profiles/*.json) with streams, the cnb1 body of one batch carrying each
of its streams once (stream table: name, unit, kind, decimals; the body's keys), then the body of
a small event batch. Device ids, node names and values are a site's and stay out. The bytes are
frozen in protocols/batch_dictionary.py: codec 3 means that dictionary for good, so a changed
profile set makes a new dictionary only with a new codec number (this script's output may then
differ from DICTIONARY_1, which is expected).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from citynerve.inventory import load_profiles  # noqa: E402
from protocols.batch_cnb1 import CODEC_NONE, HEADER_SIZE, Batch, encode_batch  # noqa: E402

T_MS = 1_750_000_000_000


def build() -> bytes:
    parts = []
    for _, profile in sorted(load_profiles().items()):
        specs = list(profile.get("streams", [])) + [r for r in profile.get("registers", []) if "unit" in r]
        if not specs:
            continue
        batch = Batch("node", 1)
        for spec in specs:
            name = "dev/" + spec["name"]
            batch.add_stream(name, spec.get("unit", ""), spec.get("kind", "gauge"), spec.get("dec"))
            batch.add_measurement(name, T_MS, 0)
        parts.append(encode_batch(batch, 1, 1, CODEC_NONE)[HEADER_SIZE:])
    events = Batch("node", 1)
    events.add_event(T_MS, 1, 2)
    events.add_event(T_MS + 100, 82, 3)
    parts.append(encode_batch(events, 1, 1, CODEC_NONE)[HEADER_SIZE:])
    return b"".join(parts)


def main() -> None:
    data = build()
    print(f"# {len(data)} bytes, SHA-256 {hashlib.sha256(data).hexdigest()}")
    print("DICTIONARY_1 = bytes.fromhex(")
    text = data.hex()
    for i in range(0, len(text), 96):
        print(f'    "{text[i:i + 96]}"')
    print(")")


if __name__ == "__main__":
    main()
