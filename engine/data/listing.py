"""List image files by their content, never by their name: the one listing every import uses.

    listing = list_images("/media/cdrom")            # walks DICOM/.../IM000001, skips DICOMDIR
    listing.files                                    # absolute paths of PNG/JPEG/TIFF/DICOM images, sorted
    listing.skipped                                  # [(relative path, reason)] of every file left out
    listing.skipped_summary()                        # "skipped 2 files: notes.txt (text, ...); DICOMDIR (...)"

Patient CDs and PACS exports name DICOM files ``IM000001``, ``I0000123`` or ``1.2.840...`` without an
extension, and image folders hold ``.bmp``, ``.txt`` or ``.xml`` files beside the images, so a
listing by extension loses positives without a word and lists files the reader then refuses. Here a
file is an image when its first bytes are those of a format `engine.data.io.read_image` reads
(`engine.data.io.detect_format`): PNG signature, JPEG SOI, TIFF header, DICOM ``DICM`` at byte 128 or a
bare DICOM data set. A DICOM file must also hold pixel data: ``DICOMDIR`` (the disc's index,
PS3.10 section 8 / PS3.3 F.2, SOP Class 1.2.840.10008.1.3.10), structured reports, presentation
states and other objects without Pixel Data (7FE0,0010) are skipped, each with its reason.

Named pipes (FIFOs), sockets and devices are skipped with their reason and never opened (opening a
FIFO with no writer would hang the import). Hidden entries (names starting with ``.``), ``__MACOSX``
resource forks and OS litter (``Thumbs.db``, ``desktop.ini``) are ignored silently: they are never
the user's images. Every other file that is left out is reported: `ImageListing.skipped` names it
with the reason (what its content is and what to do), and `skipped_summary` gives the count plus the
first few names for a warning line.

Used by: folder-per-class manifests (`engine.data.adapters.from_folder_tree`), ``pretrain --data
FOLDER`` (`engine.ssl.pretrain.resolve_image_paths`) and the Data page's folder and ZIP imports
(`engine.store.Store.import_paths` / ``import_bytes``).
"""
from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from engine.data.io import describe_content, detect_format

__all__ = ["HEAD_BYTES", "IGNORED_NAMES", "ImageListing", "is_ignored", "list_images", "not_regular_reason",
           "skipped_summary", "sniff", "sniff_bytes", "sniff_file"]

HEAD_BYTES: Final[int] = 512            # enough for every magic number, DICOM's preamble + "DICM" included
IGNORED_NAMES: Final = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
DICOMDIR_SOP_CLASS: Final = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.4 Annex B)
SHOWN: Final[int] = 5                   # names a summary line shows before "..."


@dataclass(frozen=True)
class ImageListing:
    """What `list_images` found under `root`.

    files: absolute paths (str) of readable-format images, sorted; archives: ZIP archives (only when
    asked for); skipped: (path relative to root, POSIX separators; reason) for every other file,
    sorted by path.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_summary(self, limit: int = SHOWN) -> str:
        """One line: how many files were skipped and the first `limit` names with their reasons
        ("" when nothing was skipped)."""
        return skipped_summary(self.skipped, f"{self.root}", limit)


def skipped_summary(skipped: list[tuple[str, str]], where: str, limit: int = SHOWN) -> str:
    """"skipped N file(s) in WHERE that are not images it can read: a (reason); b (reason); ... (K more)"."""
    if not skipped:
        return ""
    n = len(skipped)
    shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:limit])
    more = f"; ... ({n - limit} more)" if n > limit else ""
    return f"skipped {n} file{'s' * (n != 1)} in {where} that {'are' if n != 1 else 'is'} not a readable image: {shown}{more}"


def is_ignored(rel: str) -> bool:
    """True for hidden entries, __MACOSX resource forks and OS litter anywhere in a relative path."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    return any(p.startswith(".") or p.lower() in IGNORED_NAMES for p in parts)


def sniff(head: bytes, name: str = "", read_all=None) -> tuple[str | None, str]:
    """Decide from content what a file is: ("png" | "jpeg" | "tiff" | "dicom" | "zip", "") for files
    to list, or (None, reason) for files to skip.

    `head`: the file's first bytes (at least `HEAD_BYTES` when the file is that long). `name`: its
    file name (only to recognise ``DICOMDIR``). `read_all`: a callable returning a binary file object
    of the whole file, used for DICOM to check that the object holds pixel data (PS3.5 7FE0,0010);
    without it a DICOM head is listed as is.
    """
    if not head:
        return None, "empty (0 bytes): the copy or download probably failed"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip", ""
    fmt = detect_format(head)
    if fmt is None:
        return None, _not_an_image(head)
    if fmt != "dicom":
        return fmt, ""
    if os.path.basename(name).upper() == "DICOMDIR":
        return None, "DICOMDIR, the disc's index of the other files, not an image"
    if read_all is None:
        return "dicom", ""
    return _sniff_dicom(read_all)


def _not_an_image(head: bytes) -> str:
    """A short reason for content that is no PNG/JPEG/TIFF/DICOM (based on `describe_content`)."""
    what = describe_content(head)
    if "text" in what:
        return "text, not an image"
    if what.startswith("its content is "):
        kind = what.removeprefix("its content is ")
        if kind == "PDF":
            return "a PDF document, not an image"
        return f"a {kind} image, a format scarce-cxr does not read: convert it to PNG"
    return f"not a PNG, JPEG, TIFF or DICOM image ({what})"


def _sniff_dicom(read_all) -> tuple[str | None, str]:
    """Parse a DICOM object's elements (pixel data left on disk) and skip those that are no image."""
    import pydicom

    try:
        with read_all() as fh:
            ds = pydicom.dcmread(fh, force=True, defer_size=1024)
            sop = str(getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID") or "")
            is_dir = sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds
            has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:  # unparsable: list it, so read_image reports exactly what is wrong with it
        return "dicom", ""
    if is_dir:
        return None, "DICOMDIR, the disc's index of the other files, not an image"
    if not has_pixels:
        label = getattr(pydicom.uid.UID(sop), "name", "") if sop else ""
        kind = f"a DICOM {label}" if label and label != sop else "a DICOM object"
        return None, f"{kind} with no pixel data (a report, presentation state or index), not an image"
    return "dicom", ""


def not_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """Why `path` (symbolic links followed) is no regular file, or None for a regular file: a named
    pipe, socket or device is never opened (opening a FIFO waits for a writer, forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be read ({e.strerror}); check that it exists and its permissions"
    if stat.S_ISREG(mode):
        return None
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else
            "a special file")
    return f"{kind}, not a regular file: never opened (reading it could wait forever)"


def sniff_file(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """`sniff` for a file on disk (reads `HEAD_BYTES`, and the DICOM header when it is DICOM); a named
    pipe, socket or device is skipped without being opened (`not_regular_reason`)."""
    p = Path(path)
    odd = not_regular_reason(p)
    if odd:
        return None, odd
    try:
        with open(p, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as e:
        return None, f"cannot be read ({e.strerror}); check its permissions"
    return sniff(head, p.name, read_all=lambda: open(p, "rb"))


def sniff_bytes(data: bytes, name: str = "") -> tuple[str | None, str]:
    """`sniff` for a file held in memory (a ZIP member, an upload)."""
    return sniff(data[:HEAD_BYTES], name, read_all=lambda: io.BytesIO(data))


def list_images(root: str | os.PathLike[str], archives: bool = False) -> ImageListing:
    """Every image file under `root` (recursive, any depth, any name), decided by content.

    `root`: a folder. Returns an `ImageListing`: `files` sorted absolute paths of PNG/JPEG/TIFF/DICOM
    images (DICOM only with pixel data), `archives` ZIP files when `archives` is true (else ZIPs are
    skipped with "a ZIP archive: extract it"), `skipped` (relative path, reason) for every other
    non-hidden file. Symbolic links to files are followed; to folders not (no cycles).
    Raises NotADirectoryError (a ValueError-like OSError) when `root` is not a folder.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; give the folder that holds the images")
    files: list[str] = []
    zips: list[str] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for fname in filenames:
            if is_ignored(fname):
                continue
            full = os.path.join(dirpath, fname)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            kind, reason = sniff_file(full)
            if kind == "zip":
                if archives:
                    zips.append(full)
                else:
                    skipped.append((rel, "a ZIP archive: extract it and point to the extracted folder"))
            elif kind is None:
                skipped.append((rel, reason))
            else:
                files.append(full)
    return ImageListing(root=root, files=sorted(files), archives=sorted(zips), skipped=sorted(skipped))
