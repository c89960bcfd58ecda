"""Localization yardsticks: chance levels, content-free baselines on the same regions, intervals across episodes,
and the study report's reasons for skipping Grad-CAM."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.explain.localization import METRICS, TOPQ, box_mask, scores
from engine.explain.yardstick import (chance_levels, gaussian_prior, mean_map, t_interval, yardstick_fields,
                                      yardstick_tables)

S = 64


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from engine.data.phantom import generate

    return generate(tmp_path_factory.mktemp("phantom") / "ph", n=40, size=S, seed=0, findings=("nodule", "mass"),
                    prevalence=0.4)


@pytest.fixture(scope="module")
def study(phantom, tmp_path_factory):
    from engine.explain.study import run_gradcam_study

    out = tmp_path_factory.mktemp("study")
    loc, summary, _ = run_gradcam_study(phantom, "mass", ["random"], out, shots=3, n_images=3, image_size=S,
                                        layer="layer3", episodes=2, boxes_csv=phantom.parent / "boxes.csv")
    return out, loc, summary


def test_chance_levels_are_the_area_shares_by_hand():
    region = box_mask((8, 4, 16, 8), (S, S))  # 16 x 8 pixels of 64 x 64
    a = 16 * 8 / (S * S)
    c = chance_levels(region)
    assert c["pointing_hit"] == pytest.approx(a) and c["energy_in_region"] == pytest.approx(a)
    assert c["energy_ratio"] == 1.0
    assert c["topq_iou"] == pytest.approx(TOPQ * a / (TOPQ + a - TOPQ * a))


def test_content_free_baselines_are_scored_on_the_given_region():
    region = box_mask((24, 24, 16, 16), (S, S))  # centred box: the Gaussian prior points into it
    prior = mean_map([region.astype(np.float32)] * 3)  # a train-mean map equal to the region itself
    f = yardstick_fields(region, prior)
    for m in METRICS:
        assert f[f"gauss_{m}"] == pytest.approx(scores(gaussian_prior((S, S)), region)[m])
    assert f["gauss_pointing_hit"] == 1.0 and f["trainmean_pointing_hit"] == 1.0
    assert f["trainmean_energy_ratio"] > f["gauss_energy_ratio"] > 1.0
    off = yardstick_fields(box_mask((0, 0, 8, 8), (S, S)), prior)  # a corner box: both baselines miss it
    assert off["gauss_pointing_hit"] == 0.0 and off["trainmean_pointing_hit"] == 0.0
    assert off["chance_pointing_hit"] == pytest.approx(64 / S**2)


def test_t_interval_by_hand_and_single_episode():
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    m, lo, hi = t_interval([0.7])
    assert m == 0.7 and np.isnan(lo) and np.isnan(hi)


def test_study_rows_carry_chance_and_baselines_computed_on_the_same_boxes(study, phantom):
    from engine.data.manifest import load_manifest
    from engine.explain.regions import region_for

    _, loc, _ = study
    boxes = pd.read_csv(phantom.parent / "boxes.csv")
    m = load_manifest(phantom)
    boxes["path"] = [str((phantom.parent / p).resolve()) for p in boxes["path"]]
    for r in loc.to_dict("records"):
        img_rows = boxes[(boxes["path"] == str(Path(r["path"]).resolve())) & (boxes["finding"] == "mass")]
        region = region_for("box", img_rows, (S, S))
        assert region.any()
        assert r["chance_pointing_hit"] == pytest.approx(region.mean())  # the box's share of the image
        assert r["chance_energy_ratio"] == 1.0
        g = scores(gaussian_prior((S, S)), region)
        assert r["gauss_energy_ratio"] == pytest.approx(g["energy_ratio"])
        assert r["gauss_pointing_hit"] == g["pointing_hit"]
        assert np.isfinite(r["trainmean_energy_ratio"])
    assert m.boxes is not None


def test_episodes_give_an_interval_across_episodes(study):
    out, loc, summary = study
    assert sorted(set(loc["episode"])) == [0, 1]
    meta = json.loads((out / "study.json").read_text())
    assert meta["episodes"] == 2 and len(set(meta["trial_seeds"])) == 2
    assert meta["train_images"][0] != meta["train_images"][1]
    r = summary.iloc[0]
    assert r["n_episodes"] == 2 and r["n"] == 2 * r["n_images"]
    assert np.isfinite(r["energy_in_region_ep_lo"]) and r["energy_in_region_ep_lo"] <= r["energy_in_region_ep_mean"]
    assert r["energy_in_region_ep_hi"] >= r["energy_in_region_ep_mean"]
    per_ep = loc.groupby("episode")["energy_in_region"].mean()
    assert r["energy_in_region_ep_mean"] == pytest.approx(per_ep.mean())
    gain = (loc["energy_ratio"] - loc["gauss_energy_ratio"]).groupby(loc["episode"]).mean().mean()
    assert r["gain_gauss_energy_ratio_mean"] == pytest.approx(gain)
    tables = yardstick_tables(summary)
    assert "[" in tables["Energy ratio"].loc[0, "score [95% CI]"] and tables["Energy ratio"].loc[0, "chance"] == "1.00"
    assert float(tables["Pointing game"].loc[0, "chance"]) == pytest.approx(r["chance_pointing_hit"], abs=5e-4)


def test_cli_prints_the_yardstick_table(phantom, tmp_path, capsys):
    from engine.cli import main

    assert main(["gradcam", "--manifest", str(phantom), "--finding", "mass", "--inits", "random", "--shots", "2",
                 "--n-images", "2", "--image-size", str(S), "--episodes", "2", "--no-sanity", "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Pointing game:" in text and "gain over Gaussian" in text and "sigma = 0.25" in text


def test_report_names_its_data_and_lists_why_gradcam_was_skipped(phantom, tmp_path):
    from engine.study.config import StudyConfig
    from engine.study.report import report_sections, write_report
    from engine.study.runner import gradcam_skip_reason, gradcam_skips

    cfg = StudyConfig(pretrain_data="", eval_manifests=(str(phantom),), methods=(), reuse=(("moco_v2", "x"),),
                      findings=("nodule",), gradcam_images=0)
    skips = gradcam_skips(cfg)
    assert list(skips.values()) == ["Grad-CAM is off (--gradcam-images 0)"]
    on = StudyConfig(pretrain_data="", eval_manifests=(str(phantom),), methods=(), reuse=(("moco_v2", "x"),))
    assert "no boxes.csv or masks.csv" in gradcam_skip_reason(on, SimpleNamespace(boxes=None, masks=None), "nodule")
    boxes = pd.DataFrame({"finding": ["mass"]})
    assert "no nodule image" in gradcam_skip_reason(on, SimpleNamespace(boxes=boxes, masks=None), "nodule")
    (tmp_path / "study.json").write_text(json.dumps({"config": cfg.to_dict(), "stages": {}, "gradcam_skipped": skips}))
    parts = report_sections(tmp_path)
    assert str(phantom) not in parts[0][2] and f"the manifest {phantom.name}" in parts[0][2]
    texts = [p for k, _, p in parts if k == "text"]
    assert any(t.startswith(f"{list(skips)[0]}: Grad-CAM is off") for t in texts)
    md, _ = write_report(tmp_path)
    assert "Grad-CAM not run" in md.read_text()

    from engine.study.report import data_in_words

    assert data_in_words("/ws/runs/job-3/workspace-pretrain.csv") == "this workspace's images"
    assert data_in_words("/ws/runs/job-3/workspace.csv") == "this workspace's images labeled for the findings"
    assert data_in_words("/data/cxr_pool") == "the image folder cxr_pool"


def _nih_folder(phantom: Path, root: Path) -> Path:
    """A folder laid out as NIH ChestX-ray14 ships (Data_Entry_2017.csv, BBox_List_2017.csv on the 1024-px grid,
    images/) holding the phantom's images: mass -> "Mass" with its boxes, plus "Effusion" labels without boxes."""
    import shutil

    man = pd.read_csv(phantom)
    boxes = pd.read_csv(phantom.parent / "boxes.csv")
    (root / "images").mkdir(parents=True)
    names = {p: f"{i:08d}_000.png" for i, p in enumerate(man["path"])}
    for p, n in names.items():
        shutil.copy(phantom.parent / p, root / "images" / n)
    labels = ["|".join([*(["Mass"] if r.mass == 1 else []), *(["Effusion"] if k % 5 == 0 else [])]) or "No Finding"
              for k, r in enumerate(man.itertuples())]
    pd.DataFrame({"Image Index": list(names.values()), "Finding Labels": labels,
                  "Patient ID": range(len(names))}).to_csv(root / "Data_Entry_2017.csv", index=False)
    b = boxes[boxes["finding"] == "mass"]
    scale = 1024 / S
    pd.DataFrame({"Image Index": b["path"].map(names), "Finding Label": "Mass", "Bbox [x": b["x"] * scale,
                  "y": b["y"] * scale, "w": b["w"] * scale, "h]": b["h"] * scale}).to_csv(
        root / "BBox_List_2017.csv", index=False)
    return root


def test_a_study_on_an_nih_adapter_manifest_runs_gradcam_on_its_boxes_and_says_why_not_elsewhere(phantom, tmp_path):
    from engine.data.adapters.nih import from_nih
    from engine.explain.study import run_gradcam_study
    from engine.study.config import StudyConfig
    from engine.study.runner import gradcam_skips, plan_stages

    csv = from_nih(_nih_folder(phantom, tmp_path / "nih"), tmp_path / "nih_manifest" / "manifest.csv")
    cfg = StudyConfig(pretrain_data="", eval_manifests=(str(csv),), methods=(), reuse=(("moco_v2", "x"),))
    assert "gradcam:nih_manifest:mass" in [s.name for s in plan_stages(cfg)]
    skips = gradcam_skips(cfg)
    assert list(skips) == ["nih_manifest / effusion"] and "no effusion image" in skips["nih_manifest / effusion"]
    loc, summary, _ = run_gradcam_study(csv, "mass", ["random"], tmp_path / "cam", shots=2, n_images=2,
                                        image_size=S, episodes=1, sanity=False)
    assert (loc["region"] == "box").all() and len(loc) == 2  # the NIH boxes, rescaled to the image
    assert (loc["chance_pointing_hit"] > 0).all() and summary["n_episodes"].iloc[0] == 1
