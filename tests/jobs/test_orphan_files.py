"""Issue 14 item 5: pixel files of killed imports are removed when a runner starts; a live import's never.

A manifest import writes every pixel file first and commits all rows at its end, so a `kill -9` in
between leaves `images/<sha>.png` files without rows. `Store.remove_orphan_files` (run by every
JobRunner start, one log line) deletes them, but keeps every file at least as new as the oldest live
import (its `.writers` marker), shown here with a second import that is alive but stopped (SIGSTOP)
while its files are still uncommitted.
"""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine.store import Store

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ("import sys; from engine.store import Store; s = Store(sys.argv[1]); s.import_workers = 1; "
          "r = s.import_manifest(sys.argv[2]); print(r.images)")


def _manifest(folder: Path, n: int, seed: int, size: int = 160) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
        rows.append({"path": f"im{i:03d}.png", "nodule": i % 2})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _start_import(ws: Path, csv: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(ws), str(csv)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _pngs(ws: Path) -> set[str]:
    d = ws / "images"
    return {p.name for p in d.glob("*.png")} if d.exists() else set()


def _until(proc: subprocess.Popen, cond, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"the import ended before the test could act: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "the import never wrote a file"
        time.sleep(0.02)


def _rows(ws: Path) -> list[str]:
    con = sqlite3.connect(ws / "store.sqlite")
    try:
        return [r[0] for r in con.execute("SELECT file FROM images")]
    finally:
        con.close()


def _killed_import(ws: Path, csv: Path, min_files: int = 3) -> set[str]:
    """Run a manifest import in a child process and kill -9 it once it wrote `min_files` pixel files."""
    proc = _start_import(ws, csv)
    _until(proc, lambda: len(_pngs(ws)) >= min_files)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _rows(ws) == []  # the manifest commits at its end: nothing was committed
    left = _pngs(ws)
    assert len(left) >= min_files
    return left


def test_runner_start_removes_a_killed_manifest_imports_files_and_logs_count_and_bytes(tmp_path, caplog):
    csv = _manifest(tmp_path / "src", 120, seed=0)
    ws = tmp_path / "ws"
    orphans = _killed_import(ws, csv)
    old = time.time() - 120  # killed two minutes ago (the default minimum age is 60 s)
    size = 0
    for name in orphans:
        os.utime(ws / "images" / name, (old, old))
        size += (ws / "images" / name).stat().st_size
    from engine.jobs import JobRunner

    store = Store(ws)
    with caplog.at_level(logging.INFO, logger="engine.jobs"):
        runner = JobRunner(store, device="cpu")
    try:
        rep = runner.removed_orphans
        assert sorted(rep.files) == sorted(f"images/{n}" for n in orphans) and rep.bytes == size
        assert _pngs(ws) == set()
        line = [r.getMessage() for r in caplog.records if "orphan" in r.getMessage()]
        assert line and f"removed {len(orphans)} orphan" in line[0] and f"({size / 2**20:.1f} MiB)" in line[0]
        assert not list((ws / ".writers").glob("*.writer"))  # the dead import's marker went too
        summary = store.import_manifest(csv)  # the import, run again, is complete
        assert summary.images == 120
        assert all((ws / f).exists() for f in _rows(ws)) and len(_pngs(ws)) == 120
    finally:
        runner.shutdown()
        store.close()


def test_a_live_imports_fresh_files_survive_while_a_killed_ones_go(tmp_path):
    ws = tmp_path / "ws"
    dead = _killed_import(ws, _manifest(tmp_path / "a", 120, seed=1))
    time.sleep(1.2)  # the live import starts more than a second after the killed one's last file
    live_csv = _manifest(tmp_path / "b", 120, seed=2)
    proc = _start_import(ws, live_csv)
    try:
        _until(proc, lambda: len(_pngs(ws) - dead) >= 3)
        os.kill(proc.pid, signal.SIGSTOP)  # alive, its files written and not yet committed
        fresh = _pngs(ws) - dead
        with Store(ws) as store:
            rep = store.remove_orphan_files(min_age_s=0)  # no age margin: only the marker protects
        assert set(rep.files) == {f"images/{n}" for n in dead}
        assert fresh <= _pngs(ws)  # every file of the live import survived
        assert len(list((ws / ".writers").glob("*.writer"))) == 1  # the live marker, the dead one removed
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert int(out.strip()) == 120
    rows = _rows(ws)
    assert len(rows) == 120 and all((ws / f).exists() for f in rows)
    with Store(ws) as store:
        assert store.remove_orphan_files(min_age_s=0).files == ()  # everything left is referenced


def _png(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_an_import_adopts_an_old_orphan_and_rewrites_one_removed_before_its_commit(tmp_path):
    with Store(tmp_path / "other") as other:  # the pixel file an earlier (killed) import left behind
        src = other.image_file(other.import_bytes("a.png", _png(0))[0].image_id)
    with Store(tmp_path / "ws") as store:
        orphan = store.images_dir / src.name
        orphan.write_bytes(src.read_bytes())
        os.utime(orphan, (time.time() - 600, time.time() - 600))
        res = store.import_bytes("a.png", _png(0))[0]
        assert res.error is None and not res.duplicate
        assert time.time() - orphan.stat().st_mtime < 60  # adopted: touched, so no cleanup takes it
        assert store.remove_orphan_files(min_age_s=0).files == ()
        assert store.image_file(res.image_id) == orphan

        prepare = store._prepare

        cleanups = []

        def prepare_then_cleanup(name, src, known=None):  # a cleanup removes the file before the commit
            out = prepare(name, src, known)
            if isinstance(out, tuple) and not cleanups:
                cleanups.append(out[0])
                (store.images_dir / f"{out[0]}.png").unlink()
            return out

        store._prepare = prepare_then_cleanup
        res = store.import_bytes("b.png", _png(1))[0]
        assert res.error is None
        assert cleanups and store.image_file(res.image_id).exists()  # written again, never a row without a file


def test_orphan_cleanup_ignores_what_is_not_a_stored_pixel_file_and_young_files(tmp_path):
    with Store(tmp_path / "ws") as store:
        kept = store.import_bytes("a.png", _png(2))[0]
        other = [store.images_dir / "notes.txt", store.images_dir / ("ab" * 32 + ".png.bak"),
                 store.masks_dir / "mine.png"]
        for p in other:
            p.write_bytes(b"x")
        young = store.images_dir / ("cd" * 32 + ".png")
        young.write_bytes(b"x" * 10)
        os.utime(young, (time.time() - 5, time.time() - 5))  # not this second's: a writer's start is
        assert store.remove_orphan_files().files == ()  # default: younger than 60 s is kept
        assert all(p.exists() for p in [*other, young, store.image_file(kept.image_id)])
        rep = store.remove_orphan_files(min_age_s=0)
        assert rep.files == (f"images/{young.name}",) and rep.bytes == 10
        assert "removed 1 orphan image/mask file (0.0 MiB)" in str(rep)
        assert all(p.exists() for p in other) and store.image_file(kept.image_id).exists()
