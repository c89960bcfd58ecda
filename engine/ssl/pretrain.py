"""Pretrain a backbone with any registered SSL method: the public entry points.

    pretrain_images(images, cfg, out_name, device, run_dir, on_event=None, stop=None, resume=False,
                    checkpoint_dir=None, data_fingerprint="") -> Path   # checkpoints/<out_name>.safetensors
    pretrain_from_data(data, cfg, out_name, ...)                        # manifest CSV or folder -> uint8 cache

One loop serves every method: resumable, AMP, channels_last, DDP under torchrun. Where things are:
the settings `PretrainConfig` (engine/ssl/config.py), the methods' registry (engine/ssl/registry.py),
the loop (engine/ssl/loop.py: `start_run`, `train`), state.pt and the export
(engine/ssl/checkpointing.py). This module re-exports the names its callers import from here.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.device import resolve_device
from engine.events import OnEvent
from engine.ssl.checkpointing import export, save_state
from engine.ssl.common import init_distributed
from engine.ssl.config import SSL_ARCHS, PretrainConfig
from engine.ssl.loop import NonFiniteLossError, apply_update, build_method, forward_backward, start_run, train
from engine.ssl.registry import METHODS

__all__ = ["METHODS", "SSL_ARCHS", "NonFiniteLossError", "PretrainConfig", "apply_update", "build_method",
           "data_fingerprint", "describe_data", "forward_backward", "pretrain_from_data", "pretrain_images",
           "resolve_image_paths"]


def _check_name(name: str) -> None:
    """The one name validator (engine.names, kind "checkpoint"); raises InvalidNameError (a ValueError)."""
    from engine.names import InvalidNameError, check_name

    try:
        if check_name(name, "checkpoint") != name:
            raise InvalidNameError("surrounding spaces")
    except InvalidNameError as e:
        raise InvalidNameError(f"invalid output name {name!r}: {e}") from None


def data_fingerprint(keys: list[str], size: int) -> str:
    """Content hash of an image set at a resolution (from the cache's per-image keys)."""
    return hashlib.sha256(("|".join(keys) + f"@{size}").encode()).hexdigest()[:16]


def describe_data(source: str | Path | list[str], synthetic: bool | None = None, why: str = "") -> dict:
    """The checkpoint json's record of the pretraining images: {"source", "synthetic", "why"}.

    `source`: a manifest CSV / folder, or a list of image paths. Synthetic when every image lies in a
    phantom data set (a folder with engine.data.phantom's `phantom.json` at most 3 levels up), unless
    the caller knows (`synthetic`, `why`: e.g. the demo workspace). Read back by
    engine.models.registry.synthetic_data, which sets `InitInfo.kind`."""
    if synthetic is not None:
        return {"source": str(source) if not isinstance(source, list) else f"{len(source)} listed images",
                "synthetic": bool(synthetic), "why": why}
    files = [Path(f) for f in source] if isinstance(source, list) else [Path(source)]
    seen: dict[Path, bool] = {}

    def in_phantom_set(f: Path) -> bool:
        d = f if f.is_dir() else f.parent
        if d not in seen:
            seen[d] = any((a / "phantom.json").is_file() for a in [d, *list(d.parents)[:3]])
        return seen[d]

    fake = bool(files) and all(in_phantom_set(f) for f in files)
    label = str(source) if not isinstance(source, list) else f"{len(source)} listed images"
    return {"source": label, "synthetic": fake,
            "why": "phantom.json beside the images: synthetic phantoms (engine.data.phantom)" if fake else ""}


def pretrain_images(
    images: np.ndarray, cfg: PretrainConfig, out_name: str, device: torch.device | str, run_dir: Path,
    on_event: OnEvent | None = None, stop: threading.Event | None = None, resume: bool = False,
    checkpoint_dir: Path | None = None, data_fingerprint: str = "", data: dict | None = None,
) -> Path:
    """Pretrain `cfg.method` on uint8 images (N, S, S); export checkpoints/<out_name>.safetensors (+ .json).

    Under torchrun every rank calls this with the same arguments. With `resume=True` it continues
    from run_dir/state.pt (exactly: same data order, augmentations, optimizer and queue state);
    without a state it starts at step 0. Raises ValueError (bad images, settings or name; a state of
    other settings or data), Cancelled after saving state when `stop` is set, NonFiniteLossError on
    a NaN/inf loss, InitUnavailableError for init="imagenet" offline. `data`: the images' record for the
    checkpoint json (`describe_data`; whether they are synthetic phantoms), none when not given.
    """
    _check_name(out_name)
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3
            and images.shape[1] == images.shape[2]):
        raise ValueError("images must be a (N, S, S) uint8 array (the resolution cache), got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dinfo, device, created = init_distributed(resolve_device(device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    try:
        run = start_run(images, cfg, device, dinfo, run_dir, on_event, resume, data_fingerprint, checkpoint_dir)
        train(run, stop)
        if run.saved_step != run.step:
            save_state(run)
        return export(run, out_name, checkpoint_dir, data)
    finally:
        if created:
            dist.destroy_process_group()



def resolve_image_paths(data: str | Path, include_test: bool = False) -> list[str]:
    """Image paths of a manifest CSV (rows with split == 'test' left out unless include_test) or a folder.

    A folder is listed by content with `engine.data.listing.list_images` (PNG/JPEG/TIFF/DICOM at any
    depth, whatever the file names; DICOMDIR and non-image files skipped, their count and first names
    logged as a warning). Raises FileNotFoundError / ValueError when nothing usable is there.
    """
    p = Path(data).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"--data {p} does not exist; give a manifest CSV or a folder of images")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise ValueError(f"--data {p} is a file but not a manifest CSV; give a manifest .csv or a folder of images")
        from engine.data.manifest import load_manifest

        df = load_manifest(p).df
        if not include_test and "split" in df:
            # the few-shot test images must stay unseen, also without labels
            df = df[df["split"].astype(str) != "test"]
        paths = [str(x) for x in df["path"]]
    else:  # by content, any depth and name (CD trees' extension-less DICOMs); skips reported
        from engine.data.listing import list_images

        listing = list_images(p)
        paths = listing.files
        if listing.skipped:
            import logging

            logging.getLogger(__name__).warning("--data %s: %s", p, listing.skipped_summary())
    if not paths:
        raise ValueError(f"no images found in {p} (PNG, JPEG, TIFF or DICOM, recognised by content)"
                         + (f" ({listing.skipped_summary()})" if p.is_dir() and listing.skipped else ""))
    return paths


def pretrain_from_data(
    data: str | Path | list[str], cfg: PretrainConfig, out_name: str, device: torch.device | str = "auto",
    run_dir: Path | None = None, on_event: OnEvent | None = None, stop: threading.Event | None = None,
    resume: bool = False, checkpoint_dir: Path | None = None, cache_dir: Path | None = None,
    include_test: bool = False, data_record: dict | None = None,
) -> Path:
    """Resolve a manifest CSV / image folder, build (or reuse) the uint8 cache at cfg.image_size, pretrain.

    data: a manifest CSV or folder (resolve_image_paths), or a list of image paths already resolved by
    the caller (used as given; include_test does not apply). run_dir defaults to <workspace>/runs/<out_name>.
    data_record: the json's record of the images (default: `describe_data` of `data`).
    """
    from engine.data.cache import ImageCache
    from engine.paths import sub

    _check_name(out_name)
    paths = list(data) if isinstance(data, list) else resolve_image_paths(data, include_test)
    cache = ImageCache.build(paths, size=cfg.image_size, cache_dir=cache_dir, on_event=on_event, stop=stop)
    run_dir = Path(run_dir) if run_dir is not None else sub(None, "runs") / out_name
    return pretrain_images(cache.array, cfg, out_name, device, run_dir, on_event=on_event, stop=stop, resume=resume,
                           checkpoint_dir=checkpoint_dir,
                           data_fingerprint=data_fingerprint(list(cache.keys), cfg.image_size),
                           data=data_record if data_record is not None else describe_data(data))
