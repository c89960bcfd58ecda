"""Pure helpers for labeling (no streamlit calls): label CSVs and the tick-box editor's rows."""
from __future__ import annotations

import io
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

NAME_COLUMNS = ("name", "path", "file", "filename", "image")
NON_FINDING_COLUMNS = {"name", "path", "file", "filename", "image", "patient_id", "split", "id"}


class LabelCSVError(ValueError):
    """A label CSV the app cannot use; the message says what to fix."""


def _basename(p: str) -> str:
    p = str(p).strip()
    return (PureWindowsPath(p) if "\\" in p else PurePosixPath(p)).name


def _value(v: object) -> int | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    s = str(v).strip().lower()
    if s in ("", "nan", "-1", "unknown", "u", "?"):
        return None
    if s in ("1", "1.0", "yes", "y", "true", "present", "positive", "pos"):
        return 1
    if s in ("0", "0.0", "no", "n", "false", "absent", "negative", "neg"):
        return 0
    raise LabelCSVError(f"unknown label value {v!r}: use 1 (present), 0 (absent) or leave the cell blank (unknown)")


def labels_from_csv(data: bytes, images: pd.DataFrame) -> tuple[dict[str, dict[int, int | None]], list[str]]:
    """Match a label CSV to the workspace's images by file name.

    The CSV needs one name column (`name`, `path`, `file`, `filename` or `image`; folders are ignored,
    only the file name is matched) and one column per finding with 1 / 0 / blank. Returns
    `({finding: {image_id: 1 | 0 | None}}, names in the CSV that match no image)`.
    """
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise LabelCSVError(f"could not read the CSV ({e}); save it as comma-separated UTF-8 text") from e
    cols = {c.lower().strip(): c for c in df.columns}
    name_col = next((cols[c] for c in NAME_COLUMNS if c in cols), None)
    if name_col is None:
        raise LabelCSVError(f"the CSV needs a column with the image file names, called one of: {', '.join(NAME_COLUMNS)}")
    findings = [c for c in df.columns if c.lower().strip() not in NON_FINDING_COLUMNS]
    if not findings:
        raise LabelCSVError("the CSV has no finding columns: add one column per finding with 1, 0 or blank")
    by_name: dict[str, list[int]] = {}
    for iid, name in zip(images["id"], images["name"]):
        by_name.setdefault(_basename(name), []).append(int(iid))
    out: dict[str, dict[int, int | None]] = {f.strip(): {} for f in findings}
    unmatched: list[str] = []
    problems: list[str] = []
    for _, row in df.iterrows():
        ids = by_name.get(_basename(row[name_col]))
        if not ids:
            unmatched.append(str(row[name_col]))
            continue
        for f in findings:
            try:
                v = _value(row[f])
            except LabelCSVError as e:
                problems.append(f"row {row[name_col]!r}, column {f!r}: {e}")
                continue
            for iid in ids:
                out[f.strip()][iid] = v
    if problems:
        raise LabelCSVError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return out, unmatched


def editor_rows(images: pd.DataFrame, finding: str) -> pd.DataFrame:
    """Rows of the tick-box editor: id, name, Present, Absent (both unticked = unlabeled)."""
    lab = images[finding] if finding in images.columns else pd.Series(np.nan, index=images.index)
    return pd.DataFrame({
        "id": images["id"].astype(int).to_numpy(),
        "name": images["name"].astype(str).to_numpy(),
        "Present": (lab == 1).to_numpy(),
        "Absent": (lab == 0).to_numpy(),
    })


def label_changes(before: pd.DataFrame, after: pd.DataFrame) -> tuple[dict[int, int | None], list[str]]:
    """Label updates implied by the editor (only rows that changed) and names ticked both ways."""
    changes: dict[int, int | None] = {}
    both: list[str] = []
    for (_, b), (_, a) in zip(before.iterrows(), after.iterrows()):
        if bool(a["Present"]) and bool(a["Absent"]):
            both.append(str(a["name"]))
            continue
        if bool(a["Present"]) == bool(b["Present"]) and bool(a["Absent"]) == bool(b["Absent"]):
            continue
        changes[int(a["id"])] = 1 if a["Present"] else 0 if a["Absent"] else None
    return changes, both



def upload_labels(imported: list[tuple[int, str, bool]], existing: pd.Series | None,
                  value: int) -> tuple[dict[int, int], list[str]]:
    """Labels for freshly uploaded images: `value` for each, except duplicates already labeled the
    other way (their labels are kept, never silently flipped). `imported` holds (image_id, name,
    duplicate); `existing` maps image id -> current label (NaN = unlabeled) or is None.
    Returns (labels to set, names whose label was kept)."""
    labels: dict[int, int] = {}
    kept: list[str] = []
    for image_id, name, duplicate in imported:
        old = existing.get(image_id, np.nan) if existing is not None else np.nan
        if duplicate and not np.isnan(old) and int(old) != value:
            kept.append(name)
        else:
            labels[int(image_id)] = value
    return labels, kept
