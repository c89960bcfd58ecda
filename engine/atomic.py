"""Atomic file writes: the one implementation every writer in the project uses.

One durability rule (`_commit`): the content goes to a temp file in the destination's folder, the
temp file is flushed and fsync'ed, `os.replace`d onto the destination, and the folder is fsync'ed
(POSIX; skipped where a folder cannot be opened, e.g. Windows). On any error the temp file is removed
and the old destination is left untouched. A crash therefore never leaves a half-written checkpoint,
manifest or result behind, and a completed write survives a power loss.

A full disk raises `engine.diskspace.DiskFullError` naming the folder, the space needed and what to
do (`needed`, when given, is checked against the free space first; every flavour of "no space left"
inside the write becomes DiskFullError, see engine.diskspace).

Entry points, by what the caller has:
- bytes or str:                         `atomic_write(path, data)` / `atomic_write_text(path, text)`
- a library that writes to a path:      `atomic_write(path, lambda tmp: torch.save(obj, tmp))`, or
                                        `with atomic_path(path) as tmp: save_file(sd, tmp)`
- a library that writes to a file obj:  `with atomic_open(path, "w") as fh: json.dump(obj, fh)`
- a whole folder built beside its place: `replace_dir(tmp_dir, dest)`

Temp files are named `.<name>.<pid>.<random>.tmp` beside their destination. A process killed mid-write
leaves one behind; `remove_stale_temps(root)` (run when a JobRunner starts) deletes those whose
writer is no longer alive, never a live writer's.

Files that are complete but belong to an unfinished operation (the store's pixel files, written
before the row that references them commits) cannot carry a pid in their name. Such a writer holds a
marker instead: `writer_marker(folder)` creates `<folder>/<pid>.<random>.writer` (content: the owner
`pid:<host>:<pid>:<start time>`, engine.process.process_owner) for the duration of the work, and
`live_writers(folder)` returns the start times of the markers whose process still runs (removing the
others), so a cleanup can keep everything a live writer may still commit.

Whether a writer still runs is engine.process's answer (pid and process start time, so a reused pid
never keeps a dead writer's files).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Union

from engine.diskspace import disk_full_guard, ensure_free
from engine.process import pid_alive, process_active, process_owner

__all__ = ["atomic_open", "atomic_path", "atomic_write", "atomic_write_text", "fsync_dir", "live_writers",
           "remove_stale_temps", "replace_dir", "writer_marker"]

Content = Union[bytes, bytearray, memoryview, str, Callable[[str], None]]

# Temp-file names of every writer in the engine, with the writer's pid:
#   .<name>.<pid>.<random>.tmp  (atomic_write)   .<name>.<pid>.<tid>.tmp (store)   .<name>.<pid>.tmp (torch state)
#   .<name>.tmp-<pid>-<hex>     (temp folders: replace_dir callers; older resolution caches)
_TEMP_PATTERNS = (re.compile(r"^\..+?\.(?P<pid>\d+)\.(?:[A-Za-z0-9_]+\.)?tmp$"),
                  re.compile(r"^\..+?\.tmp-(?P<pid>\d+)-[0-9a-f]+$"))
_PIDLESS = re.compile(r"^\..+\.tmp$")  # older writers' names without a pid: removed only when a day old


def _fsync_file(path: str | Path) -> None:
    """fsync a file that was written (and closed) by someone else, e.g. torch.save or safetensors."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so a rename into it survives a power loss. Does nothing where folders cannot be
    opened or fsync'ed (Windows, some network filesystems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: str | Path, path: Path) -> None:
    """The durability rule: fsync the finished temp file, rename it onto `path`, fsync the folder."""
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | Path, needed: int | None = None, what: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends without error the file written there is
    made durable and moved onto `path` (see the module docstring); on any error it is removed.

    `needed` (bytes, optional) is checked against the free space first. Raises
    `engine.diskspace.DiskFullError` when the disk is (or fills up) full, naming the folder, the
    space needed and what to do; any other error of the block propagates unchanged.
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
            yield Path(tmp)
            _commit(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write(path: str | Path, data: Content, needed: int | None = None, what: str | None = None) -> Path:
    """Write `data` to `path` atomically and durably; returns `path`.

    `data` is bytes, a str (written as UTF-8, newlines untranslated) or a callable `write(tmp_path)`
    that writes the content to the temp path it is given (torch.save, safetensors, DataFrame.to_csv).
    `needed` (bytes) defaults to the length of bytes/str data and is checked against the free space
    first. Raises DiskFullError on a full disk; any other error of `write` propagates unchanged.
    """
    if callable(data):
        write = data
    else:
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        needed = len(payload) if needed is None else needed

        def write(tmp: str) -> None:
            Path(tmp).write_bytes(payload)
    with atomic_path(path, needed, what) as tmp:
        write(str(tmp))
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; raises DiskFullError on a full disk."""
    return atomic_write(path, text)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", needed: int | None = None, what: str | None = None,
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO]:
    """`open` for writing, atomically: yields a file object on a temp file that replaces `path` when
    the block ends without error (see `atomic_path`). `mode` is "w" (text; UTF-8 unless `encoding`)
    or "wb". Raises DiskFullError on a full disk."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, needed, what) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as fh:
            yield fh


def replace_dir(tmp_dir: str | Path, dest: str | Path) -> Path:
    """Put a folder built at `tmp_dir` (beside `dest`, same filesystem) in the place of `dest`.

    Every file in `tmp_dir` is fsync'ed, then an existing `dest` is moved aside, `tmp_dir` renamed
    onto `dest`, the parent folder fsync'ed and the old folder deleted. Readers see the old folder or
    the new one, never a mix. On an error before the swap `dest` is untouched (the caller removes
    `tmp_dir`)."""
    tmp_dir, dest = Path(tmp_dir), Path(dest)
    for folder, _, files in os.walk(tmp_dir):
        for f in files:
            _fsync_file(os.path.join(folder, f))
        fsync_dir(folder)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(tmp_dir, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def remove_stale_temps(root: str | Path, min_age_s: float = 60.0, pidless_age_s: float = 86400.0) -> list[Path]:
    """Delete temp files under `root` left by writers that died; returns what was removed.

    A temp file is removed only when the process named in it is not running on this machine (or that pid
    now belongs to a process started after the file was written: engine.process.pid_alive) and the
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
                mtime = e.stat(follow_symlinks=False).st_mtime
                age = now - mtime
                if pid is not None:
                    stale = pid != me and age >= min_age_s and not pid_alive(pid, not_after=mtime)
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
            dead = process_active(owner) is False
        else:  # killed before its owner was written: the pid in the name (and the marker's age) decides
            pid = e.name.split(".", 1)[0]
            dead = pid.isdigit() and not pid_alive(int(pid), not_after=mtime)
        if dead:
            try:
                os.unlink(e.path)
            except OSError:
                pass
            continue
        out.append(mtime)
    return out
