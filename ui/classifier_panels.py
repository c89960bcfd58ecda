"""The Classifier page's panels about one built classifier: usable or not, the operating point with its
intervals, prevalence (PPV/NPV, adjusted probabilities) and the cross-validation's error analysis.

Each panel reads a loaded `Classifier` and draws; the numbers come from engine.fewshot.classifier
(operating, usability, review)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from engine.fewshot.classifier import Classifier, ClassifierLoadError, OperatingPoint
from engine.fewshot.classifier.operating import Replicates, predictive_at

RULES = {"youden": "Youden's J (highest sensitivity + specificity)", "equal": "Equal sensitivity and specificity",
         "sensitivity": "Target sensitivity", "specificity": "Target specificity"}


def fmt_ci(ci: tuple[float, float] | None, fmt: str = ".0%") -> str:
    """'95% interval 41% to 66%' (or '' without an interval / with NaN ends)."""
    if not ci or any(v != v for v in ci):
        return ""
    return f"95% interval {ci[0]:{fmt}} to {ci[1]:{fmt}}"


def usability_banner(clf: Classifier) -> bool:
    """A red, plain-words banner when the classifier is not usable. Returns usable."""
    use = clf.usability
    if not use.usable:
        st.error("**This classifier does not work - do not use it on patients.** "
                 + "; ".join(r[0].upper() + r[1:] for r in use.reasons)
                 + ". Label more images, or try another backbone or the probe method, and build it again.",
                 icon=":material/block:")
    return use.usable


def operating_panel(res: dict[str, Any], clf: Classifier) -> tuple[OperatingPoint, Replicates | None]:
    """The operating point (Youden's J, equal sensitivity and specificity, or a target) with its cut-off,
    sensitivity and specificity, each with its 95% interval."""
    st.markdown("**Operating point** (when to call an image positive)")
    rule = st.radio("Operating point", list(RULES), format_func=RULES.get, horizontal=True,
                    key=f"clf_op:{res['id']}", label_visibility="collapsed",
                    help="Youden's J makes sensitivity + specificity as large as possible (they can be far apart). "
                         "Equal sensitivity and specificity makes them as close as possible. A target sensitivity "
                         "misses fewer images with the finding at the cost of more false alarms; a target "
                         "specificity the reverse.")
    target = None
    if rule in ("sensitivity", "specificity"):
        target = st.slider(f"{RULES[rule]} (cross-validated)", 0.50, 1.00, 0.90, 0.01,
                           key=f"clf_op_t:{res['id']}:{rule}")
    try:
        op, rep = clf.operating_point_replicates(rule, target)
    except ClassifierLoadError as e:
        st.info(str(e), icon=":material/info:")
        op, rep = clf.operating_point_replicates("youden")
    c1, c2, c3 = st.columns(3)
    c1.metric("Cut-off (probability)", f"{op.threshold:.2f}")
    c1.caption(fmt_ci(op.threshold_ci, ".2f"))
    c2.metric("Sensitivity (CV)", "n/a" if math.isnan(op.sensitivity) else f"{op.sensitivity:.0%}",
              help="Share of the training images with the finding called positive by models that had not seen them.")
    c2.caption(fmt_ci(op.sensitivity_ci))
    c3.metric("Specificity (CV)", "n/a" if math.isnan(op.specificity) else f"{op.specificity:.0%}",
              help="Share of the training images without the finding called negative by models that had not seen them.")
    c3.caption(fmt_ci(op.specificity_ci))
    if rep is not None:
        st.caption("Intervals: 1000 resamples of your images (bootstrap), each scored by one cross-validation repeat "
                   "drawn at random, so they cover both which images were labeled and how the folds fell. Another "
                   "row order or seed moves the cut-off within its interval.")
    return op, rep


def prevalence_panel(res: dict[str, Any], clf: Classifier, op: OperatingPoint, rep: Replicates | None) -> float:
    """Training prevalence, the expected prevalence (entered), PPV/NPV at the operating point. Returns the
    expected prevalence (a share in (0, 1))."""
    train = clf.training_prevalence
    n = len(clf.cv_labels) if clf.cv_labels is not None else sum(clf.counts.values())
    st.markdown("**Prevalence** (how common the finding is where the classifier will be used)")
    c1, c2 = st.columns([1, 2])
    default = float(min(max(round(100 * train, 1), 0.1), 99.9)) if train == train else 10.0
    pct = c1.number_input("Expected prevalence (%)", 0.1, 99.9, default, 0.5, key=f"clf_prev:{res['id']}",
                          help="The share of patients with the finding among those it will be used on, e.g. 5 for "
                               "5%. It changes what a positive call means (PPV), not sensitivity or specificity.")
    q = pct / 100.0
    c2.markdown(f"Training prevalence: **{train:.0%}** ({int(round(train * n))} of {n} images have the finding). "
                f"The probabilities are calibrated by {clf.calibration.label} on the cross-validated scores, at that "
                "mix: among images like these, those given 0.7 have the "
                f"finding about 70% of the time *only where {train:.0%} have it*. Below, each new image also gets "
                f"its probability at {q:.1%} (Bayes' odds adjustment, Saerens et al. 2002).")
    if train == train and abs(q - train) < 0.001:  # the default: nothing entered yet
        st.warning(f"No expected prevalence entered: the PPV and NPV below are at the training mix ({train:.0%}), "
                   "which is usually far higher than where a classifier is used (a clinic may see 5-10%). Enter the "
                   "prevalence of the place you will use it before quoting them.", icon=":material/percent:")
    if rep is not None:
        pv = predictive_at(op, rep, q)
        d1, d2 = st.columns(2)
        d1.metric(f"PPV at {q:.1%}", "n/a" if pv.ppv != pv.ppv else f"{pv.ppv:.0%}",
                  help="Of the images called positive, the share that have the finding (positive predictive value).")
        d1.caption(fmt_ci(pv.ppv_ci))
        d2.metric(f"NPV at {q:.1%}", "n/a" if pv.npv != pv.npv else f"{pv.npv:.0%}",
                  help="Of the images called negative, the share that do not have it (negative predictive value).")
        d2.caption(fmt_ci(pv.npv_ci))
    return q


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, op: OperatingPoint, auc: float) -> go.Figure:
    """The cross-validated ROC curve with the chance diagonal and the operating point marked."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUC 0.5)",
                             line={"color": "#999", "dash": "dot"}))
    fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"cross-validated (AUC {auc:.2f})",
                             line={"color": "#1f6feb", "shape": "hv"}))
    fig.add_trace(go.Scatter(x=[1 - op.specificity], y=[op.sensitivity], mode="markers", name="operating point",
                             marker={"color": "#d73a49", "size": 11, "symbol": "x"},
                             hovertemplate=f"cut-off {op.threshold:.2f}<br>sensitivity %{{y:.0%}}<br>"
                                           "1 - specificity %{x:.0%}<extra></extra>"))
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title="ROC curve (cross-validation)",
                      xaxis_title="1 - specificity (false alarms)", yaxis_title="sensitivity",
                      legend={"orientation": "h", "y": -0.3})
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def review_panel(res: dict[str, Any], clf: Classifier, op: OperatingPoint, thumbnail, names: dict[int, str]) -> None:
    """ROC curve, confusion matrix at the operating point, and the images the CV scored most wrongly
    (thumbnails via `thumbnail(image_id) -> array`, names from `names`, ids from the result's image_ids)."""
    from engine.fewshot.classifier.review import confusion, most_wrong, roc_points
    from engine.fewshot.metrics import auc

    if clf.cv_probs is None:
        return
    P, y = clf.cv_probs, clf.cv_labels
    st.markdown("**Error analysis** (cross-validation: every image scored by models that had not seen it)")
    c1, c2 = st.columns([3, 2])
    fpr, tpr, _ = roc_points(P, y)
    c1.plotly_chart(roc_figure(fpr, tpr, op, float(np.mean([auc(y, p) for p in P]))), width="stretch",
                    key=f"clf_roc:{res['id']}")
    cm = confusion(P, y, op.threshold)
    f = str(res["summary"]["finding"]).replace("_", " ")
    fmt = (lambda v: f"{v:.0f}") if cm.repeats == 1 else (lambda v: f"{v:.1f}")
    c2.markdown(f"Confusion matrix at cut-off {op.threshold:.2f}"
                + (f" (mean of {cm.repeats} repeats)" if cm.repeats > 1 else ""))
    c2.table({"": [f"has {f}", f"no {f}"], "called positive": [fmt(cm.tp), fmt(cm.fp)],
              "called negative": [fmt(cm.fn), fmt(cm.tn)]})
    c2.caption(f"Sensitivity = {fmt(cm.tp)} / {fmt(cm.tp + cm.fn)}; specificity = {fmt(cm.tn)} / {fmt(cm.tn + cm.fp)}.")
    wrong = most_wrong(P, y, op.threshold)
    ids = (res["summary"].get("image_ids") or [])
    if not wrong:
        st.caption("Every training image was on the right side of the cut-off in cross-validation.")
        return
    st.markdown(f"**Scored most wrongly** ({len(wrong)} image{'s' if len(wrong) != 1 else ''} on the wrong side of the "
                "cut-off): re-check their labels; a wrong label costs more than a missing one.")
    cols = st.columns(min(len(wrong), 4))
    for k, w in enumerate(wrong):
        c = cols[k % len(cols)]
        iid = ids[w.row] if w.row < len(ids) else None
        if iid is not None:
            try:
                c.image(thumbnail(int(iid)), width="stretch")
            except (KeyError, OSError):
                c.caption("(image no longer in the workspace)")
        name = names.get(int(iid), f"image #{iid}") if iid is not None else "an image"
        c.caption(f"**{name}**: labeled **{'with' if w.label else 'without'}** "
                  f"{f}; CV probability {w.probability:.2f} (called positive in {w.called_positive:.0%} of repeats)")
