"""`import-backbone`: every supported layout round-trips (same outputs as the original network); bad files
are refused."""
from __future__ import annotations

import functools
import json
import pickle

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

from engine.cli import main
from engine.models import list_inits, load_backbone
from engine.models.files import NotAWeightsFileError
from engine.models.importing import BackboneImportError, import_backbone


@functools.cache
def _original(arch: str = "resnet18", in_ch: int = 3) -> torch.nn.Module:
    """A torchvision model with non-trivial weights and BN statistics (seeded), built once per arch and shared:
    READ-ONLY (callers copy what they change)."""
    torch.manual_seed(3)
    m = getattr(tvm, arch)(weights=None, **({"num_classes": 18} if arch == "densenet121" else {}))
    if in_ch == 1:
        m.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return m.eval()


def _features(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features of a torchvision model (its classifier skipped)."""
    head = "fc" if hasattr(m, "fc") else "classifier"
    saved = getattr(m, head)
    setattr(m, head, torch.nn.Identity())
    try:
        with torch.no_grad():
            return m(x)
    finally:
        setattr(m, head, saved)


def _moco_v2(sd):
    out = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    out.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512),
                "module.encoder_q.fc.2.weight": torch.randn(128, 512)})
    out.update({f"module.encoder_k.{k}": v.clone() for k, v in sd.items()})
    out["module.queue"] = torch.randn(128, 64)
    return {"epoch": 200, "arch": "resnet18", "state_dict": out}


def _moco_v3(sd):
    out = {f"module.base_encoder.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    out.update({"module.base_encoder.fc.0.weight": torch.randn(64, 512),
                "module.predictor.0.weight": torch.randn(8, 8)})
    out.update({f"module.momentum_encoder.{k}": v.clone() for k, v in sd.items()})
    return {"epoch": 300, "state_dict": out}


def _dino(sd):
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    teacher = {**{f"backbone.{k}": v for k, v in body.items()}, "head.last_layer.weight_g": torch.ones(8, 1)}
    student = {f"module.backbone.{k}": v + 1.0 for k, v in body.items() if v.is_floating_point()}
    return {"teacher": teacher, "student": student, "epoch": 100}


def _barlow_full(sd):
    body = {f"module.backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    return {"epoch": 1000, "model": {**body, "module.projector.0.weight": torch.randn(16, 512)}}


def _lightly(sd):
    idx = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    return {f"backbone.{idx[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v
            for k, v in sd.items() if not k.startswith("fc.")}


LAYOUTS = {
    "torchvision": (lambda sd: dict(sd), "torchvision"),
    "timm": (lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, "torchvision"),
    "moco_v2": (_moco_v2, "MoCo v2"),
    "moco_v3": (_moco_v3, "MoCo v3"),
    "dino": (_dino, "DINO teacher"),
    "barlow_plain": (lambda sd: {k: v for k, v in sd.items() if not k.startswith("fc.")}, "torchvision"),
    "barlow_full": (_barlow_full, "BarlowTwins"),
    "lightly": (_lightly, "Sequential"),
    "lightning_lightly": (lambda sd: {"state_dict": _lightly(sd), "epoch": 3}, "Sequential"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_round_trips(layout, tmp_path):
    orig = _original()
    make, expect = LAYOUTS[layout]
    f = tmp_path / f"{layout}.pth"
    torch.save(make(orig.state_dict()), f)
    r = import_backbone(f, "resnet18", f"imp-{layout.replace('_', '-')}", source="test", licence="MIT")
    assert expect in r.layout
    model, meta = load_backbone(r.name)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(model(x), _features(orig, x), atol=1e-5)
    info = meta.info
    assert info["method"] == "imported" and info["data"] == {"synthetic": False}
    assert info["imported"]["file"] == f.name and len(info["imported"]["sha256"]) == 64
    assert info["imported"]["source"] == "test" and info["imported"]["licence"] == "MIT"


def test_dino_prefers_teacher(tmp_path):
    orig = _original()
    f = tmp_path / "dino.pth"
    torch.save(_dino(orig.state_dict()), f)
    r = import_backbone(f, "resnet18", "dino-t")
    assert "teacher" in r.layout and any("student" in k for k in r.dropped + [str(r.n_dropped)])


def test_safetensors_file(tmp_path):
    orig = _original()
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in orig.state_dict().items()}, str(f))
    r = import_backbone(f, "resnet18", "st-import")
    model, _ = load_backbone(r.name)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model(x), _features(orig, x), atol=1e-5)


def test_torchxrayvision_densenet_one_channel_stem(tmp_path):
    orig = _original("densenet121", in_ch=1)
    f = tmp_path / "xrv.pt"
    sd = dict(orig.state_dict())
    sd["op_threshs"] = torch.rand(18)  # torchxrayvision keeps its calibration thresholds in the state dict
    torch.save(sd, f)
    r = import_backbone(f, "densenet121", "xrv-densenet", mean=0.5, std=1 / 2048)
    assert r.stem and "conv0" in r.stem
    model, meta = load_backbone(r.name)
    assert meta.mean == (0.5, 0.5, 0.5) and meta.std[0] == pytest.approx(1 / 2048)
    g = torch.randn(1, 1, 64, 64)
    assert torch.allclose(model(g.expand(-1, 3, -1, -1)), _features(orig, g), atol=1e-4)


def test_old_densenet_names(tmp_path):
    orig = _original("densenet121")
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
           for k, v in orig.state_dict().items()}
    f = tmp_path / "old.pth"
    torch.save(old, f)
    r = import_backbone(f, "densenet121", "old-densenet")
    model, _ = load_backbone(r.name)
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(model(x), _features(orig, x), atol=1e-4)


def test_missing_key_names_layout_and_keys(tmp_path):
    sd = dict(_original().state_dict())
    del sd["layer4.1.bn2.weight"]
    f = tmp_path / "cut.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}, f)
    with pytest.raises(BackboneImportError, match=r"MoCo v2.*layer4\.1\.bn2\.weight"):
        import_backbone(f, "resnet18", "cut")
    assert not any(i.name == "cut" for i in list_inits())


def test_wrong_arch_shape_nonfinite_and_pickle_refused(tmp_path):
    orig = _original()
    f = tmp_path / "r18.pth"
    torch.save(orig.state_dict(), f)
    with pytest.raises(BackboneImportError, match="resnet50"):
        import_backbone(f, "resnet50", "wrong-arch")
    bad = dict(orig.state_dict())
    bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"].clone()
    bad["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pth")
    with pytest.raises(BackboneImportError, match="non-finite"):
        import_backbone(tmp_path / "nan.pth", "resnet18", "nan-import")
    (tmp_path / "obj.pth").write_bytes(pickle.dumps({"x": ValueError("boom")}, protocol=2))
    with pytest.raises((NotAWeightsFileError, BackboneImportError), match="not a valid weights file"):
        import_backbone(tmp_path / "obj.pth", "resnet18", "pickle-import")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a whole pickled model
    with pytest.raises(NotAWeightsFileError, match="state_dict"):
        import_backbone(tmp_path / "module.pt", "resnet18", "module-import")
    assert [i.name for i in list_inits() if not i.shipped and i.method == "imported"] == []


def test_name_taken_is_refused(tmp_path):
    f = tmp_path / "a.pth"
    torch.save(_original().state_dict(), f)
    import_backbone(f, "resnet18", "taken")
    with pytest.raises(BackboneImportError, match="exists already"):
        import_backbone(f, "resnet18", "taken")
    with pytest.raises(BackboneImportError, match="built-in"):
        import_backbone(f, "resnet18", "random")


def test_cli_import_backbone(tmp_path, capsys):
    f = tmp_path / "moco.pth.tar"
    torch.save(_moco_v2(_original().state_dict()), f)
    rc = main(["import-backbone", str(f), "--arch", "resnet18", "--name", "cli-moco", "--source", "MoCo v2 800ep",
               "--licence", "CC-BY-NC 4.0"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "MoCo v2" in out["layout"] and out["n_dropped"] > 0
    info = {i.name: i for i in list_inits()}["cli-moco"]
    assert info.method == "imported" and "CC-BY-NC 4.0" in info.provenance
    rc = main(["import-backbone", str(tmp_path / "none.pth"), "--arch", "resnet18", "--name", "x"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
