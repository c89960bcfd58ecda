"""The clinician's classifier: refuses unusable inputs, estimates AUC by CV, saves/loads/predicts exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.fewshot.classifier import Classifier, ClassifierDataError, ClassifierLoadError, build_classifier
from engine.models import build_backbone, save_backbone


def _arrays(n_pos: int, n_neg: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Float32 images in [0, 1] of varied sizes; positives carry a bright blob (an easy, visible 'lesion')."""
    rng = np.random.default_rng(seed)
    imgs = []
    for i in range(n_pos + n_neg):
        h, w = rng.integers(40, 80, 2)
        img = rng.uniform(0.2, 0.5, (h, w)).astype(np.float32)
        if i < n_pos:
            y0, x0 = rng.integers(5, h // 2), rng.integers(5, w // 2)
            img[y0 : y0 + h // 3, x0 : x0 + w // 3] = 0.95
        imgs.append(img)
    return imgs, np.r_[np.ones(n_pos), np.zeros(n_neg)]


@pytest.mark.parametrize("n_pos,n_neg,match", [(0, 8, "All 8 images"), (8, 0, "All 8 images"), (2, 10, "At least 3"),
                                                 (10, 1, "At least 3")])
def test_refuses_one_class_or_too_few(n_pos, n_neg, match):
    imgs, y = _arrays(n_pos, n_neg)
    with pytest.raises(ClassifierDataError, match=match):
        build_classifier(imgs, y, init="random", image_size=32)


def test_refuses_bad_labels():
    imgs, y = _arrays(4, 4)
    with pytest.raises(ClassifierDataError, match="one label per image"):
        build_classifier(imgs, y[:-1], image_size=32)
    y = y.copy()
    y[0] = np.nan
    with pytest.raises(ClassifierDataError, match="1 .finding present. or 0"):
        build_classifier(imgs, y, image_size=32)


def test_build_save_load_predict_round_trip(tmp_path):
    torch.manual_seed(7)
    save_backbone(build_backbone("resnet18"), "toy-ssl", {"method": "toy", "arch": "resnet18"})
    imgs, y = _arrays(6, 7)
    events = []
    clf, est = build_classifier(imgs, y, init="toy-ssl", image_size=32, cv_repeats=3, on_event=events.append,
                                finding="blob")
    assert est.folds == 5 and est.repeats == 3 and (est.n_positive, est.n_negative) == (6, 7)
    assert len(est.repeat_aucs) == 3 and est.auc == pytest.approx(np.mean(est.repeat_aucs))
    assert 0.0 <= est.ci_low <= est.auc <= est.ci_high <= 1.0
    assert est.auc > 0.7  # the blob is easy to see
    assert "Estimated AUC" in est.sentence and "13 images" in est.sentence
    assert est.warnings and any(e.kind == "warning" and "rough" in e.message for e in events)
    # the bar counts trainings only (issue 12 item 7: no "step 0 of 16" beside "embedding 13 of 13")
    counted = [e for e in events if e.step is not None or e.total is not None]
    assert {e.total for e in counted} == {16} and [e.step for e in counted][0] == 0
    assert [e.step for e in counted] == sorted(e.step for e in counted) and counted[-1].step == 16
    assert 0.0 < clf.threshold < 1.0

    new, _ = _arrays(3, 3, seed=1)
    before = clf.predict(new)
    path = clf.save(tmp_path / "blob.safetensors")
    raw = path.read_bytes()
    assert b"pickle" not in raw[:200] and raw[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header
    loaded = Classifier.load(path)
    after = loaded.predict(new)
    assert [r["label"] for r in after] == [r["label"] for r in before]
    np.testing.assert_allclose([r["probability"] for r in after], [r["probability"] for r in before], rtol=1e-5)
    assert set(after[0]) >= {"probability", "label", "threshold"} and after[0]["threshold"] == clf.threshold
    assert loaded.estimate == est and loaded.finding == "blob" and loaded.counts == {"positive": 6, "negative": 7}
    json.dumps(loaded.metadata())  # the metadata is plain JSON

    x, lb = loaded.prepare(new[0])
    assert x.shape == (1, 3, 32, 32) and (lb.orig_h, lb.orig_w) == new[0].shape
    module = loaded.explain_module()
    logit = module(x)
    assert logit.shape == (1, 1) and logit.requires_grad  # Grad-CAM can backpropagate
    # the shown probability is the calibrated logit (Platt on the out-of-fold scores), not sigmoid(logit)
    p = float(loaded.probability(np.array([logit.item()]))[0])
    assert p == pytest.approx(after[0]["probability"], abs=1e-5)
    assert dict(module.named_modules())[loaded.target_layer] is not None

    torch.manual_seed(8)  # the backbone is retrained under the same name: the classifier must notice
    save_backbone(build_backbone("resnet18"), "toy-ssl", {"method": "toy", "arch": "resnet18"})
    with pytest.raises(ClassifierLoadError, match="changed"):
        Classifier.load(path).predict(new[:1])
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ClassifierLoadError):
        Classifier.load(tmp_path / "junk.safetensors")


def test_noise_labels_give_an_interval_around_chance():
    imgs, _ = _arrays(0, 24, seed=3)  # no blobs at all
    y = np.r_[np.ones(12), np.zeros(12)]  # labels carry no signal
    _, est = build_classifier(imgs, y, init="random", image_size=32, cv_repeats=2)
    assert est.ci_low < 0.5 < est.ci_high and abs(est.auc - 0.5) < 0.2
    assert est.ci_high - est.ci_low > 0.1  # 24 images cannot pin an AUC down
    assert "no better than chance" in est.sentence
