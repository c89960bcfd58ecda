"""Trial rows of a sweep: the trials.csv columns, one trial's scores, the per-group summary, CSV I/O.

Each trial row: `auc` on the trial's own test sample (a patient-level bootstrap resample of the test
pool, engine.fewshot.episodes.test_sample), `auc_pool` on the whole test pool, the pool AUC's 95%
percentile interval over `n_bootstrap` test-set resamples, and accuracy / sensitivity / specificity /
precision / F1 on the trial's sample at the Youden threshold of the *training* scores (reported as a
probability). Summary row per (finding, init, mode, shots): `auc_mean`, `auc_std` (over trials, ddof=1),
`auc_se` and `auc_ci_low/high` = the mean's standard error and 95% t-interval over episodes and test-set
sampling (engine.fewshot.metrics.mean_interval), `auc_test_ci_low/high` = the *mean of the per-trial
test-set bootstrap intervals*, and `uncertainty` saying how the interval was computed. Trials written
before the per-trial test sample (no `auc_pool`) keep their meaning: `auc` on the one fixed test set,
`auc_ci_low/high` a percentile bootstrap of the mean over trials (episodes only), `uncertainty` =
metrics.FIXED. Skipped groups (unavailable init, too few shots) keep their status and message.
Every AUC interval here (the trial's pool interval, the summary's `auc_ci_low/high`) is floored by
metrics.floor_interval: the hull with Newcombe's small-sample interval from the test set's class counts
(`n_test_pos` per trial; `n_test_pos` / `n_test_neg` in the summary, means over trials), so a tiny test set
separated perfectly never shows [1.000, 1.000]; `auc_ci_note` says in words when the floor widened it.

Mode names (engine.fewshot.modes): a sweep folder whose config.json has no `recipe_version` was written when
`finetune` meant the whole network; `read_trials` / `read_summary` give its rows under the current names
(`finetune` -> `full_finetune`, `double_finetune` -> `double_full_finetune`), and `migrate_sweep_files`
renames them on disk (a resumed sweep, before its new config.json is written).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from engine.atomic import atomic_write
from engine.fewshot.modes import RECIPE_VERSION, current_mode, recipe_version
from engine.fewshot.metrics import (FIXED, RESAMPLED,  # noqa: F401 (FIXED: re-exported)
                                    WIDENED_MARK, auc, bootstrap_auc, floor_interval, mean_interval, summary,
                                    threshold_metrics, trial_test_counts, uncertainty_of, youden_threshold)

TRIAL_COLUMNS = [
    "finding", "init", "mode", "shots", "trial", "seed", "auc", "auc_ci_low", "auc_ci_high", "accuracy",
    "sensitivity", "specificity", "precision", "f1", "threshold", "n_train", "n_test", "auc_pool", "auc_boot",
    "n_test_pos",
]
# absent from trials written before the per-trial test sample (auc_pool, auc_boot) / the small-sample floor (n_test_pos)
OPTIONAL_COLUMNS = ["auc_pool", "auc_boot", "n_test_pos"]
KEY = ["finding", "init", "mode", "shots", "trial"]
GROUP = ["finding", "init", "mode", "shots"]
METRICS = ["accuracy", "sensitivity", "specificity", "precision", "f1"]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write `df` (no index) to `path` atomically; text cells spreadsheet-safe (engine.escaping.csv_safe)."""
    from engine.escaping import csv_safe

    atomic_write(path, lambda tmp: csv_safe(df).to_csv(tmp, index=False))


TEXT = {"finding": str, "init": str, "mode": str}  # read as text whatever they look like


def folder_recipe_version(folder: Path) -> int:
    """The recipe version of a sweep folder's rows: its config.json's `recipe_version`, 1 when the field is
    missing (written before it), the current one when the folder has no config.json (not a sweep's folder:
    nothing says the rows are old). Raises json.JSONDecodeError / OSError for an unreadable config.json."""
    cfg = Path(folder) / "config.json"
    return recipe_version(json.loads(cfg.read_text())) if cfg.exists() else RECIPE_VERSION


def current_names(df: pd.DataFrame, version: int) -> pd.DataFrame:
    """`df` with its `mode` column under the current names (rows of recipe `version`; engine.fewshot.modes)."""
    if version >= RECIPE_VERSION or "mode" not in df.columns:
        return df
    return df.assign(mode=df["mode"].map(lambda m: current_mode(m, version) if isinstance(m, str) else m))


def read_trials(path: Path, version: int | None = None) -> pd.DataFrame:
    """trials.csv as a DataFrame (empty with the right columns when absent), modes under their current names
    (`version`: the rows' recipe version; None = the folder's, `folder_recipe_version`)."""
    if not Path(path).exists():
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    df = pd.read_csv(path, dtype=TEXT)
    missing = [c for c in TRIAL_COLUMNS if c not in df.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ValueError(f"{path} is not a trials file of this engine (missing columns {missing})")
    df = current_names(df, folder_recipe_version(Path(path).parent) if version is None else version)
    return df.reindex(columns=list(dict.fromkeys([*df.columns, *OPTIONAL_COLUMNS])))


def read_summary(path: Path) -> pd.DataFrame:
    """A sweep's summary.csv (or paired.csv), modes under their current names (the folder's recipe version).
    Raises FileNotFoundError when absent."""
    return current_names(pd.read_csv(path, dtype=TEXT), folder_recipe_version(Path(path).parent))


def migrate_sweep_files(out_dir: Path, version: int) -> None:
    """Rename the modes of a sweep folder's trials.csv, summary.csv and paired.csv (rows of recipe `version`)
    to the current names, each file rewritten atomically (cells as they were: already spreadsheet-safe).
    Renaming twice changes nothing, so a run stopped half way is finished by the next."""
    for name in ("trials.csv", "summary.csv", "paired.csv"):
        path = Path(out_dir) / name
        if not path.exists():
            continue
        df = pd.read_csv(path, dtype=TEXT)
        new = current_names(df, version)
        if "mode" in df.columns and not new["mode"].equals(df["mode"]):
            atomic_write(path, lambda tmp, new=new: new.to_csv(tmp, index=False))


def evaluate_trial(
    train_scores: np.ndarray, y_train: np.ndarray, test_scores: np.ndarray, y_test: np.ndarray,
    n_bootstrap: int, boot_seed: int, sample: np.ndarray | None = None, shared: np.ndarray | None = None,
) -> dict[str, Any]:
    """One trial's row: AUC on the trial's test sample, AUC on the whole test pool with its bootstrap
    interval, and threshold metrics (on the sample) at the train Youden cut.

    `test_scores` / `y_test` (n,) cover the whole test pool; `sample` holds positions into them (the
    trial's own test sample, engine.fewshot.episodes.test_sample; repeats allowed). Without `sample`
    the trial is scored on the pool itself and `auc_pool` is NaN (the fixed-test-set protocol).
    `shared` (B, n): multiplicities of the resamples every trial and init of the group shares
    (episodes.shared_test_counts); their AUCs go to `auc_boot` as B space-separated numbers ("" without).
    The pool interval is floored (metrics.floor_interval) with the pool's class counts; `n_test_pos` counts the
    positives of the scored sample (`n_test` its size), the counts the summary's floor uses.
    """
    cut = youden_threshold(y_train, train_scores)
    y_pool = np.asarray(y_test)
    a_pool = auc(y_test, test_scores)
    lo, hi = bootstrap_auc(y_test, test_scores, n_bootstrap, boot_seed)
    fl = floor_interval(a_pool, lo, hi, int((y_pool == 1).sum()), int((y_pool == 0).sum()))
    s_te, y_te = (test_scores, y_test) if sample is None else (np.asarray(test_scores)[sample], np.asarray(y_test)[sample])
    return {"auc": auc(y_te, s_te), "auc_ci_low": fl.low, "auc_ci_high": fl.high,
            **threshold_metrics(y_te, s_te, cut), "threshold": float(expit(cut)),
            "n_train": int(len(y_train)), "n_test": int(len(y_te)), "n_test_pos": int((np.asarray(y_te) == 1).sum()),
            "auc_pool": float("nan") if sample is None else a_pool,
            "auc_boot": "" if shared is None else " ".join(f"{v:.5f}" for v in _shared_aucs(y_test, test_scores, shared))}


def _shared_aucs(y: np.ndarray, s: np.ndarray, counts: np.ndarray) -> np.ndarray:
    from engine.fewshot.metrics import _check, _weighted_auc

    y, s = _check(y, s)
    return _weighted_auc(y, s, counts)


def boot_matrix(col: pd.Series) -> np.ndarray | None:
    """`auc_boot` strings of J trials -> (J, B) float array; None when any is missing or lengths differ."""
    vals = [np.array(str(v).split(), dtype=np.float64) if isinstance(v, str) and v.strip() else None for v in col]
    if not vals or any(v is None for v in vals) or len({v.size for v in vals}) != 1:
        return None
    return np.stack(vals)


def summarize(trials: pd.DataFrame, n_bootstrap: int = 500, seed: int = 0,
              skipped: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per (finding, init, mode, shots): which interval is which: the module docstring."""
    rows = []
    method = uncertainty_of(trials)
    for key, g in trials.groupby(GROUP, sort=True) if len(trials) else []:
        s = summary(g["auc"].to_numpy(float), n_bootstrap, seed)
        x = g["auc"].to_numpy(float)
        if method == RESAMPLED:
            ok = np.isfinite(x)
            boot = boot_matrix(g["auc_boot"]) if "auc_boot" in g else None
            mi = mean_interval(x[ok], g["auc_pool"].to_numpy(float)[ok], None if boot is None else boot[ok])
        else:  # the old meaning: bootstrap of the mean over trials (episodes only)
            mi = {"se": s["std"] / np.sqrt(s["n"]) if s["n"] > 1 else float("nan"), "ci_low": s["ci_low"],
                  "ci_high": s["ci_high"]}
        n_pos, n_neg, balanced = trial_test_counts(g)
        fl = floor_interval(s["mean"], mi["ci_low"], mi["ci_high"], n_pos, n_neg, assumed_balanced=balanced)
        rows.append({
            **dict(zip(GROUP, key)), "status": "ok", "n_trials": s["n"], "auc_mean": s["mean"], "auc_std": s["std"],
            "auc_se": mi["se"], "auc_ci_low": fl.low, "auc_ci_high": fl.high, "auc_ci_note": fl.note,
            "n_test_pos": n_pos, "n_test_neg": n_neg,
            "auc_test_ci_low": float(g["auc_ci_low"].mean()), "auc_test_ci_high": float(g["auc_ci_high"].mean()),
            **{f"{m}_mean": float(g[m].mean()) for m in METRICS}, "uncertainty": method, "message": "",
        })
    for s in skipped or []:
        rows.append({**s, "n_trials": 0})
    cols = GROUP + ["status", "n_trials", "auc_mean", "auc_std", "auc_se", "auc_ci_low", "auc_ci_high", "auc_ci_note",
                    "n_test_pos", "n_test_neg", "auc_test_ci_low", "auc_test_ci_high"] + [f"{m}_mean" for m in METRICS] + ["uncertainty",
                                                                                               "message"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(GROUP, kind="stable").reset_index(drop=True) if len(out) else out


def floor_summary(summary: pd.DataFrame, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """`summary` with its ok rows' AUC intervals floored (metrics.floor_interval) when it was written before the
    floor (no `auc_ci_note` column): the counts from `trials` (metrics.trial_test_counts), per group. A summary
    that has the column is returned as it is (the floor is a hull: applying it twice changes nothing)."""
    if "auc_ci_note" in summary or summary.empty:
        return summary
    out = summary.copy()
    out["auc_ci_note"] = ""
    groups = dict(iter(trials.groupby(GROUP))) if trials is not None and len(trials) else {}
    for i, r in out.iterrows():
        g = groups.get(tuple(r[c] for c in GROUP))
        if r.get("status") != "ok" or g is None:
            continue
        n_pos, n_neg, balanced = trial_test_counts(g)
        fl = floor_interval(r["auc_mean"], r["auc_ci_low"], r["auc_ci_high"], n_pos, n_neg, assumed_balanced=balanced)
        out.loc[i, ["auc_ci_low", "auc_ci_high", "auc_ci_note"]] = [fl.low, fl.high, fl.note]
    return out


def appendix_table(summary: pd.DataFrame, include_skipped: bool = False, interval: bool = False) -> pd.DataFrame:
    """A sweep's summary -> the studies' appendix table: one row per (finding, init, mode), one column
    per shot count ("5-shot"), each cell the test AUC "mean ± std" over trials (the mean alone for one trial),
    or with `interval` "mean [95% interval]" (the summary's auc_ci_low/high), followed by WIDENED_MARK when the
    small-sample floor widened it (`auc_ci_note`; say the notes under the table: metrics.interval_notes).

    include_skipped: also list groups the sweep skipped (e.g. ImageNet offline) with cells "skipped".
    Empty frame when nothing is left. Raises KeyError on a frame without the summary's columns.
    """
    s = summary if include_skipped else summary[summary["status"] == "ok"]
    s = s[s["shots"].notna()]
    if s.empty:
        return pd.DataFrame()
    if interval:
        notes = s["auc_ci_note"] if "auc_ci_note" in s else pd.Series("", index=s.index)
        cells = [("skipped" if st != "ok" else f"{m:.3f} [{lo:.3f}, {hi:.3f}]{_mark(nt)}" if lo == lo else f"{m:.3f}")
                 for m, lo, hi, st, nt in zip(s["auc_mean"], s["auc_ci_low"], s["auc_ci_high"], s["status"], notes)]
    else:
        cells = [("skipped" if st != "ok" else f"{m:.3f} ± {d:.3f}" if d == d else f"{m:.3f}")
                 for m, d, st in zip(s["auc_mean"], s["auc_std"], s["status"])]
    return _by_shots(s.assign(v=cells), ["finding", "init", "mode"])


def paired_appendix_table(paired: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Paired differences (engine.fewshot.metrics.paired_differences rows) in the appendix layout: one row per
    (finding, init, mode), one column per shot count, each cell "d [95% interval] (wins/n)" (the interval the
    plot draws; "d ± SE" only for rows without one), the interval followed by WIDENED_MARK when the small-sample
    floor widened it (`ci_note`). Empty frame for no rows."""
    p = pd.DataFrame(paired)
    if p.empty:
        return pd.DataFrame()
    lo = p["ci_low"] if "ci_low" in p else pd.Series(float("nan"), index=p.index)
    hi = p["ci_high"] if "ci_high" in p else pd.Series(float("nan"), index=p.index)
    notes = p["ci_note"] if "ci_note" in p else pd.Series("", index=p.index)
    cells = [f"{d:+.3f} [{a:+.3f}, {b:+.3f}]{_mark(nt)} ({w}/{n})" if a == a else
             f"{d:+.3f} ± {se:.3f} ({w}/{n})" if se == se else f"{d:+.3f} ({w}/{n})"
             for d, a, b, se, w, n, nt in zip(p["diff"], lo, hi, p["se"], p["wins"], p["n"], notes)]
    return _by_shots(p.assign(v=cells), ["finding", "init", "mode"])


def _mark(note: Any) -> str:
    return WIDENED_MARK if isinstance(note, str) and note else ""


def _by_shots(s: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    t = s.pivot_table(index=index, columns="shots", values="v", aggfunc="first")
    t.columns = [f"{int(c)}-shot" for c in t.columns]
    return t.reset_index().fillna("")
