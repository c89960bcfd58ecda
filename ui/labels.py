"""Pure helpers for labeling (no streamlit calls): label CSVs and the tick-box editor's rows."""
from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable
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


def read_label_table(data: bytes) -> pd.DataFrame:
    """A label CSV as spreadsheet programs save it (the same rules as manifests, engine.data.manifest:
    UTF-8 with or without BOM, UTF-16, Windows-1252 / Latin-1; separated by commas, semicolons or
    tabs), every cell as the text written ("" for blank). Raises LabelCSVError saying what to fix."""
    from engine.data.manifest import decode_table, sniff_delimiter

    text, _encoding = decode_table(data)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise LabelCSVError("the CSV is empty: it needs a header row (name, then one column per finding)")
    sep = sniff_delimiter(lines[0])
    sep_name = {",": "commas", ";": "semicolons", "\t": "tabs"}[sep]
    width = len(next(csv.reader([lines[0]], delimiter=sep)))
    for n, row in enumerate(csv.reader(lines[1:], delimiter=sep), start=2):
        if any(c.strip() for c in row[width:]):  # pandas would shift such rows into the wrong columns
            raise LabelCSVError(f"line {n} has {len(row)} cells but the header has {width} (columns separated by "
                                f"{sep_name}); every row needs as many cells as the header")
    try:
        with warnings.catch_warnings():  # trailing empty cells (a separator at each line's end) are dropped
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False,
                             skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise LabelCSVError(f"could not read the CSV (columns separated by {sep_name}): {e}; every row needs as "
                            "many cells as the header") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df


def labels_from_csv(data: bytes, images: pd.DataFrame, name_key: Callable[[str], str] | None = None
                    ) -> tuple[dict[str, dict[int, int | None]], list[str]]:
    """Match a label CSV to the workspace's images by file name, after checking all of it.

    The CSV needs one name column (`name`, `path`, `file`, `filename` or `image`; folders are ignored,
    only the file name is matched) and one column per finding with 1 / 0 / blank. It is read as a
    spreadsheet saves it (`read_label_table`). Every finding column's name (engine.names rules) and
    every value of every row is checked first; all problems are reported together (which columns,
    which values on which lines). A row matches the images whose stored name has that file name, or,
    with `name_key` (`Store.name_key`) and a `name_key` column in `images`, the images imported from a
    file of that name (stored under a neutral name, the original only as its keyed hash). Returns
    `({finding: {image_id: 1 | 0 | None}}, names in the CSV that match no image)`; write it with
    `Store.set_labels_many` (one transaction). Raises LabelCSVError (a ValueError saying what to fix)
    for an unreadable CSV, a missing name or finding column, invalid finding names or unknown values.
    """
    df = read_label_table(data)
    cols = {c.lower().strip(): c for c in df.columns}
    name_col = next((cols[c] for c in NAME_COLUMNS if c in cols), None)
    if name_col is None:
        raise LabelCSVError(f"the CSV needs a column with the image file names, called one of: {', '.join(NAME_COLUMNS)}")
    findings = [c for c in df.columns if c.lower().strip() not in NON_FINDING_COLUMNS]
    if not findings:
        raise LabelCSVError("the CSV has no finding columns: add one column per finding with 1, 0 or blank")
    problems = _column_problems(df, findings)
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise LabelCSVError("nothing was labeled: " + "; ".join(problems[:8]) + more)
    values = {f: df[f].map(_value) for f in findings}
    by_name: dict[str, list[int]] = {}
    for iid, name in zip(images["id"], images["name"]):
        by_name.setdefault(_basename(name), []).append(int(iid))
    by_key: dict[str, list[int]] = {}
    if name_key is not None and "name_key" in images.columns:
        for iid, key in zip(images["id"], images["name_key"]):
            if isinstance(key, str) and key:
                by_key.setdefault(key, []).append(int(iid))
    out: dict[str, dict[int, int | None]] = {f.strip(): {} for f in findings}
    unmatched: list[str] = []
    for k, cell in enumerate(df[name_col]):
        base = _basename(cell)
        ids = sorted(set(by_name.get(base, [])) | set(by_key.get(name_key(base), []) if by_key else []))
        if not ids:
            unmatched.append(str(cell))
        for f in findings:
            v = values[f].iat[k]
            for iid in ids:
                out[f.strip()][iid] = None if v is None or v != v else int(v)
    return out, unmatched


def _column_problems(df: pd.DataFrame, findings: list[str]) -> list[str]:
    """Every invalid finding column name and every column's unknown values (with their CSV lines)."""
    from engine.store import check_finding_name

    problems: list[str] = []
    for f in findings:
        try:
            check_finding_name(f)
        except ValueError as e:
            problems.append(f"column {f!r} is not a valid finding name ({e})")
    for f in findings:
        bad = {}
        for u in df[f].unique():
            try:
                _value(u)
            except LabelCSVError:
                bad[u] = [int(i) + 2 for i in np.flatnonzero((df[f] == u).to_numpy())[:3]]  # +2: header, 1-based
        if bad:
            shown = ", ".join(f"{u!r} (line {', '.join(map(str, lines))})" for u, lines in list(bad.items())[:5])
            problems.append(f"column {f!r} has unknown label values {shown}: use 1 (present), 0 (absent) or leave the "
                            "cell blank (unknown)")
    return problems


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
