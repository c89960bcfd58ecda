"""The resolution cache's hash index: `<cache_dir>/hashes.sqlite` maps (path, size, mtime_ns) to a
file's content key, so a repeated build reads only files that changed (see engine.data.cache)."""
from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from engine.sqlite_wal import enable_wal

#   of pixel padding, TIFF min-is-white and orientation = engine.data.io.READER_VERSION 2)
KEY_CHARS = 20  # hex characters of sha256 kept as the content key (80 bits)


def file_key(data: bytes) -> str:
    """Content key of a file's bytes."""
    return hashlib.sha256(data).hexdigest()[:KEY_CHARS]


class HashIndex:
    """SQLite map (path, size, mtime_ns) -> content key, so unchanged files are not read again."""

    def __init__(self, db: Path):
        self.db = db
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                        "mtime_ns INTEGER NOT NULL, key TEXT NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=60)
        try:
            enable_wal(con)
        except sqlite3.OperationalError:
            con.close()
            raise
        con.execute("PRAGMA busy_timeout=60000")
        return con

    def lookup(self, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        """Keys of the paths whose (size, mtime_ns) still match what was hashed."""
        found: dict[str, str] = {}
        items = list(stats)
        con = self._connect()
        try:
            for i in range(0, len(items), 500):
                part = items[i:i + 500]
                q = f"SELECT path, size, mtime_ns, key FROM files WHERE path IN ({','.join('?' * len(part))})"
                for path, size, mtime, key in con.execute(q, part):
                    if stats[path] == (size, mtime):
                        found[path] = key
        finally:
            con.close()
        return found

    def store(self, rows: Iterable[tuple[str, int, int, str]]) -> None:
        rows = list(rows)
        if not rows:
            return
        con = self._connect()
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO files (path, size, mtime_ns, key) VALUES (?, ?, ?, ?)", rows)
        finally:
            con.close()
