"""One registry of initializations: shipped backbones, `random`, `imagenet`, and the user's checkpoints.

Order (what `list_inits` returns, what `python -m engine inits` prints): the *shipped* backbones
first (committed under checkpoints/shipped/, best measured first by their json's `rank`), then
`random` and `imagenet`, then the user's own checkpoints (checkpoints/, git-ignored), newest first.
Shipped names are reserved: a user checkpoint of the same name is ignored. A shipped backbone's json
records the sha256 of its weights file; loading refuses a file that does not match (e.g. a Git LFS
pointer or a truncated copy).

Names follow timm's style. `random` / `imagenet` take an `arch` (default resnet18, the CPU demo's);
`random-resnet50` / `imagenet-resnet50` spell it in the name. A checkpoint deliverable is
`<dir>/<name>.safetensors` + `<dir>/<name>.json` (method, arch, config, steps, data fingerprint,
collapse metrics, created). Loading never unpickles: safetensors only. A checkpoint whose json is not
the expected shape, or an ImageNet file that is no weights file, is listed as unavailable with the
reason (engine.models.files), so one bad file never takes down the listing.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from engine.atomic import atomic_write
from engine.models.backbones import ARCHS, IMAGENET_MEAN, IMAGENET_STD, build_backbone, check_arch
from engine.models.files import (CheckpointInfoError, NotAWeightsFileError, read_checkpoint_info, torch_load_weights,
                                 weights_file_problem)
from engine.paths import checkpoints_dir, imagenet_weights_dir, shipped_dir

DEFAULT_ARCH = "resnet18"
# Input contract of inits without a recorded training size: ImageNet weights were trained on 224 px crops
# (torchvision's recipe); `random` has no size to match, so it runs at the device's working size.
IMAGENET_SIZE = 224
FREE_SIZE = {"cuda": 224, "cpu": 96}  # pixels: the studies' size on a GPU; fast on a CPU
INPUT_CHANNELS = 3  # every backbone takes 3 channels; a radiograph's one is repeated (prepare_batch)
KINDS = ("shipped", "user", "synthetic", "imported", "download-gated", "random")

# torchvision weights enum per arch (the ones the MoCo-transfer / CheXpert-transfer studies used).
_TV_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights", "densenet121": "DenseNet121_Weights"}


class UnknownInitError(ValueError):
    """An init name that is not in the registry (the message lists valid names)."""


class InitUnavailableError(RuntimeError):
    """A known init that cannot be loaded here (e.g. ImageNet weights offline); the message says how to fix it."""


@dataclass(frozen=True)
class BackboneMeta:
    name: str
    arch: str
    feat_dim: int
    method: str  # "random" | "imagenet" | "moco_v2" | "barlow_twins" | "spark" | "dino" | ...
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    source: str = ""  # file the weights came from ("" for random)
    fingerprint: str = ""  # content hash of the weights ("" for random): invalidates feature caches
    info: dict[str, Any] = field(default_factory=dict)  # the checkpoint JSON, for display

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InitInfo:
    """One init of the registry with its input contract (timm style: the contract travels with the name).

    `image_size`, `channels`, `mean`, `std` and `kind` are read from what was recorded (the checkpoint json)
    or, for `random` / `imagenet`, their own fixed contracts; never from the name. `input_size_for`
    answers at what size the init runs on a device."""

    name: str
    arch: str
    method: str
    available: bool
    reason: str = ""  # why unavailable, with the fix
    info: dict[str, Any] = field(default_factory=dict)
    shipped: bool = False  # committed with the product (checkpoints/shipped/)

    @property
    def image_size(self) -> int | None:
        """Square side in pixels the weights were trained at (json `image_size`; imagenet 224); None for
        `random` and for a checkpoint that recorded none (it runs at the device's working size)."""
        if self.method == "random":
            return None
        if self.method == "imagenet":
            return IMAGENET_SIZE
        size = self.info.get("image_size")
        return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) and size >= 1 else None

    @property
    def channels(self) -> int:
        """Input channels the backbone takes (3; a grayscale radiograph is repeated, engine.models.prepare_batch)."""
        return INPUT_CHANNELS

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel input normalization mean on [0, 1] pixels (json `mean`, else ImageNet's)."""
        return tuple(self.info.get("mean") or IMAGENET_MEAN)

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel input normalization std (json `std`, else ImageNet's)."""
        return tuple(self.info.get("std") or IMAGENET_STD)

    @property
    def kind(self) -> str:
        """Where the weights come from, one of KINDS: `shipped` (committed with the product), `random`,
        `download-gated` (imagenet: torchvision's file, fetched once online), `synthetic` (pretrained on
        phantom images, as its json records: `synthetic_data`), `imported` (weights this tool did not train:
        no training record), else `user` (the user's own pretraining on real images)."""
        if self.shipped:
            return "shipped"
        if self.method == "random":
            return "random"
        if self.method == "imagenet":
            return "download-gated"
        if synthetic_data(self.info)[0]:
            return "synthetic"
        if not any(k in self.info for k in ("config", "steps", "data_fingerprint", "data")):  # no training record
            return "imported"
        return "user"

    @property
    def provenance(self) -> str:
        """One line on where the weights come from (the json's `provenance`; method/arch otherwise)."""
        if self.info.get("provenance"):
            return str(self.info["provenance"])
        if self.method == "random":
            return "random weights (He init, seed 0): knows nothing"
        if self.method == "imagenet":
            return "torchvision ImageNet-1k weights: natural photos, not X-rays"
        data = self.info.get("n_images")
        if self.kind == "synthetic":
            return f"{self.method} {self.arch} pretrained on {f'{data} ' if data else ''}synthetic phantom images, " \
                   "not real X-rays"
        return f"{self.method} {self.arch}" + (f" pretrained on {data} images" if data else "")


def synthetic_data(info: dict[str, Any]) -> tuple[bool, str]:
    """(whether a checkpoint was pretrained on synthetic phantom images, why), from its json `info`.

    Its training record `data.synthetic` decides (written at pretraining time, engine.ssl.pretrain.describe_data).
    A json from before that record: synthetic when its recorded `run_dir` lies in the demo workspace's job
    folders (<repo>/workspace/demo/jobs/: the app's runs on the demo's phantom images). Never the name."""
    data = info.get("data")
    if isinstance(data, dict) and isinstance(data.get("synthetic"), bool):
        return data["synthetic"], str(data.get("why") or "")
    run_dir = info.get("run_dir")
    if isinstance(run_dir, str) and run_dir:
        from engine.paths import REPO_ROOT

        demo_jobs = (REPO_ROOT / "workspace" / "demo" / "jobs").resolve()
        try:
            Path(run_dir).resolve().relative_to(demo_jobs)
        except (ValueError, OSError):
            return False, ""
        return True, f"trained in the demo workspace (run folder {run_dir}), which holds synthetic phantoms only"
    return False, ""


def init_info(name: str, checkpoint_dir: Path | None = None, arch: str | None = None) -> InitInfo:
    """The registry's InitInfo of `name` (also `random-resnet50`, `imagenet-densenet121`, ... for any arch);
    raises UnknownInitError listing the valid names."""
    builtin = _split_builtin(name, arch)
    if builtin is not None:
        return InitInfo(name, builtin[1], builtin[0], True)
    found = {i.name: i for i in list_inits(checkpoint_dir, arch=arch)}
    if name not in found:
        raise UnknownInitError(f"unknown init {name!r}; valid inits: {', '.join(found)}")
    return found[name]


def input_size_for(init: InitInfo | str, device: torch.device | str = "cpu", checkpoint_dir: Path | None = None,
                   arch: str | None = None) -> int:
    """Square side in pixels at which `init` runs on `device`: the size its weights were trained at
    (`InitInfo.image_size`: its json's, 224 for imagenet), else (random, or nothing recorded) the device's
    working size (FREE_SIZE: 224 on CUDA, 96 on a CPU). A name is looked up with `list_inits(checkpoint_dir,
    arch)`; raises UnknownInitError for a name the registry does not know."""
    if isinstance(init, str):
        init = init_info(init, checkpoint_dir, arch)
    if device == "auto":
        from engine.device import resolve_device

        device = resolve_device(device)
    return init.image_size or FREE_SIZE.get(torch.device(device).type, FREE_SIZE["cpu"])


def _split_builtin(name: str, arch: str | None) -> tuple[str, str] | None:
    for base in ("random", "imagenet"):
        if name == base:
            return base, check_arch(arch or DEFAULT_ARCH)
        if name.startswith(base + "-") and name[len(base) + 1 :] in ARCHS:
            return base, name[len(base) + 1 :]
    return None


def imagenet_weights_path(arch: str) -> Path:
    """Local file the `imagenet` init reads (torchvision's own file name inside the weights dir)."""
    import torchvision.models as tvm

    weights = getattr(tvm, _TV_WEIGHTS[check_arch(arch)]).IMAGENET1K_V1
    return imagenet_weights_dir() / os.path.basename(weights.url)


def file_sha256(path: Path, full: bool = False) -> str:
    """sha256 of a file's bytes as hex: the first 16 digits (the feature-cache fingerprint), or all 64
    with `full`. Memoized on (path, mtime, inode, size) by `_sha256_of`: a re-saved file gets a new inode
    (atomic writes replace the file), so a changed file is always hashed again."""
    st = Path(path).stat()
    digest = _sha256_of(str(path), st.st_mtime_ns, st.st_ino, st.st_size)
    return digest if full else digest[:16]


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, mtime_ns: int, inode: int, size: int) -> str:
    """Full sha256 hex digest of `path`; the stat fields only key the cache (256 entries, least recent dropped)."""
    del mtime_ns, inode, size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_infos(d: Path | None, shipped: bool) -> list[InitInfo]:
    out = []
    for j in sorted(d.glob("*.json")) if d is not None and d.exists() else []:
        if not j.with_suffix(".safetensors").exists():
            continue
        try:
            info = read_checkpoint_info(j)
        except CheckpointInfoError as e:  # listed as unavailable with the reason; the others stay usable
            out.append(InitInfo(j.stem, "?", "?", False, str(e), {}, shipped))
            continue
        out.append(InitInfo(j.stem, info.get("arch", "?"), info.get("method", "?"), True, "", info, shipped))
    return out


def shipped_inits() -> list[InitInfo]:
    """The backbones committed under checkpoints/shipped/, best measured first (json `rank`, then name)."""
    return sorted(_read_infos(shipped_dir(), True), key=lambda i: (i.info.get("rank", 99), i.name))


def default_init(arch: str | None = None) -> str:
    """The init a user starts from: the best shipped backbone of `arch` (any arch when None), else `random`."""
    for i in shipped_inits():
        if arch is None or i.arch == arch:
            return i.name
    return "random"


def list_inits(checkpoint_dir: Path | None = None, arch: str | None = None) -> list[InitInfo]:
    """Shipped backbones (best first), random and imagenet for `arch` (default resnet18), then the
    user's checkpoints in `checkpoint_dir` (default checkpoints/), newest first."""
    arch = check_arch(arch or DEFAULT_ARCH)
    shipped = shipped_inits()
    out = [*shipped, InitInfo("random", arch, "random", True)]
    p = imagenet_weights_path(arch)
    fetch = f"`python -m engine fetch-imagenet --arch {arch}` on a machine with internet"
    bad = weights_file_problem(p) if p.exists() else None  # cheap: zip header and end, no unpickling
    reason = ("" if p.exists() and bad is None else
              f"{p} is not a valid weights file ({bad}): re-fetch it ({fetch}) or delete it" if bad else
              f"ImageNet weights are not available offline: place torchvision's file at {p} (or run {fetch})")
    out.append(InitInfo("imagenet", arch, "imagenet", not reason, reason))
    reserved = {i.name for i in shipped}
    user = [i for i in _read_infos(checkpoint_dir or checkpoints_dir(), False) if i.name not in reserved]
    out += sorted(user, key=lambda i: i.info.get("created", ""), reverse=True)
    return out


def checkpoints_made_in(workspace: str | Path, checkpoint_dir: Path | None = None) -> list[InitInfo]:
    """The user's checkpoints (in `checkpoint_dir`, default checkpoints/) trained inside `workspace`: those
    whose json's `run_dir` (the training run's folder, written by every export) lies in that folder, e.g. a
    pretraining or study job's `<workspace>/runs/job-<id>/`. Newest first. The registry's json beside
    each backbone is the one checkpoint index: no other table records where a checkpoint came from."""
    ws = Path(workspace).expanduser().resolve()
    out = []
    for i in list_inits(checkpoint_dir):
        run_dir = i.info.get("run_dir") if not i.shipped else None
        if run_dir and Path(run_dir).expanduser().resolve().is_relative_to(ws):
            out.append(i)
    return out


def load_backbone(
    name: str, device: torch.device | str = "cpu", arch: str | None = None, checkpoint_dir: Path | None = None
) -> tuple[nn.Module, BackboneMeta]:
    """Model (eval mode, on `device`) and its metadata. Unknown names fail listing the valid ones
    (UnknownInitError); known ones that cannot be loaded here raise InitUnavailableError saying why.
    `checkpoint_dir`: the user's checkpoints (default: engine.paths.checkpoints_dir()); shipped names win."""
    device = torch.device(device)
    builtin = _split_builtin(name, arch)
    if builtin is not None:
        model, meta = _load_builtin(name, *builtin)
    else:
        model, meta = _load_checkpoint(name, checkpoint_dir or checkpoints_dir())
    return model.to(device).eval(), meta


def _load_builtin(name: str, kind: str, a: str) -> tuple[nn.Module, BackboneMeta]:
    """`random` (one fixed network, seed 0) or `imagenet` (torchvision's offline weights file) of arch `a`."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(0)  # `random` is one fixed random network, so results are reproducible
        model = build_backbone(a)
    source = fp = ""
    if kind == "imagenet":
        p = imagenet_weights_path(a)
        if not p.exists():
            raise InitUnavailableError(
                f"init 'imagenet' ({a}) is unavailable: no internet and no weights file at {p}. "
                f"Copy torchvision's {p.name} there, or run `python -m engine fetch-imagenet --arch {a}` online."
            )
        fix = f"re-fetch it with `python -m engine fetch-imagenet --arch {a}` (online) or delete it"
        try:
            sd = torch_load_weights(p, fix)
        except NotAWeightsFileError as e:
            raise InitUnavailableError(str(e)) from e
        if not isinstance(sd, dict):
            raise InitUnavailableError(f"{p} is not a valid weights file (it holds {type(sd).__name__}, not a "
                                       f"state dict): {fix}")
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [m for m in missing if not m.startswith(("fc.", "classifier."))]:
            raise InitUnavailableError(f"{p} does not hold {a} ImageNet weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
        source, fp = str(p), file_sha256(p)
    return model, BackboneMeta(name=name, arch=a, feat_dim=ARCHS[a], method=kind, source=source, fingerprint=fp)


def _load_checkpoint(name: str, d: Path) -> tuple[nn.Module, BackboneMeta]:
    """A shipped backbone of that name, else the user's checkpoint in `d`; checked (sha256, finiteness, std)."""
    sd_dir = shipped_dir()
    shipped = sd_dir is not None and (sd_dir / f"{name}.safetensors").exists() and (sd_dir / f"{name}.json").exists()
    if shipped:
        d = sd_dir
    st, js = d / f"{name}.safetensors", d / f"{name}.json"
    if not (st.exists() and js.exists()):
        valid = ", ".join(i.name for i in list_inits(d))
        raise UnknownInitError(f"unknown init {name!r}; valid inits: {valid}")
    try:
        info = read_checkpoint_info(js)  # the expected shape, with a known arch
    except CheckpointInfoError as e:
        raise InitUnavailableError(str(e)) from e
    a = check_arch(info["arch"])
    want = info.get("sha256")
    if want and file_sha256(st, full=True) != want:
        raise InitUnavailableError(
            f"{st} does not match the sha256 its json records ({want[:16]}...): the file is damaged or is a Git LFS "
            f"pointer. Restore it with `git checkout -- {st.name}` in {st.parent}, or re-clone the repository")
    model = build_backbone(a)
    try:
        sd = load_file(str(st))
        model.load_state_dict(sd, strict=True)  # fp16 storage is cast to the fp32 model
    except Exception as e:  # safetensors header errors, missing/unexpected keys
        raise InitUnavailableError(f"cannot load {st}: {e}. Re-export or delete the checkpoint") from e
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InitUnavailableError(f"{st} holds non-finite weights ({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}): "
                                   "it would answer NaN. Re-export it from its training run or delete it")
    std = info.get("std", IMAGENET_STD)
    if not all(isinstance(x, (int, float)) and x > 0 for x in std):
        raise InitUnavailableError(f"{js} has a non-positive input std {std}: every input would become NaN. "
                                   "Fix or delete it")
    meta = BackboneMeta(
        name=name, arch=a, feat_dim=ARCHS[a], method=info.get("method", "?"),
        mean=tuple(info.get("mean", IMAGENET_MEAN)), std=tuple(info.get("std", IMAGENET_STD)),
        source=str(st), fingerprint=file_sha256(st), info=info,
    )
    return model, meta


def save_backbone(model: nn.Module, name: str, info: dict[str, Any], checkpoint_dir: Path | None = None) -> Path:
    """Write the deliverable atomically: weights first, then the JSON that makes it visible.

    `info` should hold method, arch, config, epochs/steps, data fingerprint, collapse metrics;
    `created` is added. Returns the .safetensors path. Raises `engine.names.InvalidNameError` (a
    ValueError) for a name that is not a valid checkpoint name, `engine.names.UnsafePathError` when
    the files would land outside `checkpoint_dir`, and `engine.diskspace.DiskFullError` (nothing
    visible is written) when the disk is too full.
    """
    from engine.names import InvalidNameError, check_name, inside

    d = checkpoint_dir or checkpoints_dir()
    try:
        if check_name(name, "checkpoint") != name:
            raise InvalidNameError("surrounding spaces")
    except InvalidNameError as e:
        raise InvalidNameError(f"invalid checkpoint name {name!r}: {e}") from None
    arch = info.get("arch") or getattr(model, "arch", None)
    check_arch(arch)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    st, js = inside(d, f"{name}.safetensors"), inside(d, f"{name}.json")
    nbytes = sum(v.numel() * v.element_size() for v in sd.values()) + 2**20
    atomic_write(st, lambda tmp: save_file(sd, tmp), needed=nbytes, what=f"the backbone {name}")
    full = {"name": name, "arch": arch, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    atomic_write(js, lambda tmp: Path(tmp).write_text(json.dumps(full, indent=2, default=str)),
                  what=f"the backbone {name}'s description")
    return st


def fetch_imagenet(arch: str) -> Path:
    """Download torchvision's ImageNet weights into the offline weights dir (needs internet)."""
    import torchvision.models as tvm

    weights = getattr(tvm, _TV_WEIGHTS[check_arch(arch)]).IMAGENET1K_V1
    dest = imagenet_weights_path(arch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(dest), progress=True)
    except Exception as e:  # offline: say so plainly
        raise InitUnavailableError(f"could not download {weights.url} ({e}); copy the file to {dest} by hand") from e
    return dest
