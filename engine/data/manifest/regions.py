"""boxes.csv / masks.csv: read beside a manifest (by `load_manifest`) or given explicitly
(`load_regions`), validated against the manifest's images and findings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.manifest.model import (BOX_COLUMNS, MASK_COLUMNS, _lines, _listed, Manifest, ManifestError,
                                        _missing_problem, _resolve)
from engine.data.manifest.table import _read_csv


def _region_problems(df: pd.DataFrame, name: str, root: Path, known: set[str], findings: set[str],
                     problems: list[str]) -> pd.Series:
    """Shared checks of boxes.csv / masks.csv rows; returns the resolved absolute image paths."""
    rel = df["path"].fillna("").astype(str).str.strip()
    paths = pd.Series(_resolve(root, rel.tolist()), index=df.index)
    unknown = ~paths.isin(known).to_numpy()
    if unknown.any():
        problems.append(f"{name}: {int(unknown.sum())} row(s) name images that are not in the manifest: "
                        + _listed(sorted(set(rel[unknown]))))
    fin = df["finding"].fillna("").astype(str).str.strip()
    bad_f = ~fin.isin(findings).to_numpy()
    if bad_f.any():
        problems.append(f"{name}: {int(bad_f.sum())} row(s) name findings that are not manifest columns: "
                        + _listed(sorted(set(fin[bad_f]))) + f" (manifest findings: {', '.join(sorted(findings))})")
    df["finding"] = fin
    return paths


def _read_region_table(path: Path, name: str, columns: list[str] | tuple[str, ...],
                       problems: list[str]) -> pd.DataFrame | None:
    """The region CSV at `path` (None when absent); None with a problem when unreadable or lacking `columns`."""
    if not path.is_file():
        return None
    df = _read_csv(path, problems)
    if df is None:
        return None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        problems.append(f"{name}: missing column(s) {missing}; it needs {', '.join(columns)}")
        return None
    return df


def _load_boxes(path: Path, root: Path, known: set[str], findings: set[str],
                problems: list[str]) -> pd.DataFrame | None:
    df = _read_region_table(path, "boxes.csv", BOX_COLUMNS, problems)
    if df is None:
        return None
    abs_paths = _region_problems(df, "boxes.csv", root, known, findings, problems)
    cells = df[["x", "y", "w", "h"]].astype("string")
    if df.attrs.get("sep") == ";":  # semicolon CSVs come from decimal-comma locales: "12,5" is 12.5
        cells = cells.apply(lambda c: c.str.replace(",", ".", regex=False))
    xywh = cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(xywh).any(1) | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    if bad.any():
        problems.append("boxes.csv: x, y, w, h must be numbers with w > 0 and h > 0 (pixels of the original "
                        "image); not so on " + _listed(_lines(bad), "lines "))
    out = pd.DataFrame({"path": abs_paths, "finding": df["finding"]})
    out[["x", "y", "w", "h"]] = xywh
    return out.reset_index(drop=True)


def _load_masks(path: Path, root: Path, known: set[str], findings: set[str], problems: list[str],
                check_files: bool) -> pd.DataFrame | None:
    df = _read_region_table(path, "masks.csv", MASK_COLUMNS, problems)
    if df is None:
        return None
    abs_paths = _region_problems(df, "masks.csv", root, known, findings, problems)
    mask_paths = _resolve(root, df["mask_path"].fillna("").astype(str).str.strip().tolist())
    if check_files:
        msg = _missing_problem(mask_paths, root, "mask file(s) named in masks.csv")
        if msg:
            problems.append(msg)
    return pd.DataFrame({"path": abs_paths, "finding": df["finding"], "mask_path": mask_paths}).reset_index(drop=True)


def load_regions(csv_path: str | Path, manifest: "Manifest", kind: str) -> pd.DataFrame:
    """Read an explicit boxes.csv (`kind="box"`) or masks.csv (`kind="mask"`) for `manifest`.

    Paths in it are relative to its own folder. Validated like the ones beside a manifest;
    any problem raises ManifestError listing all of them.
    """
    p = Path(csv_path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"{kind} file not found: {p}")
    known, findings = set(manifest.df["path"]), set(manifest.findings)
    problems: list[str] = []
    if kind == "box":
        df = _load_boxes(p, p.parent, known, findings, problems)
    elif kind == "mask":
        df = _load_masks(p, p.parent, known, findings, problems, True)
    else:
        raise ValueError(f"kind must be 'box' or 'mask', not {kind!r}")
    if problems or df is None:
        raise ManifestError(problems or [f"{p} could not be read"], p)
    return df
