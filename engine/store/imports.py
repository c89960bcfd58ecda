"""Importing files, folders and ZIP archives, image by image (each image is its own transaction).

Errors are reported per file (an ImportResult with `error`), never raised; only a full disk raises
(`DiskFullError`, whose `committed` lists what was imported and kept before it). ZIP archives are
expanded in memory, member by member, under the limits `Store.max_zip_members` / `max_zip_bytes` /
`max_member_bytes` / `max_member_ratio` (checked from the archive's directory, before inflating) and
the upload budget `max_upload_pixels` (engine.store.uploads.check_upload). A member is sniffed from
its first bytes through a stream; one that is no image is skipped without inflating the rest.
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

__all__ = ["MEMBER_RATIO_MIN_BYTES", "ImportMixin", "is_ignored_member", "member_refusal"]

# Members declaring more than this are checked for their expansion ratio (smaller ones cost little
# memory whatever their ratio): 16 MiB, an 8-megapixel 16-bit radiograph.
MEMBER_RATIO_MIN_BYTES = 16 * 2**20
_SKIP = "skip: "  # _zip_member's prefix for members that are no image (skipped, not an error)


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


def member_refusal(info: zipfile.ZipInfo, max_bytes: int, max_ratio: float) -> str | None:
    """Why an archive member is refused from its directory entry alone (before inflating), or None:
    a declared size above `max_bytes`, or more than `MEMBER_RATIO_MIN_BYTES` declared at more than
    `max_ratio` times its compressed size (a ZIP bomb: radiographs compress at most ~30:1, so 200:1
    is no image; engine.data.io.MAX_EXPANSION uses the same bound for an image's own data)."""
    size, packed = int(info.file_size), int(info.compress_size)
    if size > max_bytes:
        return (f"declares {size / 2**20:,.0f} MiB, more than the {max_bytes / 2**20:,.0f} MiB allowed for one "
                "image (refused before inflating); import it on its own or downsample it")
    if size > MEMBER_RATIO_MIN_BYTES and size > max_ratio * max(packed, 1):
        return (f"declares {size / 2**20:,.0f} MiB packed into {packed / 2**10:,.0f} KiB, a "
                f"{size / max(packed, 1):,.0f}:1 expansion (at most {max_ratio:,.0f}:1 allowed; radiographs "
                "compress at most about 30:1): the archive is damaged or built to exhaust memory (a ZIP bomb), "
                "so it was refused before inflating. Re-create the archive from the original images")
    return None


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
        elif p.exists():  # a named pipe, socket or device: never opened (a FIFO would block)
            from engine.data.listing import not_regular_reason

            results.append(ImportResult(str(p), None, f"{p}: skipped: {not_regular_reason(p)}", False))
        else:
            results.append(ImportResult(str(p), None, f"{p}: no such file or folder; check the path", False))
    return todo, results


class ImportMixin:
    """Store methods importing files, folders and archives (mixed into engine.store.Store)."""

    max_zip_members: int
    max_zip_bytes: int
    max_member_bytes: int
    max_member_ratio: float

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
        from engine.data.listing import skipped_summary

        results: list[ImportResult] = []
        skipped: list[tuple[str, str]] = []
        for k, info in enumerate(infos):
            check_stop(stop)
            member = f"{name}/{info.filename}"
            blob, why = self._zip_member(zf, info)
            if blob is None and why.startswith(_SKIP):  # decided by content, as for folders (DICOMDIR, text, BMP, ...)
                skipped.append((info.filename, why[len(_SKIP):]))
                results.append(ImportResult(member, None, f"{member}: skipped: {why[len(_SKIP):]}", False))
            elif blob is None:
                results.append(ImportResult(member, None, f"{member}: {why}", False))
            else:
                try:
                    results.append(self._import_one(member, blob, label, keep_names))
                except DiskFullError as e:  # members imported before stay (with their labels)
                    raise e.with_committed(results, len(infos)) from e
            emit(on_event, step=k + 1, total=len(infos), kind="progress")
        if skipped:
            emit(on_event, kind="warning", level="warning", message=skipped_summary(skipped, name))
        return results

    def _zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes | None, str]:
        """(the member's bytes, "") for an image, else (None, why): "skip: <reason>" for a member that
        is no image (decided from its first bytes, read through a stream: the rest is never inflated),
        otherwise what is wrong with it. Members whose declared size or expansion is absurd are refused
        from the archive's directory, before anything is inflated."""
        if info.flag_bits & 0x1:
            return None, "encrypted archive members are not supported; re-create the archive without a password"
        refused = member_refusal(info, self.max_member_bytes, self.max_member_ratio)
        if refused:
            return None, refused
        from engine.data.listing import HEAD_BYTES, sniff, sniff_bytes

        try:
            with zf.open(info) as f:
                head = f.read(HEAD_BYTES)
                kind, why = sniff(head, info.filename)  # DICOM: its pixel data is checked once read
                if kind is None:
                    return None, _SKIP + why
                if kind == "zip":
                    return None, "archives inside archives are not supported; extract it and import its contents"
                # never more than the header promised (+1 to notice lies)
                blob = head + f.read(max(0, info.file_size + 1 - len(head)))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            return None, f"could not be extracted ({e}); re-create the archive"
        if len(blob) > info.file_size:
            return None, "larger than its archive header says; the archive is damaged, re-create it"
        if kind == "dicom":
            kind, why = sniff_bytes(blob, info.filename)  # DICOMDIR, reports: no pixel data
            if kind is None:
                return None, _SKIP + why
        return blob, ""
