"""What each mode name of the head recipe means (issue 23), and how results stored before it are read.

Torch-free (pages, CLI parsers and CSV readers import it). The recipe itself: engine.fewshot.head_recipe.

Modes of `fit the head on an episode` (head_recipe.MODES):

* `probe`: logistic regression on the frozen backbone's pooled features (engine.fewshot.probe).
* `finetune`: the product's finetune, what the Classifier builds: the last stage + head trained on cached
  frozen-stage activations (engine.fewshot.fast_finetune.FastFinetune).
* `full_finetune`: the whole network + head on augmented whole images (engine.fewshot.finetune.FinetuneConfig),
  the seed study's finetune, kept for the research comparison.

A sweep also has `double_full_finetune` (SWEEP_MODES): `full_finetune` starting from the init finetuned once,
whole network, on an intermediate finding (engine.fewshot.stage_one).

Recipe versions (RECIPE_VERSION, written as `recipe_version` into a sweep's config.json, a study's
study.json and a Grad-CAM study's study.json): 1 (no field) = before issue 23, when a sweep's, the study's and
the Grad-CAM study's `finetune` was the whole-network finetune and `double_finetune` started from it. Rows and
settings of version 1 are read under their current names (`RENAMED_BEFORE_V2`): their meaning is kept, their
name says it.
"""
from __future__ import annotations

from typing import Any, Iterable

MODES = ("probe", "finetune", "full_finetune")  # head_recipe.fit's modes
SWEEP_MODES = (*MODES, "double_full_finetune")
RECIPE_VERSION = 2
RENAMED_BEFORE_V2 = {"finetune": "full_finetune", "double_finetune": "double_full_finetune"}

# What the pages show (one place: the Benchmark, the study form, the plots' legends).
LABEL = {
    "probe": "probe (frozen backbone)",
    "finetune": "finetune (last stage, as the Classifier)",
    "full_finetune": "full finetune (whole backbone, the seed study's)",
    "double_full_finetune": "double full finetune (whole backbone, after an intermediate finding)",
}
SHORT = {"probe": "probe", "finetune": "finetune", "full_finetune": "full finetune",
         "double_full_finetune": "2x full finetune"}
DASH = {"probe": "solid", "finetune": "dash", "full_finetune": "longdash", "double_full_finetune": "dot"}


def recipe_version(settings: dict[str, Any] | None) -> int:
    """The recipe version a stored settings dict was written with (1 when it has no `recipe_version`)."""
    return int((settings or {}).get("recipe_version") or 1)


def current_mode(mode: str, version: int) -> str:
    """The current name of a mode stored under recipe `version` (unchanged for the current version)."""
    return RENAMED_BEFORE_V2.get(mode, mode) if version < 2 else mode


def current_modes(modes: Iterable[str], version: int) -> list[str]:
    """`current_mode` of each."""
    return [current_mode(m, version) for m in modes]


def check_modes(modes: Iterable[str], allowed: tuple[str, ...] = SWEEP_MODES) -> None:
    """ValueError naming the unknown modes and the old names' new ones (`finetune` is no longer the whole
    network: `double_finetune` is now `double_full_finetune`)."""
    bad = [m for m in modes if m not in allowed]
    if bad:
        hint = "".join(f"; {m!r} is now {RENAMED_BEFORE_V2[m]!r}" for m in bad if m in RENAMED_BEFORE_V2)
        raise ValueError(f"unknown mode(s) {bad}; choose from {', '.join(allowed)}{hint}")
