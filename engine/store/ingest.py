"""One image into the store: read, quantize, dedupe (by the file's bytes, then by its pixels), write
the PNG and insert its row (with an upload's label) in one transaction.

A file's bytes are hashed before decoding (`sources`: sha256 of the reader version + the bytes ->
image), so a file imported before is a duplicate without being decoded again. Pixel files are written
first and removed again when the transaction fails, so a failed import leaves neither a row nor a file.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.store.errors import FileVanished, ImportResult, StoreError
from engine.store.files import write_atomic
from engine.store.keys import neutral_name
from engine.store.pixels import encode_png, pixel_sha256, quantize, source_key

if TYPE_CHECKING:
    from engine.data.io import ImageMeta

__all__ = ["IngestMixin"]

_BYTES = (bytes, bytearray, memoryview)
Prepared = tuple[str, "ImageMeta", bool, str]  # (pixel sha256, meta, whether this call wrote the file, source key)


def _decode(name: str, src: bytes | Path, data: object) -> ImportResult | tuple[np.ndarray, ImageMeta]:
    """Read and quantize one image; an ImportResult with the error when it cannot be read."""
    from engine.data.io import ImageReadError, read_image

    try:
        # messages say "the file" rather than its path: a path may carry a patient's name
        img, meta = read_image(data, name=None if isinstance(src, _BYTES) else "the file")
    except ImageReadError as e:
        return ImportResult(name, None, f"{name}: {e}", False)
    except MemoryError:
        return ImportResult(name, None, f"{name}: too large to decode in the memory available", False)
    except Exception as e:  # a reader bug must not abort a whole batch; report it on the file
        return ImportResult(name, None, f"{name}: could not be read ({type(e).__name__}: {e})", False)
    return quantize(img, int(meta.bits)), meta


class IngestMixin:
    """Decode, dedupe and store single images (mixed into engine.store.Store)."""

    images_dir: Path

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
                    raise FileVanished(sha)
                image_id = self._insert_image(c, sha, name, meta, keep_name=keep_names, source=source)
                if label is not None:
                    self._label_upload(c, image_id, label, duplicate=False)
        except FileVanished:
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
                 ) -> ImportResult | Prepared:
        """Hash the file's bytes (a file seen before is a duplicate, not decoded again), else read +
        quantize + hash + write the PNG (when new). Returns an ImportResult for errors and duplicates,
        else (pixel sha256, meta, whether this call created the file, source key). `known` maps pixel
        sha256 -> image id (a manifest import's snapshot) instead of asking the database."""
        try:  # a named pipe is never read (it would block): read_image says what it is
            data = src if isinstance(src, _BYTES) else Path(src).read_bytes() if Path(src).is_file() else src
        except OSError:
            data = src  # missing, a folder, unreadable: read_image says which
        source = source_key(data) if isinstance(data, _BYTES) else None
        if source is not None:
            row = self._conn().execute("SELECT image_id FROM sources WHERE sha256=?", (source,)).fetchone()
            if row is not None:
                return ImportResult(name, int(row[0]), None, True)
        decoded = _decode(name, src, data)
        if isinstance(decoded, ImportResult):
            return decoded
        arr, meta = decoded
        sha = pixel_sha256(arr)
        existing = self._stored_id(sha, known)
        if existing is not None:
            if known is None and source is not None:
                self._remember_source(source, existing)
            return ImportResult(name, existing, None, True)
        return sha, meta, self._write_pixels(sha, arr), source or ""

    def _stored_id(self, sha: str, known: Mapping[str, int] | None) -> int | None:
        """Id of the image stored with these pixels, or None (from `known` when given)."""
        if known is not None:
            return known.get(sha)
        row = self._conn().execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
        return None if row is None else int(row[0])

    def _write_pixels(self, sha: str, arr: np.ndarray) -> bool:
        """Write `images/<sha>.png` unless it exists; returns whether this call wrote it."""
        dest = self.images_dir / f"{sha}.png"
        new_file = not dest.exists()
        if not new_file:  # left by an earlier (killed) import: adopt it, made as new as this import
            try:
                os.utime(dest)  # so remove_orphan_files keeps it while this import may still commit it
            except FileNotFoundError:
                new_file = True
        if new_file:
            write_atomic(dest, encode_png(arr))
        return new_file

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
