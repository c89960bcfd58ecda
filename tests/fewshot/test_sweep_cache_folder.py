"""A command-line sweep on an outside manifest writes only where it was told: its caches go under --out
(or --cache-dir), never into the repository's default workspace; the app's sweep job keeps using its
workspace's caches."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from engine import paths
from engine.cli import main


@pytest.fixture(scope="module")
def outside_manifest(tmp_path_factory) -> str:
    """A 40-image, 32 px phantom outside any workspace (absolute paths)."""
    from engine.data.phantom import generate

    base = tmp_path_factory.mktemp("outside")
    generate(base / "data", 40, size=32, seed=3, findings=("cardiomegaly",), prevalence=0.5)
    df = pd.read_csv(base / "data" / "manifest.csv")
    df["path"] = [str((base / "data" / p).resolve()) for p in df["path"]]
    df.to_csv(base / "manifest.csv", index=False)
    return str(base / "manifest.csv")


def _files(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(folder) for f in fs] if folder.exists() else []


def _argv(manifest: str, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--manifest", manifest, "--finding", "cardiomegaly", "--inits", "random", "--modes", "probe",
            "--shots", "2", "--trials", "1", "--image-size", "32", "--device", "cpu", "--out", str(out), *extra]


def test_cli_sweep_caches_under_its_out_folder_never_the_default_workspace(outside_manifest, tmp_path, monkeypatch):
    repo = tmp_path / "repo"  # stands in for the checkout: its workspace/demo is the default workspace
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.delenv("SCARCE_CXR_WORKSPACE", raising=False)
    assert paths.workspace_dir() == repo / "workspace" / "demo"
    out = tmp_path / "sweep"
    assert main(_argv(outside_manifest, out)) == 0
    assert _files(repo) == []  # nothing in the default workspace (nor anywhere else in the repository)
    assert (out / "trials.csv").exists()
    assert any(p.suffix == ".npz" for p in _files(out / ".cache" / "features"))  # the embeddings
    assert any(p.suffix == ".npy" for p in _files(out / ".cache" / "cache"))     # the decoded images

    shared = tmp_path / "ws"  # --cache-dir: another folder the user names (e.g. a workspace)
    assert main(_argv(outside_manifest, tmp_path / "sweep2", "--cache-dir", str(shared))) == 0
    assert _files(repo) == [] and not (tmp_path / "sweep2" / ".cache").exists()
    assert any(p.suffix == ".npz" for p in _files(shared / "features"))


def test_the_sweep_job_caches_in_its_workspace(outside_manifest, tmp_path, monkeypatch):
    """The app's job passes its workspace: its features land there, not in the job's folder."""
    from engine.jobs import JobRunner
    from engine.store import Store
    from engine.tasks import SweepParams, register_all

    ws = tmp_path / "ws"
    monkeypatch.setenv("SCARCE_CXR_WORKSPACE", str(ws))
    store = Store(ws)
    store.import_manifest(outside_manifest)
    runner = JobRunner(store, device="cpu")
    try:
        register_all(runner)
        jid = runner.submit("sweep", SweepParams(findings=("cardiomegaly",), inits=("random",), modes=("probe",),
                                                 shots=(2,), trials=1, image_size=32))
        snap = runner.wait(jid, timeout=300)
        assert snap.state == "done", snap.error
    finally:
        runner.shutdown()
    assert any(p.suffix == ".npz" for p in _files(ws / "features"))
    assert not (Path(runner.workdir(jid)) / "sweep" / ".cache").exists()
