"""Init registry: names, offline ImageNet, checkpoint round trip and visibility, fingerprints."""
from __future__ import annotations


import pytest
import torch

from engine.models import (
    InitUnavailableError, UnknownInitError, build_backbone, list_inits, load_backbone, save_backbone,
)
from engine.models.registry import imagenet_weights_path


def _perturbed(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_backbone("resnet18")
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()  # buffers are part of the deliverable too
    return m


def test_unknown_init_lists_valid_names():
    save_backbone(_perturbed(1), "moco_v2-resnet18-test", {"method": "moco_v2", "arch": "resnet18"})
    with pytest.raises(UnknownInitError) as e:
        load_backbone("no-such-init")
    msg = str(e.value)
    for name in ("random", "imagenet", "moco_v2-resnet18-test"):
        assert name in msg


def test_imagenet_offline_is_unavailable_and_names_the_path():
    path = imagenet_weights_path("resnet18")
    assert not path.exists()
    with pytest.raises(InitUnavailableError) as e:
        load_backbone("imagenet")
    assert str(path) in str(e.value)
    info = {i.name: i for i in list_inits()}
    assert info["imagenet"].available is False and str(path) in info["imagenet"].reason
    assert info["random"].available is True
    model, meta = load_backbone("random")  # everything else keeps working
    assert meta.feat_dim == 512 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 512)


def test_checkpoint_round_trip_is_exact():
    m = _perturbed(2)
    save_backbone(m, "barlow-resnet18-rt", {"method": "barlow_twins", "arch": "resnet18", "steps": 3,
                                             "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    loaded, meta = load_backbone("barlow-resnet18-rt")
    ref, got = m.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert (meta.arch, meta.feat_dim, meta.method) == ("resnet18", 512, "barlow_twins")
    assert meta.mean == (0.5, 0.5, 0.5) and meta.std == (0.25, 0.25, 0.25)
    assert meta.fingerprint and meta.info["steps"] == 3
    assert not loaded.training


def test_checkpoint_without_json_is_not_listed(tmp_path):
    st = save_backbone(_perturbed(3), "spark-resnet18-orphan", {"method": "spark", "arch": "resnet18"}, tmp_path)
    assert "spark-resnet18-orphan" in [i.name for i in list_inits(tmp_path)]
    st.with_suffix(".json").unlink()
    assert "spark-resnet18-orphan" not in [i.name for i in list_inits(tmp_path)]
    with pytest.raises(UnknownInitError):
        load_backbone("spark-resnet18-orphan", checkpoint_dir=tmp_path)
    st.with_suffix(".json").write_text("{not json")  # a broken JSON: listed unavailable with why, never crashes listing
    (broken,) = [i for i in list_inits(tmp_path) if i.name == "spark-resnet18-orphan"]
    assert not broken.available and "spark-resnet18-orphan.json" in broken.reason


def test_fingerprint_changes_when_weights_change():
    save_backbone(_perturbed(4), "dino-resnet18-fp", {"method": "dino", "arch": "resnet18"})
    fp1 = load_backbone("dino-resnet18-fp")[1].fingerprint
    save_backbone(_perturbed(4), "dino-resnet18-fp", {"method": "dino", "arch": "resnet18"})
    assert load_backbone("dino-resnet18-fp")[1].fingerprint == fp1  # same weights, same fingerprint
    save_backbone(_perturbed(5), "dino-resnet18-fp", {"method": "dino", "arch": "resnet18"})
    assert load_backbone("dino-resnet18-fp")[1].fingerprint != fp1


def test_a_checkpoint_with_non_finite_weights_or_zero_std_is_refused(tmp_path):
    """Issue 13 item 7: a backbone that would answer NaN is refused at load, with what to do."""
    import json

    import pytest
    import torch

    from engine.models import InitUnavailableError, build_backbone, load_backbone, save_backbone

    m = build_backbone("resnet18")
    with torch.no_grad():
        m.layer4[0].conv1.weight[0, 0, 0, 0] = float("nan")
    save_backbone(m, "nanny", {"method": "moco_v2", "arch": "resnet18"}, tmp_path)
    with pytest.raises(InitUnavailableError, match="non-finite weights.*layer4.0.conv1.weight"):
        load_backbone("nanny", checkpoint_dir=tmp_path)
    save_backbone(build_backbone("resnet18"), "flat", {"method": "moco_v2", "arch": "resnet18", "std": [0, 0, 0]},
                  tmp_path)
    with pytest.raises(InitUnavailableError, match="non-positive input std"):
        load_backbone("flat", checkpoint_dir=tmp_path)
    js = tmp_path / "flat.json"
    js.write_text(json.dumps({**json.loads(js.read_text()), "std": [0.2, 0.2, 0.2]}))
    assert load_backbone("flat", checkpoint_dir=tmp_path)[1].std == (0.2, 0.2, 0.2)
