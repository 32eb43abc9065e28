"""The spool's SQLite file: its schema, how it is recognised, and how a connection to it is set up.

A spool is recognised by the SQLite header's application_id ("CNSP") and versioned by its
user_version. Opening checks both *before* changing anything, so a file that is someone else's
database is never switched to WAL or written to.

Tables (version 1):

    meta     key -> integer: gateway_boot, evicted_batches, evicted_batch_bytes
    batches  one sealed, not yet acknowledged batch: its id (gateway_boot, seq), topic, the encoded
             payload byte for byte, and the frame count / frame bytes / first frame id it carries
    frames   one node frame: node, boot_id, seq, kind, received_ms, payload (opaque), batch (NULL
             while waiting for the batcher); UNIQUE(node, boot_id, seq)
    seen     per (node, boot_id): the accepted-seq window (spool_seen.py), outliving the frames
    losses   per (node, kind): frames and bytes evicted, duplicate frames dropped (cumulative)

Row ids of frames and batches grow with insertion among the rows present (SQLite picks max + 1), so
"ORDER BY id" is arrival order for frames and seal order for batches.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.spool_errors import NotASpoolError, SpoolError, SpoolVersionError

APPLICATION_ID = 0x434E5350  # b"CNSP": CityNerve SPool, in the SQLite header at offset 68
SCHEMA_VERSION = 1

# Bound the WAL file left behind after a checkpoint (SQLite otherwise keeps its high-water size).
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024

_SCHEMA_V1 = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE batches(
        id INTEGER PRIMARY KEY,
        gateway_boot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        first_frame INTEGER NOT NULL,
        frame_count INTEGER NOT NULL,
        frame_bytes INTEGER NOT NULL,
        sealed_ms INTEGER NOT NULL,
        UNIQUE(gateway_boot, seq))""",
    """CREATE TABLE frames(
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        boot_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        batch INTEGER REFERENCES batches(id),
        UNIQUE(node, boot_id, seq))""",
    # Serves "unbatched, oldest first" (batch IS NULL, then rowid order), deletion on PUBACK and the
    # foreign-key check when a batch row goes.
    "CREATE INDEX frames_by_batch ON frames(batch)",
    """CREATE TABLE seen(
        node TEXT NOT NULL,
        boot_id INTEGER NOT NULL,
        floor INTEGER NOT NULL,
        mask BLOB NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY(node, boot_id)) WITHOUT ROWID""",
    """CREATE TABLE losses(
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        evicted_frames INTEGER NOT NULL DEFAULT 0,
        evicted_bytes INTEGER NOT NULL DEFAULT 0,
        duplicate_frames INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(node, kind)) WITHOUT ROWID""",
)


def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (creating if absent or empty) the spool at `path`, checked and set up for durability.

    Raises NotASpoolError, SpoolVersionError or SpoolError; sqlite3 errors propagate for the
    caller to translate.
    """
    # isolation_level=None: the spool issues BEGIN IMMEDIATE / COMMIT itself.
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
    try:
        _check_identity(conn, path)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(path, f"SQLite refused WAL mode (got {mode!r}); use a local disk")
        # FULL: a commit is on stable storage when it returns, so an acknowledged frame survives a
        # power cut (NORMAL in WAL mode may lose the last commits).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        _create_if_new(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_identity(conn: sqlite3.Connection, path: Path) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and version == 0 and _table_count(conn) == 0:
        return  # new or empty file
    if app_id != APPLICATION_ID:
        raise NotASpoolError(
            path,
            f"is an SQLite database of another application (application_id {app_id:#x}, a spool "
            f"has {APPLICATION_ID:#x}); point the gateway at a spool file or a new path",
        )
    if version > SCHEMA_VERSION:
        raise SpoolVersionError(path, found=version, supported=SCHEMA_VERSION)
    if version < SCHEMA_VERSION:
        raise NotASpoolError(
            path, f"has spool schema version {version}, which no citynerve release wrote"
        )


def _create_if_new(conn: sqlite3.Connection, path: Path) -> None:
    if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-checked under the write lock: another process may have created it meanwhile.
        if _table_count(conn) == 0:
            for statement in _SCHEMA_V1:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _check_identity(conn, path)


def _table_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
