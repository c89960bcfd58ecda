"""`python -m engine gradcam` end to end on a tiny phantom, and the study's resume / cancel / finetune paths."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from engine.events import Cancelled
from engine.explain.localization import METRICS

S = 64


@pytest.fixture(scope="module")
def phantom(phantom_set) -> Path:
    return phantom_set(40, S, 0, findings=("nodule", "mass"), prevalence=0.4)


def test_cli_writes_grids_localization_and_summary(phantom, tmp_path, capsys):
    from engine.cli import main  # in this process: `python -m engine` is main() (tests/test_cli.py runs it so)

    out = tmp_path / "out"
    rc = main(["gradcam", "--manifest", str(phantom), "--finding", "mass", "--inits", "random,imagenet", "--shots",
               "2", "--n-images", "2", "--image-size", str(S), "--boxes", str(phantom.parent / "boxes.csv"), "--out",
               str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skipping init imagenet" in err  # offline: skipped with a warning, not a failure
    loc = pd.read_csv(out / "localization.csv")
    assert list(loc.columns[:4]) == ["image", "path", "finding", "init"]
    assert set(METRICS) <= set(loc.columns)
    assert len(loc) == 2 * 3 and (loc["init"] == "random").all() and (loc["region"] == "box").all()  # 3 episodes
    assert loc["energy_in_region"].between(0, 1).all() and loc["pointing_hit"].isin([0, 1]).all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["init"]) == ["random"] and summary["n"].iloc[0] == 6 and summary["n_episodes"].iloc[0] == 3
    assert {"energy_ratio_mean", "energy_ratio_lo", "energy_ratio_hi"} <= set(summary.columns)
    grids = sorted(out.glob("grid_*.png"))
    assert [g.name for g in grids] == sorted(f"grid_{i}.png" for i in set(loc["image"]))
    from PIL import Image

    w, h = Image.open(grids[0]).size
    assert w > 2 * 256 and h > 256  # original + one init column, 256-pixel tiles


def test_cli_reports_user_errors_without_traceback(phantom, tmp_path, capsys):
    from engine.cli import main

    argv = ["gradcam", "--manifest", str(phantom), "--finding", "nodule", "--inits", "random", "--shots", "2",
            "--n-images", "1", "--image-size", str(S), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(argv + ["--layer", "layer9"]) == 2
    err = capsys.readouterr().err
    assert "layer4" in err and "Traceback" not in err
    assert main(argv[:4] + ["no_such_finding"] + argv[5:]) == 2
    assert "no_such_finding" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written before the arguments were checked


def test_study_cancel_resume_and_finetune(phantom, tmp_path):
    from engine.explain.study import run_gradcam_study
    from engine.models import build_backbone, save_backbone

    torch.manual_seed(7)
    save_backbone(build_backbone("resnet18"), "other", {"method": "test", "arch": "resnet18"})
    kw = dict(shots=2, n_images=3, image_size=S, mode="finetune", finetune_steps=2, batch_size=1, device="cpu",
              episodes=1)
    out = tmp_path / "study"
    stop = threading.Event()
    events = []

    def stop_after_first_image(e):
        events.append(e)
        if e.message.startswith("explained"):
            stop.set()

    with pytest.raises(Cancelled):
        run_gradcam_study(phantom, "nodule", ["random", "other"], out, on_event=stop_after_first_image, stop=stop, **kw)
    assert len(list(out.glob("grid_*.png"))) == 1 and not (out / "localization.csv").exists()

    events.clear()
    loc, summary, grids = run_gradcam_study(phantom, "nodule", ["random", "other"], out, on_event=events.append, **kw)
    msgs = [e.message for e in events]
    assert sum("reusing the classifier" in m for m in msgs) == 2  # both finetuned models came from the state
    assert sum(m.startswith("explained") for m in msgs) == 2  # the first image was not explained again
    counted = [(e.step, e.total) for e in events if e.total]  # the job's bar: one total, never going back
    assert len({t for _, t in counted}) == 1 and all(a <= b for (a, _), (b, _) in zip(counted, counted[1:]))
    assert len(grids) == 3 and all(g.exists() for g in grids)
    assert len(loc) == 6 and list(loc["init"][:2]) == ["random", "other"]
    assert list(summary["init"]) == ["random", "other"]
    assert np.isnan(summary.loc[0, "d_energy_ratio_mean"]) and np.isfinite(summary.loc[1, "d_energy_ratio_mean"])
    assert (loc["region"] == "mask").all()  # the manifest's masks are the default region
    on_disk = pd.read_csv(out / "localization.csv")
    np.testing.assert_allclose(on_disk["energy_ratio"], loc["energy_ratio"])

    # The whole-network finetune is another recipe (issue 23): the last-stage finetune's saved classifiers are
    # not taken for it (its state key keeps the name the study's "finetune" had when that was the whole network).
    events.clear()
    run_gradcam_study(phantom, "nodule", ["random"], out, on_event=events.append, **{**kw, "mode": "full_finetune"})
    assert not any("reusing the classifier" in e.message for e in events)
    assert json.loads((out / "study.json").read_text())["mode"] == "full_finetune"


def test_study_rejects_unknown_inits_before_work(phantom, tmp_path):
    from engine.explain.study import run_gradcam_study
    from engine.models import UnknownInitError

    with pytest.raises(UnknownInitError, match="random"):
        run_gradcam_study(phantom, "nodule", ["random", "nope"], tmp_path / "x", shots=2, image_size=S)
    assert not (tmp_path / "x").exists()
