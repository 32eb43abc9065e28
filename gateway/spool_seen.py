"""Which sequence numbers of one (node, boot id) the spool has already accepted: a compact window.

The spool must drop a resent node frame as a duplicate even after the original was published and
deleted, and after a restart, so the record is kept apart from the frames, persisted, and small:

    floor   every seq <= floor counts as seen
    mask    bit i set <=> seq floor + 1 + i was seen (only bits below SEQ_WINDOW are ever set)

Marking a seq sets its bit and then absorbs the run of set bits at the bottom into floor, so a
contiguous stream keeps mask == 0. A seq more than SEQ_WINDOW above floor slides the window up:
seqs that fall below it without having been seen are given up and count as seen from then on. The
rule this gives (checked against a set model in the tests):

    seen(seq)  <=>  seq was accepted  or  seq <= (highest accepted seq) - SEQ_WINDOW

It is exact for a node that can only resend frames it still holds, as long as its resend ring holds
fewer than SEQ_WINDOW frames (the node keeps unacknowledged DATA in a bounded ring; a frame older
than that was either accepted or already counted as lost on the node). Seqs must not wrap inside
one boot (the link's seq is u32: 497 days at 100 frames/s); a new boot is a new record.
"""

from __future__ import annotations

import sqlite3

# 4096 seqs = a 512-byte mask at worst; far above any node ring, far below any memory concern.
SEQ_WINDOW = 4096

Window = tuple[int, int]  # (floor, mask)

EMPTY: Window = (-1, 0)  # nothing seen; node seqs start at 0


def is_seen(window: Window, seq: int) -> bool:
    """True when `seq` was accepted before (or is too far behind to be told apart from that)."""
    floor, mask = window
    offset = seq - floor - 1
    if offset < 0:
        return True
    return offset < SEQ_WINDOW and (mask >> offset) & 1 == 1


def mark(window: Window, seq: int) -> Window:
    """The window after accepting `seq` (which must not be seen yet)."""
    floor, mask = window
    offset = seq - floor - 1
    if offset >= SEQ_WINDOW:
        shift = offset - SEQ_WINDOW + 1
        mask >>= shift
        floor += shift
        offset = SEQ_WINDOW - 1
    mask |= 1 << offset
    run = (mask ^ (mask + 1)).bit_length() - 1  # number of trailing one bits
    return floor + run, mask >> run


def mask_to_bytes(mask: int) -> bytes:
    """The mask as little-endian bytes, empty for the common contiguous case."""
    return mask.to_bytes((mask.bit_length() + 7) // 8, "little")


def mask_from_bytes(data: bytes) -> int:
    """Inverse of mask_to_bytes."""
    return int.from_bytes(data, "little")


# A node keeps the records of its latest boots; older ones go once none of their frames is left.
MAX_BOOTS_PER_NODE = 4

Key = tuple[str, int]  # (node, boot_id)

_UPSERT = (
    "INSERT INTO seen(node, boot_id, floor, mask, last_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(node, boot_id) DO UPDATE SET floor = excluded.floor, mask = excluded.mask, "
    "last_ms = max(last_ms, excluded.last_ms)"
)


class SeenRecords:
    """The windows of every (node, boot_id), cached in memory and kept in the `seen` table.

    Changes are staged by the caller (a dict of new windows), written with write() inside the
    transaction that stores the frames, and applied to the cache with commit() only once that
    transaction has committed, so a rolled-back call leaves no trace.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._windows: dict[Key, Window] = {}
        self._last_ms: dict[Key, int] = {}
        for node, boot_id, floor, mask, last_ms in conn.execute(
            "SELECT node, boot_id, floor, mask, last_ms FROM seen"
        ):
            self._windows[(node, boot_id)] = (floor, mask_from_bytes(mask))
            self._last_ms[(node, boot_id)] = last_ms

    def get(self, key: Key) -> Window:
        """The committed window of (node, boot_id)."""
        return self._windows.get(key, EMPTY)

    def write(
        self, conn: sqlite3.Connection, windows: dict[Key, Window], last_ms: dict[Key, int]
    ) -> list[Key]:
        """Persist staged windows; returns the records forgotten (old boots of rebooted nodes)."""
        conn.executemany(
            _UPSERT,
            [
                (node, boot_id, floor, mask_to_bytes(mask), last_ms[(node, boot_id)])
                for (node, boot_id), (floor, mask) in windows.items()
            ],
        )
        forgotten: list[Key] = []
        for node in {node for (node, boot) in windows if (node, boot) not in self._windows}:
            forgotten.extend(self._forget_old_boots(conn, node, windows, last_ms))
        return forgotten

    def _forget_old_boots(
        self,
        conn: sqlite3.Connection,
        node: str,
        windows: dict[Key, Window],
        last_ms: dict[Key, int],
    ) -> list[Key]:
        # A record may go only when none of its frames is left: every frame row then has a record
        # that marks it, so the frames table's UNIQUE constraint never has to catch a duplicate.
        boots = {boot for (n, boot) in self._windows if n == node}
        boots.update(boot for (n, boot) in windows if n == node)
        if len(boots) <= MAX_BOOTS_PER_NODE:
            return []

        def recency(boot: int) -> int:
            return last_ms.get((node, boot), self._last_ms.get((node, boot), 0))

        forgotten = []
        for boot in sorted(boots, key=recency)[: len(boots) - MAX_BOOTS_PER_NODE]:
            if conn.execute(
                "SELECT 1 FROM frames WHERE node = ? AND boot_id = ? LIMIT 1", (node, boot)
            ).fetchone():
                continue
            conn.execute("DELETE FROM seen WHERE node = ? AND boot_id = ?", (node, boot))
            forgotten.append((node, boot))
        return forgotten

    def commit(
        self, windows: dict[Key, Window], last_ms: dict[Key, int], forgotten: list[Key]
    ) -> None:
        """Apply what write() persisted, once its transaction has committed."""
        self._windows.update(windows)
        self._last_ms.update(last_ms)
        for key in forgotten:
            self._windows.pop(key, None)
            self._last_ms.pop(key, None)

    def __len__(self) -> int:
        return len(self._windows)
