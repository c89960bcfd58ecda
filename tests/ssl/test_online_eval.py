"""Online evaluation during pretraining (issue 23 item 4): kNN on a labeled set at monitor readings,
recorded in the events, the history and the checkpoint json; its numbers equal scikit-learn's kNN on the
same embeddings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from engine.ssl import pretrain_images
from engine.ssl.online_eval import OnlineEval, knn_metrics, load_online_eval, parse_online_eval
from engine.ssl.presets import build_config


def _sklearn(feats: np.ndarray, labels: np.ndarray, memory: np.ndarray, query: np.ndarray,
             k: int) -> tuple[float, float]:
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(feats[memory], labels[memory])
    proba = knn.predict_proba(feats[query])[:, 1]
    return roc_auc_score(labels[query], proba), accuracy_score(labels[query], knn.predict(feats[query]))


def test_knn_metrics_equal_scikit_learns():
    rng = np.random.default_rng(0)
    labels = (rng.random(120) < 0.3).astype(int)
    feats = rng.normal(size=(120, 16)) + labels[:, None] * 0.6  # a weak signal
    ev = OnlineEval(np.zeros((120, 8, 8), np.uint8), labels, "x", k=5, seed=3)
    m = knn_metrics(torch.as_tensor(feats, dtype=torch.float32), labels, ev.memory, ev.query, 5)
    auc, acc = _sklearn(feats.astype(np.float32), labels, ev.memory, ev.query, 5)
    assert m["online_auc"] == pytest.approx(auc, abs=1e-9) and m["online_acc"] == pytest.approx(acc, abs=1e-9)
    assert 0.5 < m["online_auc"] < 1 and 0 < m["online_auc_se"] < 0.2
    assert set(labels[ev.memory]) == {0, 1} and set(labels[ev.query]) == {0, 1}
    assert not set(ev.memory) & set(ev.query) and len(ev.memory) + len(ev.query) == 120


def test_bad_specs_and_sets_are_refused_in_words(tmp_path):
    assert parse_online_eval("C:/data/x.csv:mass") == ("C:/data/x.csv", "mass")
    for bad in ("x.csv", ":mass", "x.csv:"):
        with pytest.raises(ValueError, match="MANIFEST:FINDING"):
            parse_online_eval(bad)
    with pytest.raises(ValueError, match="at least 2 positive"):
        OnlineEval(np.zeros((4, 8, 8), np.uint8), np.array([1, 0, 0, 0]), "mass")


@pytest.fixture(scope="module")
def phantom_csv(phantom_set) -> Path:
    return phantom_set(32, 64, 0)


def test_a_real_run_records_online_knn_that_matches_scikit_learn(phantom_csv, tmp_path):
    from PIL import Image

    from engine.models import load_backbone
    from engine.ssl.loop import build_method
    from engine.ssl.monitor import CollapseMonitor

    df = pd.read_csv(phantom_csv)
    images = np.stack([np.asarray(Image.open(phantom_csv.parent / p).convert("L").resize((64, 64)))
                       for p in df["path"]])
    spec = f"{phantom_csv}:pneumothorax"
    cfg = build_config("moco_v2", "quick", epochs=3, batch_size=8, image_size=64, monitor_every_steps=1,
                       monitor_images=16, save_every_steps=100, max_steps=2, online_eval=spec, online_eval_every=1)
    events = []
    pretrain_images(images.astype(np.uint8), cfg, "online", "cpu", tmp_path / "run", on_event=events.append,
                    checkpoint_dir=tmp_path / "ck")
    readings = [e for e in events if e.kind == "metrics" and "collapse_std" in e.metrics]
    assert [e.step for e in readings] == [0, 1, 2] and all("online_auc" in e.metrics for e in readings)
    info = json.loads((tmp_path / "ck" / "online.json").read_text())
    oe = info["online_eval"]
    assert oe["finding"] == "pneumothorax" and [r[0] for r in oe["readings"]] == [0, 1, 2]
    assert info["collapse"]["history"][-1]["online_auc"] == oe["final"][1] == readings[-1].metrics["online_auc"]
    # recompute: the exported backbone's features of the same labeled set, kNN by scikit-learn
    ev = load_online_eval(spec, 64, cfg.seed)
    backbone, _ = load_backbone("online", checkpoint_dir=tmp_path / "ck")
    method = build_method(cfg, backbone).eval()
    with torch.no_grad():
        feats = CollapseMonitor(images[:2], every=1)._embed(method, ev.images, torch.device("cpu"), 64, None)[0]
    auc, acc = _sklearn(feats.numpy(), ev.labels, ev.memory, ev.query, ev.k)
    assert readings[-1].metrics["online_auc"] == pytest.approx(auc, abs=1e-6)
    assert readings[-1].metrics["online_acc"] == pytest.approx(acc, abs=1e-6)


def test_cli_takes_the_option():
    from engine.cli import build_parser
    from engine.ssl.commands import _config

    args = build_parser().parse_args(["pretrain", "--method", "moco_v2", "--data", "x.csv", "--out", "o",
                                      "--online-eval", "lab.csv:mass", "--online-eval-every", "3"])
    cfg = _config(args)
    assert cfg.online_eval == "lab.csv:mass" and cfg.online_eval_every == 3
    with pytest.raises(ValueError, match="MANIFEST:FINDING"):
        _config(build_parser().parse_args(["pretrain", "--method", "moco_v2", "--data", "x", "--out", "o",
                                           "--online-eval", "nofinding"]))
