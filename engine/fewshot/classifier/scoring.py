"""Batch scoring: many images through a saved classifier -> one row per image -> a CSV a spreadsheet can open.

**Training images are marked.** An image's key is the workspace store's content hash: sha256 of the
quantized pixels (dtype, shape, bytes; `engine.store.pixels.pixel_sha256` after `quantize` to the source's
bit depth), so the same X-ray matches whether it arrives as a workspace PNG, the original file or a copy in
a ZIP. A classifier records its training images' keys (`Classifier.training_keys`, written by
`build_classifier` from a manifest); a scored image whose key is among them is flagged `training_image`:
its score says nothing about new images (the classifier saw it with its label).

**CSV cells that start with = + - @ (or a tab / carriage return) are written with a leading apostrophe**
so a spreadsheet shows them as text instead of running them as formulas (OWASP, "CSV Injection").
"""
from __future__ import annotations

import csv
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from engine.events import OnEvent, check_stop, emit

__all__ = ["CSV_COLUMNS", "ScoreRow", "count_source", "csv_cell", "image_key", "is_training_image", "iter_source",
           "manifest_image_keys", "score_items", "scores_csv_text", "write_scores_csv"]

CSV_COLUMNS = ("image", "probability", "verdict", "unfamiliar", "training_image", "error")
FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
MAX_MEMBER_BYTES = 256 * 2**20  # one image inside a ZIP
MAX_MEMBER_RATIO = 200.0  # declared : packed (engine.store.imports.member_refusal)
BATCH = 16  # images per forward pass


def image_key(img: np.ndarray, bits: int) -> str:
    """The store's content key of a decoded image (float32 HxW in [0, 1], source bit depth `bits`)."""
    from engine.store.pixels import pixel_sha256, quantize

    return pixel_sha256(quantize(np.asarray(img, dtype=np.float32), int(bits)))


def _read(src: bytes | str | Path, name: str) -> tuple[np.ndarray, str]:
    """(image float32 HxW, key). Raises ImageReadError / FileNotFoundError."""
    from engine.data.io import read_image

    img, meta = read_image(src, name=name)
    return img, image_key(img, meta.bits)


def manifest_image_keys(manifest: str | Path, finding: str) -> tuple[str, ...]:
    """Keys of the manifest's images with a known label for `finding` (the images a classifier built from it
    trains on), sorted. Raises what `load_manifest` / `read_image` raise."""
    from engine.data.manifest import load_manifest

    man = load_manifest(manifest)
    lab = man.labels(finding)
    paths = man.df["path"].to_numpy()[~np.isnan(lab)]
    return tuple(sorted({_read(p, "a training image")[1] for p in paths}))


def iter_source(source: str | Path) -> Iterator[tuple[str, bytes | Path | str]]:
    """(display name, bytes or path) of every image in a folder (recursive, by content) or a ZIP archive;
    an item whose value is a str is a refusal (why it was not read). Lazy: a ZIP member is read when its item
    is reached. Raises FileNotFoundError / ValueError when the source is neither."""
    from engine.data.listing import is_ignored, list_images
    from engine.store.imports import member_refusal

    p = Path(source)
    if p.is_dir():
        listing = list_images(p)
        for f in listing.files:
            yield str(Path(f).relative_to(listing.root)), Path(f)
        for rel, why in listing.skipped:
            yield rel, f"skipped: {why}"
        return
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give a folder of images or a ZIP archive")
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{p} is neither a folder nor a ZIP archive of images")
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            if info.is_dir() or is_ignored(info.filename):
                continue
            why = member_refusal(info, MAX_MEMBER_BYTES, MAX_MEMBER_RATIO)
            yield info.filename, (f"skipped: {why}" if why else zf.read(info))


def count_source(source: str | Path) -> int:
    """How many items `iter_source` yields (without reading any image's bytes)."""
    from engine.data.listing import is_ignored, list_images

    p = Path(source)
    if p.is_dir():
        listing = list_images(p)
        return len(listing.files) + len(listing.skipped)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return 0  # iter_source says what is wrong
    with zipfile.ZipFile(p) as zf:
        return sum(1 for i in zf.infolist() if not i.is_dir() and not is_ignored(i.filename))


@dataclass(frozen=True)
class ScoreRow:
    """One scored image. probability / verdict / unfamiliar are None when `error` says why it was not scored."""

    image: str
    probability: float | None
    verdict: str | None  # "<finding> likely" | "<finding> unlikely"
    unfamiliar: bool | None
    training_image: bool
    error: str | None = None
    key: str = ""

    def as_csv(self) -> list[Any]:
        p = "" if self.probability is None else f"{self.probability:.4f}"
        flag = lambda v: "" if v is None else ("yes" if v else "no")  # noqa: E731
        return [self.image, p, self.verdict or "", flag(self.unfamiliar), flag(self.training_image), self.error or ""]


def _score_batch(clf: Any, batch: list[tuple[str, np.ndarray, str]], threshold: float, train: set[str]
                 ) -> list[ScoreRow]:
    res = clf.predict([img for _, img, _ in batch], threshold=threshold)
    return [ScoreRow(name, r["probability"], f"{clf.finding} {'likely' if r['label'] else 'unlikely'}",
                     r["unfamiliar"], key in train, None, key) for (name, _, key), r in zip(batch, res)]


def score_items(clf: Any, items: Iterable[tuple[str, bytes | Path | str]], threshold: float | None = None,
                total: int | None = None, on_event: OnEvent | None = None, stop: threading.Event | None = None
                ) -> list[ScoreRow]:
    """Score (name, bytes | path) items with a Classifier at `threshold` (default: its operating point), BATCH
    images per forward pass. An unreadable item, or one given as a refusal text (see `iter_source`), becomes a
    row with `error`; one bad image never stops the others. Emits progress; raises Cancelled on `stop`."""
    from engine.data.io import ImageReadError
    from engine.fewshot.classifier.errors import ClassifierScoreError

    t = clf.threshold if threshold is None else float(threshold)
    train = set(getattr(clf, "training_keys", ()) or ())
    done: dict[int, ScoreRow] = {}  # item index -> row (rows come back in the items' order)
    batch: list[tuple[str, np.ndarray, str]] = []
    where: list[int] = []

    def flush() -> None:
        if not batch:
            return
        try:
            done.update(zip(where, _score_batch(clf, batch, t, train)))
        except ClassifierScoreError:  # find the image(s) at fault: score one by one
            for i, one in zip(where, batch):
                try:
                    done[i] = _score_batch(clf, [one], t, train)[0]
                except ClassifierScoreError as e:
                    done[i] = ScoreRow(one[0], None, None, None, one[2] in train, str(e), one[2])
        batch.clear()
        where.clear()
        emit(on_event, step=len(done), total=total, message=f"scored {len(done)} images")

    for i, (name, src) in enumerate(items):
        check_stop(stop)
        if isinstance(src, str):
            done[i] = ScoreRow(name, None, None, None, False, src)
            continue
        try:
            img, key = _read(src, "the file")
        except (ImageReadError, FileNotFoundError, OSError) as e:
            done[i] = ScoreRow(name, None, None, None, False, str(e))
            continue
        batch.append((name, img, key))
        where.append(i)
        if len(batch) >= BATCH:
            flush()
    flush()
    return [done[i] for i in sorted(done)]


def csv_cell(value: Any) -> str:
    """A value as CSV text, with a leading apostrophe when it starts with = + - @ tab or CR (so a spreadsheet
    never runs it as a formula; OWASP "CSV Injection")."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_LEAD) else text


def scores_csv_text(rows: Sequence[ScoreRow]) -> str:
    """The CSV (header CSV_COLUMNS, one line per row, formula-leading cells escaped) as text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([csv_cell(v) for v in r.as_csv()])
    return buf.getvalue()


def write_scores_csv(rows: Sequence[ScoreRow], path: str | Path) -> Path:
    """Write `scores_csv_text(rows)` to `path` atomically; returns the path."""
    from engine.atomic import atomic_write_text

    return atomic_write_text(Path(path), scores_csv_text(rows))


def is_training_image(clf: Any, src: bytes | str | Path) -> bool:
    """Whether the image (path or bytes) is one of the classifier's training images (same pixels).
    Raises ImageReadError / FileNotFoundError for an unreadable image."""
    keys = getattr(clf, "training_keys", ()) or ()
    return bool(keys) and _read(src, "the file")[1] in set(keys)
