"""The Benchmark page's statistics (issue #23 item 2): mean AUC with its interval and the paired difference d to
a chosen reference init (SE, interval, wins) per finding x init x shots, as two panels and two full tables."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from engine.fewshot.metrics import RESAMPLED, paired_differences
from tests.app.test_app_pages import _no_autopretrain, services, start  # noqa: F401
from ui.plots import benchmark_figure, short_label


@pytest.fixture(scope="module")
def two_finding_sweep(tmp_path_factory):
    """A finished 2-finding, 2-init sweep on 120 phantoms at 64 px (no split column: a seeded hold-out)."""
    import torch

    from engine.data.phantom import generate
    from engine.fewshot.sweep import SweepConfig, run_sweep
    from engine.models import build_backbone, save_backbone

    base = tmp_path_factory.mktemp("bm-stats")
    csv = generate(base / "data", n=120, size=64, seed=3, findings=("cardiomegaly", "nodule"), prevalence=0.45)
    df = pd.read_csv(csv)
    df["path"] = [str(csv.parent / p) for p in df["path"]]
    df.to_csv(base / "m.csv", index=False)
    ckpt = base / "ckpt"
    torch.manual_seed(1)
    save_backbone(build_backbone("resnet18"), "moco_v2-resnet18-stats-with-a-long-name",
                  {"method": "moco_v2", "arch": "resnet18", "image_size": 64}, checkpoint_dir=ckpt)
    cfg = SweepConfig(findings=("cardiomegaly", "nodule"), inits=("random", "moco_v2-resnet18-stats-with-a-long-name"),
                      shots=(2, 5, 10), trials=3, image_size=64, n_bootstrap=20)
    res = run_sweep(base / "m.csv", cfg, base / "sweep", "cpu", checkpoint_dir=ckpt)
    return res, ckpt


def test_figure_has_an_auc_and_a_d_panel_per_finding_with_short_legend_names(two_finding_sweep):
    res, _ = two_finding_sweep
    ok = res.summary[res.summary["status"] == "ok"]
    paired = pd.DataFrame(paired_differences(res.trials, "random"))
    long = "moco_v2-resnet18-stats-with-a-long-name"
    fig = benchmark_figure(ok, paired, ["cardiomegaly", "nodule"], "random", {long: "MoCo v2 · resnet18 · " + long})
    # 2 findings x (2 AUC curves + 1 d curve), each with 95% error bars
    assert len(fig.data) == 6 and all(t.error_y.array is not None for t in fig.data)
    names = [t.name for t in fig.data if t.showlegend]
    assert sorted(names) == sorted(["random · probe", f"{short_label(long)} · probe"])  # one entry per init x mode
    assert all(len(n) <= 40 for n in names) and short_label(long).endswith("…")
    assert any("MoCo v2 · resnet18 · " + long in t.hovertemplate for t in fig.data)  # full name on hover
    zero = [s for s in fig.layout.shapes if s.y0 == 0 and s.y1 == 0]
    assert len(zero) == 2  # a zero line in each d panel
    d = [t for t in fig.data if "d %{y" in t.hovertemplate]
    assert len(d) == 2 and list(d[0].y) == pytest.approx(list(paired[paired["finding"] == "cardiomegaly"]
                                                               .sort_values("shots")["diff"]))


def test_page_shows_d_vs_the_chosen_reference_with_se_and_wins_in_full_tables(two_finding_sweep, monkeypatch):
    res, ckpt = two_finding_sweep
    monkeypatch.setenv("SCARCE_CXR_CHECKPOINTS", str(ckpt))
    at = start()
    out = res.out_dir
    services().store.add_result("sweep", "stats", out, {
        "findings": ["cardiomegaly", "nodule"], "warnings": res.warnings,
        "summary_csv": str(out / "summary.csv"), "trials_csv": str(out / "trials.csv")})
    at.switch_page("app_pages/benchmark.py").run()
    assert not at.exception, [e.value for e in at.exception]
    ref = [s for s in at.selectbox if s.label.startswith("Reference init")][0]
    assert ref.value == "random"
    auc_t, d_t = at.table[0].value, at.table[1].value
    assert {"2-shot", "5-shot", "10-shot"} <= set(auc_t.columns) and "[" in str(auc_t["10-shot"].iloc[0])
    assert {"2-shot", "5-shot", "10-shot"} <= set(d_t.columns) and len(d_t) == 2  # one row per finding
    cell = str(d_t["5-shot"].iloc[0])  # d [95% interval] (wins/3), the interval the plot draws
    assert re.match(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] \(\d/3\)$", cell), cell
    assert any(RESAMPLED in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 1  # two findings: one figure, two facets
    # another reference: d is now against the SSL init, so random's row appears in the d table
    ref.set_value("moco_v2-resnet18-stats-with-a-long-name").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Random" in " ".join(map(str, at.table[1].value["init"]))
