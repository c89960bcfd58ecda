"""Shared test fixtures: every test runs against throwaway workspace/checkpoint/weights folders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "shipped"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("SCARCE_CXR_WORKSPACE", str(base / "workspace"))
    monkeypatch.setenv("SCARCE_CXR_CHECKPOINTS", str(base / "checkpoints"))
    monkeypatch.setenv("SCARCE_CXR_IMAGENET_DIR", str(base / "imagenet"))
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", "")  # shipped backbones off; tests/models/test_shipped.py turns them on
    if "streamlit.testing.v1.app_test" in sys.modules:
        _scan_components_once()
    main = sys.modules.get("__main__")
    yield
    # Streamlit's AppTest leaves its script as __main__; a later test's multiprocessing "spawn" child would
    # re-run that script (AppTest.from_function's calls fail there) before its target: put pytest's back.
    if main is not None:
        sys.modules["__main__"] = main


def _scan_components_once() -> None:
    """Every AppTest run scans all installed distributions' metadata for Streamlit v2 components
    (streamlit.components.v2.manifest_scanner.scan_component_manifests: ~0.3 s of CPU, ~600 packages) and
    finds the same list each time, since nothing is installed during a test session: scan once per process."""
    from streamlit.components.v2 import manifest_scanner

    scan = manifest_scanner.scan_component_manifests
    if getattr(scan, "_once", False):
        return
    found: list = []

    def once(max_workers=None):
        if not found:
            found.append(scan(max_workers))
        return list(found[0])

    once._once = True
    manifest_scanner.scan_component_manifests = once  # looked up at each call (a function-level import)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory):
    """`phantom_set(n, size, seed, **generate_kw)` -> the manifest CSV of a phantom dataset
    (engine.data.phantom.generate), made once per test session for the same arguments and shared by every
    test and module asking for it. READ-ONLY: a test that changes the images, masks or manifest generates
    its own. It lies outside each test's tmp folder and its env folders (`_isolated_dirs`), so nothing of a
    test's workspace or checkpoints is shared through it."""
    made: dict[tuple, Path] = {}

    def make(n: int, size: int, seed: int, **kw) -> Path:
        key = (n, size, seed, *sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items()))
        if key not in made:
            from engine.data.phantom import generate

            made[key] = generate(tmp_path_factory.mktemp("phantom-set") / "ph", n=n, size=size, seed=seed, **kw)
        return made[key]

    return make


def pytest_configure(config):
    # Keep torch from oversubscribing a 2-core machine (CI runs several processes: server, browser, tests).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

