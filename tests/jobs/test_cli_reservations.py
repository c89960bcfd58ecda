"""Checkpoint names outside the app: `python -m engine pretrain --out NAME` never overwrites an
existing backbone or takes a name another run holds, unless --resume / --replace; shipped backbones'
names are never given to a run; command-line reservations follow their process's life."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import paths
from engine.cli import main
from engine.reservations import (NameTakenError, owner_active, process_owner, release_checkpoint,
                                 reserve_checkpoint, reserved_checkpoints)


def _png_folder(tmp_path: Path, n: int = 12, size: int = 40) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _pretrain(tmp_path: Path, out: str, *extra: str) -> list[str]:
    """argv of a 1-step CPU pretraining run on a 12-image folder (created once per test)."""
    folder = tmp_path / "imgs" if (tmp_path / "imgs").exists() else _png_folder(tmp_path)
    return ["pretrain", "--method", "moco_v2", "--data", str(folder),
            "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--out", out, "--device", "cpu",
            "--max-steps", "1", "--monitor-every", "0", "--opt", "queue=16", "--opt", "proj_hidden=16",
            "--run-dir", str(tmp_path / f"run-{out}"), "--preset", "quick", *extra]


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_process_owners_are_active_while_their_process_runs():
    assert owner_active(process_owner()) is True
    child = _sleeper()
    try:
        owner = process_owner(child.pid)
        assert owner_active(owner) is True
        host, pid, start = owner[4:].rsplit(":", 2)
        assert owner_active(f"pid:{host}:{pid}:{int(start or 0) + 1}") is False  # a reused pid: another process
        assert owner_active(f"pid:another-host:{pid}:{start}") is None            # cannot tell: counts as active
    finally:
        child.kill()
        child.wait()
    assert owner_active(owner) is False


def test_shipped_names_are_never_given_to_a_run(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "cxr-moco_v2-resnet18-224.safetensors").write_bytes(b"x")
    (shipped / "cxr-moco_v2-resnet18-224.json").write_text("{}")
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", str(shipped))
    for replace in (False, True):
        with pytest.raises(NameTakenError, match="shipped with scarce-cxr"):
            reserve_checkpoint("cxr-moco_v2-resnet18-224", "job:/ws:1", paths.checkpoints_dir(), replace=replace)
    rc = main(_pretrain(tmp_path, "cxr-moco_v2-resnet18-224", "--replace"))
    assert rc == 2 and not (paths.checkpoints_dir() / "cxr-moco_v2-resnet18-224.safetensors").exists()
    assert not (tmp_path / "run-cxr-moco_v2-resnet18-224").exists()  # refused before any work


def test_cli_pretrain_reserves_refuses_and_replaces(tmp_path, capsys):
    ckpts = paths.checkpoints_dir()
    assert main(_pretrain(tmp_path, "mine")) == 0
    weights = ckpts / "mine.safetensors"
    first = weights.read_bytes()
    assert reserved_checkpoints(ckpts) == {}                         # released once exported
    capsys.readouterr()

    # an existing backbone: refused without --replace (nothing trained, nothing written)
    assert main(_pretrain(tmp_path, "mine", "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--replace" in err and weights.read_bytes() == first
    # --replace overwrites it
    assert main(_pretrain(tmp_path, "mine", "--seed", "1", "--replace")) == 0
    assert weights.read_bytes() != first and reserved_checkpoints(ckpts) == {}

    # a name a running process holds: refused even with --replace / --resume
    child = _sleeper()
    try:
        reserve_checkpoint("busy", process_owner(child.pid), ckpts)
        for flags in ((), ("--replace",), ("--resume",)):
            assert main(_pretrain(tmp_path, "busy", *flags)) == 2
            assert "still queued or running" in capsys.readouterr().err
        assert not (ckpts / "busy.safetensors").exists()
    finally:
        child.kill()
        child.wait()
    # once that process is gone (killed, crashed): kept for its resume, given away only when asked
    assert main(_pretrain(tmp_path, "busy")) == 2
    assert "stopped before finishing" in capsys.readouterr().err
    assert main(_pretrain(tmp_path, "busy", "--replace")) == 0
    assert (ckpts / "busy.safetensors").exists() and reserved_checkpoints(ckpts) == {}


def test_a_job_holding_the_name_blocks_the_cli(tmp_path, capsys):
    ckpts = paths.checkpoints_dir()
    reserve_checkpoint("jobname", "job:/some/ws:3", ckpts, is_active=lambda o: True)  # as at submit
    # the CLI asks the job's store: the workspace does not exist, so the job is gone -> stopped
    assert main(_pretrain(tmp_path, "jobname")) == 2
    assert "pretraining job 3" in capsys.readouterr().err
    assert release_checkpoint("jobname", "job:/some/ws:3", ckpts) and reserved_checkpoints(ckpts) == {}
