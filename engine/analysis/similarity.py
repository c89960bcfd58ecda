"""Dataset similarity through a backbone: SVCCA between the activations of two image sets, layer by layer.

The question (MoCo-Transfer, Chen, Zhou & Lipton 2023, "Investigating out-of-distribution contrastive
learning for limited-data domains", which uses SVCCA to quantify how similar two X-ray datasets are):
which unlabeled pool is closest to the images a user labeled, as one backbone sees them?

How two *different* image sets are compared. SVCCA (Raghu et al. 2017, engine.analysis.svcca) needs
paired observations. Two image sets share no images, but they share the network's units: unit j (a
channel at a position of a pooled grid) is the same feature detector for both sets. So at each layer
the observations are the units and the variables are the images: x = A's activations transposed,
(units, n_A), y = B's, (units, n_B). This is the reference code's own call, google/svcca
`get_cca_similarity(acts1, acts2)` with acts shaped (neurons, datapoints), given the images as its
"neurons" and the units as its "datapoints". The SV step keeps the directions over images that
explain 99% of each set's variance (the subspace of unit space that set occupies); the canonical
correlations are then the cosines of the principal angles between the two sets' subspaces. A set vs
itself gives 1; two samples of one distribution span nearly the same subspace (high); a set with
other statistics (e.g. pixel-shuffled X-rays) spans a different one (lower).

Samples vs kept dimensions. CCA needs more observations (units) than kept dimensions (k_A + k_B,
at most n_A + n_B). Global average pooling leaves C units (64 at ResNet layer1), fewer than the
~2 x 200 directions two sets of 200 images keep, so activations are average-pooled to a small grid
instead: `grid` x `grid` positions (default 4; layer1 then has 64 x 16 = 1024 units, layer4 512 x 16;
a map smaller than the grid keeps its own size). `grid=1` is global average pooling. Every set is
subsampled (seeded) to the same number of images, since the kept dimensions, and with them the chance
level of the mean correlation, grow with it. `chance` (the same computation with the units of one set
shuffled) is reported beside each value: read SVCCA against it.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from engine.analysis.svcca import KEEP, chance_svcca, svcca
from engine.events import OnEvent, check_stop, emit

DEFAULT_GRID = 4
DEFAULT_N_IMAGES = 200
STAGES = (("layer1", "layer2", "layer3", "layer4"),  # ResNets
          ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.denseblock4"))


def default_layers(model: Any) -> list[str]:
    """The backbone's four stages (ResNet layer1-4, DenseNet denseblock1-4), else its conv modules."""
    names = {n for n, _ in model.named_modules()}
    for stages in STAGES:
        if all(s in names for s in stages):
            return list(stages)
    from engine.explain.gradcam import conv_layer_names

    return conv_layer_names(model, max_depth=1)


def check_layers(model: Any, layers: Sequence[str]) -> list[str]:
    """`layers` as given, each a module name of `model`; raises ValueError naming the valid ones."""
    mods = dict(model.named_modules())
    bad = [l for l in layers if l not in mods or not l]
    if not layers or bad:
        from engine.explain.gradcam import conv_layer_names

        raise ValueError(f"unknown layer(s) {bad or '(none given)'}; choose from: {', '.join(conv_layer_names(model))}")
    return list(layers)


def shuffle_pixels(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image's pixels in a random order of its own (seeded): same histogram, no anatomy.
    uint8 (N, S, S) -> uint8 (N, S, S). The known "not an X-ray any more" case for tests and benches."""
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    return np.stack([row[rng.permutation(flat.shape[1])] for row in flat]).reshape(images.shape)


def layer_activations(model: Any, images: np.ndarray, layers: Sequence[str], device: Any = "cpu",
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      grid: int = DEFAULT_GRID, batch_size: int = 32, stop: threading.Event | None = None,
                      ) -> dict[str, np.ndarray]:
    """Activations of `images` (uint8 (N, S, S)) at each named module, average-pooled to a grid.

    A (B, C, H, W) output is pooled with adaptive average pooling to min(grid, H) x min(grid, W) and
    flattened to C * gh * gw units (channel-major); a (B, D) output is kept as D units. Returns
    {layer: float64 (N, units)}. Eval mode, no gradient, the model's training flag restored. Input
    normalization `mean`/`std` default to ImageNet's (engine.models.prepare_batch). Raises
    `engine.events.Cancelled` when `stop` is set between batches, ValueError for bad images/grid."""
    import torch
    import torch.nn.functional as F

    from engine.models.backbones import IMAGENET_MEAN, IMAGENET_STD, prepare_batch

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 (N, S, S) array, got {images.dtype} {images.shape}")
    if int(grid) < 1:
        raise ValueError(f"grid must be a whole number >= 1 (1 = global average pooling), got {grid}")
    device = torch.device(device)
    mods = dict(model.named_modules())
    layers = check_layers(model, layers)
    out: dict[str, list[np.ndarray]] = {l: [] for l in layers}
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m, _inp, o):
            o = o[0] if isinstance(o, (tuple, list)) else o
            if o.ndim == 4:  # (B, C, H, W) -> (B, C * gh * gw)
                o = F.adaptive_avg_pool2d(o.float(), (min(int(grid), o.shape[2]), min(int(grid), o.shape[3])))
            current[name] = o.float().flatten(1)
        return fn

    handles = [mods[l].register_forward_hook(hook(l)) for l in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                check_stop(stop)
                x = prepare_batch(torch.from_numpy(np.array(images[i:i + batch_size])), device,
                                  tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD))  # (b, 3, S, S)
                current.clear()
                model(x)
                for l in layers:
                    out[l].append(current[l].double().cpu().numpy())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {l: np.concatenate(v) for l, v in out.items()}


def set_similarity(acts_a: np.ndarray, acts_b: np.ndarray, keep: float | int = KEEP, seed: int = 0,
                   layer: str = "") -> dict[str, float]:
    """SVCCA of two image sets at one layer, units as the paired observations (see the module doc).

    acts_a (n_A, units), acts_b (n_B, units) -> {svcca, chance, k_a, k_b, units, n_a, n_b}: `svcca` is
    the mean canonical correlation (Raghu et al. 2017) of the two sets' kept subspaces, `chance` the
    same with the units of B shuffled. Raises ValueError when the layer has too few units for the
    kept dimensions, saying to pool to a finer grid or compare fewer images."""
    acts_a, acts_b = np.asarray(acts_a, np.float64), np.asarray(acts_b, np.float64)
    if acts_a.ndim != 2 or acts_b.ndim != 2 or acts_a.shape[1] != acts_b.shape[1]:
        raise ValueError(f"activations must be (images, units) with the same units, got {acts_a.shape} and {acts_b.shape}")
    where = f"layer {layer}: " if layer else ""
    try:
        r = svcca(acts_a.T, acts_b.T, keep)  # (units, n_A), (units, n_B)
        chance = chance_svcca(acts_a.T, acts_b.T, keep, seed)
    except ValueError as e:
        if "observations" not in str(e):
            raise ValueError(f"{where}{e}") from None
        raise ValueError(f"{where}{acts_a.shape[1]} units are too few for SVCCA of {len(acts_a)} and {len(acts_b)} "
                         f"images ({e}). Pool to a finer grid (--grid, more units) or compare fewer images "
                         f"(--n-images)") from None
    return {"svcca": r.mean, "chance": chance, "k_a": r.k_x, "k_b": r.k_y, "units": acts_a.shape[1],
            "n_a": len(acts_a), "n_b": len(acts_b)}


def set_name(source: Any, fallback: str = "set") -> str:
    """A short display name for an image set: a folder's name, a CSV's stem (its folder's name for
    manifest.csv / labels.csv), `fallback` for arrays."""
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if p.suffix.lower() == ".csv":
            return p.parent.name if p.stem.lower() in ("manifest", "labels", "images") else p.stem
        return p.name or str(p)
    return fallback


def _paths(source: str | Path) -> list[str]:
    from engine.ssl.pretrain import resolve_image_paths

    return resolve_image_paths(source, include_test=True)  # every image of the set, test split included


def _load(source: np.ndarray | list[str], n: int, image_size: int, seed: int, cache_dir: Path | None,
          on_event: OnEvent | None, stop: threading.Event | None) -> np.ndarray:
    """n images of a set (an array, or its image paths), seeded sample, uint8 (n, S, S) at the working
    resolution (letterboxed, through the resolution cache)."""
    if isinstance(source, np.ndarray):
        idx = np.sort(np.random.default_rng(seed).choice(len(source), size=n, replace=False))
        return np.asarray(source[idx])
    from engine.data.cache import ImageCache

    paths = source
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size=n, replace=False))
    cache = ImageCache.build([paths[i] for i in idx], size=image_size, cache_dir=cache_dir, on_event=on_event,
                             stop=stop)
    return np.asarray(cache.array)


@dataclass
class SimilarityReport:
    """`table`: one row per (candidate, layer): candidate, layer, svcca, chance, k_ref, k_cand, units,
    n_images; `ranking`: one row per candidate: candidate, mean_svcca, mean_chance, rank (1 = closest
    to the reference); `settings`: what was compared and how."""

    table: pd.DataFrame
    ranking: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def closest(self) -> str:
        return str(self.ranking.iloc[0]["candidate"])

    def sentence(self) -> str:
        r = self.ranking.iloc[0]
        return (f"Closest to {self.settings.get('reference', 'the reference')} through {self.settings.get('init')}: "
                f"{r['candidate']} (mean SVCCA over layers {r['mean_svcca']:.3f}; chance {r['mean_chance']:.3f}).")

    def write(self, out_dir: str | Path) -> Path:
        """table.csv, ranking.csv, report.json and similarity.html (the layer plot) in `out_dir` (atomic each)."""
        from engine.analysis.plots import similarity_figure
        from engine.atomic import atomic_write_text
        from engine.escaping import csv_safe

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "table.csv", csv_safe(self.table).to_csv(index=False))  # pool names are user text
        atomic_write_text(out / "ranking.csv", csv_safe(self.ranking).to_csv(index=False))
        atomic_write_text(out / "similarity.html", similarity_figure(self.table, self.settings).to_html(include_plotlyjs="cdn"))
        atomic_write_text(out / "report.json", json.dumps({"settings": self.settings, "closest": self.closest,
                                                           "sentence": self.sentence(),
                                                           "ranking": self.ranking.to_dict("records"),
                                                           "table": self.table.to_dict("records")}, indent=1))
        return out


def compare_sets(reference: str | Path | np.ndarray, candidates: Mapping[str, str | Path | np.ndarray] | Sequence,
                 init: str = "random", layers: Sequence[str] | None = None, n_images: int = DEFAULT_N_IMAGES,
                 image_size: int | None = None, grid: int = DEFAULT_GRID, keep: float | int = KEEP, seed: int = 0,
                 device: Any = "cpu", arch: str | None = None, reference_name: str | None = None,
                 cache_dir: Path | None = None, checkpoint_dir: Path | None = None, batch_size: int = 32,
                 on_event: OnEvent | None = None, stop: threading.Event | None = None) -> SimilarityReport:
    """SVCCA of a reference image set with each candidate, at each layer of one backbone.

    Sets are manifest CSVs (every row, test split included), image folders (listed by content) or
    uint8 (N, S, S) arrays at `image_size`. Each is subsampled (seeded by `seed`) to the same
    n = min(n_images, size of the smallest set) images. `candidates`: {name: source} or a list of
    sources (named by `set_name`). `init` is a registry name (`python -m engine inits`); `layers`
    default to the backbone's four stages; `image_size` None = the init's own input size on `device`
    (engine.models.input_size_for). Returns a `SimilarityReport`; `ranking` orders the
    candidates by their SVCCA with the reference averaged over layers (highest first).

    Raises ValueError (no candidates, a set with fewer than 3 images, too few units for the kept
    dimensions: finer `grid` or fewer images), FileNotFoundError (a missing path),
    `engine.models.UnknownInitError` / `InitUnavailableError`, `engine.data.cache.CacheError`
    (unreadable images), `engine.events.Cancelled`."""
    from engine.device import resolve_device
    from engine.models import load_backbone

    ref_name = reference_name or set_name(reference, "reference")
    candidates = _named_candidates(candidates, ref_name)
    sets = {name: (src if isinstance(src, np.ndarray) else _paths(src))  # arrays, or lists of image paths
            for name, src in [(ref_name, reference), *candidates.items()]}
    sizes = {name: len(v) for name, v in sets.items()}
    n = min(int(n_images), *sizes.values())
    if n < 3:
        small = ", ".join(f"{k} ({v})" for k, v in sizes.items() if v < 3)
        raise ValueError(f"SVCCA needs at least 3 images per set; {small or 'n_images'} is too few: add images")
    device = resolve_device(device)
    model, meta = load_backbone(init, device, arch=arch, checkpoint_dir=checkpoint_dir)
    if image_size is None:  # the backbone's own input contract
        from engine.models import input_size_for

        image_size = input_size_for(init, device, checkpoint_dir, arch)
    layers = check_layers(model, layers) if layers else default_layers(model)
    total = 1 + len(candidates)
    acts = {}
    for step, (name, src) in enumerate(sets.items()):
        emit(on_event, step=step, total=total, kind="progress", message=f"activations of {name} ({n} images)")
        imgs = _load(src, n, image_size, seed, cache_dir, on_event, stop)
        acts[name] = layer_activations(model, imgs, layers, device, meta.mean, meta.std, grid, batch_size, stop)
    rows = []
    for name in candidates:
        for layer in layers:
            r = set_similarity(acts[ref_name][layer], acts[name][layer], keep, seed, layer)
            rows.append({"candidate": name, "layer": layer, "svcca": r["svcca"], "chance": r["chance"],
                         "k_ref": r["k_a"], "k_cand": r["k_b"], "units": r["units"], "n_images": n})
    emit(on_event, step=total, total=total, kind="progress", message="SVCCA done")
    table = pd.DataFrame(rows)
    ranking = _ranking(table)
    settings = {"reference": ref_name, "candidates": list(candidates), "init": init, "arch": meta.arch,
                "layers": list(layers), "n_images": n, "image_size": int(image_size), "grid": int(grid),
                "keep": keep, "seed": int(seed),
                "sources": {k: (str(v) if not isinstance(v, np.ndarray) else f"array {v.shape}")
                            for k, v in [(ref_name, reference), *candidates.items()]}}
    return SimilarityReport(table, ranking, settings)


def _named_candidates(candidates: Mapping[str, Any] | Sequence, ref_name: str) -> dict[str, Any]:
    """{name: source}: a mapping as given, a list named by `set_name` (made unique, never the reference's
    name). ValueError when there is none or one is named like the reference."""
    if not isinstance(candidates, Mapping):
        named: dict[str, Any] = {}
        for i, c in enumerate(candidates):
            base = set_name(c, f"set{i + 1}")
            name, j = base, 2
            while name in named or name == ref_name:
                name, j = f"{base}-{j}", j + 1
            named[name] = c
        candidates = named
    if not candidates:
        raise ValueError("give at least one candidate image set to compare the reference with")
    if ref_name in candidates:
        raise ValueError(f"a candidate is named {ref_name!r} like the reference; give it another name")
    return dict(candidates)


def _ranking(table: pd.DataFrame) -> pd.DataFrame:
    """Candidates by SVCCA with the reference averaged over layers, highest first, with `rank` 1..n."""
    ranking = (table.groupby("candidate", sort=False)[["svcca", "chance"]].mean()
               .rename(columns={"svcca": "mean_svcca", "chance": "mean_chance"})
               .sort_values("mean_svcca", ascending=False).reset_index())
    ranking["rank"] = np.arange(1, len(ranking) + 1)
    return ranking
