"""Dataset similarity (engine.analysis.similarity) and the `similarity` command: activations, known cases on
real chest X-rays (itself ~1 > two disjoint halves > pixel-shuffled > chance), reports, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.analysis.similarity import (
    compare_sets, default_layers, layer_activations, set_similarity, shuffle_pixels,
)
from engine.models import load_backbone


@pytest.fixture(scope="module")
def phantom_csv(phantom_set):
    return phantom_set(40, 48, 3)


def test_layer_activations_pool_to_a_grid_and_global_pooling_equals_the_backbone_output():
    model, meta = load_backbone("random", "cpu")
    imgs = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    assert default_layers(model) == ["layer1", "layer2", "layer3", "layer4"]
    acts = layer_activations(model, imgs, ["layer1", "layer4"], "cpu", grid=4, batch_size=2)
    assert acts["layer1"].shape == (5, 64 * 16)  # 16 x 16 map pooled to 4 x 4
    assert acts["layer4"].shape == (5, 512 * 4)  # 2 x 2 map: smaller than the grid, kept
    g1 = layer_activations(model, imgs, ["layer4"], "cpu", grid=1)["layer4"]
    from engine.models.backbones import prepare_batch

    with torch.no_grad():
        pooled = model(prepare_batch(torch.from_numpy(imgs), torch.device("cpu"))).double().numpy()  # (5, 512)
    np.testing.assert_allclose(g1, pooled, rtol=1e-5, atol=1e-6)  # grid 1 = the backbone's global average pool
    # channel-major flattening: averaging each channel's 4 x 4 cells gives the global average too
    l1 = acts["layer1"].reshape(5, 64, 16).mean(-1)
    np.testing.assert_allclose(l1, layer_activations(model, imgs, ["layer1"], "cpu", grid=1)["layer1"], rtol=1e-5, atol=1e-6)
    model.train()  # the caller's training flag is restored
    layer_activations(model, imgs[:2], ["layer2"], "cpu")
    assert model.training
    with pytest.raises(ValueError, match="choose from: .*layer1"):
        layer_activations(model, imgs, ["layer9"], "cpu")
    with pytest.raises(ValueError, match="uint8"):
        layer_activations(model, imgs.astype(np.float32), ["layer1"], "cpu")
    sh = shuffle_pixels(imgs, 0)
    assert sh.shape == imgs.shape and not np.array_equal(sh, imgs)
    np.testing.assert_array_equal(np.sort(sh.reshape(5, -1), 1), np.sort(imgs.reshape(5, -1), 1))


def test_too_few_units_for_the_kept_dimensions_says_to_pool_finer_or_use_fewer_images():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 64)), rng.normal(size=(40, 64))  # 64 units (global pooling of layer1), 40 + 40 images
    with pytest.raises(ValueError, match=r"layer layer1: 64 units are too few .*--grid.*--n-images"):
        set_similarity(a, b, layer="layer1")
    r = set_similarity(a[:10], b[:10])  # 10 + 10 images fit in 64 units
    assert r["n_a"] == r["n_b"] == 10 and r["units"] == 64 and 0 <= r["svcca"] <= 1


@pytest.fixture(scope="module")
def kermany(shared_data):
    """120 real paediatric chest X-rays at 64 px (seeded sample of kermany224)."""
    from engine.data.cache import ImageCache
    from engine.ssl.pretrain import resolve_image_paths

    paths = resolve_image_paths(shared_data / "kermany224" / "manifest.csv", include_test=True)
    idx = np.sort(np.random.default_rng(0).choice(len(paths), 120, replace=False))
    return np.asarray(ImageCache.build([paths[i] for i in idx], size=64).array)


@pytest.mark.parametrize("init", ["random", "cxr-moco_v2-resnet18-224"])
def test_known_cases_on_real_xrays_itself_halves_shuffled(kermany, init, monkeypatch):
    if init != "random":
        from tests.conftest import SHIPPED_DIR

        if not (SHIPPED_DIR / f"{init}.safetensors").exists():
            pytest.skip(f"shipped backbone {init} not in {SHIPPED_DIR}")
        monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(SHIPPED_DIR))
    model, meta = load_backbone(init, "cpu")
    layers = default_layers(model)
    a, b = kermany[:60], kermany[60:]  # two disjoint halves of one dataset
    A = layer_activations(model, a, layers, "cpu", meta.mean, meta.std)
    B = layer_activations(model, b, layers, "cpu", meta.mean, meta.std)
    S = layer_activations(model, shuffle_pixels(a, 1), layers, "cpu", meta.mean, meta.std)
    for layer in layers:
        self_ = set_similarity(A[layer], A[layer], layer=layer)
        halves = set_similarity(A[layer], B[layer], layer=layer)
        shuffled = set_similarity(A[layer], S[layer], layer=layer)
        assert self_["svcca"] == pytest.approx(1.0, abs=1e-6), layer
        assert halves["svcca"] > shuffled["svcca"] + 0.05, (layer, halves, shuffled)
        assert shuffled["svcca"] > shuffled["chance"], layer
        assert halves["svcca"] > 2 * halves["chance"], layer


def test_compare_sets_ranks_candidates_and_writes_the_report(phantom_csv, tmp_path):
    from engine.data.cache import ImageCache

    images = np.asarray(ImageCache.build(sorted(str(p) for p in (phantom_csv.parent / "images").glob("*.png")),
                                         size=32).array)
    rep = compare_sets(phantom_csv, {"same phantoms": images, "shuffled": shuffle_pixels(images, 0)}, init="random",
                       layers=["layer1", "layer3"], n_images=12, image_size=32, grid=2)
    t = rep.table
    assert list(t.columns) == ["candidate", "layer", "svcca", "chance", "k_ref", "k_cand", "units", "n_images"]
    assert len(t) == 4 and set(t["n_images"]) == {12} and set(t["layer"]) == {"layer1", "layer3"}
    assert rep.closest == "same phantoms" and list(rep.ranking["rank"]) == [1, 2]
    assert rep.settings["reference"] == phantom_csv.parent.name and rep.settings["n_images"] == 12
    assert "same phantoms" in rep.sentence()
    out = rep.write(tmp_path / "rep")
    for f in ("table.csv", "ranking.csv", "report.json", "similarity.html"):
        assert (out / f).stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["closest"] == "same phantoms"
    # equal n: a 5-image candidate brings every set down to 5
    assert set(compare_sets(images, [images[:5]], layers=["layer4"], image_size=32, grid=1).table["n_images"]) == {5}
    with pytest.raises(ValueError, match="at least 3 images"):
        compare_sets(images, [images[:2]], image_size=32)
    with pytest.raises(ValueError, match="at least one candidate"):
        compare_sets(images, {}, image_size=32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare_sets(images, [tmp_path / "nowhere"], image_size=32)
    from engine.models import UnknownInitError

    with pytest.raises(UnknownInitError):
        compare_sets(images, [images], init="no-such-backbone", image_size=32)


def test_cli_similarity_prints_table_ranking_and_json(phantom_csv, tmp_path, capsys):
    from engine.cli import main

    folder = phantom_csv.parent / "images"
    rc = main(["similarity", str(phantom_csv), f"pool={folder}", str(folder), "--init", "random", "--layers",
               "layer2,layer4", "--n-images", "10", "--image-size", "32", "--grid", "2", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "SVCCA with" in out and "layer2" in out and "layer4" in out and "Closest to" in out
    assert "pool" in out and "images" in out  # NAME=PATH name, and the folder's own name
    assert (tmp_path / "o" / "table.csv").exists()
    rc = main(["similarity", str(phantom_csv), str(folder), "--init", "random", "--layers", "layer1",
               "--n-images", "8", "--image-size", "32", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["closest"] == "images" and rep["table"][0]["n_images"] == 8
    assert main(["similarity", str(phantom_csv), "--init", "random"]) == 2
    assert "at least two image sets" in capsys.readouterr().err
    assert main(["similarity", str(phantom_csv), str(folder), "--init", "random", "--layers", "layer1",
                 "--grid", "1", "--keep", "1.0", "--n-images", "40", "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "too few" in err and "--grid" in err
