"""Issue 12/13/14 on the classifier: calibrated probabilities, operating points, the unfamiliar-image flag,
the cached last-stage finetune, and classifier files that are refused (non-finite, crafted) instead of
answering NaN or crashing with an AttributeError."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.fewshot.classifier import (Classifier, ClassifierLoadError, ClassifierScoreError, build_classifier,
                                       choose_operating_point, estimate_seconds, fit_calibration, fit_familiarity,
                                       operating_curve)
from engine.fewshot.finetune import FastFinetune, LastStage, _Frozen, build_activation_cache
from engine.models import build_backbone, save_backbone
from tests.conftest import SHIPPED_DIR
from tests.fewshot.test_fewshot_classifier import _arrays

CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


# ------------------------------------------------------------------------------------------- calibration

def test_platt_recovers_a_known_logistic_map_and_isotonic_matches_sklearn():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 2, 20000)
    y = (rng.random(s.size) < 1 / (1 + np.exp(-(0.5 * s - 1.0)))).astype(float)  # true map: a = 0.5, b = -1
    cal = fit_calibration(s, y, "platt")
    assert cal.method == "platt" and cal.a == pytest.approx(0.5, abs=0.03) and cal.b == pytest.approx(-1.0, abs=0.05)
    iso = fit_calibration(s, y, "isotonic")
    from sklearn.isotonic import IsotonicRegression

    n = s.size
    ref = IsotonicRegression(y_min=1 / (n + 2), y_max=(n + 1) / (n + 2), out_of_bounds="clip").fit(s, y)
    grid = np.linspace(-9, 9, 101)
    np.testing.assert_allclose(iso(grid), ref.predict(grid), atol=1e-12)
    assert np.all(np.diff(iso(grid)) >= 0) and iso(grid).min() > 0 and iso(grid).max() < 1  # never "certain"


def test_platt_uses_smoothed_targets_and_never_reverses_a_worse_than_chance_score():
    s = np.r_[np.linspace(1, 2, 5), np.linspace(-2, -1, 5)]  # perfectly separated, 5 and 5
    y = np.r_[np.ones(5), np.zeros(5)]
    cal = fit_calibration(s, y, "platt")
    p = cal(s)
    # plain maximum likelihood would send the slope to infinity (p = 0 / 1 exactly); Platt's targets 6/7 and
    # 1/7 keep it finite and the fitted probabilities away from certainty
    assert math.isfinite(cal.a) and cal.a > 0 and 0.02 < p.min() and p.max() < 0.98
    assert p.mean() == pytest.approx(0.5, abs=1e-6)  # the intercept's optimality: mean p = mean target
    rev = fit_calibration(-s, y, "platt")  # the scores point the wrong way: no flip, a constant instead
    assert rev.a == 0.0 and np.ptp(rev(np.linspace(-3, 3, 7))) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        fit_calibration(np.r_[s[:-1], np.nan], y)


def test_operating_points_pick_the_right_cut_and_report_cv_sensitivity_specificity():
    y = np.r_[np.ones(10), np.zeros(10)]
    p = np.r_[np.linspace(0.35, 0.95, 10), np.linspace(0.05, 0.6, 10)]
    cuts, sens, spec = operating_curve(y, p)
    assert np.all(np.diff(cuts) > 0) and np.all(np.diff(sens) <= 0) and np.all(np.diff(spec) >= 0)
    for target in (0.8, 0.9, 1.0):
        op = choose_operating_point(y, p, "sensitivity", target)
        assert op.sensitivity >= target and np.mean(p[y == 1] >= op.threshold) == op.sensitivity
        assert np.mean(p[y == 0] < op.threshold) == op.specificity
        higher = cuts[cuts > op.threshold]
        assert higher.size == 0 or np.mean(p[y == 1] >= higher[0]) < target  # the highest such cut
    op = choose_operating_point(y, p, "specificity", 0.9)
    assert op.specificity >= 0.9 and np.mean(p[y == 0] < op.threshold) == op.specificity
    yd = choose_operating_point(y, p, "youden")
    assert yd.sensitivity + yd.specificity == pytest.approx(max(sens + spec))
    with pytest.raises(ValueError, match="target"):
        choose_operating_point(y, p, "sensitivity", 1.5)


# ------------------------------------------------------------------------------------------- familiarity

def test_familiarity_flags_about_alpha_of_the_same_source_and_all_of_another():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(200, 16)) + 3.0
    same = rng.normal(size=(4000, 16)) + 3.0
    other = rng.normal(size=(200, 16)) - 3.0
    fam = fit_familiarity(train)
    assert fam.rank == math.ceil(201 * 0.95)
    rate = float(np.mean(fam.distances(same) > fam.threshold))
    assert 0.01 < rate < 0.10  # conformal: about alpha = 5% of images from the training source
    assert np.all(fam.distances(other) > fam.threshold)
    small = fit_familiarity(train[:10])
    assert small.rank == 10  # n < 19: the largest leave-one-out distance
    assert "nearest" in fam.rule() and str(fam.rank) in fam.rule()


def test_unfamiliar_flag_on_real_adult_images_from_a_paediatric_classifier(shared_data, monkeypatch, tmp_path):
    """23 Kermany (paediatric) images with the shipped backbone: adult NIH images are flagged, Kermany test
    images mostly are not; predict's JSON carries the flag (issue 12 item 3)."""
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(SHIPPED_DIR))
    from engine.models import default_init

    init = default_init()
    if init == "random":
        pytest.skip(f"no shipped backbone in {SHIPPED_DIR}")
    k, n = shared_data / "kermany224", shared_data / "nih_pneumonia"
    km, nm = pd.read_csv(k / "manifest.csv"), pd.read_csv(n / "manifest.csv")
    tr = km[km.split == "train"]
    sel = pd.concat([tr[tr.pneumonia == 1].sample(12, random_state=0), tr[tr.pneumonia == 0].sample(11, random_state=0)])
    clf, est = build_classifier([str(k / p) for p in sel.path], sel.pneumonia.to_numpy(), init=init,
                                finding="pneumonia", cv_repeats=3)
    assert est.auc > 0.7
    kids = clf.predict([str(k / p) for p in km[km.split == "test"].sample(20, random_state=1).path])
    adults = clf.predict([str(n / p) for p in nm.sample(20, random_state=1).path])
    assert sum(r["unfamiliar"] for r in kids) <= 4
    assert sum(r["unfamiliar"] for r in adults) >= 15
    for r in kids + adults:
        assert r["label"] == int(r["probability"] >= r["threshold"]) and r["calibration"] == "platt"
    path = clf.save(tmp_path / "kids.safetensors")
    card_meta = Classifier.load(path).metadata()["familiarity"]
    assert card_meta["n"] == 23 and "nearest" in card_meta["rule"]


# ------------------------------------------------------------------------------------------- building

def _toy_backbone(name: str = "toy-ssl") -> str:
    torch.manual_seed(7)
    save_backbone(build_backbone("resnet18"), name, {"method": "toy", "arch": "resnet18"})
    return name


def test_probe_classifier_saves_calibration_operating_points_and_familiarity(tmp_path):
    init = _toy_backbone()
    imgs, y = _arrays(8, 9)
    clf, est = build_classifier(imgs, y, init=init, image_size=32, cv_repeats=3, finding="blob", calibration="isotonic")
    assert clf.calibration.method == "isotonic" and clf.cv_probs.shape == (3, 17)
    op = clf.operating_point("youden")
    assert op.threshold == clf.threshold and 0 <= op.sensitivity <= 1
    hi = clf.operating_point("sensitivity", 1.0)
    assert hi.sensitivity == 1.0 and hi.threshold <= op.threshold
    new, _ = _arrays(3, 3, seed=1)
    loaded = Classifier.load(clf.save(tmp_path / "c.safetensors"))
    a, b = clf.predict(new), loaded.predict(new)
    np.testing.assert_allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=1e-6)
    assert [r["unfamiliar"] for r in a] == [r["unfamiliar"] for r in b]
    at_hi = loaded.predict(new, threshold=hi.threshold)
    assert all(r["label"] == int(r["probability"] >= hi.threshold) for r in at_hi)
    m = loaded.metadata()
    assert m["calibration"]["method"] == "isotonic" and m["operating_point"]["rule"] == "youden"
    json.dumps(m, allow_nan=False)


def test_last_stage_on_cached_activations_equals_the_backbone():
    torch.manual_seed(0)
    model = build_backbone("resnet18").eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(LastStage(model, "resnet18")(_Frozen(model, "resnet18")(x)).numpy(),
                                   model(x).numpy(), rtol=1e-5, atol=1e-5)
    from engine.models import load_backbone

    meta = load_backbone("random")[1]
    u8 = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    cache = build_activation_cache((model, meta), u8, FastFinetune(views=2), "cpu", seed=3)
    assert cache.clean.shape == (4, 256, 2, 2) and cache.views.shape == (2, 4, 256, 2, 2)
    assert cache.clean.dtype == torch.float16 and not torch.equal(cache.views[0], cache.clean)
    again = build_activation_cache((model, meta), u8, FastFinetune(views=2), "cpu", seed=3)
    assert torch.equal(again.views, cache.views)  # seeded


def test_fast_finetune_builds_saves_and_predicts_and_costs_less_than_a_full_finetune(tmp_path):
    init = _toy_backbone()
    imgs, y = _arrays(7, 7)
    events = []
    clf, est = build_classifier(imgs, y, init=init, mode="finetune", image_size=32, finding="blob",
                                finetune_cfg=FastFinetune(steps=2, views=2), on_event=events.append)
    assert est.repeats == 1 and est.folds == 5 and clf.backbone_state is not None
    assert clf.familiarity.space == "frozen" and clf.familiarity.train.shape == (14, 256)
    steps = [e.step for e in events if e.step is not None and e.total == 6]
    assert steps == sorted(steps) and steps[-1] == 6  # one bar counting model fits, monotone
    new, _ = _arrays(2, 2, seed=2)
    loaded = Classifier.load(clf.save(tmp_path / "ft.safetensors"))
    np.testing.assert_allclose([r["probability"] for r in loaded.predict(new)],
                               [r["probability"] for r in clf.predict(new)], atol=1e-5)
    probe_t = estimate_seconds(23, "probe", image_size=32)["seconds"]
    ft = estimate_seconds(23, "finetune", image_size=32)
    assert ft["seconds"] > probe_t > 0 and ft["trainings"] == 6
    from engine.fewshot.finetune import step_costs

    t_frozen, t_last, t_full = step_costs("resnet18", 64, 8)
    assert t_frozen > 0 and t_last > 0 and t_full > 0  # measured seconds (never compared: a loaded machine is noisy)
    # the cached step skips three stages' forward and backward: counted in FLOPs, not timed
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engine.fewshot.fast_finetune import LastStage, _Frozen
    from engine.models import build_backbone

    model = build_backbone("resnet18")
    x = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        z = _Frozen(model, "resnet18")(x)

    def flops(step) -> int:
        with FlopCounterMode(display=False) as counter:
            step().sum().backward()
        return counter.get_total_flops()

    last, full = flops(lambda: LastStage(model, "resnet18")(z)), flops(lambda: model(x))
    assert 0 < last < full / 2, (last, full)


# ------------------------------------------------------------------------------------------- refused files

@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    imgs, y = _arrays(4, 4)
    clf, _ = build_classifier(imgs, y, init="random", image_size=32, cv_repeats=1, finding="blob")
    return clf.save(tmp_path_factory.mktemp("clf") / "ok.safetensors")


def _rewrite(src: Path, dst: Path, meta=None, tensors=None) -> Path:
    with safe_open(str(src), framework="pt") as f:
        m = json.loads(f.metadata()["scarce_cxr"])
    t = load_file(str(src))
    m = meta(m) if callable(meta) else m
    t = tensors(t) if tensors else t
    save_file(t, str(dst), metadata={"scarce_cxr": m if isinstance(m, str) else json.dumps(m)})
    return dst


def _drop(m: dict, key: str) -> dict:
    return {k: v for k, v in m.items() if k != key}


@pytest.mark.parametrize("name,meta,tensors,match", [
    ("list", lambda m: [m], None, "metadata is a JSON list"),
    ("string", lambda m: json.dumps("x"), None, "metadata is a JSON str"),
    ("not_json", lambda m: "{oops", None, "metadata is not valid JSON"),
    ("huge", lambda m: {**m, "image_size": 60000}, None, "image_size 60000"),
    ("float_size", lambda m: {**m, "image_size": 32.5}, None, "image_size"),
    ("zero_std", lambda m: {**m, "std": [0.0, 0.0, 0.0]}, None, "std"),
    ("short_std", lambda m: {**m, "std": [0.2]}, None, "std must be a list of 3"),
    ("nan_mean", lambda m: json.dumps(m).replace('"mean": [', '"mean": [NaN, '), None, "mean"),
    ("no_mean", lambda m: _drop(m, "mean"), None, "'mean' is missing"),
    ("no_arch", lambda m: _drop(m, "arch"), None, "'arch' is missing"),
    ("arch", lambda m: {**m, "arch": "vgg"}, None, "arch 'vgg'"),
    ("mode", lambda m: {**m, "mode": 3}, None, "mode 3"),
    ("threshold", lambda m: {**m, "threshold": 7}, None, "threshold"),
    ("init_escape", lambda m: {**m, "init": "../elsewhere/x"}, None, "not a usable classifier"),
    ("estimate", lambda m: {**m, "estimate": {"auc": 0.5}}, None, "estimate"),
    ("calibration", lambda m: {**m, "calibration": {"method": "magic"}}, None, "calibration"),
    ("version", lambda m: {**m, "version": 99}, None, "version 99"),
    ("inf_head", None, lambda t: {**t, "head.bias": torch.tensor([float("inf")])}, "non-finite weights"),
    ("nan_probe", None, lambda t: {**t, "probe.coef": t["probe.coef"] * float("nan")}, "non-finite"),
    ("head_shape", None, lambda t: {**t, "head.weight": torch.zeros(2, 7)}, "head.weight"),
    ("no_head", None, lambda t: _drop(t, "head.bias"), "head"),
    ("cv_mismatch", None, lambda t: {**t, "cv.labels": torch.zeros(3, dtype=torch.float64)}, "cross-validation"),
])
def test_crafted_classifier_files_are_refused_with_a_clear_error(saved, tmp_path, name, meta, tensors, match):
    bad = _rewrite(saved, tmp_path / f"{name}.safetensors", meta, tensors)
    with pytest.raises(ClassifierLoadError, match=match) as e:
        Classifier.load(bad)
    assert "Build the classifier again" in str(e.value) or "not a classifier" in str(e.value)


def test_nan_classifier_case_is_refused_and_predict_never_prints_nan(saved, tmp_path, capsys, monkeypatch):
    from engine.cli import main

    case = CASES / "nan-classifier" / "nan_head.cxrclf"
    files = [case] if case.exists() else []
    files.append(_rewrite(saved, tmp_path / "nan.safetensors", None,
                          lambda t: {**t, "head.weight": t["head.weight"] * float("nan")}))
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(img)
    for f in files:
        with pytest.raises(ClassifierLoadError, match="non-finite weights"):
            Classifier.load(f)
        assert main(["predict", "--model", str(f), str(img), "--device", "cpu"]) == 2
        out = capsys.readouterr()
        assert "non-finite weights" in out.err and "NaN" not in out.out and "Traceback" not in out.err

    # a score that is non-finite at run time (weights damaged in memory, after the load-time check):
    # an error row (exit 1), strict JSON, never a NaN/Infinity literal
    clf = Classifier.load(saved)
    with torch.no_grad():
        clf.head.bias.fill_(float("inf"))
    monkeypatch.setattr(Classifier, "load", classmethod(lambda cls, *a, **k: clf))
    assert main(["predict", "--model", str(saved), str(img), str(img), "--device", "cpu"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and all("NaN or infinite" in line["error"] for line in lines)
    with pytest.raises(ClassifierScoreError):
        clf.predict([np.full((20, 20), 0.5, np.float32)])
    with pytest.raises(ClassifierScoreError, match="NaN or infinite pixel"):
        clf.predict([np.full((20, 20), np.nan, np.float32)])


def test_predict_cli_operating_point_and_familiarity_fields(saved, tmp_path, capsys):
    from PIL import Image

    from engine.cli import main

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(img)
    assert main(["predict", "--model", str(saved), str(img), "--sensitivity", "0.9", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["operating_point"] == "sensitivity>=0.9" and line["cv_sensitivity"] >= 0.9
    assert {"probability", "label", "threshold", "unfamiliar", "familiarity_distance", "familiarity_threshold",
            "calibration", "cv_specificity"} <= set(line)
    assert line["label"] == int(line["probability"] >= line["threshold"])
