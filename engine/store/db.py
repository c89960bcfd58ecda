"""Connections and transactions of the workspace store (the base of `engine.store.Store`).

Every mutation is one SQLite transaction (`_tx`: BEGIN IMMEDIATE ... COMMIT, nested use joins the
outer one); a full disk during it raises `DiskFullError` and leaves the store as it was. Each thread
gets its own connection (threading.local); `close` closes every thread's.
"""
from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.diskspace import free_bytes, is_disk_full
from engine.store.errors import DiskFullError, StoreError
from engine.store.schema import connect, migrate

__all__ = ["Database"]


class Database:
    """Per-thread connections to `<workspace>/store.sqlite` and its transactions.

    Subclasses set `workspace` and `db_path`, then call `_open_database()` (which migrates)."""

    workspace: Path
    db_path: Path

    def _open_database(self) -> None:
        """Prepare per-thread connections and bring the schema up to date (engine.store.schema.migrate)."""
        self._local = threading.local()
        self._all_conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()  # closed with their thread
        self._conns_lock = threading.Lock()
        migrate(self._conn())

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path)
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.add(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (any thread's)."""
        with self._conns_lock:
            conns, self._all_conns = list(self._all_conns), weakref.WeakSet()
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def _commit(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE); nested use joins the outer one. Raises StoreError
        when the database stays locked, DiskFullError (nothing changed) when the disk is full."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(f"the workspace database {self.db_path} is busy or locked ({e}); "
                             "wait for the other writer to finish and retry") from e
        try:
            yield conn
            self._commit(conn)
        except BaseException as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if is_disk_full(e) and not isinstance(e, DiskFullError):
                raise DiskFullError(self.workspace, free=free_bytes(self.workspace)) from e
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot over several statements."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (`PRAGMA user_version`)."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def table_counts(self) -> dict[str, int]:
        """Row count of every table (for checks that an operation changed nothing)."""
        with self._read() as c:
            names = [r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            return {n: int(c.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in names}
