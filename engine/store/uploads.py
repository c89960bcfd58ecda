"""Uploads from the Data page: budgeted by declared pixels before any decoding, imported in the page
request when small, else staged to `<workspace>/uploads/<random>/` and imported by a background job.

    store.check_upload(files) -> declared pixels    # UploadTooLargeError over max_upload_pixels
    store.upload_in_background(n_files, pixels)     # more than background_upload_files / _pixels
    store.stage_upload(files) -> folder; store.import_staged(folder, label)
"""
from __future__ import annotations

import io
import json
import shutil
import threading
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

from engine.events import Event, OnEvent, check_stop, emit
from engine.store.errors import DiskFullError, ImportResult, UploadTooLargeError
from engine.store.files import write_atomic, writes
from engine.store.imports import is_ignored_member, member_refusal
from engine.store.pixels import is_zip_bytes, is_zip_file

__all__ = ["UploadBudget", "UploadsMixin", "upload_label_report"]


def upload_label_report(new: int, duplicates: int, labeled: int, kept: int, finding: str | None,
                        present: bool | None) -> tuple[str, str | None]:
    """What an upload did, in words: (success line, warning line or None).

    `labeled` counts the images that now carry the chosen label; `kept` the duplicates that were
    already labeled the other way and kept that label (an upload never flips a label). The success
    line claims the label only for the images that got it, so re-uploading images labeled absent as
    present never reads "labeled pneumonia: present" while the workspace still says absent. Both lines
    are Markdown (the finding in italics, its name escaped: engine.escaping.escape_markdown).
    """
    from engine.escaping import escape_markdown

    finding = escape_markdown(finding) if finding else finding
    text = f"Imported {new} new image{'s' * (new != 1)}" + (f" ({duplicates} already in the workspace)"
                                                            if duplicates else "")
    warn = None
    if finding and present is not None:
        chosen, other = ("present", "absent") if present else ("absent", "present")
        if labeled and not kept:
            text += f" and labeled {'it' if labeled == 1 else 'them'} *{finding}: {chosen}*"
        elif labeled:
            text += f"; labeled {labeled} of them *{finding}: {chosen}*"
        elif kept:
            text += f"; none was labeled *{finding}: {chosen}*"
        if kept:
            warn = (f"{kept} of these images {'were' if kept != 1 else 'was'} already in the workspace labeled "
                    f"*{finding}: {other}*; {'they keep' if kept != 1 else 'it keeps'} that label (an upload never "
                    f"changes an existing label; change it on the Label tab)")
    return text + ".", warn


class UploadBudget(NamedTuple):
    """What an upload declares before any decoding: `pixels` (summed from headers) and `images` (files
    that look like images from their first bytes, a ZIP's image members each)."""

    pixels: int
    images: int


def _zip_declared_pixels(data: bytes, max_members: int, max_member_bytes: int = 2**63,
                         max_member_ratio: float = float("inf")) -> tuple[int, int]:
    """(declared pixels, images) of a ZIP's first `max_members` members, from headers only: at most
    64 KiB inflated per image member, through a stream (512 bytes of any other). Members that are no
    image by their first bytes, encrypted ones and those the import refuses from the directory
    (imports.member_refusal) count 0."""
    from engine.data.io import declared_size
    from engine.data.listing import HEAD_BYTES, sniff

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in zf.infolist() if not i.is_dir() and not is_ignored_member(i.filename)]
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0, 0  # the import reports what is wrong with it
    total, count = 0, 0
    for info in infos[:max_members]:
        if info.flag_bits & 0x1 or member_refusal(info, max_member_bytes, max_member_ratio):
            continue
        try:
            with zf.open(info) as f:
                head = f.read(HEAD_BYTES)
                if sniff(head, info.filename)[0] in (None, "zip"):
                    continue  # no image: the rest is never inflated
                head += f.read((1 << 16) - len(head))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError):
            continue
        count += 1
        size = declared_size(head)
        if size:
            total += size[1] * size[2]
    return total, count


def _staged_names(folder: Path) -> list[str]:
    """The original names of a staged upload's files; FileNotFoundError when it is not one."""
    try:
        names = json.loads((folder / "names.json").read_text())
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{folder} is not a staged upload (names.json unreadable: {e}); "
                                "upload the files again") from e
    return [str(n) for n in names]


def _images_in(f: Path) -> int:
    """Progress units of a staged file: a ZIP's image members (at least 1), else 1."""
    if not is_zip_file(f):
        return 1
    try:
        with zipfile.ZipFile(f) as zf:
            return max(1, sum(not x.is_dir() and not is_ignored_member(x.filename) for x in zf.infolist()))
    except (zipfile.BadZipFile, OSError, ValueError):
        return 1


def _neutral(text: str, orig: str, token: str) -> str:
    """`text` with `orig` replaced by `token` where results and warnings name the file (their start;
    "in <name> that")."""
    if orig and text.startswith(orig) and text[len(orig):len(orig) + 1] in ("", ":", "/"):
        text = token + text[len(orig):]
    return text.replace(f" in {orig} that ", f" in {token} that ") if orig else text


def _neutral_result(r: ImportResult, neutral: Callable[[str], str]) -> ImportResult:
    return replace(r, name=neutral(r.name), error=r.error and neutral(r.error))


def _relay(on_event: OnEvent | None, neutral: Callable[[str], str], base: int, total: int) -> OnEvent:
    """Forward one file's events: progress offset by `base` images of `total`, messages neutralized."""

    def relay(ev: Event) -> None:
        if ev.kind == "progress" and ev.step is not None:
            emit(on_event, step=base + int(ev.step), total=total, kind="progress")
        elif on_event is not None:
            on_event(Event(step=ev.step, total=ev.total, message=neutral(ev.message), level=ev.level,
                           kind=ev.kind))

    return relay


class UploadsMixin:
    """Store methods for Data-page uploads (mixed into engine.store.Store)."""

    workspace: Path
    max_zip_members: int
    max_member_bytes: int
    max_member_ratio: float
    max_upload_pixels: int
    background_upload_files: int
    background_upload_pixels: int

    def check_upload(self, files: Sequence[tuple[str, bytes]]) -> int:
        """Budget an upload before decoding any of it: the pixels its images declare in their headers
        (ZIP members included; engine.data.io.declared_size), summed. Returns that sum. Raises
        UploadTooLargeError (a StoreError saying what to do) when it exceeds `max_upload_pixels`;
        files whose size cannot be read from a header count 0 here (each is still refused on its own
        when too large to decode). `budget_upload` also counts the images."""
        return self.budget_upload(files).pixels

    def budget_upload(self, files: Sequence[tuple[str, bytes]]) -> UploadBudget:
        """`check_upload`, returning UploadBudget(pixels, images): `images` counts the files that
        look like images by their first bytes, a ZIP's image members each (for `upload_in_background`:
        a small ZIP of 10,000 images is decoded in the background like 10,000 files). Raises
        UploadTooLargeError as `check_upload` does."""
        total, count = 0, 0
        for name, data in files:
            px, n = self._declared_pixels(data)
            total += px
            count += n
        if total > self.max_upload_pixels:
            raise UploadTooLargeError(
                f"these files hold {count:,} images of {total / 1e9:.2f} gigapixels together, more than the "
                f"{self.max_upload_pixels / 1e9:.2f} gigapixels one upload may decode (that would keep the page "
                "busy for minutes); nothing was imported. Upload fewer files at a time, or put them in a folder "
                "and use 'Import from a folder' (it runs in the background with progress)")
        return UploadBudget(total, count)

    def _declared_pixels(self, data: bytes) -> tuple[int, int]:
        """(declared pixels, images) of one file or of a ZIP's members (headers only, 64 KiB each).
        A single file counts as one image whatever its content (its import says what is wrong)."""
        from engine.data.io import declared_size

        if not is_zip_bytes(data):
            size = declared_size(data[:1 << 16]) or declared_size(data)  # a TIFF's IFD may sit at the end
            return (size[1] * size[2], 1) if size else (0, 1)
        return _zip_declared_pixels(data, self.max_zip_members, self.max_member_bytes, self.max_member_ratio)

    def upload_in_background(self, n_files: int, pixels: int) -> bool:
        """Whether an upload of `n_files` images declaring `pixels` pixels (budget_upload: a ZIP's
        image members count one each) is decoded by a background job rather than in the page request:
        more than `background_upload_files` images or more than `background_upload_pixels` pixels."""
        return n_files > self.background_upload_files or pixels > self.background_upload_pixels

    def stage_upload(self, files: Sequence[tuple[str, bytes]]) -> Path:
        """Write an upload's files to a new folder `<workspace>/uploads/<random>/` for `import_staged`
        (run by a background job): `00000.bin`, `00001.bin`, ... in upload order, plus `names.json`
        with the original names (needed for `name_key`; the folder is deleted once imported).
        Returns the folder. Raises DiskFullError (nothing is left behind) when the files do not fit."""
        folder = self.workspace / "uploads" / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        try:
            for i, (_, data) in enumerate(files):
                write_atomic(folder / f"{i:05d}.bin", bytes(data))
            write_atomic(folder / "names.json", json.dumps([str(n) for n, _ in files]).encode())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    @writes
    def import_staged(self, folder: Path | str, label: tuple[str, int] | None = None,
                      on_event: OnEvent | None = None, stop: threading.Event | None = None,
                      keep_names: bool = False) -> list[ImportResult]:
        """Import an upload staged by `stage_upload`, file by file through `import_bytes` (each image
        and its `label` commit together; ZIPs are expanded). Progress events count images (a ZIP's
        members each). Results and warnings name the files `file <k>` (k = position in the upload, from
        1; `file <k>/<member>` for a ZIP's members), never their original names, so a job may store
        them; the caller maps `file <k>` back to the name it showed. The folder is deleted once every
        file was processed. Raises FileNotFoundError when the folder is not a staged upload, ValueError
        for an invalid label, Cancelled on `stop` (the folder is kept for a retry; files already
        imported are duplicates then) and DiskFullError (with `committed`) on a full disk."""
        folder = Path(folder)
        names = _staged_names(folder)
        units = [_images_in(folder / f"{i:05d}.bin") for i in range(len(names))]
        total, done = sum(units), 0
        results: list[ImportResult] = []
        emit(on_event, step=0, total=total, kind="log", message=f"importing {len(names)} uploaded files")
        for i, orig in enumerate(names):
            check_stop(stop)
            neutral = partial(_neutral, orig=orig, token=f"file {i + 1}")
            try:
                got = self.import_bytes(orig, (folder / f"{i:05d}.bin").read_bytes(),
                                        on_event=_relay(on_event, neutral, done, total), stop=stop,
                                        label=label, keep_names=keep_names)
            except DiskFullError as e:
                kept = results + [_neutral_result(r, neutral) for r in e.committed]
                raise e.with_committed(kept, len(kept) + len(names) - i) from e
            results.extend(_neutral_result(r, neutral) for r in got)
            done += units[i]
            emit(on_event, step=done, total=total, kind="progress")
        shutil.rmtree(folder, ignore_errors=True)
        return results
