"""The workspace store: one SQLite database plus the imported pixels, beside each other in a workspace.

    store = Store()                                    # <workspace>/store.sqlite, created and migrated
    store.import_bytes("scan.dcm", data)               # -> [ImportResult]; ZIP archives are expanded
    store.import_manifest("manifest.csv")              # pixels + labels + boxes + masks, all or nothing
    store.set_labels("nodule", {3: 1, 4: 0, 5: None})
    store.export_manifest(ws / "results" / "x.csv")     # what every engine function consumes

`Store` is a small facade over one module per concept (each contributes a mixin of methods):

    schema.py     migrations (PRAGMA user_version), connect      db.py       connections, transactions
    errors.py     StoreError, DiskFullError, ..., ImportResult    pixels.py   quantize, hashes, PNG codec
    files.py      atomic pixel writes, writer markers, orphans    keys.py     neutral names, keyed hashes
    ingest.py     one image: decode, dedupe, write, insert        imports.py  files, folders, ZIP archives
    uploads.py    upload budget, staging, import_staged           manifests.py  import_manifest
    catalog.py    images(), one image's pixels/thumbnail/regions  labels.py   findings, labels, counts
    exports.py    export_manifest                                 results.py  results index
    jobs.py       job rows, events, cancel flags (engine.jobs)

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
written first (engine.atomic.atomic_write: temp file + os.replace) and removed again when the
transaction fails, so a failed import leaves neither a row nor a file. A full disk raises
DiskFullError and leaves the store as it was. Schema changes are an ordered list of migrations
tracked by `PRAGMA user_version`.

Threads: each thread gets its own connection (threading.local); all methods are thread-safe.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine import paths
from engine.store.catalog import CatalogMixin
from engine.store.db import Database, DatabaseGoneError, StoreOpenError, open_error
from engine.store.errors import (DiskFullError, ImportResult, ImportSummary, LabelConflictError, OrphanReport,
                                 StoreError, UploadTooLargeError)
from engine.store.exports import ExportMixin
from engine.store.files import FilesMixin, write_atomic
from engine.store.imports import ImportMixin, is_ignored_member
from engine.store.ingest import IngestMixin
from engine.store.jobs import JobsMixin, job_active
from engine.store.keys import KeysMixin, neutral_name
from engine.store.labels import RESERVED_COLUMNS, LabelsMixin, check_finding_name
from engine.store.manifests import ManifestImportMixin
from engine.store.pixels import decode_png, encode_png, pixel_sha256, quantize
from engine.store.results import ResultsMixin
from engine.store.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate
from engine.store.uploads import UploadsMixin, upload_label_report

__all__ = [
    "DatabaseGoneError", "DiskFullError", "ImportResult", "ImportSummary", "LabelConflictError", "MIGRATIONS",
    "OrphanReport", "RESERVED_COLUMNS", "SCHEMA_VERSION", "Store", "StoreError", "StoreOpenError",
    "UploadTooLargeError", "check_finding_name", "connect", "decode_png", "encode_png", "is_ignored_member",
    "job_active", "migrate", "neutral_name", "pixel_sha256", "quantize", "upload_label_report", "write_atomic",
]


class Store(ImportMixin, UploadsMixin, ManifestImportMixin, IngestMixin, FilesMixin, KeysMixin, CatalogMixin,
            LabelsMixin, ExportMixin, ResultsMixin, JobsMixin, Database):
    """SQLite workspace store. See the module docstring for the layout and guarantees; each group of
    methods lives in the module of its concept (listed there)."""

    # Guards for ZIP archives expanded in memory (class attributes; tests may lower them).
    max_zip_members: int = 20_000
    max_zip_bytes: int = 4 * 2**30         # total uncompressed size
    max_member_bytes: int = 512 * 2**20    # one uncompressed member
    max_member_ratio: float = 200.0        # declared expansion of a member over 16 MiB (ZIP bombs)
    # Pixels one upload (an archive, or the files of one Data-page upload) may decode inside the page
    # request: ~1000 radiographs of 1 MP, or 50 of the largest detectors (~1-2 min on 2 cores).
    max_upload_pixels: int = 1_000_000_000
    # Uploads above either of these are decoded by a background `import` job (source "upload":
    # stage_upload + import_staged) instead of inside the page request: about 10-30 s of decoding.
    background_upload_files: int = 50
    background_upload_pixels: int = 200_000_000
    import_workers: int = min(4, os.cpu_count() or 1)

    def __init__(self, workspace: Path | str | None = None):
        """Open (create, migrate) `<workspace>/store.sqlite`; default workspace engine.paths.workspace_dir().
        Raises StoreError for a workspace written by a newer schema, StoreOpenError (a StoreError) when
        it cannot be opened: locked by another writer, a read-only file system, a missing folder, not a
        database."""
        self.workspace = Path(workspace).expanduser().resolve() if workspace else paths.workspace_dir()
        self.db_path = self.workspace / "store.sqlite"
        self.images_dir = self.workspace / "images"
        self.masks_dir = self.workspace / "masks"
        self.writers_dir = self.workspace / ".writers"  # live importers' markers (engine.atomic.writer_marker)
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
            self.images_dir.mkdir(exist_ok=True)
            self.masks_dir.mkdir(exist_ok=True)
        except OSError as e:  # read-only, missing mount, a file where the folder should be
            raise open_error(e, self.workspace, self.db_path, self.busy_timeout_s) from e
        self._salt: bytes | None = None
        self._open_database()

    def __repr__(self) -> str:
        return f"Store({str(self.workspace)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
