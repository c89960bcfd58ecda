"""Two writers, one result: checkpoint names reserved at submit time, an exclusive lock on a sweep's
output folder, hostile names refused before any job runs, stale temp files cleaned on start."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from engine import paths
from engine.events import Event
from engine.jobs import JobContext, JobRunner
from engine.models.backbones import build_backbone
from engine.models.registry import save_backbone
from engine.names import InvalidNameError
from engine.reservations import (NameTakenError, job_owner, release_checkpoint, reserve_checkpoint,
                                 reserved_checkpoints)
from engine.store import Store
from engine.tasks import reserve_pretrain_name, run_classify, run_pretrain

GATES: dict[str, threading.Event] = {}


def fake_pretrain(params: dict, ctx: JobContext) -> dict:
    """What run_pretrain does with the name, without the training: re-reserve, wait, export, release."""
    owner, ckpts = job_owner(ctx.store.workspace, ctx.job_id), paths.checkpoints_dir()
    reserve_checkpoint(params["out_name"], owner, ckpts, replace=bool(params.get("replace")))
    ctx.on_event(Event(step=1, total=2, message="training"))
    gate = GATES.get(params["out_name"])
    if gate is not None:
        gate.wait(20)
    if params.get("fail"):
        raise RuntimeError("training failed on purpose")
    save_backbone(build_backbone("resnet18"), params["out_name"], {"method": "fake", "arch": "resnet18",
                                                                  "job": ctx.job_id})
    release_checkpoint(params["out_name"], owner, ckpts)
    return {"checkpoint": params["out_name"]}


@pytest.fixture
def runner(tmp_path):
    store = Store(tmp_path / "ws")
    r = JobRunner(store, device="cpu")
    # uses_gpu=False: the jobs overlap, so two writers really meet (the app serializes pretraining, which
    # only makes the second one wait; the reservation is what keeps it from overwriting the first)
    r.register("pretrain", fake_pretrain, uses_gpu=False, on_submit=reserve_pretrain_name)
    yield r
    r.shutdown()
    store.close()


def test_two_pretrains_with_one_name_the_second_is_refused_at_submit(runner):
    GATES["shared"] = threading.Event()
    first = runner.submit("pretrain", {"out_name": "shared"})
    n_jobs = len(runner.store.jobs())
    with pytest.raises(NameTakenError, match=rf"'shared' is reserved by pretraining job {first} .*still queued or "
                                             "running; pick another name"):
        runner.submit("pretrain", {"out_name": "shared"})
    with pytest.raises(NameTakenError):  # replace never takes a name from a live run
        runner.submit("pretrain", {"out_name": "shared", "replace": True})
    assert len(runner.store.jobs()) == n_jobs  # refused jobs leave no row
    GATES["shared"].set()
    assert runner.wait(first, 30).state == "done"
    assert "shared" not in reserved_checkpoints(paths.checkpoints_dir())  # released once exported
    with pytest.raises(NameTakenError, match="a backbone named 'shared' already exists.*replace"):
        runner.submit("pretrain", {"out_name": "shared"})
    fp = (paths.checkpoints_dir() / "shared.safetensors").stat().st_mtime_ns
    again = runner.submit("pretrain", {"out_name": "shared", "replace": True})  # the user asked to replace
    assert runner.wait(again, 30).state == "done"
    assert (paths.checkpoints_dir() / "shared.safetensors").stat().st_mtime_ns != fp


def test_a_stopped_runs_name_is_kept_for_its_resume_unless_the_user_replaces_it(runner):
    failed = runner.submit("pretrain", {"out_name": "kept", "fail": True})
    assert runner.wait(failed, 30).state == "failed"
    with pytest.raises(NameTakenError, match="stopped before finishing; resume that run"):
        runner.submit("pretrain", {"out_name": "kept"})
    assert runner.resume(failed) == failed  # its own name: the resume may use it
    assert runner.wait(failed, 30).state == "failed"
    GATES["kept"] = threading.Event()
    taker = runner.submit("pretrain", {"out_name": "kept", "replace": True})
    # the old job, resumed now, can no longer write the name it gave away
    runner.resume(failed)
    snap = runner.wait(failed, 30)
    assert snap.state == "failed" and f"reserved by pretraining job {taker} " in snap.error
    GATES["kept"].set()
    assert runner.wait(taker, 30).state == "done"
    import json

    info = json.loads((paths.checkpoints_dir() / "kept.json").read_text())
    assert info["job"] == taker


@pytest.mark.parametrize("name", ["../../../../tmp/x/ESCAPED", "a/b", "..", "random", "has space", "", "x" * 65])
def test_hostile_pretrain_names_are_refused_at_submit(runner, name):
    with pytest.raises(InvalidNameError):
        runner.submit("pretrain", {"out_name": name})
    assert runner.store.jobs() == []
    assert not list(paths.checkpoints_dir().parent.rglob("ESCAPED*"))


def test_run_pretrain_refuses_a_name_it_does_not_hold_before_any_work(tmp_path):
    store = Store(tmp_path / "ws2")
    save_backbone(build_backbone("resnet18"), "exists", {"method": "x", "arch": "resnet18"})
    ctx = JobContext(job_id=7, device="cpu", on_event=lambda e: None, stop=threading.Event(), resume=False,
                     workdir=tmp_path / "wd", store=store)
    with pytest.raises(NameTakenError, match="already exists"):
        run_pretrain({"out_name": "exists", "method": "moco_v2"}, ctx)
    with pytest.raises(InvalidNameError):
        run_pretrain({"out_name": "../evil", "method": "moco_v2"}, ctx)
    assert not (tmp_path / "wd").exists()
    store.close()


def test_classify_job_refuses_names_that_would_escape_the_workspace(tmp_path):
    store = Store(tmp_path / "ws3")
    ctx = JobContext(job_id=1, device="cpu", on_event=lambda e: None, stop=threading.Event(), resume=False,
                     workdir=tmp_path / "wd", store=store)
    for params in ({"finding": "../../../../tmp/x/ESCAPED", "init": "random"},
                   {"finding": "mass", "init": "../elsewhere/x"},
                   {"finding": "mass", "init": "random", "name": "../../out"}):
        with pytest.raises(InvalidNameError):
            run_classify(params, ctx)
    assert not (tmp_path / "wd").exists() and not list(tmp_path.rglob("ESCAPED*"))
    store.close()


# ------------------------------------------------------------------------------------- sweep lock


HOLD_LOCK = """import sys
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _tiny_manifest(tmp_path: Path) -> Path:
    from engine.data.phantom import generate

    generate(tmp_path / "data", 40, size=32, seed=3, findings=("mass",), prevalence=0.5)
    return tmp_path / "data" / "manifest.csv"


def test_two_sweeps_on_one_folder_the_second_is_refused_and_nothing_is_lost(tmp_path):
    from engine.fewshot.sweep import LOCK_NAME, SweepBusyError, SweepConfig, run_sweep

    csv = _tiny_manifest(tmp_path)
    cfg = SweepConfig(findings=("mass",), inits=("random",), modes=("probe",), shots=(2, 4), trials=3,
                      image_size=32, n_bootstrap=20)
    out = tmp_path / "sweep"
    # another process holds the folder: refused at once, nothing written (a bare interpreter with filelock:
    # a spawned multiprocessing child would re-import this module, torch and all)
    out.mkdir()
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK_NAME)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(SweepBusyError, match=f"another sweep is writing to {out}.*wait for it to finish"):
            run_sweep(csv, cfg, out, "cpu")
        assert sorted(f.name for f in out.iterdir()) == [LOCK_NAME]
    finally:
        p.stdin.close()
        p.wait(30)
    # two sweeps in one process at once: the second is refused while the first writes; all rows kept
    started, go_on = threading.Event(), threading.Event()

    def slow(ev):
        if ev.kind == "metrics":
            started.set()
            go_on.wait(30)

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(res=run_sweep(csv, cfg, out, "cpu", on_event=slow)))
    t.start()
    assert started.wait(120)
    with pytest.raises(SweepBusyError):
        run_sweep(csv, cfg, out, "cpu", resume=True)
    go_on.set()
    t.join(120)
    assert len(box["res"].trials) == 2 * 3
    assert len(pd.read_csv(out / "trials.csv")) == 2 * 3
    with pytest.raises(ValueError, match="resume"):  # once it finished: the usual refusal, lock free
        run_sweep(csv, cfg, out, "cpu")


# ---------------------------------------------------------------------------------------- leftovers


def test_runner_start_removes_temp_files_of_dead_writers_only(tmp_path):
    ws = tmp_path / "ws4"
    (ws / "images").mkdir(parents=True)
    (ws / "runs" / "job-1").mkdir(parents=True)
    dead = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    old = time.time() - 3600
    stale = [ws / "images" / f".abc.png.{dead.pid}.140.tmp", ws / "runs" / "job-1" / f".state.pt.{dead.pid}.tmp",
             ws / f".trials.csv.{dead.pid}.x1y2z3.tmp", ws / f".list-1.npy.tmp-{dead.pid}-deadbeef",
             ws / ".old-style.tmp"]
    live = [ws / "images" / f".def.png.{os.getpid()}.1.tmp",       # this process: a live writer
            ws / f".fresh.csv.{dead.pid}.abc.tmp",                 # a dead pid, but written just now
            ws / "images" / "keep.png", ws / ".demo.lock"]         # not temp files at all
    for f in stale + live:
        f.write_bytes(b"x" * 100)
    for f in stale:
        os.utime(f, (old - 86400, old - 86400))
    store = Store(ws)
    r = JobRunner(store, device="cpu")
    try:
        assert sorted(r.removed_temps) == sorted(stale)
        assert not any(f.exists() for f in stale) and all(f.exists() for f in live)
    finally:
        r.shutdown()
        store.close()


def test_the_apps_pretrain_kind_reserves_its_name_at_submit(tmp_path):
    from engine.tasks import register_all

    store = Store(tmp_path / "ws5")
    r = JobRunner(store, device="cpu")
    register_all(r)
    try:
        first = r.submit("pretrain", {"method": "moco_v2", "out_name": "demo-name", "epochs": 1})
        with pytest.raises(NameTakenError, match=f"reserved by pretraining job {first} "):
            r.submit("pretrain", {"method": "moco_v2", "out_name": "demo-name", "epochs": 1})
        assert r.wait(first, 60).state == "failed"  # an empty workspace: nothing to train on
        assert "demo-name" in reserved_checkpoints(paths.checkpoints_dir())  # kept for its resume
    finally:
        r.shutdown()
        store.close()
