"""The store's files beside its database: atomic pixel/mask writes, live-writer markers and the
cleanup of files no row references.

Pixel files are written before the row that references them commits (so a failed transaction removes
them again, `_discard_files`). An import killed in between leaves an orphan; `remove_orphan_files`
deletes those, but never a file a live import may still commit: every import runs under a marker
(`writes`, engine.atomic.writer_marker) and files at least as new as the oldest live marker are kept.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write, live_writers, writer_marker
from engine.diskspace import free_bytes, is_disk_full
from engine.store.errors import DiskFullError, OrphanReport

__all__ = ["FilesMixin", "write_atomic", "writes"]

_MARGIN = 4 * 2**20  # free bytes kept beyond a pixel file (SQLite's WAL needs room to commit)
_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.png$")  # images/<sha256>.png, masks/<sha256>.png


def _open_tmp(path: Path):
    """Open a new temp file for writing (one indirection so tests can simulate a full disk)."""
    return open(path, "xb")


def write_atomic(dest: Path, data: bytes) -> None:
    """Write bytes to `dest` atomically through `engine.atomic.atomic_write` (temp file beside it,
    then os.replace). Raises DiskFullError (a StoreError; nothing written) when the free space is
    below the data plus a 4 MiB margin (room for SQLite's WAL to commit the row), or when the write
    runs out of space."""
    needed = len(data) + _MARGIN
    free = free_bytes(dest.parent)
    if free is not None and free < needed:
        raise DiskFullError(dest.parent, needed, free, dest.name)

    def write(tmp: str) -> None:
        # atomic_write made the temp file (mkstemp); it is created again, exclusively, through
        # `_open_tmp`, the one place tests substitute a file that runs out of space
        os.unlink(tmp)
        with _open_tmp(Path(tmp)) as f:
            f.write(data)

    try:
        atomic_write(dest, write, what=dest.name)
    except BaseException as e:
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(dest.parent, needed, free_bytes(dest.parent), dest.name) from e
        raise


def writes(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Store method that writes pixel/mask files under a live-writer marker
    (`<workspace>/.writers/`, engine.atomic.writer_marker), so `remove_orphan_files` never removes a
    file it may still commit. A disk too full for the marker raises DiskFullError (nothing was written)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(writer_marker(self.writers_dir))
            except OSError as e:  # the first write of an import: on a full disk, say so as every write does
                if is_disk_full(e) and not isinstance(e, DiskFullError):
                    raise DiskFullError(self.workspace, free=free_bytes(self.workspace)) from e
                raise
            return method(self, *args, **kwargs)

    return wrapper


def _unreferenced(folder: Path, used: set[str], cutoff: float, started: float,
                  min_age_s: float) -> Iterable[tuple[str, os.DirEntry, os.stat_result]]:
    """(relative path, entry, stat) of the stored-name files in `folder` that no row references and
    that are older than `cutoff` and at least `min_age_s` old at `started`."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        rel = f"{folder.name}/{e.name}"
        if rel in used or not _STORED_NAME.match(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not e.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        if st.st_mtime >= cutoff or started - st.st_mtime < min_age_s:
            continue
        yield rel, e, st


class FilesMixin:
    """Store methods about its pixel and mask files (mixed into engine.store.Store)."""

    workspace: Path
    images_dir: Path
    masks_dir: Path
    writers_dir: Path

    def _discard_files(self, rel_files: Iterable[str]) -> None:
        """Remove pixel/mask files that no row references (cleanup after a failed import)."""
        c = self._conn()
        for rel in set(rel_files):
            col, table = ("file", "images") if rel.startswith("images/") else ("mask_file", "regions")
            try:
                used = c.execute(f"SELECT 1 FROM {table} WHERE {col}=? LIMIT 1", (rel,)).fetchone()
            except sqlite3.Error:
                used = None
            if used is None:
                (self.workspace / rel).unlink(missing_ok=True)

    def remove_orphan_files(self, min_age_s: float = 60.0) -> OrphanReport:
        """Delete pixel and mask files that no row references, left by imports killed between
        writing a file and committing its row (a manifest import commits all rows at its end).

        Only `images/<sha256>.png` and `masks/<sha256>.png` are considered, and only files older than
        every live writer: each import runs under a marker (`<workspace>/.writers/`, see
        engine.atomic.writer_marker) whose mtime is its start, and a file at least as new as the oldest
        live marker, or as this call, is kept (an import that adopts an old orphan touches it first).
        `min_age_s` is a further minimum age (for writers of older versions without markers).
        Decisions and deletions happen inside one write transaction, so no import commits a row for
        a file while it is being removed (an import whose file vanished writes it again).
        Returns an OrphanReport (paths, bytes). Raises StoreError when the database stays locked by
        another writer (the run is then skipped; nothing is removed)."""
        started = time.time()
        live = live_writers(self.writers_dir)
        cutoff = min([started, *live]) - 1.0  # mtimes within a second of a writer's start are its own
        removed: list[str] = []
        size = 0
        with self._tx() as c:  # holds the write lock: no import commits meanwhile
            used = {r[0] for r in c.execute("SELECT file FROM images")}
            used |= {r[0] for r in c.execute("SELECT mask_file FROM regions WHERE mask_file IS NOT NULL")}
            for folder in (self.images_dir, self.masks_dir):
                for rel, entry, st in _unreferenced(folder, used, cutoff, started, min_age_s):
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        continue
                    removed.append(rel)
                    size += st.st_size
        return OrphanReport(tuple(removed), size)
