"""Adaptive collapse control (issue 16 item 1; target `auto` issue 23 item 4): the controller that adjusts a
method's regularization weight from the collapse monitor's effective-rank readings.

Moved out of engine.ssl.monitor (which re-exports every name here) to keep each file under ~400 lines.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# ----------------------------------------------------------------------------------------------
# Adaptive collapse control (issue 16 item 1)
#
# The seed study's proposal: watch the effective rank during pretraining and adjust the
# regularization that keeps dimensions alive. Each method that has such a weight names it in its
# registry entry (`MethodSpec.collapse_knob`, engine/ssl/registry.py; MoCo v2 and masked-contrastive:
# the feature-decorrelation weight `decorr_weight`, Hua et al. 2021 -- VICReg's covariance term on
# standardized projections; Barlow Twins: the off-diagonal weight `lambd`, Zbontar et
# al. 2021) with a reference value (`ref`). SparK and DINO have no such term and refuse the option.
#
# Rule, applied at every collapse-monitor reading after the step-0 baseline (the untrained network's
# reading describes the init, not the training), on the monitored effective rank r of the head
# embedding (the backbone's for methods without a head):
#   r < target                    -> w <- min(hi, max(lo, w * up))     (raise; from 0 straight to lo)
#   r >= target * healthy_ratio   -> w <- max(lo, w * down)            (lower; never back to 0)
#   otherwise                     -> hold (hysteresis band: no flip-flop around the target)
# with b = the configured weight w0 if w0 > 0 else the method's reference weight, lo = b * min_frac,
# hi = b * max_mult (defaults x2 / x0.5 within [b/8, b*16]). A weight that starts at 0 stays 0 while
# the run is healthy. Every change is one record in `CollapseController.history`.

CONTROL_METRICS = ("erank", "centred_erank")


@dataclass(frozen=True)
class CollapseControl:
    """Settings of the adaptive collapse controller (`--collapse-control erank:TARGET`).

    metric: the monitored effective rank it acts on, "erank" (uncentred; RankMe, Garrido et al. 2023)
    or "centred_erank" (the seed study's; Roy & Vetterli 2007); target: the rank to keep (> 0), or None
    ("auto", the default): the run's first reading of the metric (its step-0 baseline), so the run is
    held to at least the rank it started with (issue 23: a fixed 8 never acted on a run starting at 17.6);
    up / down: multiplicative factors applied when below target / healthy (up > 1 > down > 0);
    healthy_ratio: "healthy" means metric >= target * healthy_ratio (>= 1); min_frac / max_mult:
    bounds relative to the base weight b, [b * min_frac, b * max_mult].
    """

    metric: str = "erank"
    target: float | None = None
    up: float = 2.0
    down: float = 0.5
    healthy_ratio: float = 1.25
    min_frac: float = 1 / 8
    max_mult: float = 16.0

    def __post_init__(self) -> None:
        if self.metric not in CONTROL_METRICS:
            raise ValueError(f"collapse control metric {self.metric!r} is not one of {', '.join(CONTROL_METRICS)}; "
                             "write e.g. --collapse-control erank:8")
        if self.target is not None and not (math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"collapse control target must be a positive number or auto (got {self.target}); "
                             "e.g. erank:8 or erank:auto")
        if not (self.up > 1.0 and 0.0 < self.down < 1.0):
            raise ValueError(f"collapse control needs up > 1 and 0 < down < 1 (got up {self.up}, down {self.down})")
        if self.healthy_ratio < 1.0:
            raise ValueError(f"collapse control healthy_ratio must be >= 1 (got {self.healthy_ratio})")
        if not (0.0 < self.min_frac <= 1.0 <= self.max_mult):
            raise ValueError(f"collapse control bounds need 0 < min_frac <= 1 <= max_mult "
                             f"(got {self.min_frac}, {self.max_mult})")

    def spec(self) -> str:
        """The `METRIC:TARGET` text this was parsed from (other fields at their defaults); TARGET `auto`."""
        return f"{self.metric}:" + ("auto" if self.target is None else f"{self.target:g}")


def parse_collapse_control(spec: str | dict | CollapseControl | None) -> CollapseControl | None:
    """`"erank:8"`, `"erank:auto"` or `"erank"` (auto target; CLI / job params), a dict of fields (JSON) or a
    CollapseControl -> CollapseControl.

    None or "" / "off" / "none" -> None (no control). Raises ValueError naming the expected form.
    """
    if spec is None or isinstance(spec, CollapseControl):
        return spec
    if isinstance(spec, dict):
        return CollapseControl(**spec)
    text = str(spec).strip()
    if text.lower() in ("", "off", "none"):
        return None
    metric, sep, target = text.partition(":")
    if target.strip().lower() in ("", "auto"):
        if metric.strip() not in CONTROL_METRICS:
            raise ValueError(f"--collapse-control {text!r}: expected METRIC[:TARGET] with METRIC one of "
                             f"{', '.join(CONTROL_METRICS)}, e.g. erank:auto or erank:8")
        return CollapseControl(metric=metric.strip(), target=None)
    try:
        value = float(target)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise ValueError(f"--collapse-control {text!r}: expected METRIC:TARGET with METRIC one of "
                         f"{', '.join(CONTROL_METRICS)} and TARGET a number or auto, e.g. erank:8")
    return CollapseControl(metric=metric.strip(), target=value)


class CollapseController:
    """State of the adaptive controller for one run: the current weight and every adjustment.

    `knob` names the method's weight (e.g. "decorr_weight"), `w0` is its configured value and `ref` the
    method's reference value used for the bounds when w0 is 0 (see the rule above this class).
    `update(step, metrics)` returns the adjustment record when the weight changed, else None.
    `state_dict()` / `load_state_dict()` carry weight and history through state.pt, so a resumed run
    continues exactly.
    """

    def __init__(self, spec: CollapseControl, knob: str, w0: float, ref: float) -> None:
        if w0 < 0 or ref <= 0:
            raise ValueError(f"collapse control needs a weight >= 0 and a positive reference (got {w0}, {ref})")
        self.spec, self.knob, self.w0 = spec, knob, float(w0)
        base = self.w0 if self.w0 > 0 else float(ref)
        self.lo, self.hi = base * spec.min_frac, base * spec.max_mult
        self.weight = self.w0
        self.target: float | None = spec.target  # None until the first reading sets it (auto)
        self.history: list[dict[str, Any]] = []

    def update(self, step: int, metrics: dict[str, float]) -> dict[str, Any] | None:
        """Apply the rule to one monitor reading (`metrics` holds `spec.metric`); None at step 0 or no change.
        With an auto target the first reading (normally step 0) sets it and is not acted on."""
        r, s, old = float(metrics[self.spec.metric]), self.spec, self.weight
        if self.target is None:
            self.target = r
            return None
        if step == 0:
            return None
        if r < self.target:
            new, why = min(self.hi, max(self.lo, old * s.up)), "raise"
        elif r >= self.target * s.healthy_ratio and old > self.lo:
            new, why = max(self.lo, old * s.down), "lower"
        else:
            return None
        if new == old:  # at a bound already
            return None
        self.weight = new
        rec = {"step": int(step), "knob": self.knob, "metric": s.metric, "value": r, "target": self.target,
               "action": why, "old": old, "new": new}
        self.history.append(rec)
        return rec

    def message(self, rec: dict[str, Any]) -> str:
        """One log line for an adjustment record."""
        cmp = "<" if rec["action"] == "raise" else ">="
        thr = rec["target"] if rec["action"] == "raise" else rec["target"] * self.spec.healthy_ratio
        return (f"collapse control: {rec['metric']} {rec['value']:.2f} {cmp} {thr:g} at step {rec['step']}: "
                f"{rec['action']} {rec['knob']} {rec['old']:.4g} -> {rec['new']:.4g} "
                f"(bounds {self.lo:.4g}-{self.hi:.4g})")

    def summary(self) -> dict[str, Any]:
        """What the checkpoint json records: settings, the target in use (auto: the first reading's), bounds,
        final weight, every adjustment (none: `adjustments` is empty; the weight stayed w0)."""
        return {"spec": self.spec.spec(), "settings": asdict(self.spec), "knob": self.knob, "w0": self.w0,
                "target": self.target, "target_auto": self.spec.target is None,
                "bounds": [self.lo, self.hi], "final_weight": self.weight, "adjustments": list(self.history)}

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "history": list(self.history), "target": self.target}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weight = float(state["weight"])
        self.target = state.get("target", self.spec.target)
        self.history = [dict(r) for r in state["history"]]
