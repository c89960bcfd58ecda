"""The few-shot classifier's own network: a backbone and its head as one module, output the positive logit.

It lives with the models (not with Grad-CAM) because it is what the Classifier *is*
(engine.fewshot.classifier.Classifier.explain_module returns it); Grad-CAM (engine.explain.gradcam) and
the Grad-CAM study only explain it. `engine.explain.gradcam.ExplainModel` still imports from here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ExplainModel"]


class ExplainModel(nn.Module):
    """Backbone + head as one module: (B, 3, S, S) -> positive-class logit (B, 1).

    `head` maps pooled features (B, D) to (B, 1) or (B,) (e.g. `Probe.as_torch_head()`, or the head
    returned by fine-tuning). Submodule names are `backbone.*` and `head.*`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.backbone(x)  # (B, D)
        out = self.head(z)  # (B, 1) or (B,)
        if out.ndim == 1:
            out = out[:, None]  # (B, 1)
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"the head must output one logit per image, (B, 1); got shape {tuple(out.shape)}")
        return out
