"""The store's errors and the records its imports return (ImportResult, ImportSummary, OrphanReport)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.diskspace import DiskFullError as _DiskFull

__all__ = ["DiskFullError", "ImportResult", "ImportSummary", "LabelConflictError", "OrphanReport", "StoreError",
           "UploadTooLargeError"]


class StoreError(RuntimeError):
    """A store operation the user can fix (the message says how)."""


@dataclass(frozen=True)
class ImportResult:
    """One imported file: `image_id` is set on success and for duplicates, `error` otherwise.

    `name` is the name the caller gave (the upload's file name, a ZIP member, a path relative to
    the folder): it is for showing during the upload only; the store keeps the neutral name."""

    name: str
    image_id: int | None
    error: str | None
    duplicate: bool = False
    label_kept: bool = False  # a duplicate already labeled the other way kept its label (import_bytes label=)


@dataclass(frozen=True)
class ImportSummary:
    """Outcome of Store.import_manifest (all rows imported, or an exception and nothing changed)."""

    images: int                      # new images stored
    duplicates: int                  # rows whose pixels were already stored (their labels were updated)
    labels: int                      # label values written (blank cells are not written)
    regions: int                     # boxes + masks written
    findings: list[str]              # the manifest's finding columns
    image_ids: list[int] = field(default_factory=list)  # store id of each manifest row, in order


@dataclass(frozen=True)
class OrphanReport:
    """What `Store.remove_orphan_files` removed: workspace-relative paths and their total size."""

    files: tuple[str, ...] = ()
    bytes: int = 0

    def __str__(self) -> str:
        return (f"removed {len(self.files)} orphan image/mask file{'s' * (len(self.files) != 1)} "
                f"({self.bytes / 2**20:.1f} MiB) left by killed imports")


class DiskFullError(StoreError, _DiskFull):
    """The disk filled up while writing. `committed` lists what was imported (and kept) before it
    did: empty for a single transaction, which changes nothing. Also an `engine.diskspace.DiskFullError`
    (an OSError with errno ENOSPC) naming the folder, the space needed and what to do."""

    def __init__(self, directory: Path, needed: int | None = None, free: int | None = None,
                 what: str = "the workspace store", detail: str = "nothing was imported or changed",
                 committed: Sequence[ImportResult] = ()):
        _DiskFull.__init__(self, directory, needed, free, what, detail)
        self.directory = Path(directory)
        self.committed = list(committed)

    def __reduce__(self):
        return (type(self), (self.directory, self.needed, self.free, self.what, self.detail, self.committed))

    def with_committed(self, committed: Sequence[ImportResult], total: int) -> DiskFullError:
        """The same error, saying how many of `total` files were imported before the disk filled up."""
        done = [r for r in committed if r.image_id is not None]
        new = sum(not r.duplicate for r in done)
        if not done:
            detail = f"nothing was imported (0 of {total} files)"
        else:
            detail = (f"{len(done)} of {total} files were imported before the disk filled up and are kept "
                      f"({new} new, {len(done) - new} already stored); the rest were not imported, so import them "
                      "again once there is space (the imported ones will be recognized as duplicates)")
        return DiskFullError(self.directory, self.needed, self.free, self.what, detail, committed)


class UploadTooLargeError(StoreError):
    """An upload whose images declare more pixels together than one upload may decode; nothing was
    imported. The message says to upload fewer files or import the folder by path (a background job)."""


class LabelConflictError(StoreError):
    """Labels changed by someone else since the caller read them; nothing was saved.
    `conflicts` maps image id -> (name, label the caller saw, label now) with None = unlabeled."""

    def __init__(self, finding: str, conflicts: Mapping[int, tuple[str, int | None, int | None]]):
        self.finding = finding
        self.conflicts = dict(conflicts)
        word = {1: "present", 0: "absent", None: "unlabeled"}
        shown = "; ".join(f"{name}: {word[old]} -> {word[new]}" for name, old, new in list(self.conflicts.values())[:10])
        more = f" and {len(self.conflicts) - 10} more" if len(self.conflicts) > 10 else ""
        super().__init__(f"{len(self.conflicts)} label(s) of {finding!r} were changed by someone else since you "
                         f"opened them ({shown}{more}); nothing was saved. Reload to see the current labels, then "
                         "make your changes again")


class FileVanished(Exception):
    """A pixel file an import wrote (or adopted) was gone when its row was about to commit."""
