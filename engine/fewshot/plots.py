"""AUC-vs-shots figures (plotly), as the transfer studies drew them: one colour per init, a mean line
with a +-1 std band, solid for the probe, dashed for the Classifier's finetune, long dashes for the full
finetune (engine.fewshot.modes.DASH), shots on a log axis.

Pure figure builders: no streamlit here (the app's ui/ shows the figure; the sweep writes it as HTML).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.fewshot.modes import DASH as _MODE_DASH

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22")
DASH = _MODE_DASH  # one line style per mode (engine.fewshot.modes)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def curves(df: pd.DataFrame, finding: str | None = None) -> tuple[pd.DataFrame, str]:
    """(init, mode, shots, mean, std, n) rows to draw, and a title.

    `df` is a sweep's summary (columns auc_mean / auc_std) or its trials (column auc). `finding=None`
    with one finding draws it; with several it draws the average over findings (for trials: each
    trial's AUC averaged over findings first, then mean / std over trials; for summaries: the mean of
    the per-finding means and the root-mean-square of their stds).
    """
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    findings = sorted(df["finding"].unique()) if len(df) else []
    if finding is not None:
        if finding not in findings:
            raise ValueError(f"no results for finding {finding!r}; have: {', '.join(findings) or 'none'}")
        df = df[df["finding"] == finding]
        title = f"{finding}: AUC vs shots"
    elif len(findings) == 1:
        title = f"{findings[0]}: AUC vs shots"
    else:
        title = f"average over {len(findings)} findings: AUC vs shots"
    keys = ["init", "mode", "shots"]
    if "auc" in df.columns:  # trials
        per_trial = df.groupby(keys + ["trial"], sort=True)["auc"].mean().reset_index()
        g = per_trial.groupby(keys, sort=True)["auc"]
        out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()}).reset_index()
    else:  # summary
        g = df.groupby(keys, sort=True)
        out = pd.DataFrame({
            "mean": g["auc_mean"].mean(),
            "std": g["auc_std"].apply(lambda s: float(np.sqrt(np.mean(np.square(s.to_numpy(float)))))),
            "n": g["n_trials"].min() if "n_trials" in df.columns else g.size(),
        }).reset_index()
    return out, title


def auc_vs_shots_figure(df: pd.DataFrame, finding: str | None = None) -> go.Figure:
    """Mean AUC line + std band per (init, mode); line style per mode (`DASH`); log-scaled shots axis."""
    data, title = curves(df, finding)
    fig = go.Figure()
    inits = list(dict.fromkeys(data["init"]))
    for i, init in enumerate(inits):
        color = PALETTE[i % len(PALETTE)]
        for mode, d in data[data["init"] == init].groupby("mode", sort=False):
            d = d.sort_values("shots")
            x = d["shots"].to_numpy(float)
            m, s = d["mean"].to_numpy(float), d["std"].to_numpy(float)
            name = f"{init} ({mode})"
            fig.add_trace(go.Scatter(
                x=np.r_[x, x[::-1]], y=np.r_[m + s, (m - s)[::-1]], fill="toself", fillcolor=_rgba(color, 0.15),
                line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=name, name=f"{name} +-1 std",
            ))
            fig.add_trace(go.Scatter(
                x=x, y=m, mode="lines+markers", name=name, legendgroup=name,
                line={"color": color, "dash": DASH.get(mode, "dashdot"), "width": 2},
                customdata=np.c_[s, d["n"].to_numpy(float)],
                hovertemplate=f"{name}<br>%{{x}} shots: AUC %{{y:.3f}} +- %{{customdata[0]:.3f}} "
                              f"(%{{customdata[1]:.0f}} trials)<extra></extra>",
            ))
    shots = sorted(data["shots"].unique()) if len(data) else [1, 5, 10, 20, 50]
    fig.add_hline(y=0.5, line={"color": "gray", "dash": "dot", "width": 1})
    fig.update_layout(
        title=title, template="plotly_white", legend={"title": "init (mode)"}, hovermode="closest",
        xaxis={"title": "shots per class (k)", "type": "log", "tickvals": shots, "ticktext": [str(int(s)) for s in shots]},
        yaxis={"title": "test AUC", "range": [min(0.3, float((data["mean"] - data["std"]).min()) - 0.02)
                                              if len(data) else 0.3, 1.0]},
    )
    return fig
