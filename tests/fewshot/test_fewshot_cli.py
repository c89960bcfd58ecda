"""`python -m engine sweep | classify | predict` end to end on a tiny phantom manifest.

predict runs as a real subprocess (`python -m engine`, loading the classifier file in a fresh process); sweep,
classify and the error paths run through `engine.cli.main` in-process, the function `python -m engine` calls
(each subprocess pays a torch import, which is slow on a shared 2-core machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_sweep_classify_predict_cli(tmp_path, capsys, phantom_set):
    manifest = phantom_set(60, 48, 2, findings=("cardiomegaly",), prevalence=0.4)  # shared with test_kill9.py
    from engine.cli import main

    out = tmp_path / "sweep"
    assert main(["sweep", "--manifest", str(manifest), "--finding", "cardiomegaly", "--inits", "random,imagenet",
                 "--modes", "probe", "--shots", "1,3", "--trials", "2", "--out", str(out), "--image-size", "32",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "imagenet" in err and "warning" in err  # offline ImageNet: skipped with a warning
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and set(trials["init"]) == {"random"}
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["status"]) == {"ok", "unavailable"}
    html = (out / "auc_vs_shots.html").read_text()
    assert "<html>" in html[:100] and "random (probe)" in html and "plotly" in html  # self-contained, offline
    args = ["sweep", "--manifest", str(manifest), "--finding", "cardiomegaly", "--shots", "1", "--trials", "1",
            "--image-size", "32", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 2  # an existing sweep is never overwritten without --resume
    assert main([*args, "--out", str(tmp_path / "x"), "--finding", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "unknown finding" in err and "Traceback" not in err

    model = tmp_path / "cardio.safetensors"  # classify in-process; predict below loads it in a fresh process
    assert main(["classify", "--manifest", str(manifest), "--finding", "cardiomegaly", "--init", "random", "--out",
                 str(model), "--image-size", "32", "--cv-repeats", "2", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out.strip().splitlines()[-1])
    assert info["model"] == str(model) and 0.0 <= info["ci_low"] <= info["auc"] <= info["ci_high"] <= 1.0
    assert "Estimated AUC" in captured.err

    images = sorted((manifest.parent / "images").glob("*.png"))[:2]
    r = _run("predict", "--model", str(model), *map(str, images), str(tmp_path / "missing.png"), "--device", "cpu")
    assert r.returncode == 1  # one file could not be read; the others were still predicted
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [line["image"] for line in lines] == [*map(str, images), str(tmp_path / "missing.png")]
    for line in lines[:2]:
        assert 0.0 <= line["probability"] <= 1.0 and line["label"] in (0, 1) and line["finding"] == "cardiomegaly"
    assert "error" in lines[2]
