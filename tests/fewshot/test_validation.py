"""External validation (AUC interval, Wilson intervals, calibration bins), batch scoring CSV, training-image flag."""
from __future__ import annotations

import csv
import io
import json
import shutil
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from engine.events import Cancelled
from engine.fewshot.classifier.scoring import (ScoreRow, count_source, csv_cell, iter_source, score_items,
                                               scores_csv_text)
from engine.fewshot.classifier.validation import (auc_with_interval, reliability_bins, validate_scores,
                                                  wilson_interval)


def test_auc_interval_covers_the_sklearn_auc():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(40), np.zeros(60)]
    p = np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.25, 100), 0, 1)
    a, lo, hi = auc_with_interval(y, p, n_boot=1000, seed=1)
    assert a == pytest.approx(roc_auc_score(y, p))
    assert lo < a < hi and 0.05 < hi - lo < 0.4
    with pytest.raises(ValueError, match="with and without"):
        auc_with_interval(np.ones(5), np.linspace(0, 1, 5))


def test_wilson_interval_hand_computed():
    # k = 8, n = 10, z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.71674,
    # half-width z sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22657  ->  (0.49016, 0.94331)
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=2e-5) and hi == pytest.approx(0.94331, abs=2e-5)
    lo, hi = wilson_interval(0, 10)  # 0/10: the upper bound is z^2 / (n + z^2) = 0.27753
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=2e-5)
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_reliability_bins_and_report():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 0], dtype=float)
    p = np.array([0.05, 0.1, 0.15, 0.35, 0.45, 0.55, 0.8, 0.9, 1.0, 0.6])
    bins = reliability_bins(y, p, n_bins=5)
    assert [b.count for b in bins] == [3, 1, 2, 1, 3] and sum(b.count for b in bins) == len(y)
    assert bins[0].observed == 0.0 and bins[4].observed == 1.0 and bins[4].mean_predicted == pytest.approx(0.9)
    rep = validate_scores(y, p, threshold=0.5, finding="blob", cv_auc=0.9)
    assert rep.counts == {"tp": 4, "fn": 1, "tn": 4, "fp": 1}
    assert rep.sensitivity == pytest.approx(0.8) and (rep.sensitivity_low, rep.sensitivity_high) == pytest.approx(
        wilson_interval(4, 5))
    assert rep.brier < rep.brier_baseline and "10 test images" in rep.sentence()
    assert any("smaller class" in w for w in rep.warnings)
    json.dumps(rep.to_dict(), allow_nan=True)


def test_csv_export_escapes_formula_cells():
    rows = [ScoreRow("=HYPERLINK(\"http://x\")", 0.7, "blob likely", False, False),
            ScoreRow("+cmd.png", 0.2, "blob unlikely", True, True), ScoreRow("-1.png", None, None, None, False, "@bad"),
            ScoreRow("@SUM(A1).png", 0.5, "blob likely", False, False), ScoreRow("plain.png", 0.1, "x", False, False)]
    text = scores_csv_text(rows)
    got = list(csv.reader(io.StringIO(text)))
    assert got[0] == ["image", "probability", "verdict", "unfamiliar", "training_image", "error"]
    assert [r[0] for r in got[1:]] == ["'=HYPERLINK(\"http://x\")", "'+cmd.png", "'-1.png", "'@SUM(A1).png",
                                       "plain.png"]
    assert got[3][5] == "'@bad" and got[2][3:5] == ["yes", "yes"] and got[1][1] == "0.7000"
    assert csv_cell("\tx") == "'\tx" and csv_cell("a=b") == "a=b" and csv_cell(None) == ""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A probe classifier built from a phantom manifest (its training images' keys recorded)."""
    import os

    from engine.data.phantom import generate
    from engine.fewshot.classifier import build_classifier

    tmp = tmp_path_factory.mktemp("val")
    man = generate(tmp / "ph", 40, size=48, seed=4, findings=("cardiomegaly",), prevalence=0.5)
    import pandas as pd

    df = pd.read_csv(man)
    df["path"] = [str(man.parent / p) for p in df["path"]]  # absolute: the split manifests live elsewhere
    train = df.iloc[:24]
    train.to_csv(tmp / "train.csv", index=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    clf, _ = build_classifier(manifest=tmp / "train.csv", finding="cardiomegaly", init="random", image_size=32,
                              cv_repeats=2)
    path = clf.save(tmp / "cardio.safetensors")
    return tmp, path, man.parent, train, df


def test_training_images_are_flagged_when_scored(built):
    from engine.fewshot.classifier import Classifier

    tmp, path, root, train, df = built
    clf = Classifier.load(path)
    assert len(clf.training_keys) == 24  # recorded in the file
    src = tmp / "batch"
    src.mkdir()
    shutil.copy(train["path"].iloc[0], src / "a_train.png")
    with Image.open(train["path"].iloc[1]) as im:  # same pixels, other bytes (another PNG compression)
        im.save(src / "b_train_recompressed.png", compress_level=9)
    shutil.copy(df["path"].iloc[30], src / "c_new.png")
    (src / "d_broken.png").write_bytes(b"not an image")
    with zipfile.ZipFile(tmp / "batch.zip", "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"x/{f.name}")
    for source in (src, tmp / "batch.zip"):
        events = []
        rows = score_items(clf, iter_source(source), total=count_source(source), on_event=events.append)
        assert count_source(source) == 4 and events[-1].step == 4 and events[-1].total == 4  # progress
        by = {r.image.rsplit("/", 1)[-1]: r for r in rows}
        assert by["a_train.png"].training_image and by["b_train_recompressed.png"].training_image
        assert not by["c_new.png"].training_image and by["c_new.png"].probability is not None
        assert by["d_broken.png"].error and by["d_broken.png"].probability is None
    stop = threading.Event()
    stop.set()  # a cancelled job stops before scoring anything
    with pytest.raises(Cancelled):
        score_items(clf, iter_source(src), stop=stop)


def test_validate_and_predict_csv_cli(built, capsys):
    from engine.cli import main

    tmp, path, root, train, df = built
    both = tmp / "mixed.csv"  # the test rows plus two training rows: those are left out and counted
    import pandas as pd

    pd.concat([df.iloc[24:], df.iloc[:2]]).to_csv(both, index=False)
    assert main(["validate", "--model", str(path), "--manifest", str(both), "--finding", "cardiomegaly",
                 "--device", "cpu", "--csv", str(tmp / "v.csv"), "--json", str(tmp / "v.json")]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out.strip().splitlines()[-1])
    assert rep["n_training_excluded"] == 2 and rep["n_positive"] + rep["n_negative"] == 16
    assert 0 <= rep["auc_low"] <= rep["auc"] <= rep["auc_high"] <= 1 and "AUC" in out.err
    assert len(json.loads((tmp / "v.json").read_text())["bins"]) == 10
    imgs = [str(p) for p in (train["path"].iloc[0], df["path"].iloc[30])]
    assert main(["predict", "--model", str(path), *imgs, "--device", "cpu", "--csv", str(tmp / "p.csv")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["training_image"] for x in lines] == [True, False]
    got = list(csv.DictReader(open(tmp / "p.csv")))
    assert [r["training_image"] for r in got] == ["yes", "no"] and got[0]["probability"]


def test_classifier_page_uploads_mark_training_images(built):
    from engine.fewshot.classifier import Classifier
    from ui.inference import LoadedClassifier, explain_uploads, training_note

    tmp, path, root, train, df = built
    pairs = (("old.png", train["path"].iloc[3]), ("new.png", df["path"].iloc[35]))
    files = [(n, open(p, "rb").read()) for n, p in pairs]
    old, new = explain_uploads(LoadedClassifier(Classifier.load(path)), files)
    assert old.training_image and not new.training_image
    assert "one of the training images" in training_note(old) and training_note(new) is None
