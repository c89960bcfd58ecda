"""Exporting stored images as a manifest CSV (engine.data.manifest), the only form in which the store
hands images to the engine: absolute PNG paths, keyed patient ids, split, one column per finding, plus
boxes.csv / masks.csv beside it. Every file is written atomically."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from engine.escaping import csv_safe
from engine.store.files import write_atomic

__all__ = ["ExportMixin"]

_REGION_COLUMNS = ["image_id", "finding", "kind", "x", "y", "w", "h", "mask_file"]


def _region_tables(regs: pd.DataFrame, path_of: dict[int, str], findings: list[str],
                   workspace: Path) -> dict[str, pd.DataFrame]:
    """{"boxes.csv": path, finding, x, y, w, h; "masks.csv": path, finding, mask_path} of the
    exported images' regions of `findings` (mask paths absolute)."""
    regs = regs[regs["image_id"].isin(path_of.keys()) & regs["finding"].isin(findings)]
    regs = regs.assign(path=regs["image_id"].map(path_of))
    boxes = regs[regs["kind"] == "box"][["path", "finding", "x", "y", "w", "h"]]
    masks = regs[regs["kind"] == "mask"]
    masks = pd.DataFrame({"path": masks["path"], "finding": masks["finding"],
                          "mask_path": [str(workspace / f) for f in masks["mask_file"]]})
    return {"boxes.csv": boxes, "masks.csv": masks}


class ExportMixin:
    """Store methods exporting manifests (mixed into engine.store.Store)."""

    workspace: Path

    def _export_selection(self, image_ids: Iterable[int] | None,
                          findings: Sequence[str] | None) -> tuple[pd.DataFrame, list[str]]:
        """(image table rows to export, findings to export); ValueError for unknown findings or ids,
        or when nothing would be exported."""
        df = self.images()
        all_f = list(self.findings())
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
        return df, fs

    def export_manifest(self, csv_path: Path | str, image_ids: Iterable[int] | None = None,
                        findings: Sequence[str] | None = None) -> Path:
        """Write a manifest CSV of stored images (absolute PNG paths; patient_id = the keyed patient
        hash when a manifest gave one, else "img<id>"; split; one column per finding, blank =
        unknown) plus boxes.csv / masks.csv beside it when there are regions (stale ones removed).
        Atomic per file; text cells a spreadsheet would run as a formula are escaped (engine.escaping.csv_safe). Raises ValueError for unknown findings or image ids, or no images."""
        csv_path = Path(csv_path)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        df, fs = self._export_selection(image_ids, findings)
        with self._read() as c:
            keys = dict(c.execute("SELECT id, patient_key FROM images WHERE patient_key IS NOT NULL").fetchall())
            regs = pd.DataFrame(c.execute(f"SELECT {', '.join(_REGION_COLUMNS)} FROM regions ORDER BY id").fetchall(),
                                columns=_REGION_COLUMNS)
        out = pd.DataFrame({
            "path": df["file"].to_numpy(),
            "patient_id": [keys.get(int(i), f"img{int(i)}") for i in df["id"]],
            "split": df["split"].to_numpy(),
        })
        for f in fs:
            out[f] = pd.array(df[f].to_numpy(), dtype="Int64")  # 1 / 0 / blank
        write_atomic(csv_path, csv_safe(out).to_csv(index=False).encode())  # e.g. a manifest's `split` cell

        path_of = dict(zip(df["id"].astype(int), df["file"]))
        for name, table in _region_tables(regs, path_of, fs, self.workspace).items():
            dest = csv_path.parent / name
            if len(table):
                write_atomic(dest, csv_safe(table).to_csv(index=False).encode())
            else:
                dest.unlink(missing_ok=True)
        return csv_path
