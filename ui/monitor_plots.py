"""Plotly figure of the collapse monitor's second metric set: the seed study's numbers.

`ui.plots.collapse_figure` draws the product's RankMe-style set (spread, mean cosine, uncentred effective
rank) with the warning thresholds; this draws the study's set (raw feature std, mean cosine of random
pairs, effective rank of centred features; see `engine.ssl.monitor`) for the head and the pooled
backbone, so a run can be read against the figures the study reports.
"""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.plots import history_frame

STUDY = (  # (metric key without the collapse_ / collapse_backbone_ prefix, panel title)
    ("raw_std", "Raw feature std"),
    ("cos", "Mean cosine of random pairs"),
    ("centred_erank", "Effective rank (centred)"),
)
SERIES = (("collapse_", "head", "#8250df", "solid"), ("collapse_backbone_", "backbone", "#bf8700", "dash"))


def study_collapse_figure(history: list[dict[str, Any]]) -> go.Figure:
    """Three panels over steps, one line for the method's head and one for the pooled backbone features.

    `history` is a job's metric history (records with `step` and `collapse_*` keys). No thresholds:
    the study reports these numbers without warning levels, and raw std is in feature units."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in STUDY], horizontal_spacing=0.08)
    for c, (key, _) in enumerate(STUDY, start=1):
        for prefix, name, colour, dash in SERIES:
            d = history_frame(history, prefix + key)
            if len(d):
                fig.add_trace(go.Scatter(x=d["step"], y=d[prefix + key], mode="lines+markers", marker={"size": 4},
                                         name=name, legendgroup=name, showlegend=c == 1,
                                         line={"color": colour, "width": 2, "dash": dash},
                                         hovertemplate=f"{name}, step %{{x}}: %{{y:.3g}}<extra></extra>"), row=1, col=c)
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=3)
    fig.update_layout(title="Collapse monitor, the study's metrics", template="plotly_white", height=340,
                      margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.1, "xanchor": "right", "x": 1})
    fig.update_xaxes(title_text="step", rangemode="tozero")
    return fig


def control_figure(history: list[dict[str, Any]], knob: str = "weight") -> go.Figure:
    """The collapse controller's weight over steps (log scale) beside the monitored effective rank and its target.

    `history`: a job's metric history; records with `collapse_control_weight` are monitor readings of a run
    with `--collapse-control` (engine.ssl.monitor.CollapseController). A weight of 0 (before the first raise
    of a run that starts without the term) is drawn at the bottom of the axis as a gap."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"Regularization weight ({knob})", "Effective rank vs target"],
                        horizontal_spacing=0.1)
    d = history_frame(history, "collapse_control_weight")
    if len(d):
        w = d["collapse_control_weight"].where(d["collapse_control_weight"] > 0)
        fig.add_trace(go.Scatter(x=d["step"], y=w, mode="lines+markers", line={"shape": "hv", "color": "#cf222e"},
                                 name=knob, hovertemplate="step %{x}: %{y:.4g}<extra></extra>"), row=1, col=1)
        r = history_frame(history, "collapse_erank")
        fig.add_trace(go.Scatter(x=r["step"], y=r["collapse_erank"], mode="lines+markers", name="effective rank",
                                 line={"color": "#8250df"}), row=1, col=2)
        t = history_frame(history, "collapse_control_target")
        if len(t):
            fig.add_hline(y=float(t["collapse_control_target"].iloc[-1]), line_dash="dot", line_color="#57606a",
                          annotation_text="target", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_layout(title="Collapse control", template="plotly_white", height=320, showlegend=False,
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def online_eval_figure(history: list[dict[str, Any]], finding: str = "") -> go.Figure:
    """The online evaluation over steps (engine.ssl.online_eval): kNN AUC with 95% intervals (1.96 x the
    Hanley-McNeil SE), chance (0.5) and the untrained network's own first reading as baselines; kNN accuracy
    beside the always-the-commoner-class accuracy. `history`: records with `step` and `online_*` keys."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=[f"kNN AUC{' (' + finding + ')' if finding else ''}", "kNN accuracy"])
    rows = [h for h in history if "online_auc" in h]
    if rows:
        rows = sorted(rows, key=lambda h: h.get("step", 0))
        steps = [int(h.get("step", 0)) for h in rows]
        fig.add_trace(go.Scatter(x=steps, y=[h["online_auc"] for h in rows], mode="lines+markers", name="kNN AUC",
                                 error_y={"type": "data", "array": [1.96 * h.get("online_auc_se", 0) for h in rows]},
                                 line={"color": "#1a7f37"}, hovertemplate="step %{x}: AUC %{y:.3f}<extra></extra>"),
                      row=1, col=1)
        fig.add_hline(y=0.5, line_dash="dot", line_color="#57606a", annotation_text="chance",
                      annotation_font_size=10, annotation_position="bottom right", row=1, col=1)
        fig.add_hline(y=rows[0]["online_auc"], line_dash="dash", line_color="#bf8700",
                      annotation_text=f"step {steps[0]}", annotation_font_size=10, annotation_position="top left",
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[h["online_acc"] for h in rows], mode="lines+markers", name="kNN accuracy",
                                 error_y={"type": "data", "array": [1.96 * h.get("online_acc_se", 0) for h in rows]},
                                 line={"color": "#0969da"}), row=1, col=2)
        fig.add_trace(go.Scatter(x=steps, y=[h.get("online_majority_acc") for h in rows], mode="lines",
                                 name="always the commoner class", line={"color": "#57606a", "dash": "dot"}),
                      row=1, col=2)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(title_text="step", rangemode="tozero")
    fig.update_layout(title="Online evaluation (kNN, 95% intervals)", template="plotly_white",
                      height=320, showlegend=False, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig
