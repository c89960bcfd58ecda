"""Importing a manifest CSV (engine.data.manifest) with its boxes.csv / masks.csv: pixels, labels and
regions, all or nothing.

Images are decoded in a small thread pool (`Store.import_workers`); every problem (missing files,
unknown values, unreadable images, masks that do not fit their image) is collected and raised as one
ManifestError before any row is written. Pixel and mask files written on the way are removed again
when anything fails (or on Cancelled); the rows commit in one transaction at the end.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from engine.events import OnEvent, check_stop, emit
from engine.store.errors import ImportResult, ImportSummary, StoreError
from engine.store.files import write_atomic, writes
from engine.store.labels import check_finding_name
from engine.store.pixels import encode_png, pixel_sha256

if TYPE_CHECKING:
    from engine.data.io import ImageMeta
    from engine.data.manifest import Manifest

__all__ = ["ManifestImportMixin"]

Region = tuple  # (row, finding, kind "box"|"mask", x, y, w, h, mask_file or None)


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


def _checked_manifest(csv_path: Path | str) -> Manifest:
    """Load a manifest and check its finding columns (names, both classes present); ManifestError
    listing every problem."""
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
    return m


def _display(p: str, root: Path) -> str:
    """A manifest row's name: its path relative to the manifest's folder (else the file name)."""
    try:
        return Path(p).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(p).name


@dataclass
class _Rows:
    """What preparing a manifest's images found, row by row."""

    shas: list[str | None] = field(default_factory=list)  # per row; None = duplicate of an already-stored image
    ids: dict[int, int] = field(default_factory=dict)       # row -> existing image id (duplicates)
    metas: dict[str, ImageMeta] = field(default_factory=dict)
    sources_of: dict[str, str] = field(default_factory=dict)
    first_row: dict[str, int] = field(default_factory=dict)

    def add(self, i: int, res: ImportResult | tuple, problems: list[str]) -> None:
        """Record row `i`'s outcome (IngestMixin._prepare); an error goes to `problems`."""
        if isinstance(res, ImportResult):
            if res.error:
                problems.append(f"row {i + 2}: {res.error}")
            else:
                self.ids[i] = int(res.image_id)
            self.shas.append(None)
            return
        sha, meta, _, source = res
        self.metas[sha] = meta
        self.sources_of.setdefault(sha, source)
        self.first_row.setdefault(sha, i)
        self.shas.append(sha)


def _manifest_boxes(m: Manifest, row_of: Mapping[str, int], problems: list[str]) -> list[Region]:
    """The boxes of boxes.csv as regions; rows not in the manifest or bad names go to `problems`."""
    out: list[Region] = []
    if m.boxes is None:
        return out
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
    return out


def _write_labels(c: sqlite3.Connection, m: Manifest, row_ids: Sequence[int], now: float) -> int:
    """Write the manifest's findings and label cells (blank cells are not written); returns the count."""
    c.executemany("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", [(f, now) for f in m.findings])
    n_labels = 0
    for f in m.findings:
        vals = m.df[f].to_numpy(dtype=float)
        rows = [(row_ids[i], f, int(v)) for i, v in enumerate(vals) if not np.isnan(v)]
        c.executemany("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", rows)
        n_labels += len(rows)
    return n_labels


def _write_regions(c: sqlite3.Connection, regions: Sequence[Region], row_ids: Sequence[int], now: float) -> int:
    """Replace the images' regions of the same finding and kind by the manifest's; returns the count."""
    reg_rows = [(row_ids[i], f, kind, x, y, w, h, mf) for (i, f, kind, x, y, w, h, mf) in regions]
    c.executemany("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)",
                  sorted({(r[1], now) for r in reg_rows}))
    c.executemany("DELETE FROM regions WHERE image_id=? AND finding=? AND kind=?",
                  sorted({(r[0], r[1], r[2]) for r in reg_rows}))
    c.executemany("INSERT INTO regions(image_id, finding, kind, x, y, w, h, mask_file)"
                  " VALUES (?,?,?,?,?,?,?,?)", reg_rows)
    return len(reg_rows)


class ManifestImportMixin:
    """Store.import_manifest and its steps (mixed into engine.store.Store)."""

    workspace: Path
    images_dir: Path
    import_workers: int

    @writes
    def import_manifest(self, csv_path: Path | str, on_event: OnEvent | None = None,
                        stop: threading.Event | None = None, keep_names: bool = False) -> ImportSummary:
        """Import a manifest CSV (with boxes.csv / masks.csv beside it): pixels, labels, regions.

        All or nothing. Manifest problems (missing files, unknown values, a finding with only one
        class, unreadable images, masks that do not fit their image) raise ManifestError listing
        every problem, before anything is written. A row whose pixels are already stored is a
        duplicate: its labels and regions are updated, no second image is created. Masks are copied
        into <workspace>/masks/. On `stop`, everything written so far is removed and Cancelled raised.
        New images are named `image-<id>` unless `keep_names` (then: the path relative to the CSV).
        Raises DiskFullError (nothing changed) on a full disk.
        """
        from engine.data.manifest import ManifestError

        m = _checked_manifest(csv_path)
        paths_ = [str(p) for p in m.df["path"]]
        known = dict(self._conn().execute("SELECT sha256, id FROM images").fetchall())
        new_files: set[str] = set()
        problems: list[str] = []
        emit(on_event, step=0, total=len(paths_), message=f"importing {len(paths_)} images from {csv_path}",
             kind="log")
        try:
            rows = self._prepare_rows(paths_, Path(m.root), known, new_files, problems, on_event, stop)
            if problems:
                raise ManifestError(problems, m.csv_path)
            size_of = self._sizes(rows.ids, rows.metas, rows.shas)
            regions = self._manifest_regions(m, size_of, problems, new_files, stop)
            if problems:
                raise ManifestError(problems, m.csv_path)
            with self._tx() as c:
                row_ids, n_new = self._insert_rows(c, m, rows, paths_, keep_names)
                now = time.time()
                n_labels = _write_labels(c, m, row_ids, now)
                n_regions = _write_regions(c, regions, row_ids, now)
        except BaseException:
            self._discard_files(new_files)
            raise
        emit(on_event, step=len(paths_), total=len(paths_), kind="log",
             message=f"imported {n_new} new images ({len(paths_) - n_new} already stored), "
                     f"{n_labels} labels, {n_regions} regions")
        return ImportSummary(images=n_new, duplicates=len(paths_) - n_new, labels=n_labels,
                             regions=n_regions, findings=list(m.findings), image_ids=row_ids)

    def _prepare_rows(self, paths_: Sequence[str], root: Path, known: Mapping[str, int], new_files: set[str],
                      problems: list[str], on_event: OnEvent | None, stop: threading.Event | None) -> _Rows:
        """Decode, dedupe and write the pixels of every row (thread pool); pixel files written are
        added to `new_files` as they are written, errors to `problems`."""
        def prepare(p: str):
            res = self._prepare(_display(p, root), Path(p), known)
            if isinstance(res, tuple) and res[2]:
                new_files.add(f"images/{res[0]}.png")  # tracked here so a failure elsewhere still cleans it
            return res

        rows = _Rows()
        results = _bounded_map(prepare, paths_, self.import_workers)
        try:
            for i, res in enumerate(results):
                check_stop(stop)
                rows.add(i, res, problems)
                emit(on_event, step=i + 1, total=len(paths_), kind="progress")
        finally:
            results.close()  # waits for in-flight workers so every file they wrote is in new_files
        return rows

    def _insert_rows(self, c: sqlite3.Connection, m: Manifest, rows: _Rows, paths_: Sequence[str],
                     keep_names: bool) -> tuple[list[int], int]:
        """(image id of every manifest row, number of new images), inserting the new ones inside the
        caller's transaction. StoreError when a pixel file vanished (a cleanup ran meanwhile)."""
        df, root = m.df, Path(m.root)
        row_ids: list[int] = []
        n_new = 0
        for i, sha in enumerate(rows.shas):
            if sha is None:
                row_ids.append(rows.ids[i])
                continue
            got = c.execute("SELECT id FROM images WHERE sha256=?", (sha,)).fetchone()
            if got is None and not (self.images_dir / f"{sha}.png").exists():
                raise StoreError(f"row {i + 2}: its pixel file was removed by a workspace cleanup while "
                                 "this import ran; nothing was imported, run the import again")
            if got is None:
                pid = str(df["patient_id"].iloc[i]) if "patient_id" in df.columns else ""
                key = self._patient_key(pid) if pid and pid != paths_[i] else None
                split = str(df["split"].iloc[i]) if "split" in df.columns else ""
                got = (self._insert_image(c, sha, _display(paths_[rows.first_row[sha]], root), rows.metas[sha],
                                          key, split, keep_name=keep_names, source=rows.sources_of.get(sha)),)
                n_new += 1
            row_ids.append(int(got[0]))
        return row_ids, n_new

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

    def _manifest_regions(self, m: Manifest, size_of: Sequence[tuple[int, int]], problems: list[str],
                          new_files: set[str], stop: threading.Event | None) -> list[Region]:
        """Boxes and masks of a manifest as (row, finding, kind, x, y, w, h, mask_file); copies masks."""
        row_of = {str(p): i for i, p in enumerate(m.df["path"])}
        out = _manifest_boxes(m, row_of, problems)
        if m.masks is None:
            return out
        prep = partial(self._manifest_mask, row_of=row_of, size_of=size_of, new_files=new_files)
        results = _bounded_map(prep, list(m.masks.itertuples(index=False)), self.import_workers)
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

    def _manifest_mask(self, r: Any, row_of: Mapping[str, int], size_of: Sequence[tuple[int, int]],
                       new_files: set[str]) -> Region | str:
        """One masks.csv row as a region (the mask copied to masks/<sha256>.png, 8-bit 0/255, and
        added to `new_files` when new; x, y, w, h its bounding box), or what is wrong with it."""
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
