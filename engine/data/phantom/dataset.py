"""`generate(out_dir, n, ...)`: a phantom manifest workspace written atomically (a temporary sibling
folder swapped into place with engine.atomic.replace_dir)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.atomic import replace_dir
from engine.data.phantom.findings import _check_findings, FINDINGS, _MIN_SIZE, PHANTOM_VERSION
from engine.data.phantom.render import render
from engine.events import check_stop, emit, OnEvent


@dataclass(frozen=True)
class PhantomSpec:
    """What `generate` was asked for; written to `phantom.json` beside the manifest."""

    n: int
    size: int
    seed: int
    findings: tuple[str, ...]
    prevalence: float
    test_fraction: float
    version: int = PHANTOM_VERSION


def image_seed(seed: int, index: int) -> int:
    """The `render` seed of image `index` (0-based) of a dataset generated with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def _assign_labels(n: int, findings: tuple[str, ...], prevalence: float, test_fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split and labels: (is_test bool (n,), labels uint8 (n, F)).

    Each finding is present independently with probability `prevalence`; then, in each split with
    at least two images, a finding that has only one class gets one label flipped, so every finding
    has positives and negatives in both splits whenever n allows it.
    """
    n_test = int(round(n * test_fraction))
    if 0 < test_fraction < 1 and n >= 4:
        n_test = min(max(n_test, 2), n - 2)
    is_test = np.zeros(n, bool)
    is_test[rng.permutation(n)[:n_test]] = True
    labels = (rng.random((n, len(findings))) < prevalence).astype(np.uint8)  # (n, F)
    for split in (is_test, ~is_test):
        idx = np.flatnonzero(split)
        if idx.size < 2:
            continue
        for j in range(len(findings)):
            col = labels[idx, j]
            if col.min() == col.max():
                labels[idx[rng.integers(idx.size)], j] = 1 - col[0]
    return is_test, labels


def _save_png(path: Path, arr_u8: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr_u8).save(path, format="PNG", compress_level=3)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) in pixels of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _is_phantom_dir(path: Path) -> bool:
    return (path / "phantom.json").is_file()


def generate(out_dir: str | Path, n: int, size: int = 256, seed: int = 0, findings: Iterable[str] = FINDINGS,
             prevalence: float = 0.3, test_fraction: float = 0.25, on_event: OnEvent | None = None,
             stop: threading.Event | None = None) -> Path:
    """Write a phantom dataset to `out_dir` and return the path of its `manifest.csv`.

    Layout: ``images/ph00001.png`` (8-bit gray), ``manifest.csv`` (path, patient_id, split, one 0/1
    column per finding), ``masks.csv`` (path, finding, mask_path) with ``masks/<id>_<finding>.png``
    (0/255), ``boxes.csv`` (path, finding, x, y, w, h: the bounding box of each mask) and
    ``phantom.json`` (the parameters). One image per patient. Deterministic in all arguments.

    The folder is written atomically: into a temporary sibling that is renamed into place. An
    existing `out_dir` is replaced only if it is empty or an earlier phantom (has phantom.json).
    Cancelling through `stop` removes the partial output (regenerating is cheap and deterministic).
    """
    out_dir = Path(out_dir)
    spec = _checked_spec(out_dir, n, size, seed, findings, prevalence, test_fraction)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    try:
        _write_dataset(tmp, spec, on_event, stop)
        replace_dir(tmp, out_dir)  # an empty folder or an earlier phantom is moved aside, swapped, deleted
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "manifest.csv"


def _checked_spec(out_dir: Path, n: int, size: int, seed: int, findings: Iterable[str], prevalence: float,
                  test_fraction: float) -> PhantomSpec:
    """`generate`'s arguments checked (ValueError / FileExistsError saying what is wrong) as a spec."""
    fs = _check_findings((findings,) if isinstance(findings, str) else findings)
    if not fs:
        raise ValueError(f"choose at least one finding from {list(FINDINGS)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (number of images) must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE} pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must be strictly between 0 and 1, got {prevalence!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not _is_phantom_dir(out_dir))):
        raise FileExistsError(f"{out_dir} exists and is not an earlier phantom output; "
                              "choose a new or empty folder (a phantom is never written over other files)")
    return PhantomSpec(n=int(n), size=int(size), seed=int(seed), findings=fs, prevalence=float(prevalence),
                       test_fraction=float(test_fraction))


def _write_dataset(folder: Path, spec: PhantomSpec, on_event: OnEvent | None, stop: threading.Event | None) -> None:
    """Render `spec`'s images and masks into `folder` (with images/ and masks/ made), then the CSVs and
    phantom.json. Raises Cancelled when `stop` is set between images."""
    n, fs = spec.n, spec.findings
    is_test, labels = _assign_labels(n, fs, spec.prevalence, spec.test_fraction,
                                     np.random.default_rng([spec.seed, 0x5EED]))
    width = max(5, len(str(n)))
    manifest, mask_rows, box_rows = [], [], []
    for i in range(n):
        check_stop(stop)
        image_id = f"ph{i + 1:0{width}d}"
        rel = f"images/{image_id}.png"
        present = tuple(f for f, y in zip(fs, labels[i]) if y)
        img, masks = render(image_seed(spec.seed, i), spec.size, present)
        _save_png(folder / rel, np.round(img * 255.0).astype(np.uint8))
        for f in present:
            mrel = f"masks/{image_id}_{f}.png"
            _save_png(folder / mrel, masks[f].astype(np.uint8) * 255)
            mask_rows.append([rel, f, mrel])
            box_rows.append([rel, f, *_box(masks[f])])
        manifest.append([rel, image_id, "test" if is_test[i] else "train", *(int(y) for y in labels[i])])
        if on_event is not None and ((i + 1) % 10 == 0 or i + 1 == n):
            emit(on_event, step=i + 1, total=n, message=f"phantom: {i + 1}/{n} images")
    _write_csv(folder / "manifest.csv", ["path", "patient_id", "split", *fs], manifest)
    _write_csv(folder / "masks.csv", ["path", "finding", "mask_path"], mask_rows)
    _write_csv(folder / "boxes.csv", ["path", "finding", "x", "y", "w", "h"], box_rows)
    (folder / "phantom.json").write_text(json.dumps({**asdict(spec), "findings": list(fs)}, indent=2) + "\n")
