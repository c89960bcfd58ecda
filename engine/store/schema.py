"""The workspace database: its schema (an ordered list of migrations tracked by `PRAGMA user_version`)
and how a connection is opened (autocommit, WAL, busy timeout, foreign keys)."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.sqlite_wal import enable_wal
from engine.store.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "connect", "migrate"]

# Each entry upgrades the schema by one version: MIGRATIONS[i] takes user_version i to i + 1.
# Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: images, findings, labels, regions
    (
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sha256 TEXT NOT NULL UNIQUE,          -- hash of the stored pixels (dtype, shape, bytes)
            name TEXT NOT NULL,                   -- display name (the file name it came from)
            file TEXT NOT NULL,                   -- relative to the workspace: images/<sha256>.png
            width INTEGER NOT NULL, height INTEGER NOT NULL, bits INTEGER NOT NULL,
            source_format TEXT NOT NULL, photometric TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '', view TEXT NOT NULL DEFAULT '',
            patient_key TEXT,                     -- keyed hash of a manifest patient_id, or NULL
            split TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        "CREATE TABLE findings (name TEXT PRIMARY KEY, created REAL NOT NULL)",
        """CREATE TABLE labels (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            finding TEXT NOT NULL REFERENCES findings(name) ON DELETE CASCADE ON UPDATE CASCADE,
            value INTEGER NOT NULL CHECK (value IN (0, 1)),
            PRIMARY KEY (image_id, finding)) WITHOUT ROWID""",
        "CREATE INDEX labels_finding ON labels(finding)",
        """CREATE TABLE regions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            finding TEXT NOT NULL REFERENCES findings(name) ON DELETE CASCADE ON UPDATE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('box', 'mask')),
            x REAL, y REAL, w REAL, h REAL,       -- pixels of the stored image (a mask's bounding box)
            mask_file TEXT)                       -- relative to the workspace: masks/<sha256>.png""",
        "CREATE INDEX regions_image ON regions(image_id)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta(key, value) VALUES ('salt', lower(hex(randomblob(16))))",
    ),
    # v2: background jobs, their events, and results (sweeps, classifiers, gradcam batches)
    (
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, params_json TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL,                  -- queued|running|done|failed|cancelled|interrupted
            step INTEGER, total INTEGER, error TEXT, result_json TEXT,
            created REAL NOT NULL, updated REAL NOT NULL, device TEXT,
            owner TEXT,                           -- token of the JobRunner that runs it
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            runs INTEGER NOT NULL DEFAULT 0)      -- 1 + number of resumes once started""",
        "CREATE INDEX jobs_state ON jobs(state)",
        """CREATE TABLE job_events (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, time REAL NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '', metrics_json TEXT, step INTEGER, total INTEGER,
            PRIMARY KEY (job_id, seq)) WITHOUT ROWID""",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, summary_json TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX results_kind ON results(kind)",
    ),
    # v3: an index of backbone checkpoints produced in this workspace (which job made which file). No longer
    # written or read (issue 24): the registry's json beside each backbone is the one checkpoint index (its
    # run_dir names the job folder it was trained in; engine.models.registry.checkpoints_made_in). Kept so
    # the migrations stay the same for every database.
    (
        """CREATE TABLE checkpoints (
            name TEXT PRIMARY KEY, path TEXT NOT NULL, meta_json TEXT NOT NULL DEFAULT '{}',
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created REAL NOT NULL)""",
    ),
    # v4: neutral display names (the original base name only as a keyed hash) and source-file hashes
    # (duplicates found before decoding). Rows imported before keep their names; their name_key is NULL.
    (
        "ALTER TABLE images ADD COLUMN name_key TEXT",   # keyed hash of the original file's base name
        "CREATE INDEX images_name_key ON images(name_key)",
        """CREATE TABLE sources (
            sha256 TEXT PRIMARY KEY,              -- sha256 of (reader version, the file's bytes)
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE) WITHOUT ROWID""",
        "CREATE INDEX sources_image ON sources(image_id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (so a finished thread's connection is closed)."""


def connect(db_path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, busy_timeout (`timeout`
    seconds: how long it waits for another writer), FKs on."""
    conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None, check_same_thread=False,
                           factory=_Connection)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    enable_wal(conn, timeout=max(timeout, 1.0))
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to `target` (one transaction); returns the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreError(f"this workspace was written by a newer scarce-cxr (schema v{found}, this one "
                             f"knows up to v{SCHEMA_VERSION}); upgrade scarce-cxr to open it")
        for v in range(found, target):
            for stmt in MIGRATIONS[v]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v + 1}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
