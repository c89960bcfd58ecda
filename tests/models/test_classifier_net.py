"""The classifier's own network lives with the models: few-shot code never imports engine.explain, and the
old import path `engine.explain.gradcam.ExplainModel` still works."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import engine
from engine.models.classifier_net import ExplainModel


def test_backbone_and_head_give_one_logit_per_image():
    net = ExplainModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), nn.Linear(4, 1))
    assert net(torch.zeros(5, 3, 2, 2)).shape == (5, 1)
    flat = ExplainModel(nn.Flatten(), nn.Sequential(nn.Linear(12, 1), nn.Flatten(0)))  # a (B,) head
    assert flat(torch.zeros(2, 3, 2, 2)).shape == (2, 1)
    with pytest.raises(ValueError, match=r"one logit per image, \(B, 1\); got shape \(2, 3\)"):
        ExplainModel(nn.Flatten(), nn.Linear(12, 3))(torch.zeros(2, 3, 2, 2))


def test_old_and_package_import_paths_name_the_same_class():
    from engine.explain.gradcam import ExplainModel as old
    from engine.models import ExplainModel as pkg

    assert old is ExplainModel and pkg is ExplainModel


def test_fewshot_never_imports_explain():
    root = Path(engine.__file__).parent / "fewshot"
    offenders = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{f.relative_to(root)}: {m}" for m in mods if m.startswith("engine.explain")]
    assert offenders == []
