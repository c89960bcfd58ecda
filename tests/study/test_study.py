"""`python -m engine study`: the seed protocol end to end on phantoms, resumable, one report."""
from __future__ import annotations

import json
import threading

import pandas as pd
import pytest

from engine.cli import main
from engine.events import Cancelled
from engine.study.config import StudyConfig
from engine.study.runner import StudyExistsError, plan_stages, run_study

S = 64


@pytest.fixture(scope="module")
def data(phantom_set):
    return phantom_set(48, S, 0, findings=("nodule",), prevalence=0.5)


def _cfg(data, **kw):
    base = dict(pretrain_data=str(data), eval_manifests=(str(data),), methods=("moco_v2", "spark"), name="st",
                steps=2, batch_size=8, image_size=S, shots=(2, 4), trials=2, baselines=("random",),
                gradcam_images=2, gradcam_shots=4)
    return StudyConfig(**{**base, **kw})


def test_config_refuses_bad_settings_with_the_fix(data):
    with pytest.raises(ValueError, match="modes must be among"):
        _cfg(data, modes=("linear",))
    with pytest.raises(ValueError, match="at least one labeled manifest"):
        _cfg(data, eval_manifests=())
    with pytest.raises(ValueError, match="baselines must be among"):
        _cfg(data, baselines=("random", "dino"))
    with pytest.raises(ValueError, match="study name"):
        _cfg(data, name="../x")
    with pytest.raises(ValueError, match="in none of the eval manifests"):
        plan_stages(_cfg(data, findings=("pneumonia",)))
    with pytest.raises(ValueError, match=r"--methods: unknown SSL method\(s\) mocov2; choose from moco_v2"):
        _cfg(data, methods=("mocov2",))
    with pytest.raises(ValueError, match=r"--reuse: unknown SSL method\(s\) moco"):
        _cfg(data, reuse=(("moco", "x"),))
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        _cfg(data, preset="fast")
    with pytest.raises(ValueError, match="--pretrain /nowhere does not exist"):
        _cfg(data, pretrain_data="/nowhere")
    with pytest.raises(ValueError, match="--pretrain: give the images"):
        _cfg(data, pretrain_data="")
    with pytest.raises(ValueError, match="is a folder; it needs a labeled manifest CSV"):
        _cfg(data, eval_manifests=(str(data.parent / "images"),))
    with pytest.raises(ValueError, match="--reuse METHOD=NAME"):
        _cfg(data, baselines=("cxr-moco_v2-resnet18-224",))
    assert _cfg(data, pretrain_data="", methods=(), reuse=(("moco_v2", "x"),)).to_train == ()  # nothing to pretrain
    c = _cfg(data, reuse=(("dino", "x"),))
    assert StudyConfig.from_dict(c.to_dict()) == c


def test_plan_has_one_stage_per_method_manifest_and_region_finding(data):
    names = [s.name for s in plan_stages(_cfg(data))]
    assert names == ["pretrain:moco_v2", "pretrain:spark", "sweep:ph", "gradcam:ph:nodule", "report"]
    names = [s.name for s in plan_stages(_cfg(data, reuse=(("moco_v2", "x"),), gradcam_images=0))]
    assert names == ["pretrain:spark", "sweep:ph", "report"]


def test_study_end_to_end_then_resume_skips_finished_stages(data, tmp_path):
    out = tmp_path / "study"
    events = []
    res = run_study(_cfg(data), out, "cpu", on_event=events.append)
    state = json.loads((out / "study.json").read_text())
    assert set(state["stages"]) == {"pretrain:moco_v2", "pretrain:spark", "sweep:ph", "gradcam:ph:nodule", "report"}
    # the checkpoints exist and were evaluated beside random init, every trial
    trials = pd.read_csv(out / "sweeps" / "ph" / "trials.csv")
    assert set(trials["init"]) == {"random", "st-moco_v2", "st-spark"}
    assert len(trials) == 3 * 2 * 2  # inits x shots x trials
    assert trials["auc"].between(0, 1).all()
    loc = pd.read_csv(out / "gradcam" / "ph" / "nodule" / "localization.csv")
    assert set(loc["init"]) == {"random", "st-moco_v2", "st-spark"}
    # the report holds the appendix table (mean ± std per shots), paired d, collapse metrics and grids
    md = res.report_md.read_text()
    assert "| finding | init | mode | 2-shot | 4-shot |" in md
    assert md.count("±") >= 3 * 2
    n_test = int(trials["n_test"].median())  # each trial has its own resample of the test pool
    assert f"Test set: nodule {n_test} images." in md
    assert "st-spark" in md and "pointing_hit" in md
    assert "Energy ratio: against chance, content-free maps and randomized models" in md
    assert "| init | head randomized | head + top stage randomized | head + backbone randomized |" in md
    assert md.splitlines()[2].startswith("Pretrained moco_v2, spark on the manifest manifest.csv (folder ph)")
    pre = md.split("## Pretraining")[1].split("##")[0]
    assert "| method | checkpoint | collapsed? |" in pre and "centred_erank" in pre and "mean cosine of random" in pre
    rows = [r.split("|") for r in pre.splitlines() if r.startswith("| moco_v2") or r.startswith("| spark")]
    assert all(r[3].strip() in ("no", "not judged (warm-up only)") or r[3].strip().startswith("yes: ") for r in rows)
    erank = [float(r[9]) for r in rows]
    assert len(erank) == 2 and all(e >= 1.0 for e in erank)  # final collapse readings are in the table
    assert "![grid_" in md
    html = res.report_html.read_text()
    assert html.count("<table") >= 4 and "Plotly" in html and "<img src=\"gradcam/ph/nodule/grid_" in html
    # bar: one unit per stage, monotone, ends at the total
    steps = [e.step for e in events if e.total == 5 and e.kind != "log"]
    assert steps == sorted(steps) and steps[-1] == 5
    # the same settings without --resume are refused; with it, nothing is redone
    with pytest.raises(StudyExistsError, match="resume"):
        run_study(_cfg(data), out, "cpu")
    with pytest.raises(StudyExistsError, match="trials: 2 -> 3"):
        run_study(_cfg(data, trials=3), out, "cpu", resume=True)
    again = []
    mtime = (out / "sweeps" / "ph" / "trials.csv").stat().st_mtime_ns
    run_study(_cfg(data), out, "cpu", on_event=again.append, resume=True)
    assert sum("(done before)" in (e.message or "") for e in again) == 4  # all but the report, written again
    assert (out / "sweeps" / "ph" / "trials.csv").stat().st_mtime_ns == mtime


def test_stopped_study_resumes_where_it_was(data, tmp_path):
    out = tmp_path / "study"
    stop = threading.Event()

    def on_event(e):  # stop as soon as the sweep stage begins
        if e.message == "study: sweep:ph":
            stop.set()

    with pytest.raises(Cancelled):
        run_study(_cfg(data, methods=("moco_v2",), gradcam_images=0), out, "cpu", on_event=on_event, stop=stop)
    done = json.loads((out / "study.json").read_text())["stages"]
    assert list(done) == ["pretrain:moco_v2"]
    res = run_study(_cfg(data, methods=("moco_v2",), gradcam_images=0), out, "cpu", resume=True)
    assert list(res.stages) == ["pretrain:moco_v2", "sweep:ph", "report"]


def test_cli_reuses_a_checkpoint_and_prints_the_report(data, tmp_path, capsys):
    out = tmp_path / "s1"
    assert main(["study", "--pretrain", str(data), "--eval", str(data), "--methods", "moco_v2", "--name", "c",
                 "--steps", "2", "--batch-size", "8", "--image-size", str(S), "--shots", "2", "--trials", "2",
                 "--baselines", "random", "--gradcam-images", "0", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"] == 3
    out2 = tmp_path / "s2"
    assert main(["study", "--eval", str(data), "--methods", "", "--reuse", "moco_v2=c-moco_v2",
                 "--image-size", str(S), "--shots", "2", "--trials", "2", "--baselines", "random",
                 "--gradcam-images", "0", "--out", str(out2), "--device", "cpu"]) == 0
    assert not (out2 / "runs").exists()  # nothing pretrained
    assert set(pd.read_csv(out2 / "sweeps" / "ph" / "trials.csv")["init"]) == {"random", "c-moco_v2"}
    reused = json.loads((out2 / "pretrain" / "moco_v2.json").read_text())
    assert reused["reused"] is True and reused["steps"] == 2 and reused["collapse"]["history"]
    row = next(r for r in (out2 / "report.md").read_text().splitlines() if r.startswith("| moco_v2 | c-moco_v2 (reused) |"))
    assert row.split("|")[4].strip() == "2"  # its steps, from the reused checkpoint's json
    assert "Nothing pretrained; reused moco_v2=c-moco_v2" in (out2 / "report.md").read_text()
    capsys.readouterr()
    assert main(["study", "--pretrain", str(data), "--eval", str(data), "--reuse", "moco_v2=nope",
                 "--out", str(tmp_path / "s3")]) == 2
    assert "no checkpoint 'nope'" in capsys.readouterr().err


def test_appendix_table_one_row_per_finding_init_mode_and_skipped_groups_on_request():
    from engine.fewshot.trials import appendix_table

    s = pd.DataFrame([
        {"finding": "f", "init": "random", "mode": "probe", "shots": 1, "status": "ok", "auc_mean": 0.61234, "auc_std": 0.1},
        {"finding": "f", "init": "random", "mode": "probe", "shots": 5, "status": "ok", "auc_mean": 0.7, "auc_std": float("nan")},
        {"finding": "f", "init": "imagenet", "mode": "probe", "shots": 1, "status": "skipped", "auc_mean": None, "auc_std": None},
    ])
    t = appendix_table(s)
    assert list(t.columns) == ["finding", "init", "mode", "1-shot", "5-shot"]
    assert t.to_dict("records") == [{"finding": "f", "init": "random", "mode": "probe", "1-shot": "0.612 ± 0.100",
                                     "5-shot": "0.700"}]  # one trial: the mean alone
    t = appendix_table(s, include_skipped=True)
    assert t.set_index("init").loc["imagenet", "1-shot"] == "skipped" and t.set_index("init").loc["imagenet", "5-shot"] == ""
    assert appendix_table(s[s["status"] != "ok"]).empty


def test_a_folder_where_nothing_ran_takes_the_corrected_settings(data, tmp_path):
    from engine.study.runner import _load_state, _save_state

    out = tmp_path / "s"
    out.mkdir()
    _save_state(out, _load_state(out, _cfg(data, preset="quick"), resume=False))  # written, then the run failed
    state = _load_state(out, _cfg(data, trials=3), resume=True)  # corrected: nothing done, so no refusal
    assert state["config"]["trials"] == 3
    state["stages"]["pretrain:moco_v2"] = {"status": "done"}
    _save_state(out, state)
    with pytest.raises(StudyExistsError, match="trials: 3 -> 4"):
        _load_state(out, _cfg(data, trials=4), resume=True)


def test_cli_names_checkpoints_after_the_out_folder_and_explains_a_taken_name(data, tmp_path):
    from engine.study.commands import default_name

    assert default_name(str(tmp_path / "my study 2")) == "my-study-2"
    assert default_name("/") == "study"
    from engine.reservations import NameTakenError, process_owner

    ckpts = tmp_path / "ck"
    ckpts.mkdir()
    (ckpts / "st-moco_v2.safetensors").write_bytes(b"")  # someone's backbone of that name
    with pytest.raises(NameTakenError, match=r"another checkpoint prefix \(--name\), or --reuse moco_v2=st-moco_v2"):
        run_study(_cfg(data, methods=("moco_v2",), gradcam_images=0), tmp_path / "s", "cpu", owner=process_owner(),
                  checkpoint_dir=ckpts)


def test_a_study_from_before_the_head_recipe_keeps_its_whole_network_finetune(data, tmp_path):
    """study.json without recipe_version: its `finetune` was the whole network. Resuming it with `finetune` (now the
    Classifier's) is refused naming the change; with `full_finetune` the settings match."""
    from engine.study.runner import _load_state

    cfg = _cfg(data, modes=("probe", "full_finetune"))
    old = cfg.to_dict() | {"modes": ["probe", "finetune"]}
    (tmp_path / "study.json").write_text(json.dumps({"version": 1, "config": old, "stages": {"pretrain:moco_v2": {
        "status": "done"}}}))
    with pytest.raises(StudyExistsError, match="modes: \\['probe', 'full_finetune'\\] -> \\['probe', 'finetune'\\]"):
        _load_state(tmp_path, _cfg(data, modes=("probe", "finetune")), resume=True)
    state = _load_state(tmp_path, cfg, resume=True)
    assert state["config"]["modes"] == ["probe", "full_finetune"] and state["recipe_version"] == 2
