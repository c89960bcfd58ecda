"""The randomization sanity check (Adebayo et al. 2018) on a tiny model and in the Grad-CAM study."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.explain.gradcam import CAMExplainer, ExplainModel
from engine.explain.sanity import randomized, rank_correlation

S = 64


def test_rank_correlation_by_hand():
    a = np.arange(16, dtype=float).reshape(4, 4)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, a**3) == pytest.approx(1.0)  # ranks only
    assert rank_correlation(a, np.zeros_like(a)) == 0.0  # a flat map has no ranking: finite, 0
    with pytest.raises(ValueError):
        rank_correlation(a, a[:2])
    with pytest.raises(ValueError, match="needs the target layer"):
        randomized(ExplainModel(nn.Conv2d(3, 4, 3), nn.Linear(4, 1)), "top", seed=0)


def test_randomized_maps_differ_from_the_real_ones_and_the_model_is_untouched():
    from engine.models import build_backbone

    torch.manual_seed(0)
    model = ExplainModel(build_backbone("resnet18"), nn.Linear(512, 1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, S, S)
    with CAMExplainer(model, "layer3", "gradcam") as ex:
        real = ex(x)
    rhos = {}
    for part in ("head", "top", "backbone"):
        rnd = randomized(model, part, seed=1, layer="layer3")
        changed = {k.split(".")[1] if k.startswith("backbone.") else "head"
                   for k, v in rnd.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {"head": {"head"}, "top": {"head", "layer3"}}.get(part, changed)
        assert part != "backbone" or {"head", "conv1", "layer1", "layer4"} <= changed
        with CAMExplainer(rnd, "layer3", "gradcam") as ex:
            maps = ex(x)
        rhos[part] = [rank_correlation(a, b) for a, b in zip(real, maps)]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for part, r in rhos.items():
        assert np.isfinite(r).all() and np.mean(r) < 0.99, part  # below the real map's self-correlation (1.0)


def test_study_reports_the_sanity_correlations_beside_each_init(tmp_path):
    from engine.data.phantom import generate
    from engine.explain.study import run_gradcam_study
    from engine.explain.yardstick import yardstick_tables

    ph = generate(tmp_path / "ph", n=30, size=S, seed=1, findings=("mass",), prevalence=0.5)
    loc, summary, _ = run_gradcam_study(ph, "mass", ["random"], tmp_path / "o", shots=3, n_images=2, image_size=S,
                                        layer="layer3", episodes=1)
    rho = loc[["rho_head", "rho_top", "rho_backbone"]].to_numpy()
    assert np.isfinite(rho).all() and (rho < 1.0).all()
    r = summary.iloc[0]
    assert r["rho_backbone_mean"] == pytest.approx(loc["rho_backbone"].mean()) and np.isnan(r["rho_backbone_lo"])
    t = yardstick_tables(summary)["Sanity check (rank correlation with the randomized model's map)"]
    assert "1 episode: no interval" in t.loc[0, "head + backbone randomized"]
    assert Path(tmp_path / "o" / "localization.csv").exists()
