"""The backbones that ship in checkpoints/shipped/: listed first, the default, intact, and not collapsed on real X-rays."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import SHIPPED_DIR

pytestmark = pytest.mark.skipif(not any(SHIPPED_DIR.glob("*.safetensors")), reason="no shipped backbone in the checkout")


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(SHIPPED_DIR))
    from engine.models import shipped_inits

    inits = shipped_inits()
    assert inits, f"{SHIPPED_DIR} holds weights but no readable json"
    return inits


def test_listed_first_and_default(shipped, capsys):
    from engine.cli import main
    from engine.models import default_init, list_inits

    names = [i.name for i in list_inits()]
    assert names[: len(shipped)] == [i.name for i in shipped] and names[len(shipped)] == "random"
    assert [i.info["rank"] for i in shipped] == sorted(i.info["rank"] for i in shipped)
    assert default_init() == shipped[0].name and default_init("resnet50") == "random"
    assert main(["inits"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["name"] == shipped[0].name and first["shipped"] and "chest" in first["provenance"]


def test_json_is_a_model_card_with_recipe_and_data(shipped):
    for i in shipped:
        info = i.info
        for key in ("method", "arch", "image_size", "steps", "images_seen", "train_seconds", "device", "data",
                    "data_fingerprint", "collapse", "sha256", "rebuild", "evaluation_summary", "intended_use"):
            assert info.get(key) not in (None, "", {}), f"{i.name}.json lacks {key}"
        assert info["data"]["n_images"] == info["n_images"] == 11165
        assert {s["source"] for s in info["data"]["sources"]} >= {"siimcovid", "covidrd", "tbx11k"}
        assert all(s.get("licence") for s in info["data"]["sources"])
        assert (SHIPPED_DIR / f"{i.name}.md").exists(), "model card missing"
        assert (SHIPPED_DIR / f"{i.name}.safetensors").stat().st_size < 50 * 2**20


def test_weights_match_the_fingerprint_in_the_json(shipped, tmp_path, monkeypatch):
    from engine.models import InitUnavailableError, load_backbone

    for i in shipped:
        st = SHIPPED_DIR / f"{i.name}.safetensors"
        assert hashlib.sha256(st.read_bytes()).hexdigest() == i.info["sha256"]
        model, meta = load_backbone(i.name)
        params = list(model.parameters())
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
        assert meta.method == i.info["method"] and meta.arch == "resnet18"
    # a damaged copy (one flipped byte in the weights) is refused with the fix
    bad = tmp_path / "shipped"
    bad.mkdir()
    name = shipped[0].name
    shutil.copy(SHIPPED_DIR / f"{name}.json", bad)
    data = bytearray((SHIPPED_DIR / f"{name}.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / f"{name}.safetensors").write_bytes(bytes(data))
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(bad))
    with pytest.raises(InitUnavailableError, match="does not match the sha256"):
        load_backbone(name)


def test_a_user_checkpoint_cannot_shadow_a_shipped_name(shipped, tmp_path, monkeypatch):
    from engine.models import build_backbone, list_inits, load_backbone, save_backbone

    name = shipped[0].name
    user = tmp_path / "user"
    user.mkdir()
    save_backbone(build_backbone("resnet18"), name, {"method": "moco_v2", "arch": "resnet18"}, user)
    assert [i.name for i in list_inits(user)].count(name) == 1
    _, meta = load_backbone(name, checkpoint_dir=user)
    assert meta.info["sha256"] == shipped[0].info["sha256"]  # the shipped one, not the user's


def _real_batch(shared_data, n: int = 32, size: int = 224) -> torch.Tensor:
    from engine.data.io import read_image
    from engine.data.manifest import load_manifest
    from engine.data.transforms import fit_square

    man = shared_data / "nih_pneumonia" / "manifest.csv"
    df = load_manifest(man).df
    paths = list(df["path"].iloc[:: max(1, len(df) // n)][:n])
    return torch.from_numpy(np.stack([fit_square(read_image(p)[0], size)[0] for p in paths]))  # (n, S, S) uint8


def test_embeddings_of_real_xrays_are_spread_not_collapsed(shipped, shared_data):
    """Backbone features of 32 held-out adult NIH X-rays at the shipped backbones' 224 px: effective rank and
    spread above the collapse monitor's thresholds, and well above what random weights give on the same images
    (measured: erank 11.1 vs 3.3 random, std 0.27 vs 0.07; with 64 images 18.5 vs 4.7 and 0.29 vs 0.08)."""
    from engine.models import load_backbone, prepare_batch
    from engine.ssl.monitor import ERANK_MIN, STD_MIN, collapse_metrics

    x = _real_batch(shared_data)

    def metrics(name: str) -> dict[str, float]:
        model, meta = load_backbone(name)
        with torch.no_grad():
            f = model(prepare_batch(x, torch.device("cpu"), meta.mean, meta.std))
        return collapse_metrics(f)

    rnd = metrics("random")
    for i in shipped:
        m = metrics(i.name)
        assert m["erank"] > ERANK_MIN and m["std"] > STD_MIN, (i.name, m)
        assert m["erank"] > 2 * rnd["erank"] and m["std"] > 2 * rnd["std"], (i.name, m, rnd)


def test_classify_cli_defaults_to_the_shipped_backbone(shipped, tmp_path, capsys):
    from engine.cli import main
    from engine.data.phantom import generate

    manifest = generate(tmp_path / "ph", 30, size=48, seed=2, findings=("cardiomegaly",), prevalence=0.4)
    rc = main(["classify", "--manifest", str(manifest), "--finding", "cardiomegaly",
               "--out", str(tmp_path / "c.cxrclf"), "--image-size", "64", "--cv-repeats", "1", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["init"] == shipped[0].name
    assert f"init: {shipped[0].name}" in out.err
