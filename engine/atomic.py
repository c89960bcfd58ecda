"""Atomic file writes: write to a temp file in the same folder, then `os.replace` it into place.

A crash or a full disk never leaves a half-written checkpoint, manifest or result behind; a full
disk raises `engine.diskspace.DiskFullError` naming the folder, the space needed and what to do.

Temp files are named `.<name>.<pid>.<random>.tmp` beside their destination. A process killed mid-write
leaves one behind; `remove_stale_temps(root)` (run when a JobRunner starts) deletes those whose
writer is no longer alive, never a live writer's.

Files that are complete but belong to an unfinished operation (the store's pixel files, written
before the row that references them commits) cannot carry a pid in their name. Such a writer holds a
marker instead: `writer_marker(folder)` creates `<folder>/<pid>.<random>.writer` (content: the owner
`pid:<host>:<pid>:<start time>`, engine.reservations.process_owner) for the duration of the work, and
`live_writers(folder)` returns the start times of the markers whose process still runs (removing the
others), so a cleanup can keep everything a live writer may still commit.
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from engine.diskspace import disk_full_guard, ensure_free

__all__ = ["atomic_write", "atomic_write_text", "live_writers", "remove_stale_temps", "writer_marker"]

# Temp-file names of every writer in the engine, with the writer's pid:
#   .<name>.<pid>.<random>.tmp  (atomic_write)   .<name>.<pid>.<tid>.tmp (store)   .<name>.<pid>.tmp (torch state)
#   .<name>.tmp-<pid>-<hex>     (resolution cache)
_TEMP_PATTERNS = (re.compile(r"^\..+?\.(?P<pid>\d+)\.(?:[A-Za-z0-9_]+\.)?tmp$"),
                  re.compile(r"^\..+?\.tmp-(?P<pid>\d+)-[0-9a-f]+$"))
_PIDLESS = re.compile(r"^\..+\.tmp$")  # older writers' names without a pid: removed only when a day old


def atomic_write(path: str | Path, write: Callable[[str], None], needed: int | None = None,
                 what: str | None = None) -> Path:
    """Call `write(tmp_path)` and move the result to `path`; on any error the temp file is removed.

    `needed` (bytes, optional) is checked against the free space first. Raises
    `engine.diskspace.DiskFullError` when the disk is (or fills up) full, naming the folder, the
    space needed and what to do; any other error of `write` propagates unchanged.
    """
    path = Path(path)
    what = what or path.name
    with disk_full_guard(path.parent, needed, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        if needed:
            ensure_free(path.parent, needed, what)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; raises DiskFullError on a full disk."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed=len(data))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def remove_stale_temps(root: str | Path, min_age_s: float = 60.0, pidless_age_s: float = 86400.0) -> list[Path]:
    """Delete temp files under `root` left by writers that died; returns what was removed.

    A temp file is removed only when the process named in it is not running on this machine and the
    file has not been touched for `min_age_s` seconds (temp files without a pid: `pidless_age_s`).
    This process's own temp files are never touched. Symlinked folders are not followed.
    Unreadable folders and files that vanish meanwhile are skipped, never raised.
    """
    root = Path(root)
    now = time.time()
    me = os.getpid()
    removed: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                    continue
                if not e.name.startswith(".") or "tmp" not in e.name or not e.is_file(follow_symlinks=False):
                    continue
                pid = None
                for pat in _TEMP_PATTERNS:
                    m = pat.match(e.name)
                    if m:
                        pid = int(m.group("pid"))
                        break
                age = now - e.stat(follow_symlinks=False).st_mtime
                if pid is not None:
                    stale = pid != me and not _pid_alive(pid) and age >= min_age_s
                else:
                    stale = bool(_PIDLESS.match(e.name)) and age >= pidless_age_s
                if stale:
                    os.unlink(e.path)
                    removed.append(Path(e.path))
            except OSError:
                continue
    return removed


@contextmanager
def writer_marker(folder: str | Path) -> Iterator[Path]:
    """Mark this process as a live writer for the duration of the `with` block: a file
    `<folder>/<pid>.<random>.writer` holding the owner `pid:<host>:<pid>:<start time>`, removed on exit
    (a killed process leaves it; `live_writers` then sees its process is gone). Its mtime is the time
    the work started: a cleanup keeps every file at least that new. Raises OSError when the marker
    cannot be written (then the work must not start: nothing would protect its files)."""
    from engine.reservations import process_owner

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{os.getpid()}.{uuid.uuid4().hex[:12]}.writer"
    marker.write_text(process_owner())
    try:
        yield marker
    finally:
        try:
            marker.unlink()
        except OSError:
            pass


def live_writers(folder: str | Path) -> list[float]:
    """Start times (marker mtimes) of the writers of `folder` (see `writer_marker`) still running.

    A marker whose process has ended on this host (or whose pid now belongs to another process) is
    deleted; one from another host, or unreadable, counts as live (its process cannot be checked).
    Never raises for a missing folder or markers that vanish meanwhile."""
    from engine.reservations import owner_active

    folder = Path(folder)
    out: list[float] = []
    try:
        markers = [e for e in os.scandir(folder) if e.name.endswith(".writer") and e.is_file(follow_symlinks=False)]
    except OSError:
        return out
    for e in markers:
        try:
            mtime = e.stat(follow_symlinks=False).st_mtime
            owner = Path(e.path).read_text().strip()
        except OSError:
            continue  # removed by its writer meanwhile
        if owner.startswith("pid:"):
            dead = owner_active(owner) is False
        else:  # killed before its owner was written: the pid in the name decides
            pid = e.name.split(".", 1)[0]
            dead = pid.isdigit() and not _pid_alive(int(pid))
        if dead:
            try:
                os.unlink(e.path)
            except OSError:
                pass
            continue
        out.append(mtime)
    return out
