"""Where things live on disk.

A *workspace* is one folder holding a user's images, store and derived data:

    <workspace>/store.sqlite      SQLite store (engine.store)
    <workspace>/images/           imported pixels (PNG, named by content hash)
    <workspace>/cache/            uint8 resolution cache (engine.data.cache)
    <workspace>/features/         embedding cache (engine.fewshot.features)
    <workspace>/runs/             resumable training state of pretraining runs
    <workspace>/results/          sweep / gradcam / classifier outputs

Backbone deliverables live in one checkpoints folder (`checkpoints/` in the repo by default; the
user's own, git-ignored) plus the read-only `checkpoints/shipped/` (committed backbones).
Both are overridable with environment variables so tests and several users never collide.

Configuration at the edges (issue 15): this module is the one place that reads the folder
variables $SCARCE_CXR_WORKSPACE, $SCARCE_CXR_CHECKPOINTS, $SCARCE_CXR_SHIPPED and
$SCARCE_CXR_IMAGENET_DIR. Library functions take their folders as parameters (`workspace`,
`checkpoint_dir`, `cache_dir`, ...); only the edges call the defaults below and pass the result in:
the command line (engine.cli and the `engine.*.commands` it dispatches to), the app (ui.services)
and the job tasks started from them (engine.tasks). A library function whose folder parameter is
left at None falls back to these defaults for convenience; new code should pass the folder.
Other settings read from the environment where they are used: $SCARCE_CXR_THREADS
(engine.device.configure_cpu_threads) and the demo switches $SCARCE_CXR_DEMO,
$SCARCE_CXR_DEMO_PRETRAIN, $SCARCE_CXR_NO_AUTOPRETRAIN (engine.tasks.demo).

`REPO_ROOT` is the source checkout: scripts/setup.sh installs this package editable (pip -e), so
the defaults below point into the repository however the code is started.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def workspace_dir() -> Path:
    """The active workspace: $SCARCE_CXR_WORKSPACE, else <repo>/workspace/demo."""
    env = os.environ.get("SCARCE_CXR_WORKSPACE")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "workspace" / "demo"


def checkpoints_dir() -> Path:
    """Backbone deliverables: $SCARCE_CXR_CHECKPOINTS, else <repo>/checkpoints."""
    env = os.environ.get("SCARCE_CXR_CHECKPOINTS")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "checkpoints"


def shipped_dir() -> Path | None:
    """Backbones that ship with the product (committed in git): $SCARCE_CXR_SHIPPED, else
    <repo>/checkpoints/shipped. An empty $SCARCE_CXR_SHIPPED turns them off (None)."""
    env = os.environ.get("SCARCE_CXR_SHIPPED")
    if env is not None:
        return Path(env).expanduser().resolve() if env.strip() else None
    return REPO_ROOT / "checkpoints" / "shipped"


def imagenet_weights_dir() -> Path:
    """Where offline ImageNet weight files are looked for: $SCARCE_CXR_IMAGENET_DIR, else torch hub's cache."""
    env = os.environ.get("SCARCE_CXR_IMAGENET_DIR")
    if env:
        return Path(env).expanduser().resolve()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def sub(workspace: Path | None, name: str) -> Path:
    """`<workspace>/<name>`, created on demand."""
    p = (workspace or workspace_dir()) / name
    p.mkdir(parents=True, exist_ok=True)
    return p
