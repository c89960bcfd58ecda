"""Free-space checks and one disk-full error for every writer.

A full disk must never crash the process (a memory-mapped write to a full disk kills it with
SIGBUS) and never surface as a raw library error. Writers therefore

1. call `ensure_free(folder, needed, what)` before writing something big, and
2. wrap the write in `disk_full_guard(folder, needed, what)`, which turns every flavour of
   "no space left" (OSError ENOSPC/EDQUOT, SQLite's "database or disk is full", safetensors'
   `IoError(... StorageFull ...)`, torch's `PytorchStreamWriter failed writing file`) into
   `DiskFullError`.

`DiskFullError` names the folder, the space needed and free, and what to do. It subclasses OSError
(errno ENOSPC), so code that already handles OSError keeps working.
"""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DiskFullError", "MARGIN_BYTES", "disk_full_guard", "ensure_free", "free_bytes", "human",
           "is_disk_full"]

MARGIN_BYTES = 16 * 2**20  # kept free beyond what a write needs (SQLite journals, logs, other writers)
_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TEXT_MARKERS = ("no space left", "disk is full", "storagefull", "disk quota exceeded", "code: 28,")


def human(n: float | None) -> str:
    """Bytes as '1.5 GiB' / '340 MiB' / '12 KiB'."""
    if n is None:
        return "an unknown amount"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class DiskFullError(OSError):
    """Not enough free space in `folder` to write `what` (about `needed` bytes; `free` were free)."""

    def __init__(self, folder: str | Path, needed: int | None = None, free: int | None = None,
                 what: str = "the file", detail: str = ""):
        self.folder = Path(folder)
        self.needed = needed
        self.free = free
        self.what = what
        self.detail = detail
        need = f"about {human(needed)}" if needed else "more space than is free"
        have = f", {human(free)} free there" if free is not None else ""
        msg = (f"disk full: free space in {self.folder} and retry ({what} needs {need}{have}; delete old runs, "
               f"results or caches on that disk, or move the workspace to a bigger disk)"
               + (f". {detail}" if detail else ""))
        super().__init__(msg)
        self.errno, self.strerror = errno.ENOSPC, msg
        self.message = msg

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable across processes (OSError's default would lose the fields)
        return (type(self), (self.folder, self.needed, self.free, self.what, self.detail))


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free for this user on the filesystem holding `folder` (its nearest existing parent);
    None when it cannot be told."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def ensure_free(folder: str | Path, needed: int, what: str = "the file", margin: int = MARGIN_BYTES) -> None:
    """Raise `DiskFullError` when `folder`'s disk has less than `needed` + `margin` bytes free.

    Does nothing when free space cannot be determined (the write itself is still guarded).
    """
    free = free_bytes(folder)
    if free is not None and free < int(needed) + int(margin):
        raise DiskFullError(folder, int(needed) + int(margin), free, what)


def is_disk_full(e: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means the disk or quota is full."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            return True
        if isinstance(e, sqlite3.Error) and (getattr(e, "sqlite_errorcode", None) == 13 or "disk is full" in str(e)):
            return True
        if not isinstance(e, (OSError, sqlite3.Error)):
            text = str(e).lower()
            if any(m in text for m in _TEXT_MARKERS):
                return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def disk_full_guard(folder: str | Path, needed: int | None = None, what: str = "the file",
                    detail: str = "") -> Iterator[None]:
    """Re-raise any disk-full error inside the block as `DiskFullError(folder, needed, free, what)`.

    Torch reports a failed write only as "file write failed": when free space in `folder` is then
    below `needed` (or below MARGIN_BYTES when `needed` is unknown) that also counts as a full disk.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        free = free_bytes(folder)
        full = is_disk_full(e)
        if not full and isinstance(e, RuntimeError) and "write" in str(e).lower() and free is not None:
            full = free < (needed or 0) + MARGIN_BYTES
        if full:
            raise DiskFullError(folder, needed, free, what, detail) from e
        raise


def file_size(path: str | Path) -> int:
    """Size of a file in bytes, 0 when it does not exist."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
