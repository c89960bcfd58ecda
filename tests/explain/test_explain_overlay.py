"""Overlays and grids: shapes, dtypes, colormaps, outlines."""
from __future__ import annotations

import numpy as np
import pytest

from engine.explain.overlay import OUTLINE_RGB, colormap, contour, grid, overlay


def test_colormaps_run_blue_to_red():
    ramp = np.linspace(0, 1, 5)[None, :]
    for name in ("jet", "turbo"):
        c = colormap(ramp, name)
        assert c.shape == (1, 5, 3) and c.dtype == np.float32
        assert c.min() >= 0 and c.max() <= 1
        assert c[0, -1, 0] > c[0, -1, 2]  # hot end is red
    jet = colormap(np.array([[0.0, 0.5, 1.0]]), "jet")[0]
    np.testing.assert_allclose(jet, [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])
    with pytest.raises(ValueError, match="jet"):
        colormap(ramp, "viridis")


def test_overlay_shape_dtype_and_blend():
    img = np.full((30, 40), 0.5, np.float32)
    heat = np.zeros((30, 40), np.float32)
    out = overlay(img, heat, alpha=0.0)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert (out == 128).all()  # alpha 0: the X-ray unchanged
    hot = overlay(img, np.ones_like(heat), alpha=1.0)
    assert tuple(hot[0, 0]) == (128, 0, 0)  # jet(1) = dark red
    with pytest.raises(ValueError, match="shape"):
        overlay(img, np.zeros((10, 10)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, heat, alpha=1.5)


def test_region_outline_is_drawn():
    img = np.zeros((30, 40), np.float32)
    out = overlay(img, np.zeros_like(img), alpha=0.0, region=(10, 5, 8, 6))
    green = (out == OUTLINE_RGB).all(-1)
    assert green[5, 10:18].all() and green[10, 10:18].all()  # top and bottom edges
    assert not green[7, 12:16].any()  # the interior stays untouched
    mask = np.zeros((30, 40), bool)
    mask[10:20, 10:20] = True
    c = contour(mask)
    assert c.sum() == 36 and not c[12:18, 12:18].any()


def test_grid_has_one_column_per_init_plus_the_original():
    rng = np.random.default_rng(0)
    img = rng.random((60, 45), dtype=np.float32)
    heats = {f"init{i}": rng.random((60, 45), dtype=np.float32) for i in range(3)}
    g1 = grid(img, dict(list(heats.items())[:1]), tile=64)
    g3 = grid(img, heats, regions=(5, 5, 10, 10), scores={"init0": {"ER": 1.5, "hit": 1}, "init1": "x"}, tile=64)
    assert g3.dtype == np.uint8 and g3.ndim == 3 and g3.shape[2] == 3
    tile_w = round(45 * 64 / 60)
    assert g3.shape[1] - g1.shape[1] == 2 * (tile_w + 4)
    assert g3.shape[0] > 64 and g3.shape[0] > g1.shape[0]  # the scores line adds header height
    assert (g3[:10] > 0).any()  # labels are drawn


def test_grid_titles_fit_their_column():
    """Long titles (e.g. 40-character hash file names) are shortened in the middle so no column overprints the next."""
    from PIL import ImageFont

    from engine.explain.overlay import fit_text

    font = ImageFont.load_default()
    name = "3f2a9c" * 7 + ".png (nodule)"
    short = fit_text(name, 120, font)
    assert font.getlength(short) <= 120 and "..." in short
    assert short.startswith("3f2a") and short.endswith("(nodule)")
    assert fit_text("random", 120, font) == "random"
    img = np.zeros((64, 64), np.float32)
    heats = {"moco_v2-resnet18-a-very-long-checkpoint-name-e2e": np.zeros_like(img), "random": np.ones_like(img)}
    g = grid(img, heats, title=name, tile=64, scores={"random": {"energy_ratio": 1.0, "pointing_hit": 0}})
    # each header stays within its own column: the gap pixels between columns' headers are black
    tw, pad = 64, 4
    for i in range(1, 3):
        gap = g[:20, i * (tw + pad): i * (tw + pad) + pad]
        assert (gap == 0).all(), f"column {i - 1}'s title runs into column {i}"
