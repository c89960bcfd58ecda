"""Batched X-ray augmentations and the collapse metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.ssl.augment import (
    AugmentConfig, brightness_contrast, crop_params, crop_resize, gaussian_noise, multi_crop, xray_view,
)
from engine.ssl.monitor import CollapseMonitor, collapse_metrics, effective_rank, mean_pairwise_cosine



def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_boxes_lie_inside_the_image_with_area_in_scale():
    boxes = crop_params(4000, (0.08, 1.0), (3 / 4, 4 / 3), _g(0))
    cx, cy, w, h = boxes.unbind(1)
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
    assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    # same area distribution as torchvision's RandomResizedCrop (large areas with extreme aspect are rejected)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(1, 200, 200)
    tv = [np.prod(RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])[2:]) / 200**2 for _ in range(4000)]
    assert area.mean().item() == pytest.approx(float(np.mean(tv)), abs=0.02)
    r = w / h
    assert r.min() >= 3 / 4 - 1e-5 and r.max() <= 4 / 3 + 1e-5


def test_crop_resize_keeps_orientation_and_identity():
    x = torch.zeros(2, 1, 16, 16)
    x[..., 8:] = 1.0  # right half bright (patient's left)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2)
    torch.testing.assert_close(crop_resize(x, full, 16), x)  # the whole-image box is the identity
    left = crop_resize(x, torch.tensor([[0.25, 0.5, 0.5, 1.0]] * 2), 8)
    right = crop_resize(x, torch.tensor([[0.75, 0.5, 0.5, 1.0]] * 2), 8)
    assert left.max() < 1e-6 and right.min() > 1 - 1e-6  # no flip anywhere
    top = torch.zeros(1, 1, 16, 16)
    top[..., :8, :] = 1.0
    assert crop_resize(top, torch.tensor([[0.5, 0.25, 1.0, 0.5]]), 8).min() > 1 - 1e-6


def test_views_are_batched_seeded_per_sample_and_in_range():
    x = torch.rand(6, 1, 40, 40, generator=_g(0))
    cfg = AugmentConfig()
    a, b = xray_view(x, 32, cfg, _g(1)), xray_view(x, 32, cfg, _g(1))
    c = xray_view(x, 32, cfg, _g(2))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a[0], a[1])  # different samples get different parameters
    crops = multi_crop(x, _g(3), cfg, 32, 16, 3, (0.4, 1.0), (0.05, 0.4))
    assert [tuple(t.shape) for t in crops] == [(6, 1, 32, 32)] * 2 + [(6, 1, 16, 16)] * 3


def test_jitter_and_noise_strengths():
    x = torch.full((200, 1, 8, 8), 0.5)
    torch.testing.assert_close(brightness_contrast(x, 0.8, 0.0, _g(0)), x)  # p = 0: unchanged
    y = brightness_contrast(x, 0.8, 1.0, _g(0))
    factors = y[:, 0, 0, 0] / 0.5  # flat image: only brightness acts
    assert factors.min() >= 0.2 - 1e-5 and factors.max() <= 1.8 + 1e-5 and factors.std() > 0.3
    n = gaussian_noise(x, 0.1, _g(0)) - x
    assert n.std().item() == pytest.approx(0.1, rel=0.05)


def test_collapse_metrics_tell_collapsed_from_healthy():
    g = _g(0)
    healthy = torch.randn(256, 64, generator=g)
    same = torch.randn(1, 64, generator=g).repeat(256, 1)  # every image maps to one point
    rank1 = torch.rand(256, 1, generator=g) * torch.randn(1, 64, generator=g)  # a line through 0
    h, s, r = collapse_metrics(healthy), collapse_metrics(same), collapse_metrics(rank1)
    assert h["std"] > 0.9 and abs(h["cos"]) < 0.05 and h["erank"] > 40
    for bad in (s, r):
        assert bad["std"] < 1e-3 and bad["cos"] > 0.999 and bad["erank"] == pytest.approx(1.0, abs=1e-3)
    # the O(N D) pairwise cosine equals the explicit mean over the N x N matrix
    zn = torch.nn.functional.normalize(healthy.double(), dim=1)
    sim = (zn @ zn.t()).numpy()
    assert mean_pairwise_cosine(healthy) == pytest.approx((sim.sum() - np.trace(sim)) / (256 * 255), abs=1e-9)
    # effective rank: d equal singular values -> d
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    monitor = CollapseMonitor(np.zeros((2, 8, 8), np.uint8), every=10)
    assert monitor.warnings(h) == []
    [w] = monitor.warnings(s)  # one line per reading, naming every broken threshold
    assert w.startswith("collapse: looks collapsed") and all(x in w for x in ("spread", "rank"))
    assert monitor.warnings(s, step=0) == []  # the untrained baseline is not a collapse
    assert monitor.due(10, 100) and monitor.due(100, 100) and not monitor.due(11, 100)
    with pytest.raises(ValueError, match="N >= 2"):
        collapse_metrics(torch.randn(1, 4))


def test_gaussian_blur_is_per_sample_seeded_mean_preserving_and_off_by_default():
    from engine.ssl.augment import AugmentConfig, gaussian_blur, xray_view

    x = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_blur(x, 0.0, (0.5, 2.0), torch.Generator().manual_seed(1)), x)
    y1 = gaussian_blur(x, 1.0, (0.5, 2.0), torch.Generator().manual_seed(1))
    y2 = gaussian_blur(x, 1.0, (0.5, 2.0), torch.Generator().manual_seed(1))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    assert (y1.std(dim=(1, 2, 3)) < 0.6 * x.std(dim=(1, 2, 3))).all()  # white noise gets smoother
    torch.testing.assert_close(y1.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)
    flat = torch.full((2, 1, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0, (1.0, 2.0), torch.Generator().manual_seed(0)), flat)
    weak = gaussian_blur(x, 1.0, (0.3, 0.3), torch.Generator().manual_seed(2))
    strong = gaussian_blur(x, 1.0, (2.0, 2.0), torch.Generator().manual_seed(2))
    assert (strong.std(dim=(1, 2, 3)) < weak.std(dim=(1, 2, 3))).all()
    assert AugmentConfig().blur_p == 0.0  # the study's recipe has no blur
    g = torch.Generator().manual_seed(3)
    v = xray_view(x, 24, AugmentConfig(blur_p=1.0, noise_std=0.0), g)
    assert v.shape == (6, 1, 24, 24) and float(v.min()) >= 0 and float(v.max()) <= 1


def test_study_metrics_raw_std_random_pair_cosine_and_centred_erank():
    from engine.ssl.monitor import METRIC_LABELS, METRIC_SETS, centred_effective_rank, raw_std

    g = _g(0)
    h = torch.randn(256, 64, generator=g)
    m = collapse_metrics(h)
    # every key of both labelled sets is reported, with a label
    assert set(METRIC_SETS["product"]) | set(METRIC_SETS["study"]) == set(m) == set(METRIC_LABELS)
    # raw std: per-dimension unbiased std, averaged; in feature units (x3 when the features are x3)
    assert m["raw_std"] == pytest.approx(float(np.std(h.numpy().astype(np.float64), axis=0, ddof=1).mean()), rel=1e-9)
    assert collapse_metrics(3 * h)["raw_std"] == pytest.approx(3 * m["raw_std"], rel=1e-9)
    assert collapse_metrics(3 * h)["std"] == pytest.approx(m["std"], rel=1e-9)  # the product's is scale-free
    # a shared offset: images still spread in 64 directions, but nearly parallel. The uncentred (RankMe)
    # numbers read near-collapse, the study's centred rank and raw std are unchanged
    off = collapse_metrics(h + 10.0)
    assert off["cos"] > 0.98 and off["erank"] < 15 and off["std"] < 0.15
    assert off["centred_erank"] == pytest.approx(m["centred_erank"], rel=1e-6) and off["centred_erank"] > 55
    assert off["raw_std"] == pytest.approx(m["raw_std"], rel=1e-6)
    # centred erank equals the effective rank computed by hand from the SVD of the centred matrix
    zc = (h + 10.0).double().numpy()
    zc = zc - zc.mean(axis=0)
    s = np.linalg.svd(zc, compute_uv=False)
    p = s / s.sum()
    assert centred_effective_rank(h + 10.0) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)
    # k directions plus a common vector: centred rank ~k (the mean is no dimension)
    k3 = torch.randn(256, 3, generator=g) @ torch.linalg.qr(torch.randn(64, 3, generator=g))[0].t() + 5.0
    assert 2.5 < centred_effective_rank(k3) <= 3.0 + 1e-6
    # one point: both ranks of a collapsed set agree it is gone, even at a large feature scale
    same = (100 * torch.randn(1, 64, generator=g)).repeat(256, 1)
    c = collapse_metrics(same)
    assert c["raw_std"] == 0.0 and c["centred_erank"] == 0.0 and raw_std(same) == 0.0
    # the study averages the cosine of sampled random pairs; `cos` is that estimator's expectation
    rng = np.random.default_rng(0)
    x = torch.nn.functional.normalize((h + 1.0).double(), dim=1).numpy()
    i, j = rng.integers(0, 256, 200_000), rng.integers(0, 256, 200_000)
    keep = i != j
    sampled = float((x[i[keep]] * x[j[keep]]).sum(1).mean())
    assert collapse_metrics(h + 1.0)["cos"] == pytest.approx(sampled, abs=3e-3)


def test_pretraining_stores_both_labelled_sets_in_events_history_and_checkpoint_json(tmp_path):
    from engine.ssl import BarlowConfig, PretrainConfig, pretrain_images
    from engine.ssl.monitor import METRIC_SETS

    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32), dtype=np.uint8)
    cfg = PretrainConfig(method="barlow_twins", epochs=1, batch_size=8, image_size=32, lr=0.01,
                         monitor_every_steps=1, monitor_images=8, save_every_steps=2,
                         method_config=BarlowConfig(proj_dim=32))
    events = []
    path = pretrain_images(images, cfg, "mon", "cpu", tmp_path / "run", on_event=events.append,
                    checkpoint_dir=tmp_path / "ck")
    keys = [k for s in METRIC_SETS.values() for k in s]
    readings = [e.metrics for e in events if e.kind == "metrics"]
    assert len(readings) == 3  # step 0 baseline + steps 1, 2
    for r in readings:
        for k in keys:
            assert np.isfinite(r[f"collapse_{k}"]) and np.isfinite(r[f"collapse_backbone_{k}"])
    info = json.loads(path.with_suffix(".json").read_text())
    col = info["collapse"]
    assert col["sets"] == {k: list(v) for k, v in METRIC_SETS.items()}
    assert "centred" in col["labels"]["centred_erank"] and "backbone" in col["labels"]["backbone_raw_std"]
    assert [h["step"] for h in col["history"]] == [0, 1, 2]
    for k in keys:
        assert col["final"][k] == col["history"][-1][k] and f"backbone_{k}" in col["final"]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert hist["collapse"][-1]["centred_erank"] == col["final"]["centred_erank"]


def test_every_method_gets_the_same_collapse_thresholds():
    """Issue 12 item 8, as issue 23 item 4 revised it: a SparK run (no head: its backbone features fill
    both sets) and a MoCo run with the same backbone readings get the same judgement, now relative to
    each run's own early readings: a mean cosine of 0.979 alone is no collapse (an untrained network's
    is ~0.99); rising to it from 0.5 is."""
    from engine.ssl.monitor import COS_MAX, collapse_status

    spark_bb = {"std": 0.14, "cos": 0.979, "erank": 9.0}
    spark = {**spark_bb, **{f"backbone_{k}": v for k, v in spark_bb.items()}}
    moco = {"std": 0.9, "cos": 0.02, "erank": 50.0, **{f"backbone_{k}": v for k, v in spark_bb.items()}}
    early_bb = {"std": 0.3, "cos": 0.5, "erank": 12.0}
    for reading in (spark, moco):
        monitor = CollapseMonitor(np.zeros((2, 8, 8), np.uint8), every=10)
        assert monitor.warnings(reading, 40) == []  # no history: the floors alone, which it passes
        early = {**{k: reading[k] for k in ("std", "cos", "erank")}, **{f"backbone_{k}": v for k, v in early_bb.items()}}
        if reading is spark:
            early = {**early_bb, **{f"backbone_{k}": v for k, v in early_bb.items()}}
        monitor.history = [{"step": s, **early} for s in (0, 10, 20, 30)] + [{"step": 40, **reading}]
        [w] = monitor.warnings(reading, 40)
        assert "mean cosine of different images rose to 0.979" in w and w.count("0.979") == 1  # SparK judged once
    shipped = {"std": 0.99, "cos": 0.017, "erank": 53.6, "backbone_std": 0.29, "backbone_cos": 0.909,
               "backbone_erank": 53.3}
    monitor = CollapseMonitor(np.zeros((2, 8, 8), np.uint8), every=10)
    assert monitor.warnings(shipped, 100) == [] and COS_MAX == 0.95
    level, line, problems = collapse_status({f"collapse_{k}": v for k, v in spark.items()}, 40, "collapse_")
    assert level == "ok" and "nearly parallel" in line and problems == []
    level, line, _ = collapse_status({f"collapse_{k}": v for k, v in shipped.items()}, 100, "collapse_")
    assert level == "ok" and line.startswith("healthy at step 100") and "0.91" in line
    assert collapse_status(spark, 0)[0] == "baseline" and collapse_status(None)[0] == "none"
