"""`load_manifest`: read a manifest CSV and report every problem at once (`ManifestError`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.manifest.model import RESERVED, _lines, _listed, Manifest, ManifestError, _missing_problem, _resolve
from engine.data.manifest.regions import _load_boxes, _load_masks
from engine.data.manifest.table import _read_csv


def _label_numbers(col: pd.Series) -> np.ndarray:
    """A finding column's cells (text as written, NaN blank) -> float64; text that is no number -> NaN."""
    if col.dtype.kind in "iuf":
        return col.to_numpy(dtype=np.float64)
    return pd.to_numeric(col.astype("string").str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _binary_problems(col: pd.Series, name: str) -> str | None:
    """Describe the values of a finding column other than 1, 0 or blank (None when all are fine).

    Offending cells are quoted as the text the user wrote (e.g. 'True', 'yes', '-1')."""
    num = _label_numbers(col)
    bad = col.notna().to_numpy() & ~((num == 0) | (num == 1))
    if not bad.any():
        return None
    lines = _lines(bad)
    examples = [f"line {ln}: '{col.iloc[ln - 2]}'" for ln in lines[:5]]
    return (f"column {name!r} has values other than 1, 0 or blank on {len(lines)} row(s) ({'; '.join(examples)}"
            f"{'; ...' if len(lines) > 5 else ''}); use 1 = present, 0 = absent, blank = unknown")


def load_manifest(csv_path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest CSV (and boxes.csv / masks.csv beside it).

    Raises `ManifestError` listing all problems: missing columns or files, label values other than
    1/0/blank, no finding columns, duplicate paths, boxes/masks naming unknown images or findings.
    A finding with only one class is *not* an error here (it is flagged in `counts()`); tasks call
    `validate_finding` before training on it.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise ManifestError([f"manifest file not found: {csv_path}"], csv_path)
    root = csv_path.parent
    problems: list[str] = []
    raw = _read_csv(csv_path, problems)
    if raw is None:
        raise ManifestError(problems, csv_path)
    empty_unnamed = [c for c in raw.columns if c.startswith("Unnamed:") and raw[c].isna().all()]
    raw = raw.drop(columns=empty_unnamed)  # a separator at the end of every line (spreadsheet exports)
    if "path" not in raw.columns:
        problems.append(f"no 'path' column (columns are: {', '.join(map(str, raw.columns))}); the first "
                        "column must be `path`, the image file relative to the CSV's folder (columns may be "
                        "separated by commas, semicolons or tabs)")
        raise ManifestError(problems, csv_path)
    if len(raw) == 0:
        problems.append("the manifest has a header but no rows")
    findings = _finding_columns(raw, problems)
    paths = _image_paths(raw, root, check_files, problems)
    df = _table(raw, pd.Series(paths, index=raw.index), findings)
    known = set(paths)
    boxes = _load_boxes(root / "boxes.csv", root, known, set(findings), problems)
    masks = _load_masks(root / "masks.csv", root, known, set(findings), problems, check_files)
    if problems:
        raise ManifestError(problems, csv_path)
    return Manifest(csv_path=csv_path, root=root, df=df.reset_index(drop=True), findings=findings,
                    boxes=boxes, masks=masks)


def _finding_columns(raw: pd.DataFrame, problems: list[str]) -> list[str]:
    """The finding columns of a manifest read by `_read_csv`; adds to `problems` unnamed columns, no
    finding at all and label values other than 1 / 0 / blank."""
    findings = [c for c in raw.columns if c not in RESERVED and not c.startswith("Unnamed:")]
    unnamed = [c for c in raw.columns if c.startswith("Unnamed:")]
    if unnamed:
        problems.append(f"{len(unnamed)} column(s) without a name in the header; give every finding column a name")
    if not findings:
        problems.append("no finding columns: after path/patient_id/split add one column per finding "
                        "(1 = present, 0 = absent, blank = unknown)")
    for f in findings:
        msg = _binary_problems(raw[f], f)
        if msg:
            problems.append(msg)
    return findings


def _image_paths(raw: pd.DataFrame, root: Path, check_files: bool, problems: list[str]) -> list[str]:
    """The absolute image path of each row (relative ones read from `root`); adds to `problems` empty
    paths, paths on more than one row and (with `check_files`) files that do not exist."""
    rel = raw["path"].fillna("").astype(str).str.strip()
    blank = (rel == "").to_numpy()
    if blank.any():
        problems.append(f"{int(blank.sum())} row(s) have an empty path: " + _listed(_lines(blank), "lines "))
    paths = _resolve(root, rel.tolist())
    dup = pd.Series(paths, index=raw.index).duplicated(keep=False).to_numpy() & ~blank
    if dup.any():
        names = sorted(set(rel[dup]))
        problems.append(f"{len(names)} image path(s) appear on more than one row (merge their labels into one "
                        "row): " + _listed(names))
    if check_files:
        msg = _missing_problem([p for p, b in zip(paths, blank) if not b], root, "image file(s)")
        if msg:
            problems.append(msg)
    return paths


def _table(raw: pd.DataFrame, abs_paths: pd.Series, findings: list[str]) -> pd.DataFrame:
    """`Manifest.df`: path, patient_id (the path when blank or absent), split ('' when absent) and one
    float32 column per finding (1 / 0 / NaN)."""
    df = pd.DataFrame({"path": abs_paths})
    if "patient_id" in raw.columns:
        pid = raw["patient_id"].fillna("").astype(str).str.strip()
        df["patient_id"] = pid.where(pid != "", abs_paths)
    else:
        df["patient_id"] = abs_paths
    df["split"] = raw["split"].fillna("").astype(str).str.strip() if "split" in raw.columns else ""
    labels = {f: _label_numbers(raw[f]).astype(np.float32) for f in findings}
    return pd.concat([df, pd.DataFrame(labels, index=df.index, columns=findings)], axis=1)
