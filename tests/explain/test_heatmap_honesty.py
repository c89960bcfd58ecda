"""Issue 21 item 4: the overlay leaves the X-ray visible where the map is low (opacity proportional to the
map), every heatmap carries a one-line caveat, and the one-image Grad-CAM job reports the probe's
calibrated probability (as the Classifier page does), not sigmoid(logit)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.explain.overlay import overlay
from engine.explain.single_image import ImageStudySettings, explain_across_inits, heatmap_caveat


def test_overlay_opacity_follows_the_map_and_leaves_the_xray_where_it_is_zero():
    img = np.tile(np.linspace(0.2, 0.8, 40, dtype=np.float32), (30, 1))
    heat = np.zeros_like(img)
    heat[10:20, 10:20] = 1.0
    heat[0:5, 30:40] = 0.25
    out = overlay(img, heat, alpha=0.6).astype(int)
    xray = (np.repeat(img[..., None], 3, -1) * 255 + 0.5).astype(int)
    assert (out[heat == 0] == xray[heat == 0]).all()  # untouched where the map is 0
    change = np.abs(out - xray).sum(-1)
    assert change[12, 12] > change[2, 35] > 0  # more colour where the map is higher
    tint = overlay(img, heat, alpha=0.6, proportional=False).astype(int)
    assert (np.abs(tint - xray).sum(-1)[heat == 0] > 0).all()  # the old uniform tint covered everything
    assert (overlay(img, heat, alpha=0.0) == xray).all()  # opacity 0: the X-ray itself


def test_heatmap_caveat_names_the_grid_and_what_the_map_is_not():
    assert "coarse 7x7 map of what raised the score" in heatmap_caveat(224)
    assert "3x3" in heatmap_caveat(96) and "14x14" in heatmap_caveat(224, "layer3")
    text = heatmap_caveat(224)
    assert "shortcuts" in text and "not an outline of the lesion" in text


def test_one_image_gradcam_reports_the_calibrated_probability(tmp_path, monkeypatch):
    from engine.data.phantom import generate
    from engine.fewshot import classifier as C

    csv = generate(tmp_path / "ph", n=16, size=48, seed=4, findings=("nodule",), prevalence=0.5)
    built = {}
    real = C.build_classifier

    def spy(*a, **k):
        built["clf"], est = real(*a, **k)
        return built["clf"], est

    monkeypatch.setattr(C, "build_classifier", spy)
    df = pd.read_csv(csv)
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(csv.parent / df["path"][0]).convert("L"),
                     np.float32) / 255
    rows = explain_across_inits(csv, "nodule", img, ["random"], tmp_path / "out",
                                ImageStudySettings(image_size=32), "cpu")
    clf = built["clf"]
    logit = float(clf.logits([img])[0])
    assert rows[0]["probability"] == pytest.approx(float(clf.probability(np.array([logit]))[0]), abs=1e-4)
    if clf.calibration.a != 1.0 or clf.calibration.b != 0.0:
        assert rows[0]["probability"] != pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
