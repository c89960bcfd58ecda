"""The workspace store: one SQLite database plus the imported pixels, beside each other in a workspace.

    store = Store()                                    # <workspace>/store.sqlite, created and migrated
    store.import_bytes("scan.dcm", data)               # -> [ImportResult]; ZIP archives are expanded
    store.import_manifest("manifest.csv")              # pixels + labels + boxes + masks, all or nothing
    store.set_labels("nodule", {3: 1, 4: 0, 5: None})
    store.export_manifest(ws / "results" / "x.csv")     # what every engine function consumes

Layout inside the workspace (see engine.paths):

    store.sqlite (+ -wal, -shm)     SQLite in WAL mode: readers never block the one writer, a second
                                    process may read while this one writes
    images/<sha256>.png             imported pixels: 16-bit PNG when the source had more than 8 bits,
                                    else 8-bit; <sha256> hashes the stored pixels (dtype, shape, bytes),
                                    so the same picture imported twice is detected as a duplicate
    masks/<sha256>.png              region masks copied from manifests (8-bit, 0/255)
    cache/thumbs/                   thumbnails (derived, safe to delete)

PHI: only the fields of engine.data.io.ImageMeta (format, size, bits, photometric, modality, view)
are recorded. DICOM patient tags never reach the store. File names (which hospitals often build from
a patient's name and record number, e.g. SURNAME_GIVEN_MRN12345.dcm) are not stored either: an
image gets the neutral display name `image-<id>` (`keep_names=True` keeps the original, for files
known to be free of identifiers), and its original base name only as a keyed hash (`name_key`), so a
label CSV naming the files still finds them. The original name lives on only in the ImportResult the
caller shows during the upload. A manifest's `patient_id` is likewise kept only as a keyed hash
(HMAC-SHA256 with a random per-workspace salt), so patient-level splits survive an export without
the identifier itself being stored.

Decompression cost: a file's bytes are hashed before decoding (`sources`: sha256 of the reader
version + the bytes -> image), so a file imported before, or a copy inside the same archive, is a
duplicate without being decoded again. An upload's images are budgeted by their declared pixels
(`max_upload_pixels`, from headers alone) before any is decoded; single images above the reader's
limits (engine.data.io: MAX_PIXELS, decompression bombs) are refused per file.

Consistency: every mutation is one SQLite transaction (BEGIN IMMEDIATE ... COMMIT). Pixel files are
written first (temp file + os.replace) and removed again when the transaction fails, so a failed
import leaves neither a row nor a file. A full disk raises DiskFullError and leaves the store as it
was. Schema changes are an ordered list of migrations tracked by `PRAGMA user_version`.

Threads: each thread gets its own connection (threading.local); all methods are thread-safe.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import sqlite3
import threading
import time
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from engine import paths
from engine.atomic import live_writers, writer_marker
from engine.diskspace import DiskFullError as _DiskFull
from engine.diskspace import free_bytes, is_disk_full
from engine.events import Event, OnEvent, check_stop, emit
from engine.names import RESERVED_FINDINGS, check_name
from engine.sqlite_wal import enable_wal

if TYPE_CHECKING:
    from engine.data.io import ImageMeta

__all__ = [
    "DiskFullError", "ImportResult", "ImportSummary", "LabelConflictError", "SCHEMA_VERSION", "Store", "StoreError",
    "UploadTooLargeError", "neutral_name",
]

# ------------------------------------------------------------------------------------------ schema

# Each entry upgrades the schema by one version: MIGRATIONS[i] takes user_version i to i + 1.
# Never edit a released entry; append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: images, findings, labels, regions
    (
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sha256 TEXT NOT NULL UNIQUE,          -- hash of the stored pixels (dtype, shape, bytes)
            name TEXT NOT NULL,                   -- display name (the file name it came from)
            file TEXT NOT NULL,                   -- relative to the workspace: images/<sha256>.png
            width INTEGER NOT NULL, height INTEGER NOT NULL, bits INTEGER NOT NULL,
            source_format TEXT NOT NULL, photometric TEXT NOT NULL DEFAULT '',
            modality TEXT NOT NULL DEFAULT '', view TEXT NOT NULL DEFAULT '',
            patient_key TEXT,                     -- keyed hash of a manifest patient_id, or NULL
            split TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        "CREATE TABLE findings (name TEXT PRIMARY KEY, created REAL NOT NULL)",
        """CREATE TABLE labels (
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            finding TEXT NOT NULL REFERENCES findings(name) ON DELETE CASCADE ON UPDATE CASCADE,
            value INTEGER NOT NULL CHECK (value IN (0, 1)),
            PRIMARY KEY (image_id, finding)) WITHOUT ROWID""",
        "CREATE INDEX labels_finding ON labels(finding)",
        """CREATE TABLE regions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            finding TEXT NOT NULL REFERENCES findings(name) ON DELETE CASCADE ON UPDATE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('box', 'mask')),
            x REAL, y REAL, w REAL, h REAL,       -- pixels of the stored image (a mask's bounding box)
            mask_file TEXT)                       -- relative to the workspace: masks/<sha256>.png""",
        "CREATE INDEX regions_image ON regions(image_id)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta(key, value) VALUES ('salt', lower(hex(randomblob(16))))",
    ),
    # v2: background jobs, their events, and results (sweeps, classifiers, gradcam batches)
    (
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, params_json TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL,                  -- queued|running|done|failed|cancelled|interrupted
            step INTEGER, total INTEGER, error TEXT, result_json TEXT,
            created REAL NOT NULL, updated REAL NOT NULL, device TEXT,
            owner TEXT,                           -- token of the JobRunner that runs it
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            runs INTEGER NOT NULL DEFAULT 0)      -- 1 + number of resumes once started""",
        "CREATE INDEX jobs_state ON jobs(state)",
        """CREATE TABLE job_events (
            job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, time REAL NOT NULL, level TEXT NOT NULL, kind TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '', metrics_json TEXT, step INTEGER, total INTEGER,
            PRIMARY KEY (job_id, seq)) WITHOUT ROWID""",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, summary_json TEXT NOT NULL,
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX results_kind ON results(kind)",
    ),
    # v3: an index of backbone checkpoints produced in this workspace (which job made which file)
    (
        """CREATE TABLE checkpoints (
            name TEXT PRIMARY KEY, path TEXT NOT NULL, meta_json TEXT NOT NULL DEFAULT '{}',
            job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
            created REAL NOT NULL)""",
    ),
    # v4: neutral display names (the original base name only as a keyed hash) and source-file hashes
    # (duplicates found before decoding). Rows imported before keep their names; their name_key is NULL.
    (
        "ALTER TABLE images ADD COLUMN name_key TEXT",   # keyed hash of the original file's base name
        "CREATE INDEX images_name_key ON images(name_key)",
        """CREATE TABLE sources (
            sha256 TEXT PRIMARY KEY,              -- sha256 of (reader version, the file's bytes)
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE) WITHOUT ROWID""",
        "CREATE INDEX sources_image ON sources(image_id)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

RESERVED_COLUMNS = RESERVED_FINDINGS  # column names a finding may not take (engine.names)
_MARGIN = 4 * 2**20  # free bytes kept beyond a pixel file (SQLite's WAL needs room to commit)


class StoreError(RuntimeError):
    """A store operation the user can fix (the message says how)."""


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


class _FileVanished(Exception):
    """A pixel file an import wrote (or adopted) was gone when its row was about to commit."""


@dataclass(frozen=True)
class OrphanReport:
    """What `Store.remove_orphan_files` removed: workspace-relative paths and their total size."""

    files: tuple[str, ...] = ()
    bytes: int = 0

    def __str__(self) -> str:
        return (f"removed {len(self.files)} orphan image/mask file{'s' * (len(self.files) != 1)} "
                f"({self.bytes / 2**20:.1f} MiB) left by killed imports")


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


def upload_label_report(new: int, duplicates: int, labeled: int, kept: int, finding: str | None,
                        present: bool | None) -> tuple[str, str | None]:
    """What an upload did, in words: (success line, warning line or None).

    `labeled` counts the images that now carry the chosen label; `kept` the duplicates that were
    already labeled the other way and kept that label (an upload never flips a label). The success
    line claims the label only for the images that got it, so re-uploading images labeled absent as
    present never reads "labeled pneumonia: present" while the workspace still says absent.
    """
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


@dataclass(frozen=True)
class ImportSummary:
    """Outcome of Store.import_manifest (all rows imported, or an exception and nothing changed)."""

    images: int                      # new images stored
    duplicates: int                  # rows whose pixels were already stored (their labels were updated)
    labels: int                      # label values written (blank cells are not written)
    regions: int                     # boxes + masks written
    findings: list[str]              # the manifest's finding columns
    image_ids: list[int] = field(default_factory=list)  # store id of each manifest row, in order


# -------------------------------------------------------------------------------- pure helpers


def quantize(img: np.ndarray, bits: int) -> np.ndarray:
    """float [0,1] HxW -> uint16 when the source had more than 8 bits, else uint8."""
    if bits > 8:
        return np.rint(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def pixel_sha256(arr: np.ndarray) -> str:
    """Content hash of stored pixels: dtype, shape and bytes (so 8- and 16-bit copies differ)."""
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()


def encode_png(arr: np.ndarray, compress_level: int = 3) -> bytes:
    """uint8/uint16 HxW -> PNG bytes (grey, 8 or 16 bit). Level 3: ~same size as 6, 2-3x faster."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def decode_png(path: Path) -> np.ndarray:
    """A stored PNG -> float32 HxW in [0, 1] (exact inverse of quantize)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / np.float32(scale)


def neutral_name(image_id: int) -> str:
    """The display name an image is stored under: `image-000042` (never the file's own name)."""
    return f"image-{int(image_id):06d}"


def _basename(name: str) -> str:
    """The last component of a POSIX or Windows path (a display name, a ZIP member, a CSV cell)."""
    text = str(name).strip().replace("\\", "/")
    return text.rsplit("/", 1)[-1]


def _source_key(data: bytes | bytearray | memoryview) -> str:
    """Key of a file's bytes under this reader version: a file seen before (same bytes, same reader)
    decodes to the same pixels, so it is a duplicate without decoding. A reader change (READER_VERSION)
    gives every file a new key, so a re-import then decodes again under the new rules."""
    from engine.data.io import READER_VERSION

    h = hashlib.sha256(f"scarce-cxr read_image v{READER_VERSION}\0".encode())
    h.update(data)
    return h.hexdigest()


def check_finding_name(name: str) -> str:
    """A stripped, valid finding name (engine.names.check_name, kind "finding"); raises
    engine.names.InvalidNameError (a ValueError) saying what is wrong."""
    return check_name(name, "finding")


def _is_zip_file(path: Path) -> bool:
    """True when the file starts with a ZIP signature (local file header or empty-archive end record)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
    except OSError:
        return False  # the image reader reports what is wrong with it


def is_ignored_member(name: str) -> bool:
    """ZIP/folder entries that are never images: dot-files, __MACOSX resource forks, OS litter."""
    from engine.data.listing import is_ignored

    return is_ignored(name)


def _is_disk_full(e: BaseException) -> bool:
    return is_disk_full(e)


def _open_tmp(path: Path):
    """Open a new temp file for writing (one indirection so tests can simulate a full disk)."""
    return open(path, "xb")


def write_atomic(dest: Path, data: bytes) -> None:
    """Write bytes to `dest` via a temp file + os.replace. Raises DiskFullError (nothing written)
    when the free space is below the data plus a safety margin, or when the write runs out of space."""
    free = free_bytes(dest.parent)
    if free is not None and free < len(data) + _MARGIN:
        raise DiskFullError(dest.parent, len(data) + _MARGIN, free, dest.name)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with _open_tmp(tmp) as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(dest.parent, len(data) + _MARGIN, free_bytes(dest.parent), dest.name) from e
        raise


def _bounded_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, window: int = 16) -> Iterator[Any]:
    """fn over items in a thread pool, results in order, at most `window` in flight. Closing the
    iterator (e.g. on Cancelled) cancels what has not started and waits for what has."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-import")
    pending: list[Future] = []
    try:
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _writes(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Store method that writes pixel/mask files under a live-writer marker
    (`<workspace>/.writers/`, engine.atomic.writer_marker), so `remove_orphan_files` never removes a
    file it may still commit."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with writer_marker(self.writers_dir):
            return method(self, *args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------- store


class Store:
    """SQLite workspace store. See the module docstring for the layout and guarantees."""

    # Guards for ZIP archives expanded in memory (class attributes; tests may lower them).
    max_zip_members: int = 20_000
    max_zip_bytes: int = 4 * 2**30         # total uncompressed size
    max_member_bytes: int = 512 * 2**20    # one uncompressed member
    # Pixels one upload (an archive, or the files of one Data-page upload) may decode inside the page
    # request: ~1000 radiographs of 1 MP, or 50 of the largest detectors (~1-2 min on 2 cores).
    max_upload_pixels: int = 1_000_000_000
    # Uploads above either of these are decoded by a background `import` job (source "upload":
    # stage_upload + import_staged) instead of inside the page request: about 10-30 s of decoding.
    background_upload_files: int = 50
    background_upload_pixels: int = 200_000_000
    import_workers: int = min(4, os.cpu_count() or 1)

    def __init__(self, workspace: Path | str | None = None):
        self.workspace = Path(workspace).expanduser().resolve() if workspace else paths.workspace_dir()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.db_path = self.workspace / "store.sqlite"
        self.images_dir = self.workspace / "images"
        self.masks_dir = self.workspace / "masks"
        self.writers_dir = self.workspace / ".writers"  # live importers' markers (engine.atomic.writer_marker)
        self.images_dir.mkdir(exist_ok=True)
        self.masks_dir.mkdir(exist_ok=True)
        self._local = threading.local()
        self._all_conns: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()  # closed with their thread
        self._conns_lock = threading.Lock()
        self._salt: bytes | None = None
        migrate(self._conn())

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ connections, transactions

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path)
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
        """One write transaction (BEGIN IMMEDIATE); nested use joins the outer one."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
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
            if _is_disk_full(e) and not isinstance(e, DiskFullError):
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
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def table_counts(self) -> dict[str, int]:
        """Row count of every table (for checks that an operation changed nothing)."""
        with self._read() as c:
            names = [r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            return {n: int(c.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in names}

    # -------------------------------------------------------------------------------- import

    @_writes
    def import_bytes(self, name: str, data: bytes, on_event: OnEvent | None = None,
                     stop: threading.Event | None = None,
                     label: tuple[str, int] | None = None, keep_names: bool = False) -> list[ImportResult]:
        """Import one uploaded file: an image (PNG/JPEG/TIFF/DICOM) or a ZIP archive of them.

        Returns one ImportResult per image (per archive member for a ZIP, dot-files and __MACOSX
        skipped). Errors are reported per file, never raised. `label=(finding, 1 | 0)` labels every
        imported image in the same transaction that stores it (an image and its label commit
        together); a duplicate already labeled the other way keeps its label (`label_kept`).
        `name` is only shown back in the results: the image is stored as `image-<id>` unless
        `keep_names` (see the module docstring, PHI). A ZIP whose images declare more than
        `max_upload_pixels` together is refused as a whole before any is decoded.
        Raises ValueError for an invalid finding name or label value (before anything is written) and
        DiskFullError when the disk fills up; its `committed` lists the images imported (and kept,
        with their labels) before that.
        """
        if label is not None:
            label = (check_finding_name(label[0]), label[1])
            if label[1] not in (0, 1) or isinstance(label[1], float):
                raise ValueError(f"label {label[1]!r} is not 1 (present) or 0 (absent)")
            label = (label[0], int(label[1]))
        if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return self._import_zip(name, data, on_event, stop, label, keep_names)
        try:
            return [self._import_one(name, data, label, keep_names)]
        except DiskFullError as e:
            raise e.with_committed([], 1) from e

    def check_upload(self, files: Sequence[tuple[str, bytes]]) -> int:
        """Budget an upload before decoding any of it: the pixels its images declare in their headers
        (ZIP members included; engine.data.io.declared_size), summed. Returns that sum. Raises
        UploadTooLargeError (a StoreError saying what to do) when it exceeds `max_upload_pixels`;
        files whose size cannot be read from a header count 0 here (each is still refused on its own
        when too large to decode)."""
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
        return total

    def upload_in_background(self, n_files: int, pixels: int) -> bool:
        """Whether an upload of `n_files` files declaring `pixels` pixels (check_upload) is decoded by
        a background job rather than in the page request: more than `background_upload_files` files or
        more than `background_upload_pixels` pixels."""
        return n_files > self.background_upload_files or pixels > self.background_upload_pixels

    def stage_upload(self, files: Sequence[tuple[str, bytes]]) -> Path:
        """Write an upload's files to a new folder `<workspace>/uploads/<random>/` for `import_staged`
        (run by a background job): `00000.bin`, `00001.bin`, ... in upload order, plus `names.json`
        with the original names (needed for `name_key`; the folder is deleted once imported).
        Returns the folder. Raises DiskFullError (nothing is left behind) when the files do not fit."""
        import uuid

        folder = self.workspace / "uploads" / uuid.uuid4().hex[:16]
        folder.mkdir(parents=True)
        try:
            for i, (_, data) in enumerate(files):
                write_atomic(folder / f"{i:05d}.bin", bytes(data))
            write_atomic(folder / "names.json", json.dumps([str(n) for n, _ in files]).encode())
        except BaseException:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    @_writes
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
        try:
            names = json.loads((folder / "names.json").read_text())
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{folder} is not a staged upload (names.json unreadable: {e}); "
                                    "upload the files again") from e
        units = []
        for i in range(len(names)):
            f = folder / f"{i:05d}.bin"
            n = 1
            if _is_zip_file(f):
                try:
                    with zipfile.ZipFile(f) as zf:
                        n = max(1, sum(not x.is_dir() and not is_ignored_member(x.filename) for x in zf.infolist()))
                except (zipfile.BadZipFile, OSError, ValueError):
                    n = 1
            units.append(n)
        total, done = sum(units), 0
        results: list[ImportResult] = []
        emit(on_event, step=0, total=total, kind="log", message=f"importing {len(names)} uploaded files")
        for i, orig in enumerate(map(str, names)):
            check_stop(stop)
            token = f"file {i + 1}"

            def neutral(text: str, orig: str = orig, token: str = token) -> str:
                """`orig` where results and warnings name the file (their start; "in <name> that")."""
                if orig and text.startswith(orig) and text[len(orig):len(orig) + 1] in ("", ":", "/"):
                    text = token + text[len(orig):]
                return text.replace(f" in {orig} that ", f" in {token} that ") if orig else text

            def relay(ev: Event, base: int = done) -> None:
                if ev.kind == "progress" and ev.step is not None:
                    emit(on_event, step=base + int(ev.step), total=total, kind="progress")
                elif on_event is not None:
                    on_event(Event(step=ev.step, total=ev.total, message=neutral(ev.message), level=ev.level,
                                   kind=ev.kind))

            try:
                got = self.import_bytes(orig, (folder / f"{i:05d}.bin").read_bytes(), on_event=relay, stop=stop,
                                        label=label, keep_names=keep_names)
            except DiskFullError as e:
                kept = results + [replace(r, name=neutral(r.name), error=r.error and neutral(r.error))
                                  for r in e.committed]
                raise e.with_committed(kept, len(kept) + len(names) - i) from e
            results.extend(replace(r, name=neutral(r.name), error=r.error and neutral(r.error)) for r in got)
            done += units[i]
            emit(on_event, step=done, total=total, kind="progress")
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return results

    def _declared_pixels(self, data: bytes) -> tuple[int, int]:
        """(declared pixels, images) of one file or of a ZIP's members (headers only, 64 KiB each)."""
        from engine.data.io import declared_size

        if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            size = declared_size(data[:1 << 16]) or declared_size(data)  # a TIFF's IFD may sit at the end
            return (size[1] * size[2], 1) if size else (0, 0)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            infos = [i for i in zf.infolist() if not i.is_dir() and not is_ignored_member(i.filename)]
        except (zipfile.BadZipFile, OSError, ValueError):
            return 0, 0  # the import reports what is wrong with it
        total, count = 0, 0
        for info in infos[: self.max_zip_members]:
            if info.flag_bits & 0x1:
                continue
            try:
                with zf.open(info) as f:
                    head = f.read(1 << 16)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError):
                continue
            size = declared_size(head)
            if size:
                total += size[1] * size[2]
                count += 1
        return total, count

    @_writes
    def import_paths(self, paths_: Iterable[Path | str], on_event: OnEvent | None = None,
                     stop: threading.Event | None = None, keep_names: bool = False) -> list[ImportResult]:
        """Import files and folders. A folder is listed by content (engine.data.listing.list_images:
        PNG/JPEG/TIFF/DICOM and ZIP archives at any depth, whatever their names, e.g. a patient CD's
        DICOM/.../IM000001); every other file (DICOMDIR, reports, text, BMP, ...) gets an ImportResult
        whose error says "skipped" and why, plus one warning event with the count and first names.
        Result names are paths relative to the folder given, prefixed with its name; images are
        stored as `image-<id>` unless `keep_names`. Each image is its own transaction; on `stop` the
        images already imported stay and Cancelled is raised. Raises DiskFullError (with `committed`)."""
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
        for i, (name, f) in enumerate(todo):
            check_stop(stop)
            try:
                if _is_zip_file(f):  # by content: an archive saved without its .zip suffix too
                    results.extend(self._import_zip(name, f.read_bytes(), None, stop, None, keep_names))
                else:
                    results.append(self._import_one(name, f, None, keep_names))
            except DiskFullError as e:  # what was committed before stays; say exactly what that is
                done = results + list(e.committed)
                raise e.with_committed(done, len(done) + len(todo) - i) from e
            emit(on_event, step=i + 1, total=len(todo), kind="progress")
        return results

    def _import_zip(self, name: str, data: bytes, on_event: OnEvent | None,
                    stop: threading.Event | None, label: tuple[str, int] | None = None,
                    keep_names: bool = False) -> list[ImportResult]:
        def fail(msg: str) -> list[ImportResult]:
            return [ImportResult(name, None, f"{name}: {msg}", False)]

        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            return fail(f"not a readable ZIP archive ({e}); re-create the archive and upload it again")
        infos = [i for i in zf.infolist() if not i.is_dir() and not is_ignored_member(i.filename)]
        if len(infos) > self.max_zip_members:
            return fail(f"the archive holds {len(infos):,} files, more than the {self.max_zip_members:,} "
                        "allowed in one archive; split it into smaller archives or import the folder by path")
        total = sum(i.file_size for i in infos)
        if total > self.max_zip_bytes:
            return fail(f"the archive expands to {total / 2**30:.1f} GiB, more than the "
                        f"{self.max_zip_bytes / 2**30:.1f} GiB allowed; split it or import the folder by path")
        if not infos:
            return fail("the archive contains no files")
        try:
            self.check_upload([(name, data)])
        except UploadTooLargeError as e:
            return fail(str(e))
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
        if blob[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return "archives inside archives are not supported; extract it and import its contents"
        return blob

    def _import_one(self, name: str, src: bytes | Path, label: tuple[str, int] | None = None,
                    keep_names: bool = False, _retry: bool = True) -> ImportResult:
        """Decode, dedupe and store one image (and its `label`) in one transaction. Only DiskFullError raises."""
        prepared = self._prepare(name, src)
        if isinstance(prepared, ImportResult):
            if prepared.image_id is None or label is None:
                return prepared
            with self._tx() as c:  # a duplicate: label it (unless labeled the other way)
                kept = self._label_upload(c, prepared.image_id, label, duplicate=True)
            return ImportResult(name, prepared.image_id, None, True, kept)
        sha, meta, new_file, source = prepared
        try:
            with self._tx() as c:
                row = c.execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
                if row is not None:  # same pixels stored before (other bytes), or by another thread meanwhile
                    c.execute("INSERT OR IGNORE INTO sources(sha256, image_id) VALUES (?, ?)", (source, int(row[0])))
                    kept = label is not None and self._label_upload(c, int(row[0]), label, duplicate=True)
                    return ImportResult(name, int(row[0]), None, True, kept)
                if not (self.images_dir / f"{sha}.png").exists():  # an orphan cleanup took it meanwhile
                    raise _FileVanished(sha)
                image_id = self._insert_image(c, sha, name, meta, keep_name=keep_names, source=source)
                if label is not None:
                    self._label_upload(c, image_id, label, duplicate=False)
        except _FileVanished:
            if not _retry:
                return ImportResult(name, None, f"{name}: its pixel file was removed twice while it was imported "
                                    "(a workspace cleanup ran meanwhile); import it again", False)
            return self._import_one(name, src, label, keep_names, _retry=False)  # writes the file again
        except BaseException:
            if new_file:
                self._discard_files([f"images/{sha}.png"])
            raise
        return ImportResult(name, image_id, None, False)

    @staticmethod
    def _label_upload(c: sqlite3.Connection, image_id: int, label: tuple[str, int], duplicate: bool) -> bool:
        """Set an uploaded image's label inside the import transaction. A duplicate already labeled
        the other way keeps its label (never silently flipped): returns True when that happened."""
        finding, value = label
        if duplicate:
            old = c.execute("SELECT value FROM labels WHERE image_id=? AND finding=?", (image_id, finding)).fetchone()
            if old is not None and int(old[0]) != value:
                return True
        c.execute("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", (finding, time.time()))
        c.execute("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", (image_id, finding, value))
        return False

    def _prepare(self, name: str, src: bytes | Path, known: Mapping[str, int] | None = None
                 ) -> ImportResult | tuple[str, ImageMeta, bool, str]:
        """Hash the file's bytes (a file seen before is a duplicate, not decoded again), else read +
        quantize + hash + write the PNG (when new). Returns an ImportResult for errors and duplicates,
        else (pixel sha256, meta, whether this call created the file, source key)."""
        from engine.data.io import ImageReadError, read_image

        try:
            data = src if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).read_bytes()
        except OSError:
            data = src  # missing, a folder, unreadable: read_image says which
        source = _source_key(data) if isinstance(data, (bytes, bytearray, memoryview)) else None
        if source is not None:
            row = self._conn().execute("SELECT image_id FROM sources WHERE sha256=?", (source,)).fetchone()
            if row is not None:
                return ImportResult(name, int(row[0]), None, True)
        try:
            # messages say "the file" rather than its path: a path may carry a patient's name
            img, meta = read_image(data, name=None if isinstance(src, (bytes, bytearray, memoryview)) else "the file")
        except ImageReadError as e:
            return ImportResult(name, None, f"{name}: {e}", False)
        except MemoryError:
            return ImportResult(name, None, f"{name}: too large to decode in the memory available", False)
        except Exception as e:  # a reader bug must not abort a whole batch; report it on the file
            return ImportResult(name, None, f"{name}: could not be read ({type(e).__name__}: {e})", False)
        arr = quantize(img, int(meta.bits))
        del img
        sha = pixel_sha256(arr)
        if known is not None:
            existing = known.get(sha)
        else:
            row = self._conn().execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
            existing = None if row is None else int(row[0])
        if existing is not None:
            if known is None and source is not None:
                self._remember_source(source, existing)
            return ImportResult(name, existing, None, True)
        dest = self.images_dir / f"{sha}.png"
        new_file = not dest.exists()
        if not new_file:  # left by an earlier (killed) import: adopt it, made as new as this import
            try:
                os.utime(dest)  # so remove_orphan_files keeps it while this import may still commit it
            except FileNotFoundError:
                new_file = True
        if new_file:
            write_atomic(dest, encode_png(arr))
        return sha, meta, new_file, source or ""

    def _remember_source(self, source: str, image_id: int) -> None:
        """Map a file's bytes to an image already stored (so the next import of it is not decoded).
        Best effort: a busy database or a full disk only costs a decode next time."""
        try:
            with self._tx() as c:
                c.execute("INSERT OR IGNORE INTO sources(sha256, image_id) VALUES (?, ?)", (source, int(image_id)))
        except (StoreError, sqlite3.Error):
            pass

    def _insert_image(self, c: sqlite3.Connection, sha: str, name: str, meta: ImageMeta,
                      patient_key: str | None = None, split: str = "", *, keep_name: bool = False,
                      source: str | None = None) -> int:
        """Insert one image row (inside the caller's transaction): named `image-<id>` unless
        `keep_name`, the original base name kept only as its keyed hash, `source` (the file bytes'
        key) mapped to it."""
        cur = c.execute(
            "INSERT INTO images(sha256, name, file, width, height, bits, source_format, photometric,"
            " modality, view, patient_key, split, created, name_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (sha, name if keep_name else "", f"images/{sha}.png", int(meta.width), int(meta.height),
             int(meta.bits), str(meta.source_format), str(meta.photometric or ""), str(meta.modality or ""),
             str(meta.view or ""), patient_key, split or "", time.time(), self.name_key(name)))
        image_id = int(cur.lastrowid)
        if not keep_name:
            c.execute("UPDATE images SET name=? WHERE id=?", (neutral_name(image_id), image_id))
        if source:
            c.execute("INSERT OR IGNORE INTO sources(sha256, image_id) VALUES (?, ?)", (source, image_id))
        return image_id

    def name_key(self, name: str) -> str:
        """Keyed hash (HMAC-SHA256, this workspace's salt) of a file's base name (folders and a
        Windows or POSIX path are dropped, so "a/b/SMITH.dcm" and "SMITH.dcm" match). Stored instead
        of the name; a label CSV's names are matched through it."""
        base = _basename(name)
        return "n" + hmac.new(self._salt_bytes(), b"name\0" + base.encode(), hashlib.sha256).hexdigest()[:20]

    def _salt_bytes(self) -> bytes:
        if self._salt is None:
            row = self._conn().execute("SELECT value FROM meta WHERE key='salt'").fetchone()
            self._salt = bytes.fromhex(row[0])
        return self._salt

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
        import re

        started = time.time()
        live = live_writers(self.writers_dir)
        cutoff = min([started, *live]) - 1.0  # mtimes within a second of a writer's start are its own
        name = re.compile(r"^[0-9a-f]{64}\.png$")
        removed: list[str] = []
        size = 0
        with self._tx() as c:  # holds the write lock: no import commits meanwhile
            used = {r[0] for r in c.execute("SELECT file FROM images")}
            used |= {r[0] for r in c.execute("SELECT mask_file FROM regions WHERE mask_file IS NOT NULL")}
            for folder in (self.images_dir, self.masks_dir):
                try:
                    entries = list(os.scandir(folder))
                except OSError:
                    continue
                for e in entries:
                    rel = f"{folder.name}/{e.name}"
                    if rel in used or not name.match(e.name):
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                        if not e.is_file(follow_symlinks=False) or st.st_mtime >= cutoff \
                                or started - st.st_mtime < min_age_s:
                            continue
                        os.unlink(e.path)
                    except OSError:
                        continue
                    removed.append(rel)
                    size += st.st_size
        return OrphanReport(tuple(removed), size)

    def _patient_key(self, patient_id: str) -> str:
        return "p" + hmac.new(self._salt_bytes(), patient_id.encode(), hashlib.sha256).hexdigest()[:16]

    @_writes
    def import_manifest(self, csv_path: Path | str, on_event: OnEvent | None = None,
                        stop: threading.Event | None = None, keep_names: bool = False) -> ImportSummary:
        """Import a manifest CSV (with boxes.csv / masks.csv beside it): pixels, labels, regions.

        All or nothing. Manifest problems (missing files, unknown values, a finding with only one
        class, unreadable images, masks that do not fit their image) raise ManifestError listing
        every problem, before anything is written. A row whose pixels are already stored is a
        duplicate: its labels and regions are updated, no second image is created. Masks are copied
        into <workspace>/masks/. On `stop`, everything written so far is removed and Cancelled raised.
        New images are named `image-<id>` unless `keep_names` (then: the path relative to the CSV).
        """
        from engine.data.manifest import ManifestError, load_manifest

        m = load_manifest(csv_path)
        problems: list[str] = []
        for f in m.findings:
            try:
                check_finding_name(f)
            except ValueError as e:
                problems.append(f"column {f!r}: {e}")
                continue
            try:
                m.validate_finding(f)
            except ManifestError as e:
                problems.extend(e.problems or [str(e)])
        if problems:
            raise ManifestError(problems, m.csv_path)

        df = m.df
        root = Path(m.root)
        paths_ = [str(p) for p in df["path"]]
        has_patient = "patient_id" in df.columns
        known = dict(self._conn().execute("SELECT sha256, id FROM images").fetchall())
        new_files: set[str] = set()
        emit(on_event, step=0, total=len(paths_), message=f"importing {len(paths_)} images from {csv_path}",
             kind="log")

        def display(p: str) -> str:
            try:
                return Path(p).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                return Path(p).name

        def prepare(p: str):
            res = self._prepare(display(p), Path(p), known)
            if isinstance(res, tuple) and res[2]:
                new_files.add(f"images/{res[0]}.png")  # tracked here so a failure elsewhere still cleans it
            return res

        shas: list[str | None] = []   # per row; None = duplicate of an already-stored image
        ids: dict[int, int] = {}       # row -> existing image id (duplicates)
        metas: dict[str, ImageMeta] = {}
        sources_of: dict[str, str] = {}
        first_row: dict[str, int] = {}
        results = _bounded_map(prepare, paths_, self.import_workers)
        try:
            for i, res in enumerate(results):
                check_stop(stop)
                if isinstance(res, ImportResult):
                    if res.error:
                        problems.append(f"row {i + 2}: {res.error}")
                        shas.append(None)
                    else:
                        ids[i] = int(res.image_id)
                        shas.append(None)
                else:
                    sha, meta, _, source = res
                    metas[sha] = meta
                    sources_of.setdefault(sha, source)
                    first_row.setdefault(sha, i)
                    shas.append(sha)
                emit(on_event, step=i + 1, total=len(paths_), kind="progress")
            results.close()
            if problems:
                raise ManifestError(problems, m.csv_path)
            size_of = self._sizes(ids, metas, shas)
            regions = self._manifest_regions(m, size_of, problems, new_files, stop)
            if problems:
                raise ManifestError(problems, m.csv_path)

            with self._tx() as c:
                row_ids: list[int] = []
                n_new = 0
                for i, sha in enumerate(shas):
                    if sha is None:
                        row_ids.append(ids[i])
                        continue
                    got = c.execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
                    if got is None and not (self.images_dir / f"{sha}.png").exists():
                        raise StoreError(f"row {i + 2}: its pixel file was removed by a workspace cleanup while "
                                         "this import ran; nothing was imported, run the import again")
                    if got is None:
                        pid = str(df["patient_id"].iloc[i]) if has_patient else ""
                        key = self._patient_key(pid) if pid and pid != paths_[i] else None
                        split = str(df["split"].iloc[i]) if "split" in df.columns else ""
                        got = (self._insert_image(c, sha, display(paths_[first_row[sha]]), metas[sha], key, split,
                                                  keep_name=keep_names, source=sources_of.get(sha)),)
                        n_new += 1
                    row_ids.append(int(got[0]))
                now = time.time()
                c.executemany("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)",
                              [(f, now) for f in m.findings])
                n_labels = 0
                for f in m.findings:
                    vals = df[f].to_numpy(dtype=float)
                    rows = [(row_ids[i], f, int(v)) for i, v in enumerate(vals) if not np.isnan(v)]
                    c.executemany("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", rows)
                    n_labels += len(rows)
                reg_rows = [(row_ids[i], f, kind, x, y, w, h, mf) for (i, f, kind, x, y, w, h, mf) in regions]
                c.executemany("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)",
                              sorted({(r[1], now) for r in reg_rows}))
                c.executemany("DELETE FROM regions WHERE image_id=? AND finding=? AND kind=?",
                              sorted({(r[0], r[1], r[2]) for r in reg_rows}))
                c.executemany("INSERT INTO regions(image_id, finding, kind, x, y, w, h, mask_file)"
                              " VALUES (?,?,?,?,?,?,?,?)", reg_rows)
        except BaseException:
            results.close()  # waits for in-flight workers so every file they wrote is in new_files
            self._discard_files(new_files)
            raise
        emit(on_event, step=len(paths_), total=len(paths_), kind="log",
             message=f"imported {n_new} new images ({len(paths_) - n_new} already stored), "
                     f"{n_labels} labels, {len(reg_rows)} regions")
        return ImportSummary(images=n_new, duplicates=len(paths_) - n_new, labels=n_labels,
                             regions=len(reg_rows), findings=list(m.findings), image_ids=row_ids)

    def _sizes(self, ids: Mapping[int, int], metas: Mapping[str, ImageMeta],
               shas: Sequence[str | None]) -> list[tuple[int, int]]:
        """(width, height) of every manifest row's image."""
        out: list[tuple[int, int]] = []
        c = self._conn()
        for i, sha in enumerate(shas):
            if sha is not None:
                out.append((int(metas[sha].width), int(metas[sha].height)))
            else:
                w, h = c.execute("SELECT width, height FROM images WHERE id=?", (ids[i],)).fetchone()
                out.append((int(w), int(h)))
        return out

    def _manifest_regions(self, m, size_of: Sequence[tuple[int, int]], problems: list[str],
                          new_files: set[str], stop: threading.Event | None) -> list[tuple]:
        """Boxes and masks of a manifest as (row, finding, kind, x, y, w, h, mask_file); copies masks."""
        row_of = {str(p): i for i, p in enumerate(m.df["path"])}
        out: list[tuple] = []
        if m.boxes is not None:
            for r in m.boxes.itertuples(index=False):
                i = row_of.get(str(r.path))
                if i is None:
                    problems.append(f"boxes.csv: {r.path} is not a row of the manifest")
                    continue
                try:
                    name = check_finding_name(str(r.finding))
                except ValueError as e:
                    problems.append(f"boxes.csv: {e}")
                    continue
                out.append((i, name, "box", float(r.x), float(r.y), float(r.w), float(r.h), None))
        if m.masks is not None:
            def prep_mask(r) -> tuple | str:
                i = row_of.get(str(r.path))
                if i is None:
                    return f"masks.csv: {r.path} is not a row of the manifest"
                try:
                    name = check_finding_name(str(r.finding))
                    with Image.open(r.mask_path) as im:
                        mask = np.asarray(im.convert("L")) > 0  # (H, W) bool
                except (ValueError, OSError) as e:
                    return f"masks.csv: mask {r.mask_path} could not be read ({e})"
                w, h = size_of[i]
                if mask.shape != (h, w):
                    return (f"masks.csv: mask {r.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"is {w}x{h}; masks must match their image's size")
                arr = mask.astype(np.uint8) * np.uint8(255)
                rel = f"masks/{pixel_sha256(arr)}.png"
                if not (self.workspace / rel).exists():
                    write_atomic(self.workspace / rel, encode_png(arr, compress_level=6))
                    new_files.add(rel)
                ys, xs = np.nonzero(mask)
                box = ((float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1)) if len(xs) else (None, None, None, None))
                return (i, name, "mask", *box, rel)

            results = _bounded_map(prep_mask, list(m.masks.itertuples(index=False)), self.import_workers)
            try:
                for res in results:
                    check_stop(stop)
                    if isinstance(res, str):
                        problems.append(res)
                    else:
                        out.append(res)
            finally:
                results.close()  # in-flight writers finish (and register their files) before cleanup
        return out

    # ------------------------------------------------------------------------------ read images

    def images(self, finding: str | None = None) -> pd.DataFrame:
        """One row per image (ordered by id): id, name, width, height, source_format, created, bits,
        photometric, modality, view, split, file (absolute path), name_key (keyed hash of the original
        base name, None for images imported before v4; see `name_key`), then one column per finding
        (1.0 / 0.0 / NaN) -- only `finding`'s column when it is given."""
        cols = ["id", "name", "width", "height", "source_format", "created", "bits", "photometric",
                "modality", "view", "split", "file", "name_key"]
        with self._read() as c:
            fnames = [r[0] for r in c.execute("SELECT name FROM findings ORDER BY rowid")]
            if finding is not None:
                if finding not in fnames:
                    raise ValueError(f"unknown finding {finding!r}; known findings: {', '.join(fnames) or 'none'}")
                fnames = [finding]
            df = pd.DataFrame(c.execute(f"SELECT {', '.join(cols)} FROM images ORDER BY id").fetchall(), columns=cols)
            q = "SELECT image_id, finding, value FROM labels"
            lab = pd.DataFrame(c.execute(q + (" WHERE finding=?" if finding else ""),
                                         (finding,) if finding else ()).fetchall(),
                               columns=["image_id", "finding", "value"])
        df["file"] = [str(self.workspace / f) for f in df["file"]]
        if len(lab):
            wide = lab.pivot(index="image_id", columns="finding", values="value").astype(float)
            for f in fnames:
                df[f] = df["id"].map(wide[f]) if f in wide.columns else np.nan
        else:
            for f in fnames:
                df[f] = np.nan
        for f in fnames:
            df[f] = df[f].astype(float)
        return df

    def _image_row(self, image_id: int) -> sqlite3.Row:
        row = self._conn().execute("SELECT * FROM images WHERE id=?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(f"no image with id {image_id} in the workspace {self.workspace}")
        return row

    def image_file(self, image_id: int) -> Path:
        """Absolute path of the stored PNG."""
        return self.workspace / self._image_row(image_id)["file"]

    def image_meta(self, image_id: int) -> dict[str, Any]:
        """The image's row: id, name, width, height, bits, source_format, ..., file (absolute)."""
        d = dict(self._image_row(image_id))
        d["file"] = str(self.workspace / d["file"])
        return d

    def image_array(self, image_id: int) -> np.ndarray:
        """float32 HxW in [0, 1], exactly as imported (up to 8/16-bit quantization)."""
        return decode_png(self.image_file(image_id))

    def thumbnail(self, image_id: int, size: int = 128) -> np.ndarray:
        """uint8 HxW with the longer side `size` (aspect kept); cached under cache/thumbs/."""
        row = self._image_row(image_id)
        cache = self.workspace / "cache" / "thumbs" / f"{row['sha256']}-{int(size)}.png"
        if cache.exists():
            try:
                with Image.open(cache) as im:
                    return np.asarray(im.convert("L"))
            except OSError:
                pass  # a damaged cache file is rebuilt below
        with Image.open(self.workspace / row["file"]) as im:
            arr = np.asarray(im)
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        im = Image.fromarray(arr)
        im.thumbnail((int(size), int(size)), Image.Resampling.BILINEAR, reducing_gap=2.0)
        out = np.asarray(im)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, encode_png(out))
        except (OSError, StoreError):
            pass  # thumbnails are a cache; failing to keep one is not an error
        return out

    def regions(self, image_id: int) -> list[dict[str, Any]]:
        """Boxes and masks of an image: {finding, kind: "box"|"mask", x, y, w, h, mask_path}
        (pixels of the stored image; mask_path absolute or None; a mask's x,y,w,h is its bounding box)."""
        rows = self._conn().execute(
            "SELECT finding, kind, x, y, w, h, mask_file FROM regions WHERE image_id=? ORDER BY id",
            (int(image_id),)).fetchall()
        return [{"finding": r["finding"], "kind": r["kind"], "x": r["x"], "y": r["y"], "w": r["w"], "h": r["h"],
                 "mask_path": str(self.workspace / r["mask_file"]) if r["mask_file"] else None} for r in rows]

    # --------------------------------------------------------------------------- findings, labels

    def findings(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM findings ORDER BY rowid")]

    def add_finding(self, name: str) -> str:
        """Add a finding (no-op when it exists); returns the stored (stripped) name."""
        n = check_finding_name(name)
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", (n, time.time()))
        return n

    def delete_finding(self, name: str) -> None:
        """Delete a finding with its labels and regions (images stay)."""
        with self._tx() as c:
            masks = [r[0] for r in c.execute("SELECT mask_file FROM regions WHERE finding=? AND mask_file IS NOT NULL",
                                             (name,))]
            if c.execute("DELETE FROM findings WHERE name=?", (name,)).rowcount == 0:
                raise KeyError(f"unknown finding {name!r}")
        self._discard_files(masks)

    def rename_finding(self, old: str, new: str) -> str:
        """Rename a finding; its labels and regions follow."""
        n = check_finding_name(new)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM findings WHERE name=?", (old,)).fetchone() is None:
                raise KeyError(f"unknown finding {old!r}")
            if n != old and c.execute("SELECT 1 FROM findings WHERE name=?", (n,)).fetchone() is not None:
                raise ValueError(f"a finding named {n!r} already exists; delete it first or pick another name")
            c.execute("UPDATE findings SET name=? WHERE name=?", (n, old))
        return n

    def set_labels(self, finding: str, labels: Mapping[int, int | float | bool | None],
                   expected: Mapping[int, int | float | bool | None] | None = None) -> int:
        """Set labels of one finding: 1 present, 0 absent, None (or NaN) unknown. The finding is
        added when new. Unknown image ids or other values raise ValueError and change nothing.

        `expected` (optional) maps image ids to the labels the caller saw before editing; when any of
        them changed meanwhile (another session saved first), LabelConflictError is raised listing
        them and nothing is changed. Returns the number of images touched."""
        n = check_finding_name(finding)
        sets: list[tuple[int, str, int]] = []
        clears: list[tuple[int, str]] = []
        for image_id, v in labels.items():
            if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
                clears.append((int(image_id), n))
            elif v in (0, 1):  # also True/False/0.0/1.0
                sets.append((int(image_id), n, int(v)))
            else:
                raise ValueError(f"label {v!r} for image {image_id} is not 1 (present), 0 (absent) or None (unknown)")
        ids = sorted({int(i) for i in labels})
        with self._tx() as c:
            if ids:
                found = {r[0] for r in c.execute(
                    f"SELECT id FROM images WHERE id IN ({','.join('?' * len(ids))})", ids)}
                missing = [i for i in ids if i not in found]
                if missing:
                    raise ValueError(f"no images with ids {missing[:10]} in this workspace; nothing was labeled")
            if expected:
                self._check_expected(c, n, expected)
            c.execute("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", (n, time.time()))
            c.executemany("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", sets)
            c.executemany("DELETE FROM labels WHERE image_id=? AND finding=?", clears)
        return len(ids)

    def _check_expected(self, c: sqlite3.Connection, finding: str,
                        expected: Mapping[int, int | float | bool | None]) -> None:
        """Raise LabelConflictError when a current label differs from what the caller saw."""
        def norm(v: Any) -> int | None:
            if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
                return None
            return int(v)

        ids = sorted({int(i) for i in expected})
        now: dict[int, int] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            now.update(c.execute(f"SELECT image_id, value FROM labels WHERE finding=? AND image_id IN "
                                 f"({','.join('?' * len(part))})", (finding, *part)).fetchall())
        changed = {i: (norm(expected[i]), now.get(i)) for i in ids if norm(expected[i]) != now.get(i)}
        if changed:
            names = dict(c.execute(f"SELECT id, name FROM images WHERE id IN ({','.join('?' * len(changed))})",
                                   list(changed)).fetchall())
            raise LabelConflictError(finding, {i: (names.get(i, f"image {i}"), old, new)
                                               for i, (old, new) in changed.items()})

    def delete_images(self, ids: Iterable[int]) -> int:
        """Delete images with their labels and regions; their files go once the rows are gone."""
        ids = sorted({int(i) for i in ids})
        if not ids:
            return 0
        q = ",".join("?" * len(ids))
        with self._tx() as c:
            files = [r[0] for r in c.execute(f"SELECT file FROM images WHERE id IN ({q})", ids)]
            masks = [r[0] for r in c.execute(
                f"SELECT mask_file FROM regions WHERE image_id IN ({q}) AND mask_file IS NOT NULL", ids)]
            n = c.execute(f"DELETE FROM images WHERE id IN ({q})", ids).rowcount
        self._discard_files(files + masks)
        return int(n)

    def counts(self) -> dict[str, dict[str, int]]:
        """{finding: {"positive", "negative", "unknown"}} over all images."""
        with self._read() as c:
            total = int(c.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            out = {f: {"positive": 0, "negative": 0, "unknown": total}
                   for (f,) in c.execute("SELECT name FROM findings ORDER BY rowid")}
            for f, pos, neg in c.execute(
                    "SELECT finding, SUM(value = 1), SUM(value = 0) FROM labels GROUP BY finding"):
                out[f] = {"positive": int(pos), "negative": int(neg), "unknown": total - int(pos) - int(neg)}
        return out

    # ----------------------------------------------------------------------------------- export

    def export_manifest(self, csv_path: Path | str, image_ids: Iterable[int] | None = None,
                        findings: Sequence[str] | None = None) -> Path:
        """Write a manifest CSV of stored images (absolute PNG paths; patient_id = the keyed patient
        hash when a manifest gave one, else "img<id>"; split; one column per finding, blank =
        unknown) plus boxes.csv / masks.csv beside it when there are regions (stale ones removed).
        Atomic per file."""
        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        df = self.images()
        all_f = [c for c in self.findings()]
        fs = list(all_f if findings is None else findings)
        unknown = [f for f in fs if f not in all_f]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; known findings: {', '.join(all_f) or 'none'}")
        if image_ids is not None:
            wanted = {int(i) for i in image_ids}
            missing = sorted(wanted - set(df["id"]))
            if missing:
                raise ValueError(f"no images with ids {missing[:10]} in this workspace")
            df = df[df["id"].isin(wanted)]
        if df.empty:
            raise ValueError("no images to export; import images first")
        with self._read() as c:
            keys = dict(c.execute("SELECT id, patient_key FROM images WHERE patient_key IS NOT NULL").fetchall())
            regs = pd.DataFrame(c.execute("SELECT image_id, finding, kind, x, y, w, h, mask_file FROM regions"
                                          " ORDER BY id").fetchall(),
                                columns=["image_id", "finding", "kind", "x", "y", "w", "h", "mask_file"])
        out = pd.DataFrame({
            "path": df["file"].to_numpy(),
            "patient_id": [keys.get(int(i), f"img{int(i)}") for i in df["id"]],
            "split": df["split"].to_numpy(),
        })
        for f in fs:
            out[f] = pd.array(df[f].to_numpy(), dtype="Int64")  # 1 / 0 / blank
        write_atomic(csv_path, out.to_csv(index=False).encode())

        path_of = dict(zip(df["id"].astype(int), df["file"]))
        regs = regs[regs["image_id"].isin(path_of.keys()) & regs["finding"].isin(fs)]
        regs = regs.assign(path=regs["image_id"].map(path_of))
        boxes = regs[regs["kind"] == "box"][["path", "finding", "x", "y", "w", "h"]]
        masks = regs[regs["kind"] == "mask"]
        masks = pd.DataFrame({"path": masks["path"], "finding": masks["finding"],
                              "mask_path": [str(self.workspace / f) for f in masks["mask_file"]]})
        for name, table in (("boxes.csv", boxes), ("masks.csv", masks)):
            dest = csv_path.parent / name
            if len(table):
                write_atomic(dest, table.to_csv(index=False).encode())
            else:
                dest.unlink(missing_ok=True)
        return csv_path

    # ---------------------------------------------------------------------------------- results

    def _rel(self, p: Path | str) -> str:
        p = Path(p)
        try:
            return p.resolve().relative_to(self.workspace).as_posix()
        except ValueError:
            return str(p)

    def _abs(self, s: str) -> str:
        return str(self.workspace / s) if not Path(s).is_absolute() else s

    def add_result(self, kind: str, name: str, path: Path | str, summary: Mapping[str, Any],
                   job_id: int | None = None) -> int:
        """Record a result (sweep, classifier, gradcam batch, ...); `path` is kept relative to the
        workspace when inside it. Returns its id."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO results(kind, name, path, summary_json, job_id, created)"
                            " VALUES (?,?,?,?,?,?)",
                            (kind, name, self._rel(path), json.dumps(dict(summary), default=str), job_id, time.time()))
        return int(cur.lastrowid)

    def results(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Newest first: {id, kind, name, path (absolute), summary, job_id, created}."""
        q = "SELECT * FROM results" + (" WHERE kind=?" if kind else "") + " ORDER BY id DESC"
        return [{"id": r["id"], "kind": r["kind"], "name": r["name"], "path": self._abs(r["path"]),
                 "summary": json.loads(r["summary_json"]), "job_id": r["job_id"], "created": r["created"]}
                for r in self._conn().execute(q, (kind,) if kind else ())]

    def delete_result(self, result_id: int) -> None:
        """Forget a result (its files are left where they are)."""
        with self._tx() as c:
            c.execute("DELETE FROM results WHERE id=?", (int(result_id),))

    def add_checkpoint(self, name: str, path: Path | str, meta: Mapping[str, Any],
                       job_id: int | None = None) -> None:
        """Index a backbone deliverable produced here (replaces an entry of the same name)."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO checkpoints(name, path, meta_json, job_id, created) VALUES (?,?,?,?,?)",
                      (name, str(path), json.dumps(dict(meta), default=str), job_id, time.time()))

    def checkpoints(self) -> list[dict[str, Any]]:
        """Newest first: {name, path, meta, job_id, created}."""
        return [{"name": r["name"], "path": r["path"], "meta": json.loads(r["meta_json"]),
                 "job_id": r["job_id"], "created": r["created"]}
                for r in self._conn().execute("SELECT * FROM checkpoints ORDER BY created DESC")]

    # ------------------------------------------------------------------------------------- jobs

    _JOB_FIELDS = frozenset({"state", "step", "total", "error", "result", "device", "owner",
                             "cancel_requested", "runs", "params"})

    def create_job(self, kind: str, params: Mapping[str, Any], device: str | None = None,
                   owner: str | None = None, state: str = "queued") -> int:
        now = time.time()
        with self._tx() as c:
            cur = c.execute("INSERT INTO jobs(kind, params_json, state, created, updated, device, owner)"
                            " VALUES (?,?,?,?,?,?,?)",
                            (kind, json.dumps(dict(params)), state, now, now, device, owner))
        return int(cur.lastrowid)

    def delete_job(self, job_id: int) -> None:
        """Remove a job and its events (a job refused at submit time)."""
        with self._tx() as c:
            c.execute("DELETE FROM jobs WHERE id=?", (int(job_id),))

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Set job columns: state, step, total, error, result (dict), device, owner,
        cancel_requested, runs, params (dict). `updated` is set to now."""
        sets, vals = self._job_sets(fields)
        with self._tx() as c:
            c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*vals, int(job_id)))

    def _job_sets(self, fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
        bad = set(fields) - self._JOB_FIELDS
        if bad:
            raise ValueError(f"unknown job fields {sorted(bad)}")
        cols, vals = ["updated=?"], [time.time()]
        for k, v in fields.items():
            if k == "result":
                k, v = "result_json", None if v is None else json.dumps(v, default=str)
            elif k == "params":
                k, v = "params_json", json.dumps(dict(v))
            cols.append(f"{k}=?")
            vals.append(v)
        return ", ".join(cols), vals

    def transition_job(self, job_id: int, from_states: Iterable[str], **fields: Any) -> bool:
        """Update a job only if its state is one of `from_states` (atomic check-and-set)."""
        states = list(from_states)
        sets, vals = self._job_sets(fields)
        with self._tx() as c:
            cur = c.execute(f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({','.join('?' * len(states))})",
                            (*vals, int(job_id), *states))
        return cur.rowcount == 1

    def add_event(self, job_id: int, event: Event) -> int:
        """Append one event; returns its seq (1, 2, ... per job)."""
        return self.add_events(job_id, [event])

    def add_events(self, job_id: int, events: Sequence[Event], **job_fields: Any) -> int:
        """Append events and (optionally) update the job row in one transaction; returns the last seq."""
        with self._tx() as c:
            seq = self._insert_events(c, job_id, events)
            if job_fields:
                sets, vals = self._job_sets(job_fields)
                c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*vals, int(job_id)))
        return seq

    @staticmethod
    def _insert_events(c: sqlite3.Connection, job_id: int, events: Sequence[Event]) -> int:
        seq = int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id=?",
                            (int(job_id),)).fetchone()[0])
        rows = []
        for e in events:
            seq += 1
            rows.append((int(job_id), seq, float(e.time), e.level, e.kind, e.message or "",
                         json.dumps(e.metrics) if e.metrics else None, e.step, e.total))
        c.executemany("INSERT INTO job_events(job_id, seq, time, level, kind, message, metrics_json, step, total)"
                      " VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return seq

    @staticmethod
    def _job_dict(r: sqlite3.Row) -> dict[str, Any]:
        return {"id": r["id"], "kind": r["kind"], "params": json.loads(r["params_json"]), "state": r["state"],
                "step": r["step"], "total": r["total"], "error": r["error"],
                "result": None if r["result_json"] is None else json.loads(r["result_json"]),
                "created": r["created"], "updated": r["updated"], "device": r["device"], "owner": r["owner"],
                "cancel_requested": bool(r["cancel_requested"]), "runs": r["runs"]}

    def job(self, job_id: int) -> dict[str, Any] | None:
        r = self._conn().execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        return None if r is None else self._job_dict(r)

    def jobs(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first, optionally only some states."""
        q, args = "SELECT * FROM jobs", []
        if states is not None:
            states = list(states)
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args += states
        q += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._job_dict(r) for r in self._conn().execute(q, args)]

    def events(self, job_id: int, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > after_seq, oldest first: {seq, time, level, kind, message, metrics, step, total}."""
        q = "SELECT * FROM job_events WHERE job_id=? AND seq>? ORDER BY seq" + (f" LIMIT {int(limit)}" if limit else "")
        return [{"seq": r["seq"], "time": r["time"], "level": r["level"], "kind": r["kind"], "message": r["message"],
                 "metrics": json.loads(r["metrics_json"]) if r["metrics_json"] else {},
                 "step": r["step"], "total": r["total"]}
                for r in self._conn().execute(q, (int(job_id), int(after_seq)))]

    def cancel_requests(self, job_ids: Sequence[int]) -> list[int]:
        """The subset of `job_ids` whose cancel flag is set."""
        ids = [int(i) for i in job_ids]
        if not ids:
            return []
        q = f"SELECT id FROM jobs WHERE cancel_requested=1 AND id IN ({','.join('?' * len(ids))})"
        return [int(r[0]) for r in self._conn().execute(q, ids)]

    def interrupt_orphans(self, is_alive: Callable[[str | None], bool]) -> list[int]:
        """Jobs left `queued`/`running` whose owner is not alive become `interrupted`; returns their ids."""
        with self._tx() as c:
            rows = c.execute("SELECT id, owner FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            dead = [int(r["id"]) for r in rows if not is_alive(r["owner"])]
            now = time.time()
            c.executemany("UPDATE jobs SET state='interrupted', owner=NULL, updated=? WHERE id=?",
                          [(now, i) for i in dead])
            note = Event(message="interrupted: the process running this job stopped; resume it to continue "
                                 "from its last saved state", level="warning", kind="log", time=now)
            for i in dead:
                self._insert_events(c, i, [note])
        return dead


# ------------------------------------------------------------------------------ module functions


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (so a finished thread's connection is closed)."""


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, busy_timeout, FKs on."""
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None, check_same_thread=False,
                           factory=_Connection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    enable_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema to `target` (one transaction); returns the version found before."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise StoreError(f"this workspace was written by a newer scarce-cxr (schema v{found}, this one "
                             f"knows up to v{SCHEMA_VERSION}); upgrade scarce-cxr to open it")
        for v in range(found, target):
            for stmt in MIGRATIONS[v]:
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v + 1}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
