"""bench/ssl_vs_random.py end to end at toy scale: phantom -> quick-preset pretraining -> paired probe sweep."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("ssl_vs_random", ROOT / "bench" / "ssl_vs_random.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_difference_is_per_trial():
    bench = _bench()
    trials = pd.DataFrame({
        "finding": ["f"] * 6, "shots": [10] * 6, "trial": [0, 1, 2] * 2,
        "init": ["random"] * 3 + ["ssl"] * 3, "auc": [0.5, 0.6, 0.7, 0.6, 0.6, 0.9],
    })
    (row,) = bench.paired_vs_random(trials)
    d = np.array([0.1, 0.0, 0.2])
    assert row["init"] == "ssl" and row["n"] == 3 and row["wins"] == 2
    assert np.isclose(row["diff"], d.mean()) and np.isclose(row["se"], d.std(ddof=1) / np.sqrt(3))
    assert np.isclose(row["auc"], 0.7) and np.isclose(row["auc_random"], 0.6)


def test_verdict_threshold_corrects_for_picking_the_best_of_several_findings():
    bench = _bench()
    assert np.isclose(bench.z_threshold(1), 1.6449, atol=1e-3)  # one-sided 5%
    assert np.isclose(bench.z_threshold(8), 2.4977, atol=1e-3)  # 5% / 8
    assert bench.z_threshold(8) > bench.z_threshold(2) > bench.z_threshold(1)


def test_bench_pretrains_and_compares_with_random(tmp_path, capsys):
    bench = _bench()
    rc = bench.main(["--methods", "spark,moco_v2", "--n", "60", "--size", "32", "--steps", "2", "--batch-size", "8",
                     "--trials", "2", "--shots", "2", "--findings", "cardiomegaly", "--workdir", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    inits = {r["init"] for r in res["rows"]}
    assert inits == {"spark-quick-2steps-s0", "moco_v2-quick-2steps-s0"}
    assert all(r["n"] == 2 and 0 <= r["auc"] <= 1 for r in res["rows"])
    assert all(v["z_threshold"] == 2.0 for v in res["verdict"].values())  # 1 finding: the floor of 2 SE
    assert set(res["verdict"]) == inits and (tmp_path / "sweep" / "trials.csv").exists()
    assert "| cardiomegaly |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "checkpoints" / "spark-quick-2steps-s0.safetensors").exists()
