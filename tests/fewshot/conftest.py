"""Fixtures shared by the few-shot tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory) -> Path:
    """One image and embedding cache folder (run_sweep's `cache_dir`) for the phantom sweeps of a test session
    (one per xdist worker). Both caches are keyed by image content and by the backbone's weights, size and
    mode, so a sweep reading another test's entries gets the very arrays it would compute: sharing them only
    saves decoding and embedding. Tests of the caches themselves use folders of their own."""
    return tmp_path_factory.mktemp("sweep-cache")
