"""Connections and transactions of the workspace store (the base of `engine.store.Store`).

Every mutation is one SQLite transaction (`_tx`: BEGIN IMMEDIATE ... COMMIT, nested use joins the
outer one); a full disk during it raises `DiskFullError` and leaves the store as it was. Each thread
gets its own connection (threading.local); `close` closes every thread's.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.diskspace import free_bytes, is_disk_full
from engine.store.errors import DiskFullError, StoreError
from engine.store.schema import SCHEMA_VERSION, connect, migrate

__all__ = ["Database", "DatabaseGoneError", "StoreOpenError", "open_error"]


class StoreOpenError(StoreError):
    """The workspace database cannot be opened (locked by another writer, a read-only file system, a
    missing or unwritable folder, not a database); the message says which and what to do."""


class DatabaseGoneError(StoreError):
    """The workspace database was deleted or replaced while this store had it open; nothing was written."""


def _read_only_fs(path: Path) -> bool:
    """Whether the nearest existing folder of `path` lies on a file system mounted read-only."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_error(e: BaseException, workspace: Path, db_path: Path, timeout_s: float) -> StoreOpenError:
    """The StoreOpenError for an exception raised while opening `db_path` (creating the workspace's
    folders, connecting, migrating): which of locked / read-only / missing / unwritable / not a
    database it is, decided from the file system where it can be, with what to do."""
    text, code = str(e), getattr(e, "errno", None)
    where = f"the workspace database {db_path}"
    if _read_only_fs(workspace):
        why = (f"{workspace} is on a read-only file system; scarce-cxr writes its database there. Copy the "
               "workspace to a writable disk (or remount it read-write) and open it from there")
    elif "locked" in text or "busy" in text:
        why = (f"{where} is locked by another writer (another scarce-cxr process, or a program that holds the "
               f"database open) and stayed locked for {timeout_s:g} s; close that program or wait for its job "
               "to finish, then retry")
    elif isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        why = (f"{db_path} is not a scarce-cxr database or is damaged ({text}); restore it from a backup, or "
               "move it away to start an empty workspace there")
    elif code in (errno.EACCES, errno.EPERM) or "readonly" in text or "permission" in text.lower():
        why = f"{where} or its folder {workspace} is not writable by this user ({text}); fix its permissions"
    elif isinstance(e, (FileNotFoundError, NotADirectoryError, FileExistsError)) or "unable to open" in text:
        why = (f"{where} cannot be opened ({text}): the workspace folder {workspace} is missing or is not a "
               "folder (a disk not mounted, a path that names a file?); check the path")
    else:
        why = f"{where} cannot be opened ({type(e).__name__}: {text})"
    return StoreOpenError(f"cannot open the workspace: {why}")


class Database:
    """Per-thread connections to `<workspace>/store.sqlite` and its transactions.

    Subclasses set `workspace` and `db_path`, then call `_open_database()` (which migrates)."""

    workspace: Path
    db_path: Path
    busy_timeout_s: float = 30.0  # how long a write (or the open) waits for another writer

    def _open_database(self) -> None:
        """Prepare per-thread connections and bring the schema up to date (engine.store.schema.migrate;
        skipped, with no write lock taken, when the schema is current). Remembers which file it opened,
        so a database deleted or replaced meanwhile is noticed (`_check_same_file`). Raises
        StoreOpenError (locked, read-only, missing, not a database) instead of sqlite3's errors."""
        self._local = threading.local()
        self._all_conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()  # closed with their thread
        self._conns_lock = threading.Lock()
        try:
            conn = self._conn()
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) != SCHEMA_VERSION:
                migrate(conn)  # newer-schema StoreError passes through
            st = os.stat(self.db_path)
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise open_error(e, self.workspace, self.db_path, self.busy_timeout_s) from e
        self._file_id = (st.st_dev, st.st_ino)

    def _check_same_file(self) -> None:
        """Raise DatabaseGoneError when `db_path` no longer is the file this store opened (deleted, or
        replaced by another file): writing on would go into an unlinked file and be lost."""
        opened = getattr(self, "_file_id", None)
        if opened is None:
            return
        try:
            st = os.stat(self.db_path)
            same = (st.st_dev, st.st_ino) == opened
        except FileNotFoundError:
            same = False
        if not same:
            raise DatabaseGoneError(
                f"the workspace database {self.db_path} was deleted or replaced while scarce-cxr had it open; "
                "nothing was written (it would have been lost). Restart the app (or open the workspace again) to "
                "use the database now at that path; restore store.sqlite from a backup first if it was deleted "
                "by mistake")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path, timeout=self.busy_timeout_s)
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
        self._check_same_file()
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
