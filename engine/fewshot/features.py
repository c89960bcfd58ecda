"""Embedding cache: each image is embedded once per (init + weights fingerprint, image content, size).

`embed(init, cache, device)` returns (N, D) float32 features in the order of `cache` (an
`engine.data.cache.ImageCache`, or anything with `.array` (N, S, S) uint8 and `.keys` content hashes,
e.g. `ArrayImages`). Features live under `<workspace>/features/<init>-<arch>-<model key>/` as
`part-*.npz` shards (arrays `keys` (n,) str and `features` (n, D) float32; no pickle). The model key
hashes the init name, arch, weights fingerprint, input normalization, image size and fit mode, so a
retrained checkpoint (new fingerprint) gets a fresh folder and stale features are never read.
`random` inits have no file fingerprint; their weights are hashed instead.

Only rows whose content key is missing are computed: batched, under `torch.inference_mode`, with
channels_last + autocast on CUDA, the next batch read from the memmap in a background thread while
the current one runs. One process embeds a given model folder at a time (a file lock); finished rows
are flushed to a new shard every `FLUSH_ROWS` images and when `stop` is set, so a cancelled embed
resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from engine.atomic import atomic_write
from engine.device import amp_dtype
from engine.events import Cancelled, OnEvent, emit
from engine.models.backbones import IMAGENET_MEAN, IMAGENET_STD, prepare_batch
from engine.models.registry import BackboneMeta, load_backbone
from engine.paths import sub

FEATURE_VERSION = 1  # bump when the embedding pipeline changes what it computes
FLUSH_ROWS = 4096  # rows per shard written while embedding (bounds work lost on a crash)
MAX_SHARDS = 16  # more shards than this are merged into one on the next embed


@dataclass(frozen=True)
class ArrayImages:
    """In-memory images with the `ImageCache` interface `embed` needs: `.array` (N, S, S) uint8, `.keys`."""

    array: np.ndarray
    keys: list[str]
    mode: str = "pad"

    @classmethod
    def from_uint8(cls, array: np.ndarray, mode: str = "pad") -> "ArrayImages":
        """Key each image by the hash of its pixels (so identical inputs share cached features)."""
        array = np.ascontiguousarray(array, dtype=np.uint8)
        if array.ndim != 3 or array.shape[1] != array.shape[2]:
            raise ValueError(f"images must be (N, S, S) uint8 squares, got shape {array.shape}")
        keys = [hashlib.sha256(a.tobytes()).hexdigest()[:20] for a in array]
        return cls(array, keys, mode)

    def __len__(self) -> int:
        return int(self.array.shape[0])


_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def weights_fingerprint(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, shapes, dtypes, values).

    Memoized per model object while no tensor of it changed: every in-place write (optimizer step,
    load_state_dict) bumps a tensor's version counter, which is part of the memo key.
    """
    sd = model.state_dict(keep_vars=True)
    stamp = tuple((k, v.data_ptr(), v._version) for k, v in sd.items())
    hit = _FINGERPRINTS.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    h = hashlib.sha256()
    for name, t in sorted(sd.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()[:16]
    _FINGERPRINTS[model] = (stamp, fp)
    return fp


def model_key(meta: BackboneMeta, fingerprint: str, size: int, mode: str) -> str:
    """Key of a feature cache: the embedding pipeline (FEATURE_VERSION), the pixels it read (the
    resolution cache's CACHE_VERSION: decoding fixes change the pixels of the same file), the weights."""
    from engine.data import cache as _cache

    blob = json.dumps(
        {"v": FEATURE_VERSION, "pixels": _cache.CACHE_VERSION, "name": meta.name, "arch": meta.arch, "fp": fingerprint, "mean": list(meta.mean),
         "std": list(meta.std), "size": int(size), "mode": mode}, sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------------------------------- the forward pass

def _batches(array: np.ndarray, rows: np.ndarray, batch_size: int, pin: bool) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(row indices, uint8 (B, S, S) tensor) batches; the next one is read in a background thread."""
    def load(sel: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array[sel]))  # memmap read happens here
        return t.pin_memory() if pin else t

    chunks = [rows[i : i + batch_size] for i in range(0, rows.size, batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(load, chunks[0])
        for i, sel in enumerate(chunks):
            batch = fut.result()
            if i + 1 < len(chunks):
                fut = pool.submit(load, chunks[i + 1])
            yield sel, batch


def forward_features(
    model: nn.Module,
    array: np.ndarray,
    device: torch.device,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    batch_size: int = 64,
    rows: np.ndarray | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (row indices, features (B, D) float32 numpy) for `array[rows]` (uint8 (N, S, S)); no caching.

    Stops early (without raising) when `stop` is set, so the caller can save what it has.
    """
    device = torch.device(device)
    rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
    cuda = device.type == "cuda"
    dtype = amp_dtype(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type="cuda", dtype=dtype) if cuda and dtype is not None else nullcontext()
    with torch.inference_mode(), autocast:
        for sel, batch in _batches(array, rows, batch_size, pin=cuda):
            if stop is not None and stop.is_set():
                return
            x = prepare_batch(batch, device, mean, std)  # (B, 3, S, S) normalized
            f = model(x).float()  # (B, D)
            yield sel, f.cpu().numpy()


# ---------------------------------------------------------------------------------------- the disk cache

class FeatureStore:
    """The shards of one model folder: content key -> feature row."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def lock(self):
        from filelock import FileLock

        return FileLock(str(self.folder / ".lock"))

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz"))

    def load(self) -> tuple[dict[str, int], np.ndarray | None]:
        """(key -> row, features (M, D)) over all shards; None when empty."""
        keys: list[np.ndarray] = []
        feats: list[np.ndarray] = []
        for p in self.shards():
            try:
                with np.load(p, allow_pickle=False) as z:
                    keys.append(z["keys"])
                    feats.append(z["features"])
            except (OSError, ValueError, KeyError):  # a shard merged away or damaged: recompute its rows
                continue
        if not feats:
            return {}, None
        all_keys = np.concatenate(keys)
        index = {str(k): i for i, k in enumerate(all_keys)}  # later duplicates win; identical values
        return index, np.concatenate(feats).astype(np.float32, copy=False)

    def write(self, keys: list[str], feats: np.ndarray) -> Path:
        path = self.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
                np.savez(f, keys=np.asarray(keys, dtype=str), features=np.asarray(feats, dtype=np.float32))

        atomic_write(path, save)
        return path

    def compact(self) -> None:
        """Merge all shards into one (called under the lock)."""
        old = self.shards()
        if len(old) <= 1:
            return
        index, feats = self.load()
        if feats is None:
            return
        keys = sorted(index, key=index.get)
        self.write(keys, feats[[index[k] for k in keys]])
        for p in old:
            p.unlink(missing_ok=True)


def feature_folder(meta: BackboneMeta, fingerprint: str, size: int, mode: str, feature_dir: Path | None) -> Path:
    base = Path(feature_dir) if feature_dir is not None else sub(None, "features")
    return base / f"{_safe(meta.name)}-{meta.arch}-{model_key(meta, fingerprint, size, mode)}"


def embed(
    init: str,
    cache: Any,
    device: torch.device | str,
    batch_size: int = 64,
    arch: str | None = None,
    checkpoint_dir: Path | None = None,
    feature_dir: Path | None = None,
    on_event: OnEvent | None = None,
    stop: threading.Event | None = None,
    backbone: tuple[nn.Module, BackboneMeta] | None = None,
) -> np.ndarray:
    """(N, D) float32 features of every image in `cache`, computing only the rows not cached yet.

    `cache`: an ImageCache (or `ArrayImages`): `.array` (N, S, S) uint8, `.keys` content hashes.
    `backbone`: an already loaded (model, meta) of `init`, to skip loading it again.
    Raises UnknownInitError / InitUnavailableError from the registry, Cancelled when `stop` is set
    (after saving the rows computed so far).
    """
    device = torch.device(device)
    array, keys = cache.array, [str(k) for k in cache.keys]
    if array.ndim != 3 or len(keys) != array.shape[0]:
        raise ValueError(f"image cache must hold (N, S, S) images with one key each; got {array.shape}, {len(keys)} keys")
    size, mode = int(array.shape[1]), str(getattr(cache, "mode", "pad"))
    model, meta = backbone if backbone is not None else load_backbone(init, device, arch=arch, checkpoint_dir=checkpoint_dir)
    fp = meta.fingerprint or weights_fingerprint(model)
    store = FeatureStore(feature_folder(meta, fp, size, mode, feature_dir))

    with store.lock():
        if len(store.shards()) > MAX_SHARDS:
            store.compact()
        index, feats = store.load()
        missing: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in index and k not in missing:
                missing[k] = i  # first row holding this content
        total = len(missing)
        emit(on_event, step=0, total=total, message=f"embedding {total} of {len(keys)} images with {init} "
             f"({len(keys) - total} cached)")
        if total:
            new_keys, new = _embed_rows(model.to(device).eval(), meta, array, keys, missing, store, device,
                                        batch_size, init, on_event, stop)
            base = 0 if feats is None else feats.shape[0]
            index.update({k: base + j for j, k in enumerate(new_keys)})
            feats = new if feats is None else np.concatenate([feats, new])
    return feats[np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))]


def _embed_rows(model: nn.Module, meta: BackboneMeta, array: np.ndarray, keys: list[str], missing: dict[str, int],
                store: "FeatureStore", device: torch.device, batch_size: int, init: str, on_event: OnEvent | None,
                stop: threading.Event | None) -> tuple[list[str], np.ndarray]:
    """(keys, features (M, D)) of the `missing` rows ({key: row}), flushed to `store` every FLUSH_ROWS rows
    and before raising Cancelled when `stop` is set."""
    total = len(missing)
    rows = np.fromiter(missing.values(), dtype=np.int64, count=total)
    new_keys: list[str] = []
    new_feats: list[np.ndarray] = []
    done = pending = 0
    for sel, f in forward_features(model, array, device, meta.mean, meta.std, batch_size, rows, stop):
        new_keys += [keys[i] for i in sel]
        new_feats.append(f)
        done += len(sel)
        pending += len(sel)
        if pending >= FLUSH_ROWS:
            store.write(new_keys[-pending:], np.concatenate(new_feats)[-pending:])
            pending = 0
        emit(on_event, step=done, total=total, message=f"embedded {done}/{total} images with {init}")
    if pending:
        store.write(new_keys[-pending:], np.concatenate(new_feats)[-pending:])
    if done < total:
        raise Cancelled(f"embedding with {init} stopped after {done}/{total} images; run again to resume")
    return new_keys, np.concatenate(new_feats)
