"""The demo workspace: phantom chest radiographs imported into a store on first run.

    store = ensure_demo_workspace()          # <workspace> from engine.paths; no-op when it has images

Idempotent and safe to call from several threads or processes at once (a file lock in the
workspace serializes the first creation; later calls return at once). The phantom set is generated
into `<workspace>/phantom_src/`, imported with `Store.import_manifest` (pixels, labels, boxes,
masks, splits) and then removed: the store keeps its own copies.
"""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import filelock

from engine import paths
from engine.events import Event, OnEvent, emit
from engine.store import Store

__all__ = ["DEMO_LOCK_TIMEOUT_S", "ensure_demo_workspace"]

DEMO_LOCK_TIMEOUT_S = 600.0  # another process creating the demo should finish well within this


def _has_images(store: Store) -> bool:
    return not store.images().empty  # the demo holds a few hundred images: reading them all is cheap


def ensure_demo_workspace(workspace: Path | str | None = None, n: int = 160, size: int = 256, seed: int = 0,
                          on_event: OnEvent | None = None, stop: threading.Event | None = None) -> Store:
    """Open the workspace's store, first filling it with `n` phantom images of `size` px (seed
    `seed`) when it holds no images. Progress: steps 1..n generating, n+1..2n importing."""
    ws = Path(workspace).expanduser().resolve() if workspace else paths.workspace_dir()
    ws.mkdir(parents=True, exist_ok=True)
    store = Store(ws)
    if _has_images(store):
        return store
    lock = filelock.FileLock(ws / ".demo.lock", timeout=DEMO_LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RuntimeError(f"another process has been creating the demo workspace in {ws} for over "
                           f"{DEMO_LOCK_TIMEOUT_S:.0f} s; if none is running, delete {ws / '.demo.lock'} "
                           "and retry") from None
    try:
        if _has_images(store):  # created by whoever held the lock before us
            return store
        _create(store, n, size, seed, on_event, stop)
    finally:
        lock.release()
    return store


def _create(store: Store, n: int, size: int, seed: int, on_event: OnEvent | None,
            stop: threading.Event | None) -> None:
    from engine.data.phantom import generate

    def phase(offset: int) -> OnEvent | None:
        if on_event is None:
            return None

        def forward(ev: Event) -> None:
            step = None if ev.step is None else offset + ev.step
            emit(on_event, step=step, total=2 * n, metrics=ev.metrics, message=ev.message, level=ev.level,
                 kind=ev.kind, time=ev.time)

        return forward

    src = store.workspace / "phantom_src"
    emit(on_event, step=0, total=2 * n, kind="log",
         message=f"creating the demo workspace: {n} phantom chest radiographs at {size} px (seed {seed})")
    try:
        csv = generate(src, n=n, size=size, seed=seed, on_event=phase(0), stop=stop)
        summary = store.import_manifest(csv, on_event=phase(n), stop=stop)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    emit(on_event, step=2 * n, total=2 * n, kind="log",
         message=f"demo workspace ready: {summary.images} images, findings {', '.join(summary.findings)}")
