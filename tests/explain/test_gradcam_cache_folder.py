"""A command-line Grad-CAM study on an outside manifest caches its decoded images and embeddings under its
--out folder, never in the repository's default workspace."""
from __future__ import annotations

import os
from pathlib import Path

from engine import paths
from engine.cli import main


def _files(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(folder) for f in fs] if folder.exists() else []


def test_cli_gradcam_caches_under_its_out_folder(tmp_path, monkeypatch):
    from engine.data.phantom import generate

    manifest = generate(tmp_path / "ph", n=24, size=32, seed=0, findings=("mass",), prevalence=0.5)
    repo = tmp_path / "repo"  # stands in for the checkout: its workspace/demo is the default workspace
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.delenv("SCARCE_CXR_WORKSPACE", raising=False)
    out = tmp_path / "cams"
    assert main(["gradcam", "--manifest", str(manifest), "--finding", "mass", "--inits", "random", "--shots", "2",
                 "--n-images", "1", "--image-size", "32", "--boxes", str(manifest.parent / "boxes.csv"),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert (out / "localization.csv").exists()
    assert _files(repo) == []  # nothing in the default workspace
    assert any(p.suffix == ".npz" for p in _files(out / ".cache" / "features"))
    assert any(p.suffix == ".npy" for p in _files(out / ".cache" / "cache"))
