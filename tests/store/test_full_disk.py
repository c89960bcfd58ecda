"""A full disk never crashes the process: the resolution cache, training state, checkpoint export and
atomic writes raise DiskFullError naming the folder, the space needed and what to do.

Two kinds of fault: injected (shutil.disk_usage reporting almost nothing free, or ENOSPC raised by the
writer), which run everywhere, and a real 1-4 MiB tmpfs, used when the tests run as root (skipped with a
message otherwise). The tmpfs test also shows the hazard the cache avoids: a write through a memory
map on a full tmpfs kills the process with SIGBUS.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.data.cache as cache_mod
from engine.atomic import atomic_write, atomic_write_text
from engine.data.cache import ImageCache
from engine.diskspace import DiskFullError, disk_full_guard, ensure_free, is_disk_full
from engine.models.backbones import build_backbone
from engine.models.registry import save_backbone
from engine.ssl.common import atomic_torch_save

REPO = Path(__file__).resolve().parents[2]
Usage = namedtuple("Usage", "total used free")


def write_pngs(folder: Path, n: int, size: int = 48) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, size=(size, size)).astype(np.uint8)
        p = folder / f"im{i}.png"
        Image.fromarray(arr).save(p)
        out.append(str(p))
    return out


def little_free(monkeypatch, free: int = 1000) -> None:
    """Every disk reports `free` bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - free, free))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------- injected faults


def test_cache_checks_free_space_before_writing_and_never_maps_for_writing(tmp_path, monkeypatch):
    paths = write_pngs(tmp_path / "src", 5)
    mapped: list[str] = []
    real_memmap = np.memmap.__new__

    def spy(subtype, filename, dtype=np.uint8, mode="r+", *a, **kw):
        mapped.append(mode)
        return real_memmap(subtype, filename, dtype, mode, *a, **kw)

    monkeypatch.setattr(np.memmap, "__new__", spy)
    little_free(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        ImageCache.build(paths, size=32, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert f"free space in {tmp_path / 'cache'}" in msg and "resolution cache" in msg
    assert "needs about" in msg and "1000 B free" in msg and "bigger disk" in msg
    assert info.value.errno == errno.ENOSPC and info.value.needed > 5 * 32 * 32
    assert not list((tmp_path / "cache").rglob("*.npy")) and not leftovers(tmp_path / "cache")
    monkeypatch.undo()
    monkeypatch.setattr(np.memmap, "__new__", spy)
    cache = ImageCache.build(paths, size=32, cache_dir=tmp_path / "cache")  # space again: it builds
    assert cache.array.shape == (5, 32, 32)
    assert mapped and set(mapped) == {"r"}  # memory maps are only ever opened read-only


def test_cache_write_that_runs_out_of_space_raises_and_leaves_nothing(tmp_path, monkeypatch):
    paths = write_pngs(tmp_path / "src", 4)
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        return Full(f) if "w" in mode and str(file).endswith(".tmp") else f  # the cache's temp files

    monkeypatch.setattr(cache_mod, "open", fake_open, raising=False)
    with pytest.raises(DiskFullError, match="disk full: free space in .*resolution cache"):
        ImageCache.build(paths, size=32, cache_dir=tmp_path / "cache")
    assert not leftovers(tmp_path / "cache") and not list((tmp_path / "cache").rglob("*.npy"))


def test_training_state_and_checkpoint_export_on_a_full_disk(tmp_path, monkeypatch):
    state = {"model": {"w": torch.zeros(1000)}, "step": 3}
    dest = tmp_path / "run" / "state.pt"
    atomic_torch_save(state, dest)
    old = dest.read_bytes()
    little_free(monkeypatch)
    with pytest.raises(DiskFullError, match=f"free space in {dest.parent} and retry \\(the training state needs"):
        atomic_torch_save({"model": {"w": torch.ones(1000)}, "step": 4}, dest)
    assert dest.read_bytes() == old and not leftovers(tmp_path)
    with pytest.raises(DiskFullError, match="the backbone bb needs about .* MiB"):
        save_backbone(build_backbone("resnet18"), "bb", {"method": "t", "arch": "resnet18"}, tmp_path / "ck")
    assert not list((tmp_path / "ck").glob("bb.*")) and not leftovers(tmp_path)


def test_torch_and_safetensors_write_failures_become_disk_full_errors(tmp_path, monkeypatch):
    # torch only says "file write failed"; with the disk (nearly) full that is a full disk
    def torch_fails(obj, f):
        Path(f).write_bytes(b"x")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", torch_fails)
    free = {"n": 10**12}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - free["n"], free["n"]))

    def full_after_check(*a):  # enough space at the check, none once the write ran
        free["n"] = 100
    with pytest.raises(DiskFullError, match="free space in"):
        with disk_full_guard(tmp_path, 10**6, "the training state"):
            full_after_check()
            torch.save({}, tmp_path / "x.pt")
    free["n"] = 10**12  # with plenty of space the same error is not a full disk: it propagates as is
    with pytest.raises(RuntimeError, match="inline_container"):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "s.pt")
    assert not leftovers(tmp_path)
    # safetensors' own error type carries the OS error text
    err = type("SafetensorError", (Exception,), {})(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert is_disk_full(err)

    def st_fails(tmp):
        raise err
    with pytest.raises(DiskFullError, match="the backbone file needs"):
        atomic_write(tmp_path / "ck" / "a.safetensors", st_fails, what="the backbone file")
    assert not leftovers(tmp_path)


def test_atomic_text_and_ensure_free(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "hello")
    little_free(monkeypatch, free=10)
    with pytest.raises(DiskFullError, match="a.txt needs about"):
        atomic_write_text(tmp_path / "a.txt", "changed")
    assert (tmp_path / "a.txt").read_text() == "hello"
    with pytest.raises(DiskFullError, match="the cache needs about 16.0 MiB"):
        ensure_free(tmp_path / "not" / "yet" / "made", 1000, "the cache")


# ------------------------------------------------------------------------------------- real tmpfs


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (needs root: skipped with a message otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; the injected-fault tests above cover the same paths")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_real_full_tmpfs_memmap_would_sigbus_but_the_cache_raises(tiny_tmpfs, tmp_path):
    # 1. the hazard: writing a memory-mapped file larger than the free space kills the process
    hazard = run_py(f"""
        import numpy as np
        a = np.lib.format.open_memmap({str(tiny_tmpfs / 'big.npy')!r}, mode="w+", dtype=np.uint8, shape=(64, 256, 256))
        a[:] = 7
        a.flush()
        print("survived")
    """)
    assert hazard.returncode == -signal.SIGBUS, (hazard.returncode, hazard.stderr[-500:])
    (tiny_tmpfs / "big.npy").unlink(missing_ok=True)
    # 2. the cache on the same full disk: a clear error, the process lives, nothing is left behind
    paths = write_pngs(tmp_path / "src", 40, size=300)
    res = run_py(f"""
        from engine.data.cache import ImageCache
        from engine.diskspace import DiskFullError
        try:
            ImageCache.build({paths!r}, size=256, cache_dir={str(tiny_tmpfs / 'cache')!r}, workers=1)
        except DiskFullError as e:
            print("DiskFullError:", e)
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"DiskFullError: disk full: free space in {tiny_tmpfs / 'cache'}" in res.stdout
    assert "needs about" in res.stdout and "free there" in res.stdout
    assert not leftovers(tiny_tmpfs)


def test_real_full_tmpfs_state_checkpoint_and_store(tiny_tmpfs, tmp_path):
    res = run_py(f"""
        import io, numpy as np, torch
        from PIL import Image
        from engine.diskspace import DiskFullError
        from engine.models.backbones import build_backbone
        from engine.models.registry import save_backbone
        from engine.ssl.common import atomic_torch_save
        from engine.store import Store
        root = {str(tiny_tmpfs)!r}
        try:
            atomic_torch_save({{"w": torch.zeros(2_000_000)}}, __import__("pathlib").Path(root) / "run" / "state.pt")
        except DiskFullError as e:
            print("STATE", e)
        try:
            save_backbone(build_backbone("resnet18"), "bb", {{"method": "t", "arch": "resnet18"}},
                          __import__("pathlib").Path(root) / "ck")
        except DiskFullError as e:
            print("CKPT", e)
        store = Store(__import__("pathlib").Path(root) / "ws")
        n = 0
        try:
            for i in range(200):
                arr = np.random.default_rng(i).integers(0, 65536, size=(256, 256)).astype(np.uint16)
                buf = io.BytesIO(); Image.fromarray(arr).save(buf, format="PNG")
                store.import_bytes(f"im{{i}}.png", buf.getvalue(), label=("mass", 1))
                n += 1
        except DiskFullError as e:
            print("STORE", n, e)
        df = store.images("mass") if "mass" in store.findings() else None
        print("ROWS", 0 if df is None else len(df), 0 if df is None else int(df["mass"].notna().sum()))
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "STATE disk full: free space in" in out and "the training state needs about" in out
    assert "CKPT disk full: free space in" in out and "the backbone bb needs about" in out
    line = next(l for l in out.splitlines() if l.startswith("STORE"))
    n = int(line.split()[1])
    assert "nothing was imported" in line  # the failing upload changed nothing...
    assert f"ROWS {n} {n}" in out  # ...and every image stored before it is there, labeled
    assert not leftovers(tiny_tmpfs)
