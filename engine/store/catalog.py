"""What the workspace holds, read back: the image table with its labels, one image's row, pixels,
thumbnail and regions; and deleting images. Paths come back absolute (rows keep them relative)."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from engine.store.errors import StoreError
from engine.store.files import write_atomic
from engine.store.pixels import decode_png, encode_png

__all__ = ["CatalogMixin"]

_IMAGE_COLUMNS = ["id", "name", "width", "height", "source_format", "created", "bits", "photometric",
                  "modality", "view", "split", "file", "name_key"]


def _thumbnail_of(path: Path, size: int) -> np.ndarray:
    """uint8 HxW thumbnail of a stored PNG, longer side `size` (16-bit images keep their top byte)."""
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    im = Image.fromarray(arr)
    im.thumbnail((int(size), int(size)), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im)


def _with_labels(df: pd.DataFrame, lab: pd.DataFrame, fnames: list[str]) -> pd.DataFrame:
    """Add one float column per finding (1.0 / 0.0 / NaN) to the image table `df` from label rows."""
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


class CatalogMixin:
    """Store methods reading images back, and deleting them (mixed into engine.store.Store)."""

    workspace: Path

    def images(self, finding: str | None = None) -> pd.DataFrame:
        """One row per image (ordered by id): id, name, width, height, source_format, created, bits,
        photometric, modality, view, split, file (absolute path), name_key (keyed hash of the original
        base name, None for images imported before v4; see `name_key`), then one column per finding
        (1.0 / 0.0 / NaN) -- only `finding`'s column when it is given (ValueError when unknown)."""
        with self._read() as c:
            fnames = [r[0] for r in c.execute("SELECT name FROM findings ORDER BY rowid")]
            if finding is not None:
                if finding not in fnames:
                    raise ValueError(f"unknown finding {finding!r}; known findings: {', '.join(fnames) or 'none'}")
                fnames = [finding]
            df = pd.DataFrame(c.execute(f"SELECT {', '.join(_IMAGE_COLUMNS)} FROM images ORDER BY id").fetchall(),
                              columns=_IMAGE_COLUMNS)
            q = "SELECT image_id, finding, value FROM labels"
            lab = pd.DataFrame(c.execute(q + (" WHERE finding=?" if finding else ""),
                                         (finding,) if finding else ()).fetchall(),
                               columns=["image_id", "finding", "value"])
        df["file"] = [str(self.workspace / f) for f in df["file"]]
        return _with_labels(df, lab, fnames)

    def _image_row(self, image_id: int) -> sqlite3.Row:
        row = self._conn().execute("SELECT * FROM images WHERE id=?", (int(image_id),)).fetchone()
        if row is None:
            raise KeyError(f"no image with id {image_id} in the workspace {self.workspace}")
        return row

    def image_file(self, image_id: int) -> Path:
        """Absolute path of the stored PNG (KeyError for an unknown id)."""
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
        out = _thumbnail_of(self.workspace / row["file"], size)
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
