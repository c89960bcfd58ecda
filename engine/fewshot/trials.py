"""Trial rows of a sweep: the trials.csv columns, one trial's scores, the per-group summary, CSV I/O.

Each trial row: AUC on the test set (logits, rank-based), its 95% percentile interval over `n_bootstrap`
test-set resamples, and accuracy / sensitivity / specificity / precision / F1 at the Youden threshold of
the *training* scores (reported as a probability). Summary row per (finding, init, mode, shots):
`auc_mean`, `auc_std` (over trials, ddof=1), `auc_ci_low/high` = percentile bootstrap 95% interval of the
*mean over trials* (resampling trials), `auc_test_ci_low/high` = the *mean of the per-trial test-set
bootstrap intervals*. Skipped groups (unavailable init, too few shots) keep their status and message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from engine.atomic import atomic_write
from engine.fewshot.metrics import auc, bootstrap_auc, summary, threshold_metrics, youden_threshold

TRIAL_COLUMNS = [
    "finding", "init", "mode", "shots", "trial", "seed", "auc", "auc_ci_low", "auc_ci_high", "accuracy",
    "sensitivity", "specificity", "precision", "f1", "threshold", "n_train", "n_test",
]
KEY = ["finding", "init", "mode", "shots", "trial"]
GROUP = ["finding", "init", "mode", "shots"]
METRICS = ["accuracy", "sensitivity", "specificity", "precision", "f1"]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write `df` (no index) to `path` atomically; text cells spreadsheet-safe (engine.escaping.csv_safe)."""
    from engine.escaping import csv_safe

    atomic_write(path, lambda tmp: csv_safe(df).to_csv(tmp, index=False))


def read_trials(path: Path) -> pd.DataFrame:
    """trials.csv as a DataFrame (empty with the right columns when absent)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    df = pd.read_csv(path, dtype={"finding": str, "init": str, "mode": str})
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a trials file of this engine (missing columns {missing})")
    return df


def evaluate_trial(
    train_scores: np.ndarray, y_train: np.ndarray, test_scores: np.ndarray, y_test: np.ndarray,
    n_bootstrap: int, boot_seed: int,
) -> dict[str, float]:
    """AUC + bootstrap interval on test logits, and threshold metrics at the train Youden cut."""
    cut = youden_threshold(y_train, train_scores)
    lo, hi = bootstrap_auc(y_test, test_scores, n_bootstrap, boot_seed)
    return {"auc": auc(y_test, test_scores), "auc_ci_low": lo, "auc_ci_high": hi,
            **threshold_metrics(y_test, test_scores, cut), "threshold": float(expit(cut)),
            "n_train": int(len(y_train)), "n_test": int(len(y_test))}


def summarize(trials: pd.DataFrame, n_bootstrap: int = 500, seed: int = 0,
              skipped: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per (finding, init, mode, shots): which interval is which: the module docstring."""
    rows = []
    for key, g in trials.groupby(GROUP, sort=True) if len(trials) else []:
        s = summary(g["auc"].to_numpy(float), n_bootstrap, seed)
        rows.append({
            **dict(zip(GROUP, key)), "status": "ok", "n_trials": s["n"], "auc_mean": s["mean"], "auc_std": s["std"],
            "auc_ci_low": s["ci_low"], "auc_ci_high": s["ci_high"],
            "auc_test_ci_low": float(g["auc_ci_low"].mean()), "auc_test_ci_high": float(g["auc_ci_high"].mean()),
            **{f"{m}_mean": float(g[m].mean()) for m in METRICS}, "message": "",
        })
    for s in skipped or []:
        rows.append({**s, "n_trials": 0})
    cols = GROUP + ["status", "n_trials", "auc_mean", "auc_std", "auc_ci_low", "auc_ci_high", "auc_test_ci_low",
                    "auc_test_ci_high"] + [f"{m}_mean" for m in METRICS] + ["message"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(GROUP, kind="stable").reset_index(drop=True) if len(out) else out


def appendix_table(summary: pd.DataFrame, include_skipped: bool = False) -> pd.DataFrame:
    """A sweep's summary -> the studies' appendix table: one row per (finding, init, mode), one column
    per shot count ("5-shot"), each cell the test AUC "mean ± std" over trials (the mean alone for one trial).

    include_skipped: also list groups the sweep skipped (e.g. ImageNet offline) with cells "skipped".
    Empty frame when nothing is left. Raises KeyError on a frame without the summary's columns.
    """
    s = summary if include_skipped else summary[summary["status"] == "ok"]
    s = s[s["shots"].notna()]
    if s.empty:
        return pd.DataFrame()
    cells = [("skipped" if st != "ok" else f"{m:.3f} ± {d:.3f}" if d == d else f"{m:.3f}")
             for m, d, st in zip(s["auc_mean"], s["auc_std"], s["status"])]
    t = s.assign(v=cells).pivot_table(index=["finding", "init", "mode"], columns="shots", values="v", aggfunc="first")
    t.columns = [f"{int(c)}-shot" for c in t.columns]
    return t.reset_index().fillna("")
