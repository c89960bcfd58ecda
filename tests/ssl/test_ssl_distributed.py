"""Multi-process pretraining under torchrun (2 CPU processes, gloo)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args: list[str], cwd: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(extra_env), capture_output=True, text=True, timeout=300)


# Run in each torchrun worker before the CLI: gather_with_grad + DDP averaging == the one-process gradient. Its own
# process group (a file rendezvous), destroyed before `python -m engine` makes the run's: one launch serves both
# tests (each launch starts three interpreters that import torch).
GRAD_CHECK = textwrap.dedent('''
    import os, runpy, sys, torch, torch.distributed as dist
    from engine.ssl.barlow_twins import barlow_twins_loss
    from engine.ssl.common import gather_with_grad
    from engine.ssl.moco_v2 import variance_loss
    out = sys.argv.pop(1)
    r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="file://" + out + "/rendezvous", rank=r, world_size=w)
    g = torch.Generator().manual_seed(0)
    xa, xb, W0 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g), torch.randn(5, 6, generator=g)
    def losses(za, zb):
        return barlow_twins_loss(za, zb, 0.005)[0] + variance_loss(za)
    # reference: one process, the full batch of 8
    W = W0.clone().requires_grad_(True)
    losses(xa @ W, xb @ W).backward()
    ref = W.grad.clone()
    # distributed: each rank holds 4 rows, loss on the gathered batch, DDP-style averaged gradient
    W = W0.clone().requires_grad_(True)
    sl = slice(4 * r, 4 * r + 4)
    za, zb = gather_with_grad(xa[sl] @ W), gather_with_grad(xb[sl] @ W)
    losses(za, zb).backward()
    grad = W.grad.clone()
    dist.all_reduce(grad)
    grad /= w
    err = (grad - ref).abs().max().item()
    open(out + f"/rank{r}.txt", "w").write(f"{err}")
    dist.destroy_process_group()
    runpy.run_module("engine", run_name="__main__", alter_sys=True)  # `python -m engine ARGS`
''')


@pytest.fixture(scope="module")
def torchrun_pretrain(tmp_path_factory) -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    """(checkpoint dir, run dir, grad-check dir, the finished torchrun): one 2-process CPU launch of
    `python -m engine pretrain` (moco_v2, 16 images, 3 steps over 2 epochs), each worker running GRAD_CHECK first."""
    pytest.importorskip("engine.data.cache")
    from PIL import Image

    base = tmp_path_factory.mktemp("torchrun")
    folder = base / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    run_dir, grad_dir, ckpt = base / "run", base / "grad", base / "checkpoints"
    grad_dir.mkdir()
    script = base / "grad_check_then_cli.py"
    script.write_text(GRAD_CHECK)
    env = {"SCARCE_CXR_CHECKPOINTS": str(ckpt), "SCARCE_CXR_WORKSPACE": str(base / "workspace"),
           "SCARCE_CXR_IMAGENET_DIR": str(base / "imagenet"), "SCARCE_CXR_SHIPPED": ""}
    out = _torchrun([str(script), str(grad_dir), "pretrain", "--method", "moco_v2", "--data", str(folder),
                     "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--out", "ddp-moco", "--device",
                     "cpu", "--max-steps", "3", "--monitor-every", "2", "--lr", "0.05", "--opt", "queue=20",
                     "--opt", "proj_hidden=32", "--run-dir", str(run_dir)], REPO, env)
    return ckpt, run_dir, grad_dir, out


def test_two_process_torchrun_cli_run_stays_in_sync(torchrun_pretrain):
    ckpt, run_dir, _, out = torchrun_pretrain
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((ckpt / "ddp-moco.json").read_text())
    assert info["world_size"] == 2 and info["ranks_in_sync"] is True and info["steps"] == 3
    h0, h1 = (run_dir / "params-rank0.sha256").read_text(), (run_dir / "params-rank1.sha256").read_text()
    assert h0 == h1 == info["param_hash"] + "\n"
    assert (ckpt / "ddp-moco.safetensors").exists()


def test_gathered_losses_give_the_single_process_gradient(torchrun_pretrain):
    """gather_with_grad + DDP averaging == the one-process gradient (GRAD_CHECK in both workers of the launch)."""
    _, _, grad_dir, out = torchrun_pretrain
    for r in (0, 1):
        assert (grad_dir / f"rank{r}.txt").exists(), out.stderr[-3000:]
        assert float((grad_dir / f"rank{r}.txt").read_text()) < 1e-5
