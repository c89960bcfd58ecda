"""Plotly figures of external validation and label advice (pure builders, ui/plots.py style)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go

LAYOUT = {"template": "plotly_white", "height": 360, "margin": {"l": 10, "r": 10, "t": 60, "b": 10}}


def reliability_figure(bins: list[dict[str, Any]], finding: str) -> go.Figure:
    """Reliability diagram: observed rate (with its Wilson 95% interval) vs mean predicted probability per bin,
    the diagonal of perfect calibration as the baseline, the number of images per bin as bars below."""
    full = [b for b in bins if b["count"]]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[(b["low"] + b["high"]) / 2 for b in bins], y=[b["count"] for b in bins], width=0.09,
                         yaxis="y2", name="images per bin", marker={"color": "#d0d7de"},
                         text=[str(b["count"]) if b["count"] else "" for b in bins], textposition="outside",
                         textfont={"color": "#57606a", "size": 11}, cliponaxis=False,
                         hovertemplate="%{y} images with a probability in this bin<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line={"color": "#8c959f", "dash": "dot"}, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[b["mean_predicted"] for b in full], y=[b["observed"] for b in full], mode="lines+markers",
        name=f"observed rate of {finding}", line={"color": "#1f6feb", "width": 2}, marker={"size": 8},
        error_y={"type": "data", "symmetric": False, "array": [b["observed_high"] - b["observed"] for b in full],
                 "arrayminus": [b["observed"] - b["observed_low"] for b in full], "color": "#1f6feb"},
        customdata=[b["count"] for b in full],
        hovertemplate="predicted %{x:.2f}, observed %{y:.2f} (%{customdata} images)<extra></extra>"))
    top = max([b["count"] for b in bins] + [1])
    fig.update_layout(title="Calibration on the test images (95% intervals)", xaxis_title="predicted probability",
                      yaxis={"title": "observed fraction with the finding", "range": [-0.02, 1.02]},
                      yaxis2={"overlaying": "y", "side": "right", "range": [0, top * 4], "showgrid": False,
                              "showticklabels": False},  # the bars carry their counts
                      xaxis={"range": [0, 1]}, legend={"orientation": "h", "y": -0.2}, **LAYOUT)
    return fig


def learning_curve_figure(curve: dict[str, Any]) -> go.Figure:
    """CV AUC at subsets of the labeled images (mean, 95% interval), chance as the baseline, and the fitted
    inverse power law with its extrapolated point and range when the fit is trusted."""
    pts, ex = curve["points"], curve["extrapolation"]
    fig = go.Figure()
    fig.add_hline(y=0.5, line={"color": "#cf222e", "dash": "dot", "width": 1}, annotation_text="chance (0.5)",
                  annotation_position="bottom right")
    fig.add_trace(go.Scatter(
        x=[p["n"] for p in pts], y=[p["auc"] for p in pts], mode="lines+markers", name="cross-validated AUC",
        line={"color": "#1f6feb", "width": 2}, marker={"size": 8},
        error_y={"type": "data", "symmetric": False,
                 "array": [_nz(p["high"] - p["auc"]) for p in pts],
                 "arrayminus": [_nz(p["auc"] - p["low"]) for p in pts]},
        hovertemplate="%{x} images: AUC %{y:.3f}<extra></extra>"))
    if ex["trusted"]:
        n = np.linspace(min(p["n"] for p in pts), ex["n_target"], 60)
        fig.add_trace(go.Scatter(x=n, y=ex["a"] - ex["b"] * n ** (-ex["c"]), mode="lines", name="power-law fit",
                                 line={"color": "#8250df", "dash": "dash"}, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[ex["n_target"]], y=[ex["auc_target"]], mode="markers", name=f"with {curve['extra']} more (guess)",
            marker={"color": "#8250df", "size": 10, "symbol": "diamond"},
            error_y={"type": "data", "symmetric": False, "array": [ex["high"] - ex["auc_target"]],
                     "arrayminus": [ex["auc_target"] - ex["low"]]},
            hovertemplate="%{x} images: about %{y:.2f}<extra></extra>"))
    fig.update_layout(title="Learning curve: AUC vs labeled images (95% intervals)", xaxis_title="labeled images",
                      yaxis={"title": "AUC", "range": [0.3, 1.02]}, legend={"orientation": "h", "y": -0.2}, **LAYOUT)
    return fig


def _nz(v: float) -> float:
    return 0.0 if v is None or not math.isfinite(v) else max(0.0, v)
