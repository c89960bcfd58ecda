"""Reading the uint8 resolution cache vs decoding the original files, side by side in one run.

    python bench/cache_read.py                                  # 1000 Kermany images at 224 px
    python bench/cache_read.py --manifest DIR/manifest.csv --n 500 --size 128

Both paths produce the same thing a training step consumes, a torch uint8 (B, S, S) batch in a
shuffled order: "decode" runs read_image + fit_square on the original files (single thread, as one
data-loader worker would), "cache" gathers the rows from the memmap (`ImageCache.batch`). The
cache is built first into a temporary folder (its one-off build time is reported too); both reads
then run with a warm OS page cache, best of --repeats.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany224" / "manifest.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--n", type=int, default=1000, help="images (a seeded random subset of the manifest)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mode", choices=["pad", "crop"], default="pad")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from engine.data.cache import ImageCache
    from engine.data.io import read_image
    from engine.data.manifest import load_manifest
    from engine.data.transforms import fit_square

    m = load_manifest(args.manifest)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(m), size=min(args.n, len(m)), replace=False)
    paths = [m.paths[i] for i in sorted(pick)]
    n = len(paths)
    order = rng.permutation(n)  # one shuffled epoch, the same for both readers
    batches = [order[i:i + args.batch] for i in range(0, n, args.batch)]

    with tempfile.TemporaryDirectory(prefix="cache_bench_") as tmp:
        t0 = time.perf_counter()
        cache = ImageCache.build(paths, size=args.size, cache_dir=tmp, mode=args.mode)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ImageCache.build(paths, size=args.size, cache_dir=tmp, mode=args.mode)
        rebuild_s = time.perf_counter() - t0
        for i in order[:8]:  # sanity: both readers give the same pixels
            assert np.array_equal(cache[i], fit_square(read_image(paths[i])[0], args.size, args.mode)[0])
        decode_s = _best(lambda: _decode(paths, batches, args.size, args.mode), args.repeats, n)
        cache_s = _best(lambda: _read_cache(cache, batches), args.repeats, n)

    print(f"manifest {args.manifest}  images {n}  size {args.size} ({args.mode})  batch {args.batch}  "
          f"best of {args.repeats}")
    print(f"cache build (hash + decode + write, {cache_mod_workers()} threads): {build_s:8.2f} s   "
          f"repeated build: {rebuild_s * 1000:.0f} ms")
    print(f"decode originals (read_image + fit_square): {n / decode_s:10.0f} images/s")
    print(f"read cache (memmap -> torch uint8 batch):   {n / cache_s:10.0f} images/s")
    print(f"ratio cache / decode: {decode_s / cache_s:.1f}x")
    return 0


def _read_cache(cache, batches: list[np.ndarray]) -> int:
    """One epoch through the cache in `batches`; returns the images read."""
    total = 0
    for b in batches:
        x = cache.batch(b)  # (B, S, S) uint8
        total += int(x.shape[0])
    return total


def _decode(paths: list[str], batches: list[np.ndarray], size: int, mode: str) -> int:
    """One epoch decoding the original files (read_image + fit_square) in `batches`; returns the images read."""
    import torch

    from engine.data.io import read_image
    from engine.data.transforms import fit_square

    total = 0
    for b in batches:
        x = torch.from_numpy(np.stack([fit_square(read_image(paths[i])[0], size, mode)[0]
                                       for i in b]))  # (B, S, S) uint8
        total += int(x.shape[0])
    return total


def _best(fn, repeats: int, n: int) -> float:
    """Fastest of `repeats` runs of `fn` (seconds); each must read all `n` images."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        assert fn() == n
        times.append(time.perf_counter() - t)
    return min(times)


def cache_mod_workers() -> int:
    from engine.data.cache import _default_workers

    return _default_workers()


if __name__ == "__main__":
    raise SystemExit(main())
