"""Bring a backbone trained elsewhere: map a weights file's state-dict layout to this project's format.

`import_backbone(path, arch, name, source="", licence="", mean=None, std=None, checkpoint_dir=None)`
reads `path` (`.safetensors`, or `.pth`/`.pt`/`.ckpt`/`.bin` with `torch.load(weights_only=True)`:
tensors and plain containers only, never other pickled objects), finds the tensors of the backbone in
it, checks them and writes the deliverable with `engine.models.registry.save_backbone`
(`<name>.safetensors` + `<name>.json`). Returns an `ImportReport`.

Layouts recognized (a container inside the file, then a key prefix; the first that matches every key
of the backbone wins, in this order):

- torchvision / timm: plain `conv1.weight`, `layer1.0...` (ResNet), `features.conv0...` (DenseNet);
  the classifier `fc.` / `classifier.` is dropped. timm's ResNet names are torchvision's. Also the
  official BarlowTwins `resnet50.pth`, DINO's `dino_resnet50_pretrain.pth`, torchxrayvision's DenseNet
  `state_dict()` (1-channel stem, see below), and old DenseNet names (`norm.1` -> `norm1`).
- MoCo v2 (`state_dict` / `module.encoder_q.`) and MoCo v3 (`state_dict` / `module.base_encoder.`):
  the projection MLP (`fc.*`), the key encoder, the predictor and the queue are left out.
- DINO full checkpoint: `teacher` / `backbone.` (preferred: the teacher is DINO's deliverable) or
  `student` / `module.backbone.`; the DINO head is left out.
- BarlowTwins full checkpoint: `model` / `module.backbone.` (projector and bn left out).
- lightly: `backbone.0.`, `backbone.1.`, ... from `nn.Sequential(*list(resnet.children())[:-1])`
  (torchvision's children in order: conv1, bn1, relu, maxpool, layer1..4 / DenseNet's `features`),
  also inside a Lightning `state_dict`.
- `model.` / `encoder.` / `module.` prefixes of the same names (generic wrappers).

A 1-channel stem (torchxrayvision) is converted to the 3-channel stem the project feeds (a grayscale
X-ray replicated to 3 channels, `engine.models.backbones.prepare_batch`): each channel gets a third
of the 1-channel kernel, so the replicated input gives exactly the original convolution. The input
normalization is the file's own business: pass `mean`/`std` for what the network was trained on
(torchxrayvision scales [0, 1] pixels to [-1024, 1024]: mean 0.5, std 1/2048).

Validation: every backbone tensor present (`num_batches_tracked` counters may be absent), no other
tensor under the layout's prefix except the dropped heads, the same shapes, every value finite.
Errors raise `BackboneImportError` (ValueError) naming the layout guessed and the keys missing or
unexpected.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine.models.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, check_arch
from engine.models.files import NotAWeightsFileError, torch_load_weights
from engine.models.registry import file_sha256, save_backbone

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")
# (container path inside the file, key prefix, layout name), tried in this order.
LAYOUTS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    ((), "", "torchvision / timm (plain names)"),
    (("state_dict",), "module.encoder_q.", "MoCo v2 (state_dict / module.encoder_q.)"),
    (("state_dict",), "module.base_encoder.", "MoCo v3 (state_dict / module.base_encoder.)"),
    (("teacher",), "backbone.", "DINO teacher (teacher / backbone.)"),
    (("teacher",), "module.backbone.", "DINO teacher (teacher / module.backbone.)"),
    (("student",), "module.backbone.", "DINO student (student / module.backbone.)"),
    (("student",), "backbone.", "DINO student (student / backbone.)"),
    (("model",), "module.backbone.", "BarlowTwins full checkpoint (model / module.backbone.)"),
    ((), "backbone.", "lightly / backbone. prefix"),
    (("state_dict",), "backbone.", "Lightning state_dict / backbone."),
    ((), "module.encoder_q.", "MoCo v2 encoder (module.encoder_q.)"),
    ((), "encoder_q.", "MoCo encoder (encoder_q.)"),
    ((), "module.base_encoder.", "MoCo v3 encoder (module.base_encoder.)"),
    ((), "module.backbone.", "module.backbone."),
    ((), "module.", "DataParallel (module.)"),
    ((), "model.", "model. prefix"),
    ((), "encoder.", "encoder. prefix"),
    (("state_dict",), "", "state_dict (plain names)"),
    (("state_dict",), "module.", "state_dict / module."),
    (("state_dict",), "model.", "state_dict / model."),
    (("model",), "", "model (plain names)"),
    (("model",), "module.", "model / module."),
)
# torchvision's classifier (MoCo's projection MLP is `fc.0` / `fc.2`); torchxrayvision's calibration thresholds
HEADS = ("fc.", "classifier.", "op_threshs")
_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                           r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


class BackboneImportError(ValueError):
    """A file whose tensors are not a backbone of the chosen arch in a known layout; the message says
    which layout was guessed, what is missing or unexpected, and what to do."""


@dataclass
class ImportReport:
    """What `import_backbone` did: the layout found, keys left out, stem conversion, files written."""

    name: str
    arch: str
    layout: str
    sha256: str
    dropped: list[str] = field(default_factory=list)  # head / other-module keys left out (first 20)
    n_dropped: int = 0
    stem: str = ""  # "" or how a 1-channel stem was converted
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


def read_weights(path: Path) -> dict[str, Any]:
    """The file's top-level dict: safetensors (flat name -> tensor) or torch.load(weights_only=True).

    Raises NotAWeightsFileError (a pickle of other objects, a truncated file) and BackboneImportError
    (an unknown suffix, a file that holds no dict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # header errors, truncation
            raise NotAWeightsFileError(f"{path} is not a valid safetensors file ({e})") from e
    if suffix not in TORCH_SUFFIXES:
        raise BackboneImportError(f"{path.name}: unknown weights file type {suffix!r}; give a .safetensors "
                                  f"or a torch file ({', '.join(TORCH_SUFFIXES)})")
    fix = ("save the network's state_dict instead (torch.save(model.state_dict(), 'weights.pt')); "
           "whole pickled models are never loaded")
    obj = torch_load_weights(path, fix)
    if not isinstance(obj, dict):
        raise BackboneImportError(f"{path.name} holds {type(obj).__name__}, not a state dict: {fix}")
    return obj


def _container(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else None


def _sequential_names(arch: str) -> list[str]:
    """torchvision's top-level children of `arch` in order (lightly's nn.Sequential indices)."""
    import torchvision.models as tvm

    return [n for n, _ in getattr(tvm, arch)(weights=None).named_children()]


def _strip(d: dict[str, Any], prefix: str, arch: str) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Tensors under `prefix` with it removed (heads split off, Sequential indices and old DenseNet
    names mapped): (mapped, dropped keys, used Sequential numbering)."""
    sub = {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    sequential = bool(sub) and all(k.split(".", 1)[0].isdigit() for k in sub)
    if sequential:
        names = _sequential_names(arch)
        sub = {f"{names[int(k.split('.', 1)[0])]}.{k.split('.', 1)[1]}" if int(k.split(".", 1)[0]) < len(names)
               else k: v for k, v in sub.items()}
    sub = {_OLD_DENSENET.sub(r"\1\2", k): v for k, v in sub.items()}  # torchvision's own rename
    dropped = [prefix + k for k in sub if k.startswith(HEADS)]
    return {k: v for k, v in sub.items() if not k.startswith(HEADS)}, dropped, sequential


def _benign_missing(k: str) -> bool:
    return k.endswith("num_batches_tracked")


def guess_layout(obj: dict[str, Any], arch: str) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """(layout name, the backbone's tensors under this project's names, keys left out) for the first
    layout in LAYOUTS that holds every backbone key of `arch`. Raises BackboneImportError naming the
    closest layout and its missing / unexpected keys when none does."""
    want = set(build_backbone(check_arch(arch)).state_dict())
    best: tuple[int, str, set[str], set[str]] | None = None
    for keys, prefix, label in LAYOUTS:
        d = _container(obj, keys)
        if d is None:
            continue
        sd, dropped, sequential = _strip(d, prefix, arch)
        if not sd:
            continue
        missing = {k for k in want - set(sd) if not _benign_missing(k)}
        unexpected = set(sd) - want
        name = label + (" (nn.Sequential numbering)" if sequential else "")
        if not missing and not unexpected:
            outside = [k for k in _flat_keys(obj) if not _under(k, keys, prefix)]
            return name, sd, dropped + outside
        score = len(want & set(sd))
        if best is None or score > best[0]:
            best = (score, name, missing, unexpected)
    if best is None or best[0] == 0:
        raise BackboneImportError(
            f"no {arch} backbone found: none of the known layouts (torchvision/timm, MoCo v2/v3, DINO, BarlowTwins, "
            f"lightly, torchxrayvision) holds {arch} tensor names. First keys in the file: {_flat_keys(obj)[:5]}. "
            f"Check --arch, or save the backbone's state_dict with torchvision names")
    _, name, missing, unexpected = best
    raise BackboneImportError(
        f"closest layout: {name}, but it is not a complete {arch} backbone: {len(missing)} keys missing "
        f"{sorted(missing)[:5]}, {len(unexpected)} unexpected {sorted(unexpected)[:5]}. Check --arch "
        f"(resnet18 / resnet50 / densenet121) and that the file holds the whole backbone")


def _flat_keys(obj: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for k, v in obj.items():
        if isinstance(v, dict):
            out += _flat_keys(v, f"{path}{k}/")
        elif isinstance(v, torch.Tensor):
            out.append(f"{path}{k}")
    return out


def _under(flat: str, keys: tuple[str, ...], prefix: str) -> bool:
    head = "".join(f"{k}/" for k in keys)
    return flat.startswith(head) and "/" not in flat[len(head):] and flat[len(head):].startswith(prefix)


def _fit_stem(sd: dict[str, torch.Tensor], arch: str) -> str:
    """Convert a 1-channel first convolution to 3 channels in place (each channel = kernel / 3: the
    replicated grayscale input then gives the same output); "" when the stem already has 3."""
    key = "conv1.weight" if arch.startswith("resnet") else "features.conv0.weight"
    w = sd.get(key)
    if w is None or w.ndim != 4 or w.shape[1] != 1:
        return ""
    sd[key] = (w / 3.0).expand(-1, 3, -1, -1).contiguous()
    return f"{key} had 1 input channel; converted to 3 channels of kernel/3 (same output on a replicated gray input)"


def check_tensors(sd: dict[str, torch.Tensor], model: nn.Module, layout: str) -> None:
    """Shapes equal to `model`'s and every floating value finite; BackboneImportError otherwise."""
    ref = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(ref[k].shape)})" for k, v in sd.items() if v.shape != ref[k].shape]
    if bad:
        raise BackboneImportError(f"layout {layout}: {len(bad)} tensors have the wrong shape, e.g. {bad[:3]}. "
                                  "Check --arch (resnet18 / resnet50 / densenet121)")
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise BackboneImportError(f"layout {layout}: non-finite values (NaN/inf) in {nonfinite[:3]}: the network "
                                  "would answer NaN. Export the weights again from a healthy run")


def _check_name(name: str, d: Path | None) -> None:
    from engine.models.registry import _split_builtin, shipped_inits
    from engine.paths import checkpoints_dir

    if _split_builtin(name, None) is not None or name in {i.name for i in shipped_inits()}:
        raise BackboneImportError(f"{name!r} is a built-in or shipped init's name; choose another --name")
    if ((d or checkpoints_dir()) / f"{name}.json").exists():
        raise BackboneImportError(f"a checkpoint named {name!r} exists already; choose another --name or delete it")


def _norm(v: Any, default: tuple[float, ...], what: str) -> list[float]:
    vals = list(default) if v is None else [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(x == x and abs(x) != float("inf") for x in vals) or (what == "std" and min(vals) <= 0):
        raise BackboneImportError(f"--{what} must be 1 or 3 finite numbers{' > 0' if what == 'std' else ''} (got {v})")
    return vals


def import_backbone(path: Path, arch: str, name: str, source: str = "", licence: str = "",
                    mean: Any = None, std: Any = None, checkpoint_dir: Path | None = None) -> ImportReport:
    """Read `path`, map its layout, validate, and save it as checkpoint `name` (see the module docstring).

    The json records `method: "imported"`, `imported {file, sha256, layout, source, licence, date,
    stem, n_dropped, dropped}`, `data {"synthetic": false}`, `provenance` and the input `mean`/`std`.
    Raises BackboneImportError / NotAWeightsFileError (ValueError), FileNotFoundError; nothing is written
    then."""
    path = Path(path)
    arch = check_arch(arch)
    _check_name(name, checkpoint_dir)
    m, s = _norm(mean, IMAGENET_MEAN, "mean"), _norm(std, IMAGENET_STD, "std")
    obj = read_weights(path)
    layout, sd, dropped = guess_layout(obj, arch)
    stem = _fit_stem(sd, arch)
    model = build_backbone(arch)
    check_tensors(sd, model, layout)
    model.load_state_dict(sd, strict=False)  # absent num_batches_tracked counters keep 0
    digest = file_sha256(path, full=True)
    imported = {"file": path.name, "sha256": digest, "layout": layout, "source": source, "licence": licence,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stem": stem,
                "n_dropped": len(dropped), "dropped": dropped[:20]}
    prov = f"imported from {path.name} ({layout})" + (f"; source: {source}" if source else "") + (
        f"; licence: {licence}" if licence else "; licence not given")
    info = {"method": "imported", "arch": arch, "mean": m, "std": s, "imported": imported,
            "data": {"synthetic": False}, "provenance": prov}
    out = save_backbone(model, name, info, checkpoint_dir)
    return ImportReport(name, arch, layout, digest, dropped[:20], len(dropped), stem, out, info)
