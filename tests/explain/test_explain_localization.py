"""Localization scores against hand-computed cases, and their aggregation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.explain.localization import (
    aggregate, bootstrap_ci, box_mask, energy_in_region, energy_ratio, is_empty, pointing_hit, region_mask, scores,
    topq_iou,
)

BOX = (2, 3, 4, 2)  # x, y, w, h: columns 2..5, rows 3..4 of a 10 x 10 image -> 8 pixels, area fraction 0.08


def test_box_mask_covers_exactly_the_box_pixels():
    m = box_mask(BOX, (10, 10))
    assert m.sum() == 8
    assert m[3:5, 2:6].all()
    assert not m[2].any() and not m[5].any() and not m[:, 1].any() and not m[:, 6].any()
    # half-pixel boxes include a pixel when its centre is inside
    assert box_mask((0.4, 0.4, 1.2, 0.2), (3, 3)).sum() == 2  # centres (0.5, 0.5) and (1.5, 0.5)
    # a box holding no pixel centre marks the pixel holding its own centre
    thin = box_mask((1.6, 0.6, 0.3, 0.3), (3, 3))
    assert thin.sum() == 1 and thin[0, 1]


def test_heatmap_inside_the_box_scores_full_energy_and_a_hit():
    h = np.zeros((10, 10))
    h[3:5, 2:6] = np.arange(8).reshape(2, 4) + 1.0
    assert energy_in_region(h, BOX) == pytest.approx(1.0)
    assert energy_ratio(h, BOX) == pytest.approx(1.0 / 0.08)
    assert pointing_hit(h, BOX) == 1.0


def test_flat_heatmap_scores_ratio_one_and_a_miss():
    h = np.full((10, 10), 0.3)
    assert energy_in_region(h, BOX) == pytest.approx(0.08)
    assert energy_ratio(h, BOX) == pytest.approx(1.0)
    assert pointing_hit(h, BOX) == 0.0  # ties: only 8 of 100 maxima are inside
    assert topq_iou(h, BOX) == pytest.approx(0.08)  # ties included: the top set is the whole image


def test_heatmap_outside_scores_zero_and_a_miss():
    h = np.zeros((10, 10))
    h[7:, 7:] = 1.0
    h[0, 0] = 0.5
    assert energy_in_region(h, BOX) == 0.0
    assert energy_ratio(h, BOX) == 0.0
    assert pointing_hit(h, BOX) == 0.0
    assert topq_iou(h, BOX) == 0.0  # zero pixels are never part of the top set


def test_all_zero_heatmap_scores_like_a_flat_map():
    h = np.zeros((10, 10))
    assert is_empty(h) and not is_empty(np.eye(3))
    assert scores(h, BOX) == scores(np.ones((10, 10)), BOX)
    assert energy_ratio(h, BOX) == pytest.approx(1.0) and pointing_hit(h, BOX) == 0.0


def test_half_energy_inside():
    h = np.zeros((10, 10))
    h[3, 2] = 1.0  # inside
    h[9, 9] = 1.0  # outside
    assert energy_in_region(h, BOX) == pytest.approx(0.5)
    assert energy_ratio(h, BOX) == pytest.approx(0.5 / 0.08)
    assert pointing_hit(h, BOX) == 0.0  # 1 of 2 tied maxima inside: not a majority
    h[3, 3] = 1.0
    assert pointing_hit(h, BOX) == 1.0  # 2 of 3


def test_topq_iou_hand_cases():
    h = np.zeros((10, 10))
    h[3:5, 2:6] = 1.0  # exactly the box, 8 pixels; top 8% = those 8 pixels
    assert topq_iou(h, BOX, q=0.08) == pytest.approx(1.0)
    # top 16 pixels = the box plus the next 8 (row 5, columns 2..9) -> IoU 8 / 16
    h[5, 2:] = 0.5
    assert topq_iou(h, BOX, q=0.16) == pytest.approx(0.5)
    # shifted top region half overlapping: top 8 pixels are rows 3..4, columns 4..7 -> inter 4, union 12
    g = np.zeros((10, 10))
    g[3:5, 4:8] = 1.0
    assert topq_iou(g, BOX, q=0.08) == pytest.approx(4 / 12)
    with pytest.raises(ValueError):
        topq_iou(g, BOX, q=0.0)


def test_masks_and_box_lists_are_regions():
    h = np.zeros((10, 10))
    h[0, 0] = 1.0
    two = [(0, 0, 1, 1), (8, 8, 2, 2)]
    assert region_mask(two, (10, 10)).sum() == 5
    assert pointing_hit(h, two) == 1.0
    m = np.zeros((10, 10), bool)
    m[0, 0] = True
    assert energy_ratio(h, m) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="shape"):
        energy_ratio(h, np.zeros((5, 5), bool))


def test_degenerate_inputs():
    assert math.isnan(energy_ratio(np.ones((4, 4)), (10, 10, 2, 2)))  # region outside the image
    with pytest.raises(ValueError, match="non-negative"):
        energy_in_region(-np.ones((4, 4)), (0, 0, 2, 2))
    s = scores(np.ones((4, 4)), (0, 0, 2, 2))
    assert set(s) == {"energy_in_region", "energy_ratio", "pointing_hit", "topq_iou"}


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    v = np.random.default_rng(1).normal(2.0, 1.0, 50)
    m, lo, hi = bootstrap_ci(v, seed=3)
    assert lo < m < hi and m == pytest.approx(v.mean())
    assert bootstrap_ci(v, seed=3) == (m, lo, hi)
    assert bootstrap_ci(np.array([np.nan, 4.0])) == (4.0, 4.0, 4.0)


def test_aggregate_per_finding_and_init_with_paired_deltas():
    rng = np.random.default_rng(0)
    rows = []
    for img in range(20):
        for init, base in (("random", 1.0), ("moco", 3.0)):
            rows.append({"image": f"i{img}", "finding": "nodule", "init": init,
                         "energy_in_region": 0.1 * base, "energy_ratio": base + rng.normal(0, 0.1),
                         "pointing_hit": float(init == "moco"), "topq_iou": 0.05 * base,
                         "empty_map": init == "random" and img < 3})
    df = pd.DataFrame(rows)
    s = aggregate(df, reference="random", seed=0)
    assert list(s["init"]) == ["random", "moco"] and (s["n"] == 20).all()
    moco = s.set_index("init").loc["moco"]
    assert moco["energy_ratio_lo"] < moco["energy_ratio_mean"] < moco["energy_ratio_hi"]
    assert moco["pointing_hit_mean"] == 1.0
    assert s.set_index("init")["n_empty_maps"].tolist() == [3, 0]
    assert moco["d_energy_ratio_mean"] == pytest.approx(2.0, abs=0.1)
    assert moco["d_energy_ratio_lo"] > 1.5
    assert math.isnan(s.set_index("init").loc["random", "d_energy_ratio_mean"])
    pd.testing.assert_frame_equal(s, aggregate(df, reference="random", seed=0))
    with pytest.raises(ValueError, match="columns"):
        aggregate(df.drop(columns=["topq_iou"]))


def test_box_arrays_and_nonbool_masks():
    boxes = np.array([[2.0, 3.0, 4.0, 2.0]])  # (1, 4) from a DataFrame: one box, not a mask
    assert region_mask(boxes, (10, 10)).sum() == 8
    m = np.zeros((10, 10), np.uint8)
    m[:2] = 255
    assert region_mask(m, (10, 10)).sum() == 20
