"""Resolution cache: every image decoded once into uint8 at the working size, reused everywhere.

    cache = ImageCache.build(paths, size=224)          # mode="pad" (see engine.data.transforms)
    cache.array          # (N, S, S) uint8 np.memmap, rows in the order of `paths`
    cache.keys[i]        # content hash of paths[i] (sha256 of the file bytes, hex[:20])
    cache.letterboxes[i] # geometry of fit_square for paths[i]
    cache.batch([0, 5])  # torch uint8 (B, S, S)

Layout under `cache_dir` (default ``<workspace>/cache``)::

    hashes.sqlite                 (path, size, mtime_ns) -> content hash; skips rehashing unchanged files
    u8-v<V>-s<S>-<mode>/          one folder per (CACHE_VERSION, size, mode)
        lock                      held while a build writes in this folder
        list-<id>.npy / .json     a built list: (n, S, S) uint8 + its keys and letterboxes
        part-<id>.npy / .json     decoded chunks of an unfinished build (resume state)

A list is identified by the hash of its keys in order, so the same images in the same order (under
any paths) map to the same file. Building a list:

1. hash every path (only files whose size or mtime changed since the last build are read);
2. if the list's block exists: open it; this is all a repeated build costs;
3. else, under the folder's lock, take every key already present in any block (other lists,
   parts of an interrupted build) and decode only the rest, in chunks written as `part-` blocks
   (between chunks `stop` is honoured: a cancelled build resumes from its parts);
4. assemble the list block by copying rows, write it (engine.atomic, JSON last), and
   delete the parts it now contains.

Blocks are written with plain `write()` calls, never through a writable memory map (a full disk
would kill the process with SIGBUS), after checking the free space: a full disk raises
`engine.diskspace.DiskFullError` naming the cache folder, the space needed and what to do.

Blocks are immutable once written and readers never take the lock, so any number of processes may
read while one builds; two builders of the same folder serialize on the lock, and the second then
finds the first one's work. Unreadable images never vanish silently: `CacheError` lists them all
(after the readable ones were saved, so fixing the few bad files and building again is cheap).

Layout: engine.data.cache_index (the hash index), engine.data.cache_blocks (reading and locating
blocks); this module builds. `_hash_file`, `_decode`, `_write_block`, `CHUNK` and `CACHE_VERSION` stay
here because tests replace them through this module to inject slow, changed or failing files.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from filelock import FileLock

from engine.atomic import atomic_path, atomic_write
from engine.data.cache_blocks import _Block, _lb_rows, _locate, _read_block, _remove_stale_temps, _scan, _write_rows
from engine.data.cache_index import KEY_CHARS, HashIndex, file_key
from engine.data.transforms import Letterbox, Mode, fit_square
from engine.diskspace import disk_full_guard
from engine.events import OnEvent, check_stop, emit

CACHE_VERSION = 2  # bump when decoding or resizing changes: old blocks then stop matching (2: issue 13 decoding
CHUNK = 256  # images decoded per resumable part
MAX_LISTED = 10
_LOCK_TIMEOUT_S = 6 * 3600  # a builder waits this long for another one before giving up


class CacheError(ValueError):
    """Some images could not be cached; `.problems` holds one "path: reason" line per bad file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED])
        more = f"\n  ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        super().__init__(f"{len(self.problems)} image(s) could not be read into the resolution cache "
                         f"(the others were cached; fix or remove these and build again):\n{shown}{more}")


def _hash_file(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:KEY_CHARS]


def _write_block(folder: Path, name: str, chunks: Iterable[np.ndarray], n: int, size: int, keys: list[str],
                 lbs: np.ndarray, meta: dict) -> _Block:
    """Write `name`.npy (rows from `chunks`, (k, S, S) uint8 arrays in row order) then `name`.json,
    each atomically (engine.atomic).

    Plain buffered writes, never a writable memory map: on a full disk a write to a memory map kills
    the whole process with SIGBUS, while `write()` raises ENOSPC, which becomes `DiskFullError`
    (the free space is also checked before writing). Nothing is left behind on any error.
    """
    npy = folder / f"{name}.npy"
    body = json.dumps({**meta, "keys": keys, "letterboxes": lbs.tolist()}).encode()
    needed = n * size * size + 4096 + len(body)
    what = f"the resolution cache ({n} images at {size}px)"
    with disk_full_guard(folder, needed, what):
        with atomic_path(npy, needed, what) as tmp, open(tmp, "wb") as fh:
            _write_rows(fh, chunks, n, size, name)
        atomic_write(folder / f"{name}.json", body, what=what)
    return _Block(npy, keys, lbs)


# ------------------------------------------------------------------------------------------ decoding


def _decode(path: str, key: str, size: int, mode: Mode) -> tuple[np.ndarray, Letterbox]:
    """File -> (uint8 S x S, Letterbox); verifies the bytes still hash to `key`."""
    from engine.data.io import read_image

    with open(path, "rb") as fh:
        data = fh.read()
    if file_key(data) != key:
        raise OSError("the file changed while the cache was being built; build again")
    img, _ = read_image(data)  # (H, W) float32 in [0, 1]
    return fit_square(img, size, mode)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------ cache


class ImageCache:
    """A built list: `.array` (N, S, S) uint8 memmap in the order of `.paths` (see module doc)."""

    def __init__(self, paths: list[str], block: _Block, size: int, mode: Mode):
        self.paths = paths
        self.size = size
        self.mode = mode
        self.file = block.npy
        self.keys = list(block.keys)
        self.array = np.load(block.npy, mmap_mode="r")  # (N, S, S) uint8, read-only
        self.letterboxes = [Letterbox(float(s), int(t), int(l), int(h), int(w), size)
                            for s, t, l, h, w in block.lb]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        """Row(s) as an in-memory uint8 array: (S, S) for an int, (B, S, S) for a slice / index array."""
        return np.asarray(self.array[i])

    def batch(self, indices: Sequence[int] | np.ndarray):
        """torch uint8 (B, S, S) of the given rows (sorted reads internally, original order kept)."""
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), self.size, self.size), dtype=np.uint8)  # (B, S, S)
        out[order] = self.array[idx[order]]
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"ImageCache({len(self)} images, {self.size}px {self.mode}, {self.file})"

    # ---------------------------------------------------------------------------------------- build

    @classmethod
    def build(cls, paths: Sequence[str | os.PathLike], size: int, cache_dir: str | Path | None = None,
              mode: Mode = "pad", on_event: OnEvent | None = None, stop: threading.Event | None = None,
              workers: int | None = None) -> "ImageCache":
        """Cache `paths` at `size` x `size` (see module doc); returns the list's `ImageCache`.

        Raises `CacheError` listing every file that is missing or cannot be decoded,
        `engine.diskspace.DiskFullError` when the cache folder's disk is too full (checked before each
        block is written; parts already written are kept), and `engine.events.Cancelled` when `stop`
        is set (decoded chunks are kept for the next build).
        """
        if mode not in ("pad", "crop"):
            raise ValueError(f"unknown cache mode {mode!r}; use 'pad' or 'crop'")
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
            raise ValueError(f"cache size must be an integer >= 8 pixels, got {size!r}")
        size = int(size)
        if len(paths) == 0:
            raise ValueError("no images to cache: the list of paths is empty")
        from engine.paths import sub

        root = Path(cache_dir).expanduser().resolve() if cache_dir else sub(None, "cache")
        folder = root / f"u8-v{CACHE_VERSION}-s{size}-{mode}"
        folder.mkdir(parents=True, exist_ok=True)
        abs_paths = [os.path.abspath(os.fspath(p)) for p in paths]
        workers = workers or _default_workers()

        keys, problems = _hash_all(abs_paths, HashIndex(root / "hashes.sqlite"), workers, on_event, stop)
        list_name = None
        if not problems:
            list_name = "list-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
            block = _read_block(folder / f"{list_name}.json", size)
            if block is not None:
                emit(on_event, step=len(keys), total=len(keys), message=f"cache hit: {len(keys)} images")
                return cls(abs_paths, block, size, mode)

        with FileLock(str(folder / "lock"), timeout=_LOCK_TIMEOUT_S):
            block, built = _build_locked(folder, list_name, abs_paths, keys, problems, size, mode, workers,
                                         on_event, stop)
        if not built:  # another builder made it while we waited for the lock
            return cls(abs_paths, block, size, mode)
        emit(on_event, step=len(keys), total=len(keys), message=f"cached {len(keys)} images in {block.npy.name}")
        return cls(abs_paths, block, size, mode)


def _hash_all(paths: list[str], index: HashIndex, workers: int, on_event: OnEvent | None,
              stop: threading.Event | None) -> tuple[list, list[str]]:
    """Content keys of `paths` (None where unreadable) and the problems found."""
    problems: list[str] = []
    stats: dict[str, tuple[int, int]] = {}
    for p in dict.fromkeys(paths):
        try:
            st = os.stat(p)
        except OSError as e:
            problems.append(f"{p}: {e.strerror or e} (file missing or not readable)")
            continue
        if not os.path.isfile(p):
            problems.append(f"{p}: not a file")
            continue
        stats[p] = (st.st_size, st.st_mtime_ns)
    known = index.lookup(stats)
    fresh = [p for p in stats if p not in known]
    if fresh:
        emit(on_event, step=0, total=len(fresh), message=f"hashing {len(fresh)} new or changed files")
        with ThreadPoolExecutor(workers) as pool:
            for i in range(0, len(fresh), CHUNK * 4):
                check_stop(stop)
                part = fresh[i:i + CHUNK * 4]
                new_rows = []
                for p, res in zip(part, pool.map(_try(_hash_file), part)):
                    if isinstance(res, Exception):
                        problems.append(f"{p}: cannot be read ({res})")
                    else:
                        known[p] = res
                        new_rows.append((p, *stats[p], res))
                with disk_full_guard(index.db.parent, what="the cache's hash index"):
                    index.store(new_rows)  # per chunk: a cancelled build keeps what it hashed
                emit(on_event, step=min(i + len(part), len(fresh)), total=len(fresh),
                     message=f"hashed {min(i + len(part), len(fresh))}/{len(fresh)} files")
    return [known.get(p) for p in paths], problems


def _try(fn):
    def wrapped(*args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 -- reported per file, never dropped
            return e
    return wrapped


def _decode_missing(folder: Path, todo: dict[str, str], size: int, mode: Mode, blocks: list[_Block],
                    workers: int, on_event: OnEvent | None, stop: threading.Event | None) -> list[str]:
    """Decode `todo` (key -> path) in chunks, each saved as a part block; returns problems."""
    problems: list[str] = []
    items = list(todo.items())
    if not items:
        return problems
    meta = {"version": CACHE_VERSION, "size": size, "mode": mode}
    emit(on_event, step=0, total=len(items), message=f"decoding {len(items)} images at {size}px ({mode})")
    decode = _try(lambda kp: _decode(kp[1], kp[0], size, mode))
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(items) > 8 else None
    try:
        done = 0
        for i in range(0, len(items), CHUNK):
            check_stop(stop)
            chunk = items[i:i + CHUNK]
            results = list(pool.map(decode, chunk) if pool else map(decode, chunk))
            good = [(k, r) for (k, p), r in zip(chunk, results) if not isinstance(r, Exception)]
            for (k, p), r in zip(chunk, results):
                if isinstance(r, Exception):
                    problems.append(f"{p}: {r}")
            if good:
                ks = [k for k, _ in good]
                name = "part-" + hashlib.sha256("\n".join(ks).encode()).hexdigest()[:24]

                rows = np.stack([img for _, (img, _lb) in good])  # (k, S, S) uint8
                lbs = np.asarray(_lb_rows([lb for _, (_, lb) in good]), dtype=np.float64)
                blocks.append(_write_block(folder, name, [rows], len(good), size, ks, lbs, meta))
            done += len(chunk)
            emit(on_event, step=done, total=len(items), message=f"decoded {done}/{len(items)} images")
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return problems


def _assemble(folder: Path, name: str, keys: list[str], blocks: list[_Block],
              where: dict[str, tuple[int, int]], size: int, mode: Mode) -> _Block:
    """Copy every key's row from wherever it lives into one list block, in order."""
    src = np.array([where[k][0] for k in keys], dtype=np.int64)  # (N,) block index per row
    rows = np.array([where[k][1] for k in keys], dtype=np.int64)  # (N,) row inside that block
    lbs = np.empty((len(keys), 5), dtype=np.float64)  # (N, 5)
    groups = {int(bi): np.flatnonzero(src == bi) for bi in np.unique(src)}  # block -> destination rows
    for bi, dst in groups.items():
        lbs[dst] = blocks[bi].lb[rows[dst]]

    def chunks() -> Iterable[np.ndarray]:
        """Destination rows in order, 1024 at a time (bounded memory), each gathered from its blocks."""
        arrays: dict[int, np.ndarray] = {}
        for j in range(0, len(keys), 1024):
            out = np.empty((min(1024, len(keys) - j), size, size), dtype=np.uint8)  # (c, S, S)
            s_blk, s_row = src[j:j + len(out)], rows[j:j + len(out)]
            for bi in np.unique(s_blk):
                bi = int(bi)
                if bi not in arrays:
                    arrays[bi] = np.load(blocks[bi].npy, mmap_mode="r")  # (n_b, S, S), read-only
                sel = np.flatnonzero(s_blk == bi)
                o = np.argsort(s_row[sel], kind="stable")  # source rows read in order
                out[sel[o]] = arrays[bi][s_row[sel][o]]
            yield out

    meta = {"version": CACHE_VERSION, "size": size, "mode": mode}
    return _write_block(folder, name, chunks(), len(keys), size, keys, lbs, meta)



def _build_locked(folder: Path, list_name: str | None, abs_paths: list[str], keys: list, problems: list[str],
                  size: int, mode: Mode, workers: int, on_event: OnEvent | None,
                  stop: threading.Event | None) -> tuple[_Block, bool]:
    """`ImageCache.build`'s work under the folder's lock: (the list's block, whether this call built it).

    Decodes only the keys no block holds yet (parts of an interrupted build included), assembles the
    list and drops the parts it now contains. Raises CacheError listing `problems` (hashing's, then
    decoding's) and Cancelled when `stop` is set."""
    _remove_stale_temps(folder)
    if list_name is not None:
        block = _read_block(folder / f"{list_name}.json", size)  # built while we waited
        if block is not None:
            return block, False
    blocks = _scan(folder, size)
    where = _locate(blocks)
    todo: dict[str, str] = {}  # key -> a path holding it
    for p, k in zip(abs_paths, keys):
        if k is not None and k not in where:
            todo.setdefault(k, p)
    problems += _decode_missing(folder, todo, size, mode, blocks, workers, on_event, stop)
    if problems:
        raise CacheError(problems)
    assert list_name is not None
    where = _locate(blocks)
    block = _assemble(folder, list_name, keys, blocks, where, size, mode)
    inside = set(block.keys)
    for b in blocks:  # parts now inside a list: drop them (only builders read parts)
        if b.name.startswith("part-") and inside.issuperset(b.keys):
            for f in (b.npy.with_suffix(".json"), b.npy):
                f.unlink(missing_ok=True)
    return block, True
