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


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def test_two_process_torchrun_cli_run_stays_in_sync(tmp_path):
    pytest.importorskip("engine.data.cache")
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    run_dir = tmp_path / "run"
    out = _torchrun(["-m", "engine", "pretrain", "--method", "moco_v2", "--data", str(folder), "--epochs", "2",
                     "--batch-size", "8", "--image-size", "32", "--out", "ddp-moco", "--device", "cpu",
                     "--max-steps", "3", "--monitor-every", "2", "--lr", "0.05", "--opt", "queue=20",
                     "--opt", "proj_hidden=32", "--run-dir", str(run_dir)], REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = Path(os.environ["SCARCE_CXR_CHECKPOINTS"])
    info = json.loads((ckpt / "ddp-moco.json").read_text())
    assert info["world_size"] == 2 and info["ranks_in_sync"] is True and info["steps"] == 3
    h0, h1 = (run_dir / "params-rank0.sha256").read_text(), (run_dir / "params-rank1.sha256").read_text()
    assert h0 == h1 == info["param_hash"] + "\n"
    assert (ckpt / "ddp-moco.safetensors").exists()


GRAD_CHECK = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    from engine.ssl.barlow_twins import barlow_twins_loss
    from engine.ssl.common import gather_with_grad
    from engine.ssl.moco_v2 import variance_loss
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
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
    open(sys.argv[1] + f"/rank{r}.txt", "w").write(f"{err}")
    dist.destroy_process_group()
''')


def test_gathered_losses_give_the_single_process_gradient(tmp_path):
    """gather_with_grad + DDP averaging == the one-process gradient (two plain gloo processes, no agent)."""
    import socket

    script = tmp_path / "grad_check.py"
    script.write_text(GRAD_CHECK)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env={**_env(), "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": str(port)})
        for r in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for r in (0, 1):
        assert float((tmp_path / f"rank{r}.txt").read_text()) < 1e-5
