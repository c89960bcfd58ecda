"""Switch a SQLite connection to WAL safely when several processes open a new database at once."""
from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, timeout: float = 60.0) -> None:
    """`PRAGMA journal_mode=WAL`, retried: turning a new database to WAL needs an exclusive lock, and
    SQLite answers "database is locked" at once (its busy handler is not used) while another process
    does the same."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
