"""PadChest's label CSV (label lists as Python literals, projections) -> manifest CSV."""
from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.adapters.common import NORMAL_NAMES, finding_name, _report
from engine.data.manifest import write_manifest
from engine.events import OnEvent


PADCHEST_PROJECTIONS = ("PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK")  # `Projection` values
PADCHEST_DEFAULT_PROJECTIONS = ("PA", "AP")  # frontal views; AP_horizontal (supine) and L are opt-in
_PLAIN_ITEM = r"'[^'\\\n]*'"
_PLAIN_LIST = re.compile(rf"\[\s*(?:{_PLAIN_ITEM}\s*(?:,\s*{_PLAIN_ITEM}\s*)*,?\s*)?\]")
_PLAIN_STR = re.compile(r"'([^'\\\n]*)'")


def _parse_label_list(s: str) -> list[str]:
    """Parse one `Labels` cell ("['a', ' b']") safely; anything but a list of strings is an error.

    Lists of plain single-quoted strings (no escapes: all of PadChest) take a regex fast path that
    gives exactly what `ast.literal_eval` gives; anything else goes through `ast.literal_eval`.
    """
    if _PLAIN_LIST.fullmatch(s):
        return _PLAIN_STR.findall(s)
    value = ast.literal_eval(s)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Labels cell is not a list of strings: {s[:80]!r}")
    return list(value)


def padchest_labels(labels: pd.Series, exact_labels: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Parse a PadChest `Labels` column -> (onehot uint8 (N, F), findings, labeled bool (N,)).

    Each distinct cell string is parsed once (`ast.literal_eval`; the 160,861 rows hold ~29k distinct
    lists) and rows pick their row of the per-string table, so no Python loop runs over rows.
    Entries are normalized with `finding_name`; ``normal`` and empty entries give no column.
    With `exact_labels=True`, entries written with surrounding whitespace (e.g. ``' hiatal hernia'``,
    a serialization artifact on ~70k entries) are ignored instead of merged, which reproduces counts
    taken by exact string match (such as those quoted with the shared data: hiatal hernia 2,153).
    `labeled` is False for rows whose cell is empty or holds only empty entries.
    """
    codes, uniques = pd.factorize(pd.Series(labels.to_numpy(dtype=object)), use_na_sentinel=True)  # (N,), -1: NaN
    parsed: list[set[str]] = []
    has_any = np.zeros(len(uniques) + 1, dtype=bool)  # last row: the NaN sentinel
    for u, cell in enumerate(uniques):
        try:
            entries = _parse_label_list(cell)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"PadChest Labels value cannot be parsed ({e}); expected a Python list string "
                             "like \"['cardiomegaly', 'pleural effusion']\"") from None
        has_any[u] = any(finding_name(x) for x in entries)
        if exact_labels:
            entries = [x for x in entries if x == x.strip()]
        parsed.append({n for n in map(finding_name, entries) if n and n not in NORMAL_NAMES})
    findings = sorted(set().union(*parsed)) if parsed else []
    col = {f: j for j, f in enumerate(findings)}
    table = np.zeros((len(uniques) + 1, len(findings)), dtype=np.uint8)  # (U + 1, F)
    for u, names in enumerate(parsed):
        table[u, [col[n] for n in names]] = 1
    return table[codes], findings, has_any[codes]  # (N, F), F, (N,)


def from_padchest(csv: str | Path, out: str | Path, images_root: str | Path | None = None,
                  projections: Sequence[str] | None = PADCHEST_DEFAULT_PROJECTIONS, check_files: bool = True,
                  exact_labels: bool = False, on_event: OnEvent | None = None) -> Path:
    """PadChest's official table -> manifest CSV at `out`; returns its path.

    Image path ``<images_root>/<ImageDir>/<ImageID>`` (`images_root` defaults to the CSV's folder),
    ``patient_id`` = PatientID, one column per label of `Labels` (see `padchest_labels`) that occurs
    in the kept rows; a label missing from a row's list is 0. Rows are kept when their `Projection` is
    in `projections` (None or empty: all). Rows without labels (empty cell or only empty entries)
    are dropped. With `check_files` rows whose image is not on disk are dropped too (and counted).
    Labels such as ``exclude`` and ``suboptimal study`` stay ordinary columns: filter on them if wanted.
    """
    csv = Path(csv).expanduser().resolve()
    if not csv.is_file():
        raise ValueError(f"PadChest table not found: {csv}")
    images_root = Path(images_root).expanduser().resolve() if images_root else csv.parent
    need = ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"]
    try:
        t = pd.read_csv(csv, usecols=need, dtype={c: str for c in need})  # "nan" cells -> NaN
    except ValueError as e:
        raise ValueError(f"{csv.name} is not the PadChest label table (needs columns {', '.join(need)}): {e}") from None
    n_all = len(t)
    if projections:
        known = set(PADCHEST_PROJECTIONS) | set(t["Projection"].dropna().unique())
        unknown = sorted(set(projections) - known)
        if unknown:
            raise ValueError(f"unknown PadChest projection(s) {unknown}; valid: {', '.join(sorted(known))}")
        t = t[t["Projection"].isin(list(projections))]
        if t.empty:
            raise ValueError(f"no rows of {csv.name} have projection {', '.join(projections)}")
    onehot, findings, labeled = padchest_labels(t["Labels"], exact_labels=exact_labels)  # (N, F)
    if (~labeled).any():
        _report(on_event, f"PadChest: dropped {int((~labeled).sum())} rows without labels", warn=True)
    paths = (str(images_root) + os.sep + t["ImageDir"].fillna("") + os.sep
             + t["ImageID"].fillna("")).to_numpy(dtype=object)  # vectorized join, (N,)
    keep = labeled.copy()
    if check_files:
        present = np.fromiter((os.path.isfile(p) for p in paths[keep]), dtype=bool, count=int(keep.sum()))
        if not present.any():
            raise ValueError(f"none of the {int(keep.sum())} selected PadChest images is under "
                             f"{images_root}/<ImageDir>/; pass the image folder with images_root (--images) "
                             "or check_files=False (--no-check-files)")
        if (~present).any():
            _report(on_event, f"PadChest: dropped {int((~present).sum())} of {int(keep.sum())} rows whose image "
                              f"is not under {images_root} (kept {int(present.sum())})", warn=True)
        keep[np.flatnonzero(keep)[~present]] = False
    onehot = onehot[keep]
    used = onehot.any(axis=0)  # labels that occur in the kept rows
    if not used.any():
        raise ValueError("the selected PadChest rows carry no finding labels; widen the projection filter")
    findings = [f for f, u in zip(findings, used) if u]
    df = pd.DataFrame({"path": paths[keep],
                       "patient_id": t["PatientID"].fillna("").to_numpy(dtype=object)[keep]})
    df = pd.concat([df, pd.DataFrame(onehot[:, used], columns=findings)], axis=1)
    _report(on_event, f"PadChest: {len(df)} of {n_all} rows kept (projections "
                      f"{', '.join(projections) if projections else 'all'}), {len(findings)} findings")
    return write_manifest(df, out)
