"""Blocks of the resolution cache: an immutable (n, S, S) uint8 .npy with its row keys and letterboxes
in a .json beside it (written last, so a block with a readable JSON is complete). Reading, finding
rows and the row writer; `engine.data.cache._write_block` writes a block atomically."""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.transforms import Letterbox


@dataclass(frozen=True)
class _Block:
    """An immutable (n, S, S) uint8 .npy with its row keys and letterboxes (.json beside it)."""

    npy: Path
    keys: list[str]
    lb: np.ndarray  # (n, 5) float64: scale, top, left, orig_h, orig_w

    @property
    def name(self) -> str:
        return self.npy.stem


def _lb_rows(lbs: Sequence[Letterbox]) -> list[list[float]]:
    return [[lb.scale, lb.top, lb.left, lb.orig_h, lb.orig_w] for lb in lbs]


def _write_rows(fh, chunks: Iterable[np.ndarray], n: int, size: int, name: str) -> None:
    """Write an (n, S, S) uint8 .npy to the open file `fh` from `chunks`, (k, S, S) arrays in row order.
    Raises ValueError for rows of another size and RuntimeError when the chunks hold not n rows."""
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, size, size)})
    written = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=np.uint8)  # (k, S, S)
        if chunk.shape[1:] != (size, size):
            raise ValueError(f"cache rows must be {size}x{size}, got {chunk.shape[1:]}")
        fh.write(chunk.tobytes())
        written += len(chunk)
    if written != n:
        raise RuntimeError(f"cache block {name}: {written} rows written, {n} expected")


def _read_block(js: Path, size: int) -> _Block | None:
    """A complete block (its JSON is written last), or None when absent / inconsistent."""
    npy = js.with_suffix(".npy")
    try:
        body = json.loads(js.read_text())
        keys, lbs = body["keys"], np.asarray(body["letterboxes"], dtype=np.float64).reshape(-1, 5)
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    if arr.shape != (len(keys), size, size) or len(lbs) != len(keys):
        return None
    return _Block(npy, keys, lbs)


def _scan(folder: Path, size: int) -> list[_Block]:
    blocks = [_read_block(js, size) for js in sorted(folder.glob("*.json"))]
    return [b for b in blocks if b is not None]


def _locate(blocks: list[_Block]) -> dict[str, tuple[int, int]]:
    """key -> (block index, row) over all blocks (lists first: they are never deleted)."""
    where: dict[str, tuple[int, int]] = {}
    order = sorted(range(len(blocks)), key=lambda i: not blocks[i].name.startswith("list-"))
    for bi in order:
        for row, k in enumerate(blocks[bi].keys):
            where.setdefault(k, (bi, row))
    return where


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of builders that died (we hold the lock, so nobody else is writing): engine.atomic's
    `.<name>.<pid>.<random>.tmp` and the older `.<name>.tmp-<pid>-<hex>`."""
    for pattern in (".*.tmp", ".*.tmp-*"):
        for tmp in folder.glob(pattern):
            tmp.unlink(missing_ok=True)
