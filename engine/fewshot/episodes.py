"""The fixed test set and seeded, patient-level k-shot episodes for one finding (one-vs-rest).

Decisions (see docs/design.md, "Few-shot"):

* **Test set** (`test_split`): the manifest's `split == "test"` rows when the manifest has splits,
  else a seeded, patient-level hold-out of `test_fraction` of the patients, stratified by whether
  the patient has any positive image (so rare findings still get positives in the test set).
  Rows whose label is unknown (NaN) are in neither set. Patients in the test set never appear in the
  training pool, even when a hand-made split put one patient on both sides.
* **Episode** (`sample_episode`): k distinct *positive patients* (a patient with at least one positive
  pool image) and k distinct *negative patients* (patients with negative pool images and no positive
  one), drawn without replacement; one image is drawn per drawn patient. So an episode is at most one
  image per patient per class, the two classes never share a patient, and nothing comes from the test
  set. The largest possible k is min(#positive patients, #negative patients) of the pool.
* **Trial seed** (`trial_seed`): a hash of (base seed, finding, shots, trial), so every init and mode
  sees the *same* training images in a given trial (a paired comparison).
* **Trial's test sample** (`test_sample`, seeded by `test_seed`): each trial is scored on its own
  patient-level bootstrap resample of the test pool (patients drawn with replacement, separately among
  patients with and without a positive test image, all of a drawn patient's images kept), the same
  for every init and mode of the trial, so the spread across trials includes test-set sampling
  (engine.fewshot.metrics.resampled_se turns it into a standard error).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


class ShotsError(ValueError):
    """More shots were asked for than the training pool has patients; `.max_k` is the largest possible k."""

    def __init__(self, message: str, max_k: int):
        super().__init__(message)
        self.max_k = max_k


class SplitError(ValueError):
    """The finding cannot be evaluated: no test positives or negatives, or nothing left to train on."""


def trial_seed(base_seed: int, finding: str, shots: int, trial: int) -> int:
    """Deterministic 31-bit seed of one trial; independent of init and mode (paired trials)."""
    h = hashlib.sha256(f"{base_seed}|{finding}|{shots}|{trial}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def test_seed(split_seed: int, finding: str, shots: int, trial: int) -> int:
    """Deterministic 31-bit seed of one trial's test sample; independent of init and mode (paired trials)."""
    h = hashlib.sha256(f"test|{split_seed}|{finding}|{shots}|{trial}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def test_sample(labels: np.ndarray, patient_ids: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    """Positions into `test_idx` of one patient-level, class-stratified bootstrap resample of the test pool.

    Patients of the test pool are split into those with a positive test image and those without; each
    group is resampled with replacement to its own size and every image of a drawn patient is kept (a
    cluster bootstrap, Field & Welsh 2007; patients are the independent units). A patient drawn twice
    appears twice. So the sample always holds both classes when the pool does. `labels` / `patient_ids`
    cover all rows (positional, like `test_idx`). Returns an int64 array of positions (length varies
    with the drawn patients' image counts), sorted. Deterministic in `seed`.
    """
    test_idx = np.asarray(test_idx, dtype=np.int64)
    y = np.asarray(labels, dtype=np.float64)[test_idx]
    pats = np.asarray(patient_ids).astype(str)[test_idx]
    uniq, inv = np.unique(pats, return_inverse=True)
    has_pos = np.zeros(uniq.size, dtype=bool)
    np.logical_or.at(has_pos, inv, y == 1)
    order = np.argsort(inv, kind="stable")  # positions grouped by patient
    starts = np.searchsorted(inv[order], np.arange(uniq.size), side="left")
    ends = np.searchsorted(inv[order], np.arange(uniq.size), side="right")
    rng = np.random.default_rng(seed)
    out = []
    for group in (np.flatnonzero(has_pos), np.flatnonzero(~has_pos)):
        for p in rng.choice(group, size=group.size, replace=True) if group.size else []:
            out.append(order[starts[p]:ends[p]])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


N_SHARED = 100  # shared test resamples per (finding, shots): every trial and init scored on the same ones


def shared_test_counts(labels: np.ndarray, patient_ids: np.ndarray, test_idx: np.ndarray, split_seed: int,
                       finding: str, shots: int, n: int = N_SHARED) -> np.ndarray:
    """(n, len(test_idx)) int64 multiplicities of `n` `test_sample` resamples shared by every trial and init of
    one (finding, shots): row b is the b-th resample (seed `test_seed(split_seed, finding, shots, -1 - b)`).
    Scoring every trial on the same resamples lets `metrics.resampled_se` see how the test set's deviation
    is shared across trials (a two-way bootstrap: episodes x test patients; Davison & Hinkley 1997, 3.8)."""
    m = len(test_idx)
    out = np.zeros((n, m), dtype=np.int64)
    for b in range(n):
        out[b] = np.bincount(test_sample(labels, patient_ids, test_idx, test_seed(split_seed, finding, shots, -1 - b)),
                             minlength=m)
    return out


def _known(df: pd.DataFrame, finding: str) -> np.ndarray:
    if finding not in df.columns:
        raise ValueError(f"finding {finding!r} is not a column of the manifest")
    return df[finding].to_numpy(dtype=np.float64)


def test_split(
    df: pd.DataFrame, finding: str, seed: int = 0, test_fraction: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """(train_pool_idx, test_idx): positional row indices into `df` for `finding`.

    Uses `split == "test"` when any row has a non-empty split, else a seeded patient-level
    stratified hold-out of `test_fraction` of the patients. Unknown labels are excluded from both.
    """
    labels = _known(df, finding)
    known = ~np.isnan(labels)
    patients = df["patient_id"].astype(str).to_numpy() if "patient_id" in df.columns else df["path"].astype(str).to_numpy()
    splits = df["split"].fillna("").astype(str).str.strip().str.lower().to_numpy() if "split" in df.columns else None

    if splits is not None and (splits != "").any():
        test_mask = known & (splits == "test")
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        kp = pd.DataFrame({"p": patients[known], "y": labels[known]})
        has_pos = kp.groupby("p", sort=True)["y"].max()  # patient -> 1.0 if any positive image
        rng = np.random.default_rng(seed)
        test_patients: list[str] = []
        for cls in (1.0, 0.0):
            group = has_pos.index[has_pos.to_numpy() == cls].to_numpy()
            n_test = int(round(test_fraction * group.size))
            if group.size >= 2:
                n_test = min(max(n_test, 1), group.size - 1)  # both sides keep at least one patient
            test_patients += list(rng.permutation(group)[:n_test])
        test_mask = known & np.isin(patients, np.array(test_patients, dtype=object))

    # Patient-level: a patient with any test image contributes nothing to the training pool.
    pool_mask = known & ~test_mask & ~np.isin(patients, np.unique(patients[test_mask]))
    test_idx, pool_idx = np.flatnonzero(test_mask), np.flatnonzero(pool_mask)
    y_test = labels[test_idx]
    if (y_test == 1).sum() == 0 or (y_test == 0).sum() == 0:
        raise SplitError(
            f"finding {finding!r}: the test set has {int((y_test == 1).sum())} positive and "
            f"{int((y_test == 0).sum())} negative images; it needs both. Label more images or mark some "
            f"patients' rows split=test in the manifest."
        )
    if pool_idx.size == 0:
        raise SplitError(f"finding {finding!r}: every labeled image is in the test set; nothing is left to train on")
    return pool_idx, test_idx


def pool_patients(labels: np.ndarray, patient_ids: np.ndarray, pool_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive patients, negative-only patients) of the pool, each sorted (deterministic order)."""
    y = np.asarray(labels, dtype=np.float64)[pool_idx]
    p = np.asarray(patient_ids).astype(str)[pool_idx]
    pos = np.unique(p[y == 1])
    neg = np.setdiff1d(np.unique(p[y == 0]), pos)
    return pos, neg


def max_shots(labels: np.ndarray, patient_ids: np.ndarray, pool_idx: np.ndarray) -> int:
    """Largest k for which `sample_episode` can draw k positive and k negative patients."""
    pos, neg = pool_patients(labels, patient_ids, pool_idx)
    return int(min(pos.size, neg.size))


def sample_episode(
    labels: np.ndarray, patient_ids: np.ndarray, pool_idx: np.ndarray, k: int, seed: int
) -> np.ndarray:
    """Row indices of one k-shot episode: k positives then k negatives, one image per drawn patient.

    `labels` / `patient_ids` cover all rows (positional, like `pool_idx`). Deterministic in `seed`.
    Raises ShotsError naming the largest possible k when the pool has fewer patients than asked.
    """
    if k < 1:
        raise ValueError(f"shots must be at least 1, got {k}")
    labels = np.asarray(labels, dtype=np.float64)
    patient_ids = np.asarray(patient_ids).astype(str)
    pool_idx = np.asarray(pool_idx, dtype=np.int64)
    pos, neg = pool_patients(labels, patient_ids, pool_idx)
    max_k = int(min(pos.size, neg.size))
    if k > max_k:
        raise ShotsError(
            f"asked for {k} shots, but the training pool has {pos.size} patients with the finding and "
            f"{neg.size} without; at most k={max_k} shots are possible",
            max_k,
        )
    rng = np.random.default_rng(seed)
    y_pool, p_pool = labels[pool_idx], patient_ids[pool_idx]
    out = []
    for cls, group in ((1.0, pos), (0.0, neg)):
        rows = pool_idx[y_pool == cls]  # this class's images, grouped by patient below
        pats = p_pool[y_pool == cls]
        order = np.argsort(pats, kind="stable")
        rows, pats = rows[order], pats[order]
        chosen = rng.choice(group, size=k, replace=False)
        lo = np.searchsorted(pats, chosen, side="left")
        hi = np.searchsorted(pats, chosen, side="right")  # rows[lo:hi] = one patient's images of this class
        out.extend(int(rows[a + rng.integers(b - a)]) for a, b in zip(lo, hi))
    return np.asarray(out, dtype=np.int64)


test_split.__test__ = False
test_seed.__test__ = False
test_sample.__test__ = False
shared_test_counts.__test__ = False  # a library function, not a pytest test, when a test module imports it by name
