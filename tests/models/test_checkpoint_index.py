"""One checkpoint index: the registry's json beside each backbone says where it was trained; the store keeps
no second list (its old table is neither written nor read)."""
from __future__ import annotations

import json
from pathlib import Path

from engine.models.registry import checkpoints_made_in


def _checkpoint(folder: Path, name: str, run_dir: Path | None, created: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.safetensors").write_bytes(b"weights")
    info = {"method": "moco_v2", "arch": "resnet18", "created": created}
    if run_dir is not None:
        info["run_dir"] = str(run_dir)
    (folder / f"{name}.json").write_text(json.dumps(info))


def test_checkpoints_trained_inside_a_workspace_are_found_by_their_run_folder(tmp_path):
    ckpts, ws = tmp_path / "ckpts", tmp_path / "ws"
    _checkpoint(ckpts, "job-made", ws / "runs" / "job-3" / "ssl", "2026-01-02")
    _checkpoint(ckpts, "study-made", ws / "runs" / "job-9" / "study" / "runs" / "spark", "2026-01-03")
    _checkpoint(ckpts, "elsewhere", tmp_path / "other-ws" / "runs" / "job-1" / "ssl", "2026-01-04")
    _checkpoint(ckpts, "cli-no-run-dir", None, "2026-01-05")
    _checkpoint(ckpts, "ws-prefix", tmp_path / "ws2" / "runs", "2026-01-06")  # a sibling whose name starts alike
    assert [i.name for i in checkpoints_made_in(ws, ckpts)] == ["study-made", "job-made"]  # newest first
    assert [i.name for i in checkpoints_made_in(tmp_path / "nowhere", ckpts)] == []


def test_the_job_adapters_no_longer_write_a_second_index():
    import inspect

    from engine.store import Store
    from engine.tasks import pretrain, study

    assert not hasattr(Store, "add_checkpoint") and not hasattr(Store, "checkpoints")
    for mod in (pretrain, study):
        assert "add_checkpoint" not in inspect.getsource(mod)
