"""Importing files, folders and ZIP archives, image by image (each image is its own transaction).

Errors are reported per file (an ImportResult with `error`), never raised; only a full disk raises
(`DiskFullError`, whose `committed` lists what was imported and kept before it). ZIP archives are
expanded in memory under the limits `Store.max_zip_members` / `max_zip_bytes` / `max_member_bytes`
and the upload budget `max_upload_pixels` (engine.store.uploads.check_upload).
"""
from __future__ import annotations

import io
import threading
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from engine.events import OnEvent, check_stop, emit
from engine.store.errors import DiskFullError, ImportResult, UploadTooLargeError
from engine.store.files import writes
from engine.store.labels import check_finding_name
from engine.store.pixels import is_zip_bytes, is_zip_file

__all__ = ["ImportMixin", "is_ignored_member"]


def is_ignored_member(name: str) -> bool:
    """ZIP/folder entries that are never images: dot-files, __MACOSX resource forks, OS litter."""
    from engine.data.listing import is_ignored

    return is_ignored(name)


def _check_label(label: tuple[str, int] | None) -> tuple[str, int] | None:
    """An upload's (finding, 1 | 0) with the finding name checked; raises ValueError otherwise."""
    if label is None:
        return None
    name = check_finding_name(label[0])
    if label[1] not in (0, 1) or isinstance(label[1], float):
        raise ValueError(f"label {label[1]!r} is not 1 (present) or 0 (absent)")
    return name, int(label[1])


def _zip_infos(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's file members, without folders and OS litter."""
    return [i for i in zf.infolist() if not i.is_dir() and not is_ignored_member(i.filename)]


def _list_paths(paths_: Iterable[Path | str], on_event: OnEvent | None
                ) -> tuple[list[tuple[str, Path]], list[ImportResult]]:
    """(files to import as (result name, path), results of what is skipped or missing) of files and
    folders; a folder is listed by content (engine.data.listing.list_images)."""
    todo: list[tuple[str, Path]] = []
    results: list[ImportResult] = []
    for p in map(Path, paths_):
        if p.is_dir():
            from engine.data.listing import list_images

            listing = list_images(p, archives=True)
            for f in sorted(listing.files + listing.archives):
                todo.append((f"{p.name}/{Path(f).relative_to(listing.root).as_posix()}", Path(f)))
            for rel, why in listing.skipped:
                results.append(ImportResult(f"{p.name}/{rel}", None, f"{p.name}/{rel}: skipped: {why}", False))
            if listing.skipped:
                emit(on_event, kind="warning", level="warning", message=listing.skipped_summary())
        elif p.is_file():
            todo.append((p.name, p))
        else:
            results.append(ImportResult(str(p), None, f"{p}: no such file or folder; check the path", False))
    return todo, results


class ImportMixin:
    """Store methods importing files, folders and archives (mixed into engine.store.Store)."""

    max_zip_members: int
    max_zip_bytes: int
    max_member_bytes: int

    @writes
    def import_bytes(self, name: str, data: bytes, on_event: OnEvent | None = None,
                     stop: threading.Event | None = None,
                     label: tuple[str, int] | None = None, keep_names: bool = False) -> list[ImportResult]:
        """Import one uploaded file: an image (PNG/JPEG/TIFF/DICOM) or a ZIP archive of them.

        Returns one ImportResult per image (per archive member for a ZIP, dot-files and __MACOSX
        skipped). Errors are reported per file, never raised. `label=(finding, 1 | 0)` labels every
        imported image in the same transaction that stores it (an image and its label commit
        together); a duplicate already labeled the other way keeps its label (`label_kept`).
        `name` is only shown back in the results: the image is stored as `image-<id>` unless
        `keep_names` (see engine.store, PHI). A ZIP whose images declare more than
        `max_upload_pixels` together is refused as a whole before any is decoded.
        Raises ValueError for an invalid finding name or label value (before anything is written) and
        DiskFullError when the disk fills up; its `committed` lists the images imported (and kept,
        with their labels) before that.
        """
        label = _check_label(label)
        if is_zip_bytes(data):
            return self._import_zip(name, data, on_event, stop, label, keep_names)
        try:
            return [self._import_one(name, data, label, keep_names)]
        except DiskFullError as e:
            raise e.with_committed([], 1) from e

    @writes
    def import_paths(self, paths_: Iterable[Path | str], on_event: OnEvent | None = None,
                     stop: threading.Event | None = None, keep_names: bool = False) -> list[ImportResult]:
        """Import files and folders. A folder is listed by content (engine.data.listing.list_images:
        PNG/JPEG/TIFF/DICOM and ZIP archives at any depth, whatever their names, e.g. a patient CD's
        DICOM/.../IM000001); every other file (DICOMDIR, reports, text, BMP, ...) gets an ImportResult
        whose error says "skipped" and why, plus one warning event with the count and first names.
        Result names are paths relative to the folder given, prefixed with its name; images are
        stored as `image-<id>` unless `keep_names`. Each image is its own transaction; on `stop` the
        images already imported stay and Cancelled is raised. Raises DiskFullError (with `committed`)."""
        todo, results = _list_paths(paths_, on_event)
        for i, (name, f) in enumerate(todo):
            check_stop(stop)
            try:
                if is_zip_file(f):  # by content: an archive saved without its .zip suffix too
                    results.extend(self._import_zip(name, f.read_bytes(), None, stop, None, keep_names))
                else:
                    results.append(self._import_one(name, f, None, keep_names))
            except DiskFullError as e:  # what was committed before stays; say exactly what that is
                done = results + list(e.committed)
                raise e.with_committed(done, len(done) + len(todo) - i) from e
            emit(on_event, step=i + 1, total=len(todo), kind="progress")
        return results

    def _zip_refusal(self, name: str, data: bytes, infos: list[zipfile.ZipInfo]) -> str | None:
        """Why a whole archive is refused (too many members, too large, empty, over the upload
        budget), or None."""
        if len(infos) > self.max_zip_members:
            return (f"the archive holds {len(infos):,} files, more than the {self.max_zip_members:,} "
                    "allowed in one archive; split it into smaller archives or import the folder by path")
        total = sum(i.file_size for i in infos)
        if total > self.max_zip_bytes:
            return (f"the archive expands to {total / 2**30:.1f} GiB, more than the "
                    f"{self.max_zip_bytes / 2**30:.1f} GiB allowed; split it or import the folder by path")
        if not infos:
            return "the archive contains no files"
        try:
            self.check_upload([(name, data)])
        except UploadTooLargeError as e:
            return str(e)
        return None

    def _import_zip(self, name: str, data: bytes, on_event: OnEvent | None,
                    stop: threading.Event | None, label: tuple[str, int] | None = None,
                    keep_names: bool = False) -> list[ImportResult]:
        """Import an archive's members, each its own transaction; members that are not images (by
        content) are skipped with one warning event. Raises only DiskFullError (with `committed`)."""
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            why = f"not a readable ZIP archive ({e}); re-create the archive and upload it again"
            return [ImportResult(name, None, f"{name}: {why}", False)]
        infos = _zip_infos(zf)
        refused = self._zip_refusal(name, data, infos)
        if refused:
            return [ImportResult(name, None, f"{name}: {refused}", False)]
        from engine.data.listing import skipped_summary, sniff_bytes

        results: list[ImportResult] = []
        skipped: list[tuple[str, str]] = []
        for k, info in enumerate(infos):
            check_stop(stop)
            member = f"{name}/{info.filename}"
            blob = self._zip_member(zf, info)
            kind, why = (None, "") if isinstance(blob, str) else sniff_bytes(blob, info.filename)
            if isinstance(blob, str):
                results.append(ImportResult(member, None, f"{member}: {blob}", False))
            elif kind is None:  # decided by content, as for folders (DICOMDIR, reports, text, BMP, ...)
                skipped.append((info.filename, why))
                results.append(ImportResult(member, None, f"{member}: skipped: {why}", False))
            else:
                try:
                    results.append(self._import_one(member, blob, label, keep_names))
                except DiskFullError as e:  # members imported before stay (with their labels)
                    raise e.with_committed(results, len(infos)) from e
            emit(on_event, step=k + 1, total=len(infos), kind="progress")
        if skipped:
            emit(on_event, kind="warning", level="warning", message=skipped_summary(skipped, name))
        return results

    def _zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | str:
        """The member's bytes, or what is wrong with it."""
        if info.flag_bits & 0x1:
            return "encrypted archive members are not supported; re-create the archive without a password"
        if info.file_size > self.max_member_bytes:
            return (f"{info.file_size / 2**20:.0f} MiB is larger than the {self.max_member_bytes / 2**20:.0f} MiB "
                    "allowed for one image")
        try:
            with zf.open(info) as f:
                blob = f.read(info.file_size + 1)  # never more than the header promised (+1 to notice lies)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            return f"could not be extracted ({e}); re-create the archive"
        if len(blob) > info.file_size:
            return "larger than its archive header says; the archive is damaged, re-create it"
        if is_zip_bytes(blob):
            return "archives inside archives are not supported; extract it and import its contents"
        return blob
