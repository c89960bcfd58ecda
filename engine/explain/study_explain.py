"""The Grad-CAM study's explaining step for one training episode: maps, scores, yardsticks, sanity checks, grids.

Per episode and init: the init's mean heatmap over the episode's training images (the train-mean baseline,
engine.explain.yardstick; kept in `out/.state/mean-<key>.npy`), then, chunk by chunk of the held-out images,
the real heatmaps, the maps of the head-, top-stage- and backbone-randomized models (engine.explain.sanity) and one
localization row per image x init with the scores, their chance levels, both content-free baselines'
scores and the two rank correlations. Grids are drawn for episode 0 only (one grid per image). Finished
images' rows are kept in `out/.state/rows-<key>.csv`, so a restarted run skips them.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from engine.atomic import atomic_write
from engine.events import check_stop
from engine.explain.gradcam import CAMExplainer, ExplainModel, explain_images
from engine.explain.localization import METRICS, is_empty, scores
from engine.explain.overlay import grid
from engine.explain.regions import region_for
from engine.explain.sanity import PARTS, rank_correlation, randomized
from engine.explain.yardstick import BASELINES, SANITY, mean_map, yardstick_fields

if TYPE_CHECKING:
    from engine.explain.study import GradCAMStudyConfig, _Bar, _Selection

Models = dict[str, tuple[ExplainModel, Any]]


# ------------------------------------------------------------------------------------------- io
def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """`df` (no index) to `path`, atomically; text cells spreadsheet-safe (engine.escaping.csv_safe)."""
    from engine.escaping import csv_safe

    atomic_write(path, lambda tmp: csv_safe(df).to_csv(tmp, index=False))


def _write_png(rgb: np.ndarray, path: Path) -> None:
    """uint8 RGB image to `path` as PNG, atomically."""
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def _key(obj: Any) -> str:
    """16 hex digits of the sha256 of `obj`'s JSON (sorted keys): the state files' names."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    """`name` with every character outside [A-Za-z0-9-_.] replaced by `_` (safe in a file name)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _image_names(paths: Sequence[str], given: dict[str, str] | None = None) -> dict[str, str]:
    """The names `given` for the paths (e.g. the store's `image-000042`), else file stems; made unique
    (stem, stem-2, ...) and safe for file names."""
    out: dict[str, str] = {}
    used: set[str] = set()
    given = given or {}
    for p in paths:
        stem = _safe(given.get(p) or given.get(str(Path(p).resolve())) or Path(p).stem) or "image"
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        out[p] = name
    return out

def train_mean_maps(cfg: "GradCAMStudyConfig", sel: "_Selection", models: Models, base_key: dict[str, Any],
                    out: Path, device: torch.device) -> dict[str, np.ndarray]:
    """{init: its mean heatmap over the episode's training images} (MEAN_GRID x MEAN_GRID, normalized image
    coordinates; engine.explain.yardstick.mean_map), read from `out/.state` when an identical run saved it."""
    from engine.data.io import read_image

    paths = [sel.path(i) for i in sel.train_idx]
    res: dict[str, np.ndarray] = {}
    for name, (em, meta) in models.items():
        key = _key({**base_key, "init": name, "fp": meta.fingerprint, "method": cfg.method, "layer": cfg.layer})
        state = out / ".state" / f"mean-{_safe(name)}-{key}.npy"
        if state.exists():
            res[name] = np.load(state)
            continue
        maps: list[np.ndarray] = []
        with CAMExplainer(em, cfg.layer_of(meta), cfg.method, device, cfg.batch_size, meta.mean, meta.std) as ex:
            for c0 in range(0, len(paths), cfg.batch_size):
                imgs = [read_image(Path(p))[0] for p in paths[c0 : c0 + cfg.batch_size]]
                maps += [mean_map([m]) for m in explain_images(ex, imgs, cfg.image_size, cfg.fit_mode)]
        res[name] = mean_map(maps)
        buf = io.BytesIO()
        np.save(buf, res[name], allow_pickle=False)
        atomic_write(state, buf.getvalue())
    return res


def explain_episode(cfg: "GradCAMStudyConfig", sel: "_Selection", models: Models, means: dict[str, np.ndarray],
                    base_key: dict[str, Any], out: Path, device: torch.device, bar: "_Bar",
                    stop: threading.Event | None, episode: int) -> list[dict[str, Any]]:
    """Explain, score and (episode 0) draw the chosen images chunk by chunk (memory: one chunk of maps);
    returns one row per image x init of this episode (see the module docstring)."""
    from engine.data.io import read_image

    paths = [sel.path(i) for i in sel.chosen]
    run_key = _key({**base_key, "inits": list(models), "fps": [mt.fingerprint for _, mt in models.values()],
                    "method": cfg.method, "layer": cfg.layer, "q": cfg.q, "region": sel.kind, "images": paths,
                    "sanity": cfg.sanity, "episode": episode})
    rows_state = out / ".state" / f"rows-{run_key}.csv"
    done = pd.read_csv(rows_state) if rows_state.exists() else pd.DataFrame()
    rows: list[dict[str, Any]] = done.to_dict("records")
    done_images = set(done["path"]) if len(done) else set()
    names = _image_names(paths, dict(cfg.image_names))
    todo = [p for p in paths if p not in done_images or (episode == 0 and not (out / f"grid_{names[p]}.png").exists())]
    bar.step += len(paths) - len(todo)
    for c0 in range(0, len(todo), cfg.batch_size):
        check_stop(stop)
        chunk = todo[c0 : c0 + cfg.batch_size]
        imgs = [read_image(Path(p))[0] for p in chunk]
        maps, logits, rhos = _explain_chunk(cfg, models, imgs, device)
        for j, path in enumerate(chunk):
            new_rows = _score_and_draw(cfg, sel, models, path, names[path], imgs[j], {n: maps[n][j] for n in models},
                                       {n: float(logits[n][j]) for n in models}, means,
                                       {n: {s: v[j] for s, v in rhos[n].items()} for n in models}, out, episode)
            rows = [r for r in rows if r["path"] != path] + new_rows
            _write_csv(pd.DataFrame(rows), rows_state)  # resumable: finished images are kept
            bar.advance(f"explained {names[path]}" + (f" (episode {episode + 1})" if cfg.episodes > 1 else ""))
        del maps
    return rows


def _maps(cfg: "GradCAMStudyConfig", em: ExplainModel, meta: Any, imgs: list[np.ndarray], device: torch.device
          ) -> tuple[list[np.ndarray], np.ndarray]:
    with CAMExplainer(em, cfg.layer_of(meta), cfg.method, device, cfg.batch_size, meta.mean, meta.std) as ex:
        maps = explain_images(ex, imgs, cfg.image_size, cfg.fit_mode)
        return maps, ex.last_logits.astype(np.float64)  # (b,)


def _explain_chunk(cfg: "GradCAMStudyConfig", models: Models, imgs: list[np.ndarray], device: torch.device
                   ) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray], dict[str, dict[str, list[float]]]]:
    """Heatmaps at original size ({init: [HxW]}), logits ({init: (b,) float64}) and, with cfg.sanity, the
    rank correlations of each map with the head-, top-stage- and backbone-randomized model's ({init: {rho_*: [b]}})."""
    maps: dict[str, list[np.ndarray]] = {}
    logits: dict[str, np.ndarray] = {}
    rhos: dict[str, dict[str, list[float]]] = {}
    for name, (em, meta) in models.items():
        maps[name], logits[name] = _maps(cfg, em, meta, imgs, device)
        rhos[name] = {}
        for s, part in zip(SANITY, PARTS) if cfg.sanity else ():
            rand, _ = _maps(cfg, randomized(em, part, cfg.seed, cfg.layer_of(meta)), meta, imgs, device)
            rhos[name][s] = [rank_correlation(a, b) for a, b in zip(maps[name], rand)]
    return maps, logits, rhos


def _score_and_draw(cfg: "GradCAMStudyConfig", sel: "_Selection", models: Models, path: str, image_name: str,
                    img: np.ndarray, heats: dict[str, np.ndarray], logits: dict[str, float],
                    means: dict[str, np.ndarray], rhos: dict[str, dict[str, float]], out: Path,
                    episode: int) -> list[dict[str, Any]]:
    """One image: a localization row per init (scored, with its yardsticks, when it has a region) and, in
    episode 0, its grid PNG."""
    region = None
    if sel.region_rows is not None and path in sel.with_region:
        region = region_for(sel.kind, sel.region_rows[sel.region_rows["path"] == path], img.shape)
    labels_txt: dict[str, str] = {}
    new_rows = []
    nan_yard = {f"{p}_{m}": float("nan") for p in ("chance", *BASELINES) for m in METRICS}
    for name, (_, meta) in models.items():
        heat, z = heats[name], logits[name]
        p = float(1.0 / (1.0 + np.exp(-z)))
        s = scores(heat, region, cfg.q) if region is not None else {k: float("nan") for k in METRICS}
        yard = yardstick_fields(region, means.get(name), cfg.q) if region is not None else nan_yard
        new_rows.append({"image": image_name, "path": path, "finding": cfg.finding, "init": name, "episode": episode,
                         "method": cfg.method, "layer": cfg.layer_of(meta),
                         "region": sel.kind if region is not None else "none", "logit": z, "prob": p,
                         "empty_map": is_empty(heat), **s, **yard, **rhos.get(name, {})})
        labels_txt[name] = (f"p={p:.2f} ER={s['energy_ratio']:.1f} {'hit' if s['pointing_hit'] == 1 else 'miss'}"
                            if region is not None else f"p={p:.2f}")
    if episode == 0:
        _write_png(grid(img, heats, region, labels_txt, cfg.alpha, cfg.colormap,
                        title=f"{image_name} ({cfg.finding})"), out / f"grid_{image_name}.png")
    return new_rows
