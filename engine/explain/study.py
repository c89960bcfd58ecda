"""The Grad-CAM study: one finding, several inits, one k-shot classifier each, localization scored.

`run_gradcam_study` trains one classifier per init on the *same* k-shot episode (the few-shot
sampler's trial-0 draw, so inits are compared on identical training images), explains the first N
held-out positives that have a region (box or mask), and writes to `out_dir`:

    grid_<image>.png   original at left (region outlined), one overlay column per init
    localization.csv   image, path, finding, init, method, layer, region, logit, prob, empty_map, and the
                       scores energy_in_region, energy_ratio, pointing_hit, topq_iou (see localization)
    summary.csv        per finding x init: n, mean and 95% bootstrap interval of each score, plus paired
                       differences against `random` when it is among the inits (d_<score>_*)
    study.json         parameters, inits used / skipped, warnings

Resumable: trained heads (probe) or backbone + head (finetune) are saved under `out_dir/.state/`
keyed by everything that determines them, and finished images' rows are kept there too, so a run
stopped through `stop` (or killed) continues where it was when started again with the same arguments.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from engine.atomic import atomic_write as _atomic_write
from engine.events import OnEvent, as_log, check_stop, emit
from engine.explain.gradcam import METHODS, CAMExplainer, ExplainModel, explain_images, resolve_layer
from engine.explain.localization import METRICS, TOPQ, aggregate, is_empty, region_mask, scores
from engine.explain.overlay import grid

DEFAULT_SHOTS = 20  # the example; the seed study's largest common k
DEFAULT_N_IMAGES = 8
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------- io
def _write_csv(df: pd.DataFrame, path: Path) -> None:
    _atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def _write_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    _atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -------------------------------------------------------------------------------------- regions
def load_regions(manifest, finding: str, boxes_csv: str | Path | None = None,
                 masks_csv: str | Path | None = None) -> tuple[str, pd.DataFrame | None]:
    """(kind, rows of `finding`): explicit masks/boxes CSVs win; else the manifest's masks, then boxes.

    kind is "mask", "box" or "none". Explicit CSVs are read with the manifest's own validation, their
    paths relative to their own folder.
    """
    from engine.data import manifest as mf

    if boxes_csv is not None and masks_csv is not None:
        raise ValueError("give either --boxes or --masks, not both")
    for given, kind in ((masks_csv, "mask"), (boxes_csv, "box")):
        if given is not None:
            df = mf.load_regions(given, manifest, kind)
            return kind, df[df["finding"] == finding].reset_index(drop=True)
    if manifest.masks is not None and (manifest.masks["finding"] == finding).any():
        return "mask", manifest.masks[manifest.masks["finding"] == finding].reset_index(drop=True)
    if manifest.boxes is not None and (manifest.boxes["finding"] == finding).any():
        return "box", manifest.boxes[manifest.boxes["finding"] == finding].reset_index(drop=True)
    return "none", None


def region_for(kind: str, rows: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """Union of one image's boxes or masks as a bool mask of the image's shape."""
    from engine.data.io import read_image

    if kind == "box":
        return region_mask(rows[["x", "y", "w", "h"]].to_numpy(np.float64), shape)
    out = np.zeros(shape, bool)
    for mp in rows["mask_path"]:
        m, _ = read_image(Path(mp))
        if m.shape != tuple(shape):
            raise ValueError(f"mask {mp} is {m.shape[1]}x{m.shape[0]} pixels but its image is "
                             f"{shape[1]}x{shape[0]}; masks must have the image's size")
        out |= m > 0.5
    return out


# ------------------------------------------------------------------------------------- training
def _train_classifier(init: str, backbone: tuple[nn.Module, Any], cache: Any, y: np.ndarray,
                      mode: str, device: torch.device, seed: int, finetune_steps: int | None,
                      state: Path, on_event: OnEvent | None, stop: threading.Event | None) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) for one init, from `state` when an identical run saved it, else trained and saved."""
    from safetensors.torch import load_file, save_file

    model, meta = backbone
    if state.exists():
        sd = load_file(str(state))
        head = nn.Linear(meta.feat_dim, 1)
        head.load_state_dict({"weight": sd.pop("head.weight"), "bias": sd.pop("head.bias")})
        if sd:
            model.load_state_dict(sd)
        emit(on_event, message=f"{init}: reusing the classifier trained earlier ({state.name})", kind="log")
        return model, head.to(device)
    if mode == "probe":
        from engine.fewshot.features import embed
        from engine.fewshot.probe import fit_probe

        X = embed(init, cache, device, backbone=(model, meta), on_event=as_log(on_event), stop=stop)  # (2k, D)
        head = fit_probe(X, y, seed=seed).as_torch_head().to(device)
        sd = {}
    else:
        from engine.fewshot.finetune import FinetuneConfig, finetune

        cfg = FinetuneConfig() if finetune_steps is None else FinetuneConfig(steps=finetune_steps)
        u8 = np.array(cache.array)  # (2k, S, S) uint8, a writable copy of the memmap rows
        model, head = finetune((model, meta), u8, y, cfg, device, seed, on_event=as_log(on_event), stop=stop)
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd |= {"head.weight": head.weight.detach().cpu().contiguous(), "head.bias": head.bias.detach().cpu().contiguous()}
    _atomic_write(state, lambda tmp: save_file(sd, tmp))
    return model, head


# ------------------------------------------------------------------------------------------ study
def run_gradcam_study(
    manifest_csv: str | Path,
    finding: str,
    inits: Sequence[str],
    out_dir: str | Path,
    *,
    shots: int = DEFAULT_SHOTS,
    method: str = "gradcam",
    mode: str = "probe",
    layer: str | None = None,
    n_images: int = DEFAULT_N_IMAGES,
    image_size: int = 224,
    fit_mode: str = "pad",
    boxes_csv: str | Path | None = None,
    masks_csv: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
    q: float = TOPQ,
    finetune_steps: int | None = None,
    arch: str | None = None,
    batch_size: int = 16,
    alpha: float = 0.4,
    colormap: str = "jet",
    device: torch.device | str = "cpu",
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """Run the study (see module docstring); returns (localization rows, summary, grid PNG paths).

    Unknown inits raise `UnknownInitError` before any work; unavailable ones (ImageNet weights
    offline) are skipped with a warning event. Raises `Cancelled` when `stop` is set (state saved).
    """
    from engine.data.io import read_image
    from engine.data.manifest import load_manifest
    from engine.fewshot.episodes import sample_episode, test_split, trial_seed
    from engine.models import DEFAULT_LAYER, InitUnavailableError, load_backbone

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    if mode not in ("probe", "finetune"):
        raise ValueError(f"mode must be 'probe' or 'finetune'; got {mode!r}")
    if n_images < 1 or shots < 1:
        raise ValueError("n_images and shots must be at least 1")
    inits = [s.strip() for s in inits if s.strip()]
    if not inits:
        raise ValueError("name at least one init (e.g. --inits random,imagenet)")
    device = torch.device(device)
    out = Path(out_dir)
    state_dir = out / ".state"
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        emit(on_event, message=msg, level="warning", kind="warning")

    # --- data: manifest, regions, the episode and the images to explain
    m = load_manifest(manifest_csv)
    m.validate_finding(finding)
    kind, region_rows = load_regions(m, finding, boxes_csv, masks_csv)
    df = m.df
    labels = m.labels(finding)
    pids = df["patient_id"].astype(str).to_numpy()
    pool, test = test_split(df, finding, seed=seed, test_fraction=test_fraction)
    tseed = trial_seed(seed, finding, shots, 0)
    train_idx = sample_episode(labels, pids, pool, shots, tseed)
    y_train = labels[train_idx].astype(np.float64)
    positives = [int(i) for i in test if labels[i] == 1]
    with_region = set(region_rows["path"]) if region_rows is not None else set()
    chosen = [i for i in positives if df["path"].iat[i] in with_region][:n_images]
    if not chosen:
        chosen = positives[:n_images]
        warn(f"no held-out {finding} positive has a box or mask: heatmaps are drawn but not scored"
             if kind == "none" or region_rows is None else
             f"none of the {len(positives)} held-out {finding} positives has a region; nothing is scored")
    elif len(chosen) < n_images:
        warn(f"only {len(chosen)} held-out {finding} positives have a region (asked for {n_images})")

    # --- inits: load all first, so a typo fails before any work
    backbones: dict[str, tuple[nn.Module, Any]] = {}
    skipped: dict[str, str] = {}
    for name in inits:
        try:
            backbones[name] = load_backbone(name, "cpu", arch=arch)
        except InitUnavailableError as e:
            skipped[name] = str(e)
            warn(f"skipping init {name}: {e}")
    if not backbones:
        raise RuntimeError("none of the inits is available: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    for model, meta in backbones.values():  # a wrong layer name fails now, not after training
        resolve_layer(model, layer or DEFAULT_LAYER[meta.arch])

    from engine.data.cache import ImageCache

    cache = ImageCache.build([df["path"].iat[i] for i in train_idx], image_size, mode=fit_mode,
                             on_event=as_log(on_event), stop=stop)  # its image counts only as messages
    total = len(backbones) + len(chosen)
    step = 0
    base_key = {"v": STATE_VERSION, "manifest": str(m.csv_path), "train": sorted(cache.keys), "y": y_train.tolist(),
                "size": image_size, "fit": fit_mode, "mode": mode, "finetune_steps": finetune_steps, "seed": tseed}

    # --- one classifier per init
    models: dict[str, tuple[ExplainModel, Any]] = {}
    for name, (model, meta) in backbones.items():
        check_stop(stop)
        emit(on_event, step=step, total=total, message=f"training the {mode} classifier for {name} ({2 * shots} images)")
        fp = meta.fingerprint or _weights_key(model)
        state = state_dir / f"clf-{_safe(name)}-{_key({**base_key, 'init': name, 'fp': fp})}.safetensors"
        bb, head = _train_classifier(name, (model.to(device), meta), cache, y_train, mode, device,
                                     tseed, finetune_steps, state, on_event, stop)
        models[name] = (ExplainModel(bb, head).to(device).eval(), meta)
        step += 1
        emit(on_event, step=step, total=total, message=f"{name}: classifier ready")

    # --- explain, score and draw, image chunk by image chunk (keeps memory at one chunk of maps)
    run_key = _key({**base_key, "inits": list(models), "fps": [mt.fingerprint for _, mt in models.values()],
                    "method": method, "layer": layer, "q": q, "region": kind, "images": [df["path"].iat[i] for i in chosen]})
    rows_state = state_dir / f"rows-{run_key}.csv"
    done = pd.read_csv(rows_state) if rows_state.exists() else pd.DataFrame()
    rows: list[dict[str, Any]] = done.to_dict("records")
    done_images = set(done["path"]) if len(done) else set()
    names = _image_names([df["path"].iat[i] for i in chosen])
    todo = [i for i in chosen
            if df["path"].iat[i] not in done_images or not (out / f"grid_{names[df['path'].iat[i]]}.png").exists()]
    step += len(chosen) - len(todo)
    for c0 in range(0, len(todo), batch_size):
        check_stop(stop)
        idx = todo[c0 : c0 + batch_size]
        imgs = [read_image(Path(df["path"].iat[i]))[0] for i in idx]
        maps: dict[str, list[np.ndarray]] = {}
        logits: dict[str, np.ndarray] = {}
        for name, (em, meta) in models.items():
            target = layer or DEFAULT_LAYER[meta.arch]
            with CAMExplainer(em, target, method, device, batch_size, meta.mean, meta.std) as ex:
                maps[name] = explain_images(ex, imgs, image_size, fit_mode)
                logits[name] = ex.last_logits.astype(np.float64)  # (b,)
        for j, i in enumerate(idx):
            path = df["path"].iat[i]
            region = None
            if region_rows is not None and path in with_region:
                region = region_for(kind, region_rows[region_rows["path"] == path], imgs[j].shape)
            labels_txt: dict[str, str] = {}
            new_rows = []
            for name, (em, meta) in models.items():
                heat, z = maps[name][j], float(logits[name][j])
                p = float(1.0 / (1.0 + np.exp(-z)))
                s = scores(heat, region, q) if region is not None else {k: float("nan") for k in METRICS}
                new_rows.append({"image": names[path], "path": path, "finding": finding, "init": name,
                                 "method": method, "layer": layer or DEFAULT_LAYER[meta.arch],
                                 "region": kind if region is not None else "none", "logit": z, "prob": p,
                                 "empty_map": is_empty(heat), **s})
                labels_txt[name] = (f"p={p:.2f} ER={s['energy_ratio']:.1f} {'hit' if s['pointing_hit'] == 1 else 'miss'}"
                                    if region is not None else f"p={p:.2f}")
            _write_png(grid(imgs[j], {n: maps[n][j] for n in models}, region, labels_txt, alpha, colormap,
                            title=f"{names[path]} ({finding})"), out / f"grid_{names[path]}.png")
            rows = [r for r in rows if r["path"] != path] + new_rows
            _write_csv(pd.DataFrame(rows), rows_state)  # resumable: finished images are kept
            step += 1
            emit(on_event, step=step, total=total, message=f"explained {names[path]}")
        del maps

    grid_paths = [out / f"grid_{names[df['path'].iat[i]]}.png" for i in chosen]
    loc = pd.DataFrame(rows)
    if len(loc):
        loc["_order"] = loc["path"].map({df["path"].iat[i]: k for k, i in enumerate(chosen)})
        loc["_init"] = loc["init"].map({n: k for k, n in enumerate(models)})
        loc = loc.sort_values(["_order", "_init"]).drop(columns=["_order", "_init"]).reset_index(drop=True)
    scored = loc[loc["region"] != "none"] if len(loc) else loc
    summary = (aggregate(scored, reference="random" if "random" in models else None, seed=seed)
               if len(scored) else pd.DataFrame(columns=["finding", "init", "n"]))
    _write_csv(loc, out / "localization.csv")
    _write_csv(summary, out / "summary.csv")
    meta_out = {"manifest": str(m.csv_path), "finding": finding, "inits": list(models), "skipped": skipped,
                "shots": shots, "method": method, "mode": mode, "layer": layer, "n_images": len(chosen),
                "image_size": image_size, "fit_mode": fit_mode, "region": kind, "seed": seed, "trial_seed": tseed,
                "train_images": [df["path"].iat[i] for i in train_idx], "q": q, "warnings": warnings}
    _atomic_write(out / "study.json", lambda tmp: Path(tmp).write_text(json.dumps(meta_out, indent=2)))
    emit(on_event, step=total, total=total, kind="result", message=f"wrote {len(grid_paths)} grids and "
         f"{len(loc)} localization rows to {out}", metrics=_headline(summary))
    return loc, summary, grid_paths


def _headline(summary: pd.DataFrame) -> dict[str, float]:
    if not len(summary) or "energy_ratio_mean" not in summary:
        return {}
    return {f"energy_ratio/{r.init}": float(r.energy_ratio_mean) for r in summary.itertuples()}


def _weights_key(model: nn.Module) -> str:
    from engine.fewshot.features import weights_fingerprint

    return weights_fingerprint(model)


def _image_names(paths: Sequence[str]) -> dict[str, str]:
    """File stems, made unique (stem, stem-2, ...) and safe for file names."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for p in paths:
        stem = _safe(Path(p).stem) or "image"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        out[p] = name
    return out
