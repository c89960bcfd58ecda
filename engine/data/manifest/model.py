"""The validated manifest (`Manifest`), its error (`ManifestError`), the column names, and the small
helpers every reader shares (CSV line numbers, shortened lists, path resolution)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd



RESERVED = ("path", "patient_id", "split")
BOX_COLUMNS = ("path", "finding", "x", "y", "w", "h")
MASK_COLUMNS = ("path", "finding", "mask_path")
MAX_LISTED = 10  # how many offending paths / lines one problem names before summarizing


class ManifestError(ValueError):
    """A manifest (or its boxes/masks) cannot be used; `.problems` lists every problem found."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        head = f"{source} has" if source else "manifest has"
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head} {n} problem{'s' if n != 1 else ''}:\n{lines}")


@dataclass
class Manifest:
    """A validated manifest. `df`: `path` (absolute str), `patient_id` (str; the path when the CSV
    has none), `split` (str, '' when absent), one float column per finding (1.0 / 0.0 / NaN)."""

    csv_path: Path
    root: Path
    df: pd.DataFrame
    findings: list[str]
    boxes: pd.DataFrame | None = None  # path (absolute), finding, x, y, w, h
    masks: pd.DataFrame | None = None  # path, finding, mask_path (both absolute)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def paths(self) -> list[str]:
        return self.df["path"].tolist()

    def _check_finding(self, finding: str) -> None:
        if finding not in self.findings:
            raise ManifestError([f"unknown finding {finding!r}; this manifest has: {', '.join(self.findings)}"],
                                self.csv_path)

    def labels(self, finding: str) -> np.ndarray:
        """(N,) float labels of one finding: 1.0 present, 0.0 absent, NaN unknown."""
        self._check_finding(finding)
        return self.df[finding].to_numpy(dtype=np.float64)

    def counts(self) -> dict[str, dict]:
        """{finding: {positive, negative, unknown}} (+ `warning` when a finding has only one class)."""
        block = self.df[self.findings]
        pos, neg = (block == 1).sum(), (block == 0).sum()
        unk = block.isna().sum()
        out: dict[str, dict] = {}
        for f in self.findings:
            c: dict = {"positive": int(pos[f]), "negative": int(neg[f]), "unknown": int(unk[f])}
            if c["positive"] == 0 or c["negative"] == 0:
                c["warning"] = _one_class_text(f, c["positive"], c["negative"])
            out[f] = c
        return out

    def validate_finding(self, finding: str, min_per_class: int = 1) -> None:
        """Raise `ManifestError` unless `finding` has at least `min_per_class` positives and negatives."""
        self._check_finding(finding)
        y = self.labels(finding)
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        if pos < min_per_class or neg < min_per_class:
            if pos == 0 or neg == 0:
                msg = _one_class_text(finding, pos, neg)
            else:
                msg = (f"finding {finding!r} has {pos} positive and {neg} negative images; at least "
                       f"{min_per_class} of each are needed")
            raise ManifestError([msg], self.csv_path)


def _one_class_text(finding: str, pos: int, neg: int) -> str:
    return (f"finding {finding!r} has only one class ({pos} positive, {neg} negative); a classifier needs "
            "both positive and negative images")


def _lines(mask: np.ndarray) -> list[int]:
    """CSV line numbers (header = line 1) of the rows where `mask` is true."""
    return (np.flatnonzero(mask) + 2).tolist()


def _listed(items: list, what: str = "") -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{what}{shown}{more}"


def _resolve(root: Path, rel: Iterable[str]) -> list[str]:
    r = str(root)
    return [p if os.path.isabs(p) else os.path.normpath(os.path.join(r, p)) for p in rel]


def _missing_problem(paths: list[str], root: Path, what: str) -> str | None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return None
    return (f"{len(missing)} {what} not found (relative paths are read from {root}): "
            + _listed(missing))
