"""Writing manifests: `manifest_csv_text` (fast label rendering) and `write_manifest` (atomic, with
boxes.csv / masks.csv), image paths relative to the CSV's folder when inside it."""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from engine.atomic import atomic_write_text
from engine.data.manifest.model import BOX_COLUMNS, MASK_COLUMNS, RESERVED
from engine.escaping import csv_safe, csv_safe_cell, csv_safe_path


def relative_paths(paths: Iterable[str], folder: Path) -> list[str]:
    """Paths inside `folder` become relative to it (POSIX separators); others stay absolute."""
    base = str(folder.resolve())
    prefix = base.rstrip(os.sep) + os.sep
    out = []
    for p in paths:
        p = str(p)
        a = p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
        out.append(a[len(prefix):].replace(os.sep, "/") if a.startswith(prefix) else a)
    return out


def manifest_csv_text(df: pd.DataFrame, folder: Path) -> str:
    """The CSV text `write_manifest` writes (exposed for tests and previews).

    Label cells are rendered with numpy as one fixed-width byte block (``'1,'`` / ``'0,'`` / NUL for
    blank, stripped afterwards) instead of pandas' per-cell formatting, which took ~15 s for
    PadChest's 160k rows x 192 findings.
    """
    if "path" not in df.columns:
        raise ValueError("manifest DataFrame needs a 'path' column")
    findings = [c for c in df.columns if c not in RESERVED]
    if not findings:
        raise ValueError("manifest DataFrame has no finding columns")
    try:
        values = df[findings].to_numpy(dtype=np.float32)  # (N, F)
    except (TypeError, ValueError) as e:
        raise ValueError(f"finding columns must hold 1, 0 or NaN: {e}") from None
    bad = ~(np.isnan(values) | (values == 0) | (values == 1))
    if bad.any():
        raise ValueError(f"finding columns must hold 1, 0 or NaN; found {values[bad][:5].tolist()}")
    n, f = values.shape
    block = np.full((n, 2 * f), ord(","), dtype=np.uint8)  # (N, 2F): value, separator, value, ...
    block[:, 0::2] = np.where(values == 1, ord("1"), np.where(values == 0, ord("0"), 0))
    block[:, -1] = ord("\n")
    cells = block.tobytes().decode("ascii")
    width = 2 * f
    prefix = [c for c in RESERVED if c in df.columns]  # path first, then patient_id / split
    cols = [[csv_safe_path(p) for p in relative_paths(df["path"].astype(str), folder)]]
    cols += [[csv_safe_cell(v) for v in df[c].fillna("").astype(str)] for c in prefix[1:]]  # spreadsheet-safe
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(prefix + [csv_safe_cell(str(f)) for f in findings])
    w = csv.writer(buf, lineterminator=",")  # a prefix row ends with the separator before the labels
    for i, row in enumerate(zip(*cols)):
        w.writerow(row)
        buf.write(cells[i * width:(i + 1) * width])
    return buf.getvalue().replace("\x00", "")


def write_manifest(df: pd.DataFrame, csv_path: str | Path, boxes: pd.DataFrame | None = None,
                   masks: pd.DataFrame | None = None) -> Path:
    """Write a manifest (and boxes.csv / masks.csv beside it) atomically; returns the CSV path.

    `df` holds `path` (absolute, or relative to the CSV's folder), optional `patient_id` / `split`,
    and finding columns with 1 / 0 / NaN. Image paths inside the CSV's folder are written relative to
    it, others absolute. boxes/masks are written first, the manifest last, each atomically (engine.atomic).
    When `boxes` / `masks` are None an existing boxes.csv / masks.csv is left as it is.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    folder = csv_path.parent
    text = manifest_csv_text(df, folder)  # validate before touching anything
    if boxes is not None:
        missing = [c for c in BOX_COLUMNS if c not in boxes.columns]
        if missing:
            raise ValueError(f"boxes DataFrame misses column(s) {missing}")
        b = boxes[list(BOX_COLUMNS)].copy()
        b["path"] = relative_paths(b["path"].astype(str), folder)
        atomic_write_text(folder / "boxes.csv", csv_safe(b).to_csv(index=False, lineterminator="\n"))
    if masks is not None:
        missing = [c for c in MASK_COLUMNS if c not in masks.columns]
        if missing:
            raise ValueError(f"masks DataFrame misses column(s) {missing}")
        m = masks[list(MASK_COLUMNS)].copy()
        m["path"] = relative_paths(m["path"].astype(str), folder)
        m["mask_path"] = relative_paths(m["mask_path"].astype(str), folder)
        atomic_write_text(folder / "masks.csv", csv_safe(m).to_csv(index=False, lineterminator="\n"))
    atomic_write_text(csv_path, text)
    return csv_path
