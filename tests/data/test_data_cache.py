"""Resolution cache: exact pixels, reuse by content, resume after stop, bad files, two processes."""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.data.cache as cache_mod
from engine.data.cache import CACHE_VERSION, CacheError, ImageCache
from engine.data.io import read_image
from engine.data.transforms import fit_square
from engine.events import Cancelled


def _make_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[str]:
    """n small 8-bit PNGs of varied shapes and content."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class _Counter:
    """Wraps a cache-module function and counts its calls (thread-safe)."""

    def __init__(self, fn):
        self.fn, self.n, self.lock = fn, 0, threading.Lock()

    def __call__(self, *a):
        with self.lock:
            self.n += 1
        return self.fn(*a)


@pytest.fixture
def counted(monkeypatch):
    decode, hashing = _Counter(cache_mod._decode), _Counter(cache_mod._hash_file)
    monkeypatch.setattr(cache_mod, "_decode", decode)
    monkeypatch.setattr(cache_mod, "_hash_file", hashing)
    return decode, hashing


def test_rows_equal_fit_square_of_read_image(tmp_path):
    paths = _make_images(tmp_path / "imgs", 6)
    c = ImageCache.build(paths, size=32, cache_dir=tmp_path / "cache")
    assert len(c) == 6 and c.array.shape == (6, 32, 32) and c.array.dtype == np.uint8
    assert isinstance(c.array, np.memmap) and c.file.exists() and c.file.suffix == ".npy"
    for i, p in enumerate(paths):
        expected, lb = fit_square(read_image(p)[0], 32, "pad")
        np.testing.assert_array_equal(c[i], expected)
        assert c.letterboxes[i] == lb
    assert len(set(c.keys)) == 6 and all(len(k) == 20 for k in c.keys)
    t = c.batch([4, 0, 4])
    assert tuple(t.shape) == (3, 32, 32) and str(t.dtype) == "torch.uint8"
    np.testing.assert_array_equal(t.numpy()[0], c[4])
    assert c[1:3].shape == (2, 32, 32)


def test_second_build_neither_hashes_nor_decodes(tmp_path, counted):
    decode, hashing = counted
    paths = _make_images(tmp_path / "imgs", 10)
    a = ImageCache.build(paths, size=24, cache_dir=tmp_path / "cache")
    assert (decode.n, hashing.n) == (10, 10)
    events = []
    b = ImageCache.build(paths, size=24, cache_dir=tmp_path / "cache", on_event=events.append)
    assert (decode.n, hashing.n) == (10, 10) and b.file == a.file
    assert "cache hit" in events[-1].message


def test_lists_sharing_images_decode_only_new_ones(tmp_path, counted):
    decode, _ = counted
    paths = _make_images(tmp_path / "imgs", 12)
    ImageCache.build(paths[:8], size=24, cache_dir=tmp_path / "cache")
    assert decode.n == 8
    other = ImageCache.build(paths[4:] + paths[:2], size=24, cache_dir=tmp_path / "cache")
    assert decode.n == 12  # only images 8..11 were new
    for i, p in enumerate(paths[4:] + paths[:2]):
        np.testing.assert_array_equal(other[i], fit_square(read_image(p)[0], 24)[0])
    # Same content under another path: the content key matches, nothing is decoded.
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(paths[0]).read_bytes())
    c = ImageCache.build([str(copy), paths[0]], size=24, cache_dir=tmp_path / "cache")
    assert decode.n == 12 and c.keys[0] == c.keys[1]
    # Another size or mode is another cache.
    ImageCache.build(paths[:2], size=24, cache_dir=tmp_path / "cache", mode="crop")
    assert decode.n == 14
    folder = tmp_path / "cache" / f"u8-v{CACHE_VERSION}-s24-pad"
    assert not list(folder.glob("part-*")) and not list(folder.glob(".*tmp*"))


def test_changed_file_is_rehashed_and_redecoded(tmp_path, counted):
    decode, _ = counted
    paths = _make_images(tmp_path / "imgs", 3)
    before = ImageCache.build(paths, size=16, cache_dir=tmp_path / "cache")
    old_row = before[1].copy()
    Image.fromarray(np.full((30, 40), 200, np.uint8)).save(paths[1])
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    after = ImageCache.build(paths, size=16, cache_dir=tmp_path / "cache")
    assert decode.n == 4 and after.keys[1] != before.keys[1] and after.keys[0] == before.keys[0]
    np.testing.assert_array_equal(after[1], fit_square(read_image(paths[1])[0], 16)[0])
    assert not np.array_equal(after[1], old_row)
    np.testing.assert_array_equal(before[1], old_row)  # the old list is immutable


def test_bad_files_are_listed_and_good_ones_kept(tmp_path, counted):
    decode, _ = counted
    paths = _make_images(tmp_path / "imgs", 5)
    fake = tmp_path / "imgs" / "notes.png"
    fake.write_text("this is not an image")
    empty = tmp_path / "imgs" / "empty.png"
    empty.write_bytes(b"")
    missing = str(tmp_path / "imgs" / "gone.png")
    with pytest.raises(CacheError) as ei:
        ImageCache.build(paths + [str(fake), missing, str(empty)], size=16, cache_dir=tmp_path / "cache")
    text = str(ei.value)
    assert len(ei.value.problems) == 3 and "3 image(s) could not be read" in text
    assert "notes.png" in text and "gone.png" in text and "empty.png" in text
    assert decode.n == 7
    ImageCache.build(paths, size=16, cache_dir=tmp_path / "cache")
    assert decode.n == 7  # the five good images were saved before the error


def test_stop_leaves_resumable_parts(tmp_path, counted, monkeypatch):
    decode, _ = counted
    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    paths = _make_images(tmp_path / "imgs", 10)
    stop = threading.Event()

    def on_event(e):
        if e.step == 4 and e.total == 10:  # first chunk of decoding done
            stop.set()

    with pytest.raises(Cancelled):
        ImageCache.build(paths, size=16, cache_dir=tmp_path / "cache", on_event=on_event, stop=stop, workers=1)
    assert decode.n == 4
    assert len(list((tmp_path / "cache" / f"u8-v{CACHE_VERSION}-s16-pad").glob("part-*.npy"))) == 1
    c = ImageCache.build(paths, size=16, cache_dir=tmp_path / "cache")
    assert decode.n == 10 and len(c) == 10
    assert not list((tmp_path / "cache" / f"u8-v{CACHE_VERSION}-s16-pad").glob("part-*"))


def test_default_dir_is_the_workspace_cache_and_inputs_are_checked(tmp_path):
    paths = _make_images(tmp_path / "imgs", 2)
    c = ImageCache.build(paths, size=16)
    assert Path(os.environ["SCARCE_CXR_WORKSPACE"]) / "cache" in c.file.parents
    with pytest.raises(ValueError, match="empty"):
        ImageCache.build([], size=16)
    with pytest.raises(ValueError, match="mode"):
        ImageCache.build(paths, size=16, mode="stretch")  # type: ignore[arg-type]


def _build_in_process(args):
    paths, size, cache_dir, barrier = args
    barrier.wait(timeout=60)
    c = ImageCache.build(paths, size=size, cache_dir=cache_dir, workers=1)
    return str(c.file), c.array.sum(dtype=np.int64).item()


def test_two_processes_building_at_once(tmp_path):
    paths = _make_images(tmp_path / "imgs", 24)
    ctx = mp.get_context("fork")
    barrier = ctx.Manager().Barrier(2)
    with ctx.Pool(2) as pool:
        results = pool.map(_build_in_process, [(paths, 32, str(tmp_path / "cache"), barrier)] * 2)
    assert results[0] == results[1]
    c = ImageCache.build(paths, size=32, cache_dir=tmp_path / "cache")
    assert str(c.file) == results[0][0] and c.array.sum(dtype=np.int64) == results[0][1]
    for i in (0, 23):
        np.testing.assert_array_equal(c[i], fit_square(read_image(paths[i])[0], 32)[0])
    folder = tmp_path / "cache" / f"u8-v{CACHE_VERSION}-s32-pad"
    assert sorted(p.name for p in folder.iterdir()) == sorted([c.file.name, c.file.with_suffix(".json").name, "lock"])


def test_a_cache_written_under_an_older_version_is_not_reused(tmp_path, monkeypatch):
    """Decoding changed in v2 (pixel padding, TIFF min-is-white, orientation): blocks an older version
    wrote hold the old pixels and must never be returned, even for the very same files."""
    assert CACHE_VERSION >= 2
    paths = _make_images(tmp_path / "src", 5)
    truth = np.stack([fit_square(read_image(p)[0], 16)[0] for p in paths])
    real_decode = cache_mod._decode

    def old_decoder(path, key, size, mode):  # what the old reader made of them: e.g. inverted
        img, lb = real_decode(path, key, size, mode)
        return 255 - img, lb

    monkeypatch.setattr(cache_mod, "CACHE_VERSION", CACHE_VERSION - 1)
    monkeypatch.setattr(cache_mod, "_decode", old_decoder)
    old = ImageCache.build(paths, 16, cache_dir=tmp_path / "cache", workers=1)
    assert np.array_equal(np.asarray(old.array), 255 - truth)
    assert old.file.parent.name == f"u8-v{CACHE_VERSION - 1}-s16-pad"
    monkeypatch.undo()

    calls = []
    monkeypatch.setattr(cache_mod, "_decode", lambda *a: calls.append(a[0]) or real_decode(*a))
    new = ImageCache.build(paths, 16, cache_dir=tmp_path / "cache", workers=1)
    assert sorted(calls) == sorted(paths)                      # every image decoded again
    assert np.array_equal(np.asarray(new.array), truth)        # the current reader's pixels
    assert new.file.parent.name == f"u8-v{CACHE_VERSION}-s16-pad" and list(new.keys) == list(old.keys)
