"""Online evaluation during pretraining: does the backbone's representation carry a finding?

The downstream signal beside the collapse metrics (issue 23 item 4), as Lightly's kNN benchmark callback
and DINO's kNN monitor do (Wu et al. 2018, Caron et al. 2021): every `every` collapse-monitor readings
the pooled backbone features of a small labeled set (a manifest + one finding, `--online-eval
MANIFEST:FINDING`) are L2-normalized, a fixed seeded stratified half is the kNN memory and the other
half is scored: a query's score is the fraction of positives among its k nearest memory images by
cosine similarity (k odd, uniform vote: scikit-learn's `KNeighborsClassifier(k, metric="cosine")`
`predict_proba`); AUC (scikit-learn's `roc_auc_score`) and accuracy at 0.5 follow, with their standard
errors (AUC: Hanley & McNeil 1982; accuracy: binomial). Chance is AUC 0.5; the step-0 reading (the
untrained network) is each run's own baseline.

Record keys (in the monitor's history, the `metrics` events and the checkpoint json's collapse history):
`online_auc`, `online_auc_se`, `online_acc`, `online_acc_se`, `online_majority_acc` (always guessing
the commoner class), `online_n_memory`, `online_n_query`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MAX_IMAGES = 400  # a small set: the evaluation costs one forward pass of these every `every` readings
DEFAULT_K = 5


def parse_online_eval(spec: str) -> tuple[str, str]:
    """"MANIFEST:FINDING" -> (manifest path, finding); the last ':' splits (paths may hold ':').
    Raises ValueError naming the expected form."""
    path, sep, finding = str(spec).strip().rpartition(":")
    if not sep or not path.strip() or not finding.strip():
        raise ValueError(f"--online-eval {spec!r}: expected MANIFEST:FINDING, e.g. labeled.csv:pneumonia")
    return path.strip(), finding.strip()


def split_memory_query(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified halves of indices (memory, query), each holding both classes. labels: (M,) 0/1."""
    rng = np.random.default_rng(seed)
    mem, qry = [], []
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        half = max(1, len(idx) // 2)
        mem.append(idx[:half])
        qry.append(idx[half:])
    return np.sort(np.concatenate(mem)), np.sort(np.concatenate(qry))


def knn_scores(memory: torch.Tensor, memory_labels: torch.Tensor, query: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) fraction of positives among each query's k nearest memory rows by cosine similarity.
    memory (N, D), memory_labels (N,) 0/1, query (Q, D); k is capped at N."""
    sim = F.normalize(query.double(), dim=1) @ F.normalize(memory.double(), dim=1).t()  # (Q, N)
    nn_idx = sim.topk(min(k, memory.shape[0]), dim=1).indices  # (Q, k)
    return memory_labels.double()[nn_idx].mean(dim=1)


def auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley & McNeil 1982, eq. 2)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / max(1, n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def knn_metrics(feats: torch.Tensor, labels: np.ndarray, memory: np.ndarray, query: np.ndarray,
                k: int) -> dict[str, float]:
    """The record keys (module docstring) for features (M, D) of the labeled set split into memory/query."""
    from sklearn.metrics import roc_auc_score

    y = torch.as_tensor(labels)
    s = knn_scores(feats[memory], y[memory], feats[query], k).numpy()
    yq = labels[query]
    auc = float(roc_auc_score(yq, s))
    acc = float(((s > 0.5).astype(int) == yq).mean())
    n_pos, n_neg = int(yq.sum()), int(len(yq) - yq.sum())
    return {"online_auc": auc, "online_auc_se": auc_se(auc, n_pos, n_neg), "online_acc": acc,
            "online_acc_se": math.sqrt(acc * (1 - acc) / len(yq)), "online_majority_acc": max(n_pos, n_neg) / len(yq),
            "online_n_memory": float(len(memory)), "online_n_query": float(len(query))}


@dataclass
class OnlineEval:
    """A labeled set (M, S, S) uint8 with 0/1 labels, evaluated every `every` monitor readings (kNN, k)."""

    images: np.ndarray
    labels: np.ndarray
    finding: str
    source: str = ""
    every: int = 1
    k: int = DEFAULT_K
    seed: int = 0
    memory: np.ndarray = field(init=False)
    query: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(int)
        n_pos = int(self.labels.sum())
        if n_pos < 2 or len(self.labels) - n_pos < 2:
            raise ValueError(f"online evaluation needs at least 2 positive and 2 negative images of {self.finding!r} "
                             f"(got {n_pos} positive, {len(self.labels) - n_pos} negative); label more or pick "
                             "another finding")
        if self.every < 1 or self.k < 1:
            raise ValueError(f"online evaluation needs every >= 1 and k >= 1 (got {self.every}, {self.k})")
        self.memory, self.query = split_memory_query(self.labels, self.seed)

    def due(self, reading: int) -> bool:
        """Whether the `reading`-th monitor reading (0 = the first) is evaluated."""
        return reading % self.every == 0

    def evaluate(self, feats: torch.Tensor) -> dict[str, float]:
        """Record keys for the pooled backbone features (M, D) of `images`."""
        return knn_metrics(feats.float().cpu(), self.labels, self.memory, self.query, self.k)

    def describe(self) -> dict[str, Any]:
        """What the checkpoint json records beside the readings."""
        return {"source": self.source, "finding": self.finding, "k": self.k, "every_readings": self.every,
                "n_images": int(len(self.labels)), "n_positive": int(self.labels.sum()),
                "n_memory": int(len(self.memory)), "n_query": int(len(self.query)),
                "method": "kNN on L2-normalized pooled backbone features, cosine, uniform vote; AUC SE Hanley-McNeil"}


def load_online_eval(spec: str, size: int, seed: int, every: int = 1, k: int = DEFAULT_K,
                     max_images: int = MAX_IMAGES) -> OnlineEval:
    """The labeled set of `spec` ("MANIFEST:FINDING"): labeled rows of that finding (unknowns left out),
    a seeded stratified sample of at most `max_images`, decoded at `size` through the image cache.
    Raises ValueError (ManifestError, too few of a class) and the cache's errors, naming the fix."""
    from engine.data.cache import ImageCache
    from engine.data.manifest.load import load_manifest

    path, finding = parse_online_eval(spec)
    m = load_manifest(path)
    m.validate_finding(finding, min_per_class=2)
    y = m.labels(finding)
    keep = np.flatnonzero(~np.isnan(y))
    if len(keep) > max_images:
        rng = np.random.default_rng(seed)
        pos, neg = keep[y[keep] == 1], keep[y[keep] == 0]
        n_pos = max(2, min(len(pos), round(max_images * len(pos) / len(keep))))
        keep = np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False),
                                       rng.choice(neg, min(len(neg), max_images - n_pos), replace=False)]))
    paths = [m.paths[i] for i in keep]
    cache = ImageCache.build(paths, size=size)
    return OnlineEval(np.array(cache.array), y[keep].astype(int), finding, source=str(path), every=every, k=k,
                      seed=seed)
