"""Issue 14: `kill -9` at random points of a store import, a pretraining run and a sweep, then resume.

Each kill lands at a seeded random moment once the work is under way (after the first image / state
save / trial row). After it: the workspace database is intact, every stored row has its file, nothing
was written outside the workspace / output folders, and the resumed work ends exactly where an
uninterrupted run ends (same images, same backbone weights hash, same trial rows).
Each child process costs a torch import (seconds of CPU), so: the import is killed twice; the pretraining once,
at a seeded random saved step (1-5 of 8) plus a seeded fraction of a step; the sweep once (a second try only if
the first finished before its kill); the resumes of the pretraining and the sweep run in this process.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine import paths
from engine.atomic import remove_stale_temps

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, delay_s: float, timeout_s: float = 240, poll_s: float = 0.05) -> bool:
    """SIGKILL `proc` `delay_s` after `ready()` first holds; False when it finished before that."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            proc.communicate()
            return False
        if time.monotonic() - t0 > timeout_s:
            proc.kill()
            raise AssertionError("the work never started")
        time.sleep(poll_s)
    time.sleep(delay_s)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return True


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root outside `skip` (what must not change)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and not any(p.is_relative_to(s) for s in skip):
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _integrity(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        con.close()


def test_kill9_during_a_folder_import_then_import_again(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)).save(src / f"im{i:03d}.png")
    ws = tmp_path / "ws"
    script = ("import sys; from engine.store import Store; s = Store(sys.argv[1]); s.import_workers = 1; "
              "r = s.import_paths([sys.argv[2]]); print(sum(x.error is None for x in r))")
    before = _tree(tmp_path, (ws,))
    kills = 0
    for delay in np.random.default_rng(14).uniform(0.0, 0.6, 2):
        proc = _start("-c", script, str(ws), str(src))
        db = ws / "store.sqlite"

        def started() -> bool:
            if not db.exists():
                return False
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    return con.execute("SELECT COUNT(*) FROM images").fetchone()[0] > 0
                finally:
                    con.close()
            except sqlite3.Error:
                return False

        kills += _kill_when(proc, started, float(delay))
        _integrity(db)
        con = sqlite3.connect(db)
        files = [r[0] for r in con.execute("SELECT file FROM images")]
        con.close()
        assert all((ws / f).exists() for f in files)             # every committed row has its pixels
    assert kills >= 1
    print(f"kill -9 during import: {kills} of 2 landed")
    remove_stale_temps(ws, min_age_s=0)                          # what a JobRunner start does (writers dead)
    from engine.store import Store

    with Store(ws) as s:                                         # "resume": import the folder again
        res = s.import_paths([src])
        assert all(r.error is None for r in res) and len(res) == 60
        df = s.images()
        assert len(df) == 60 and df["id"].is_unique               # nothing lost, nothing twice
        stored = {Path(f).name for f in df["file"]}
    on_disk = {p.name for p in (ws / "images").iterdir()}
    assert on_disk == stored                                     # no orphan pixel file, no temp file left
    assert _tree(tmp_path, (ws,)) == before                      # nothing written outside the workspace


def _png_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _pretrain_args(folder: Path, out: str, run_dir: Path, *extra: str) -> list[str]:
    return ["pretrain", "--method", "moco_v2", "--data", str(folder), "--epochs", "4", "--batch-size", "4",
            "--image-size", "32", "--out", out, "--device", "cpu", "--max-steps", "8", "--save-every", "1",
            "--monitor-every", "0", "--opt", "queue=16", "--opt", "proj_hidden=16", "--run-dir", str(run_dir),
            "--preset", "quick", *extra]


def _saved_step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "history.json").read_text()).get("step", 0))
    except (OSError, ValueError):
        return -1


def test_kill9_during_pretraining_then_resume_is_bit_identical(tmp_path):
    from engine.cli import main
    from engine.reservations import reserved_checkpoints

    folder = _png_folder(tmp_path)
    ckpts = paths.checkpoints_dir()
    # the uninterrupted run, in-process, saving its state once (how often it saves does not change the weights)
    assert main(_pretrain_args(folder, "ref", tmp_path / "run-ref", "--save-every", "8")) == 0
    ref = json.loads((ckpts / "ref.json").read_text())
    run_dir = tmp_path / "run-k"
    before = _tree(tmp_path, (run_dir, ckpts))
    rng = np.random.default_rng(7)
    at_step, delay = int(rng.integers(1, 6)), float(rng.uniform(0.0, 0.05))  # after saved step 1-5 of 8
    proc = _start("-m", "engine", *_pretrain_args(folder, "killed", run_dir))
    assert _kill_when(proc, lambda: _saved_step(run_dir) >= at_step, delay, poll_s=0.005), "it finished before its kill"
    last = _saved_step(run_dir)
    assert at_step <= last < 8                                               # killed mid-run, steps still to train
    assert not (ckpts / "killed.safetensors").exists()                      # no half-exported backbone
    assert "killed" in reserved_checkpoints(ckpts)                           # the name stays held for the resume
    print(f"kill -9 during pretraining: at saved step {last} (waited for {at_step}, then {delay * 1000:.0f} ms)")
    assert main(_pretrain_args(folder, "killed", run_dir)) == 2               # a dead run's name: not silently taken
    assert main(_pretrain_args(folder, "killed", run_dir, "--resume")) == 0   # the resume (in this process)
    got = json.loads((ckpts / "killed.json").read_text())
    assert got["steps"] == ref["steps"] == 8 and got["param_hash"] == ref["param_hash"]   # bit-identical weights
    assert reserved_checkpoints(ckpts) == {}
    assert _tree(tmp_path, (run_dir, ckpts)) == before                        # nothing written elsewhere


def test_kill9_during_a_sweep_then_resume_gives_the_uninterrupted_rows(tmp_path, phantom_set):
    from engine.cli import main

    manifest = phantom_set(60, 48, 2, findings=("cardiomegaly",), prevalence=0.4)  # shared with test_fewshot_cli.py
    args = ["sweep", "--manifest", str(manifest), "--finding", "cardiomegaly", "--inits", "random", "--modes", "probe",
            "--shots", "1,2,3,5", "--trials", "3", "--image-size", "32", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    cols = ["finding", "init", "mode", "shots", "trial", "seed", "auc", "n_train", "n_test"]
    ref = pd.read_csv(tmp_path / "ref" / "trials.csv")[cols].sort_values(["shots", "trial"]).reset_index(drop=True)
    out = tmp_path / "sweep"
    before = _tree(tmp_path, (out, tmp_path / "workspace"))
    phantom_before = _tree(manifest.parent, ())
    kills = 0
    for i, delay in enumerate(np.random.default_rng(3).uniform(0.0, 0.5, 2)):
        proc = _start("-m", "engine", *args, "--out", str(out), *(("--resume",) if (out / "trials.csv").exists() else ()))
        kills += _kill_when(proc, lambda: out.exists() and any(out.iterdir()), float(delay))  # once it writes
        if (out / "trials.csv").exists():
            pd.read_csv(out / "trials.csv")                      # never half-written
        if kills:
            break                                                # a second try only if the first one finished
    assert kills == 1
    print(f"kill -9 during the sweep: landed on try {i + 1}")
    assert main([*args, "--out", str(out), *(("--resume",) if (out / "trials.csv").exists() else ())]) == 0  # resume
    got = pd.read_csv(out / "trials.csv")[cols].sort_values(["shots", "trial"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, ref)                      # nothing lost, nothing twice, same numbers
    assert _tree(tmp_path, (out, tmp_path / "workspace")) == before
    assert _tree(manifest.parent, ()) == phantom_before           # nor next to the manifest
