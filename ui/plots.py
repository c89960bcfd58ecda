"""Plotly figures the pages share (pure builders; the pages call st.plotly_chart)."""
from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLLAPSE = (  # (metric key in the job history, title, healthy-direction note)
    ("collapse_std", "Spread (std)", "higher is healthier; near 0 = collapsed"),
    ("collapse_cos", "Mean cosine", "lower is healthier; near 1 = collapsed"),
    ("collapse_erank", "Effective rank", "higher is healthier; near 1 = collapsed"),
)


def history_frame(history: list[dict[str, Any]], key: str) -> pd.DataFrame:
    """Rows of a job's metric history that carry `key` (step, value), sorted by step."""
    rows = [(h.get("step", i), h[key]) for i, h in enumerate(history) if key in h]
    return pd.DataFrame(rows, columns=["step", key]).sort_values("step") if rows else pd.DataFrame(columns=["step", key])


def loss_figure(history: list[dict[str, Any]], title: str = "Training loss") -> go.Figure:
    d = history_frame(history, "loss")
    fig = go.Figure()
    if len(d):
        fig.add_trace(go.Scatter(x=d["step"], y=d["loss"], mode="lines", name="loss", line={"color": "#1f6feb", "width": 1},
                                 opacity=0.45, hovertemplate="step %{x}: %{y:.4f}<extra></extra>"))
        smooth = d["loss"].ewm(alpha=0.1).mean()
        fig.add_trace(go.Scatter(x=d["step"], y=smooth, mode="lines+markers" if len(d) < 30 else "lines",
                                 name="smoothed", line={"color": "#1f6feb", "width": 2.5},
                                 hovertemplate="step %{x}: %{y:.4f} (smoothed)<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", height=300, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      xaxis_title="step", yaxis_title="loss", showlegend=False)
    fig.update_xaxes(rangemode="tozero")
    return fig


def collapse_figure(history: list[dict[str, Any]], std_min: float | None = None, erank_min: float | None = None) -> go.Figure:
    """Three small panels: std, mean cosine, effective rank over steps, with the warning thresholds."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in COLLAPSE], horizontal_spacing=0.08)
    for c, (key, title, _) in enumerate(COLLAPSE, start=1):
        d = history_frame(history, key)
        if len(d):
            fig.add_trace(go.Scatter(x=d["step"], y=d[key], mode="lines+markers", marker={"size": 4}, name=title,
                                     line={"color": "#2da44e", "width": 2},
                                     hovertemplate="step %{x}: %{y:.3f}<extra></extra>"), row=1, col=c)
    if std_min is not None:
        fig.add_hline(y=std_min, line={"color": "#cf222e", "dash": "dot", "width": 1}, row=1, col=1)
    if erank_min is not None:
        fig.add_hline(y=erank_min, line={"color": "#cf222e", "dash": "dot", "width": 1}, row=1, col=3)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=3)
    fig.update_layout(title="Collapse monitor", template="plotly_white", height=300,
                      margin={"l": 10, "r": 10, "t": 60, "b": 10}, showlegend=False)
    fig.update_xaxes(title_text="step", rangemode="tozero")
    return fig



def tidy_auc_figure(fig: go.Figure) -> go.Figure:
    """Draw the ± std bands of an AUC-vs-shots figure as plain areas (no vertex markers)."""
    fig.update_traces(mode="lines", selector={"fill": "toself"})
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig
