"""What a study runs: a frozen dataclass, validated once, stored as JSON in `<out>/study.json`."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.fewshot.modes import MODES as HEAD_MODES
from engine.fewshot.modes import RECIPE_VERSION, current_mode, current_modes

DEFAULT_SHOTS = (1, 5, 10, 20, 50)  # the seed study's shot counts
DEFAULT_BASELINES = ("random", "imagenet")  # imagenet is skipped (with a warning) when offline
MODES = HEAD_MODES  # probe, finetune (the Classifier's), full_finetune (the seed study's): engine.fewshot.modes


@dataclass(frozen=True)
class StudyConfig:
    """One study (the seed protocol, Sowrirajan et al. 2021 / the project's seed study, end to end).

    pretrain_data: manifest CSV or image folder the SSL methods pretrain on (test split left out).
    eval_manifests: labeled manifest CSVs; each gets one sweep (its own test split) and, where it has
        lesion boxes or masks, a Grad-CAM localization stage.
    methods: SSL methods to pretrain (engine.ssl); `reuse` pairs (method, checkpoint name) skip
        pretraining for that method and evaluate the named checkpoint instead.
    findings: findings to evaluate (() = every finding of each eval manifest).
    name: checkpoint prefix: method m is exported as `<name>-<m>` into the checkpoints folder.
    preset / steps / batch_size: the pretraining recipe (engine.ssl.presets) and its step cap / batch.
    image_size: pixels of the square working resolution, for pretraining and evaluation alike.
    shots / trials / modes / baselines: the few-shot sweep (engine.fewshot.sweep; modes are the head recipe's,
        engine.fewshot.modes: `finetune` is the Classifier's, `full_finetune` the whole network); baselines are
        builtin inits compared with the pretrained ones (ImageNet only where its weights exist offline).
    gradcam_images / gradcam_shots / gradcam_mode: the Grad-CAM stage (engine.explain.study); 0
        images turns it off.
    seed: one seed for pretraining, episodes and Grad-CAM.
    Raises ValueError naming the field and what to write instead.
    """

    pretrain_data: str  # "" only when every method is reused (nothing to pretrain)
    eval_manifests: tuple[str, ...]
    methods: tuple[str, ...] = ("moco_v2",)
    findings: tuple[str, ...] = ()
    name: str = "study"
    preset: str = "quick"
    steps: int | None = None
    batch_size: int | None = None
    image_size: int = 224
    shots: tuple[int, ...] = DEFAULT_SHOTS
    trials: int = 10
    modes: tuple[str, ...] = ("probe",)
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    reuse: tuple[tuple[str, str], ...] = ()
    gradcam_images: int = 8
    gradcam_shots: int = 20
    gradcam_mode: str = "probe"
    seed: int = 0

    def __post_init__(self) -> None:
        from engine.names import InvalidNameError, check_name

        if not self.eval_manifests:
            raise ValueError("a study needs at least one labeled manifest to evaluate on (--eval)")
        if not self.methods and not self.reuse:
            raise ValueError("a study needs at least one SSL method (--methods) or a reused checkpoint (--reuse)")
        bad = [m for m in self.modes if m not in MODES] or ([self.gradcam_mode] if self.gradcam_mode not in MODES else [])
        if bad or not self.modes:
            hint = "".join(f"; {m!r} is now 'full_finetune'" for m in bad if m == "double_finetune")
            raise ValueError(f"modes must be among {', '.join(MODES)} (got {', '.join(bad) or 'none'}){hint}")
        if not self.shots or min(self.shots) < 1 or self.trials < 1:
            raise ValueError("shots must be positive integers and trials at least 1, e.g. --shots 1,5,10 --trials 5")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 px (got {self.image_size})")
        if self.gradcam_images < 0 or self.gradcam_shots < 1:
            raise ValueError("gradcam_images must be >= 0 and gradcam_shots >= 1")
        unknown = [b for b in self.baselines if b not in DEFAULT_BASELINES]
        if unknown:
            raise ValueError(f"baselines must be among {', '.join(DEFAULT_BASELINES)} (got {', '.join(unknown)}); "
                             "to compare an existing backbone, --reuse METHOD=NAME it")
        reused = [m for m, _ in self.reuse]
        if len(set(reused)) != len(reused):
            raise ValueError("--reuse names one checkpoint per method")
        self._check_methods(reused)
        try:
            check_name(self.name, "checkpoint")
        except InvalidNameError as e:
            raise ValueError(f"study name {self.name!r}: {e}") from None

    def _check_methods(self, reused: list[str]) -> None:
        """Every method registered (engine.ssl.registry), the preset defined for each one pretrained here,
        and pretraining data given and present when something is pretrained; ValueError naming the fix."""
        from engine.ssl.presets import preset_overrides
        from engine.ssl.registry import METHODS

        for where, names in (("--methods", self.methods), ("--reuse", reused)):
            bad = [m for m in names if m not in METHODS]
            if bad:
                raise ValueError(f"{where}: unknown SSL method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
        to_train = [m for m in self.methods if m not in reused]
        for m in to_train:
            preset_overrides(m, self.preset)  # unknown preset, or none for this method: ValueError
        if to_train and not self.pretrain_data:
            raise ValueError(f"--pretrain: give the images to pretrain {', '.join(to_train)} on (a manifest CSV or "
                             "a folder), or --reuse a checkpoint for each method")
        if to_train and not Path(self.pretrain_data).exists():
            raise ValueError(f"--pretrain {self.pretrain_data} does not exist; give a manifest CSV or an image folder")
        for p in self.eval_manifests:
            if Path(p).is_dir():
                raise ValueError(f"--eval {p} is a folder; it needs a labeled manifest CSV (make one from a "
                                 "folder per class with `python -m engine manifest from-folder`)")

    @property
    def to_train(self) -> tuple[str, ...]:
        """Methods pretrained by this study (not reused), in the order given."""
        return tuple(m for m in self.methods if m not in dict(self.reuse))

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Methods pretrained here, then the reused ones, each once, in the order given."""
        return tuple(dict.fromkeys([*self.methods, *(m for m, _ in self.reuse)]))

    def checkpoint(self, method: str) -> str:
        """The checkpoint name evaluated for `method`: the reused one, else `<name>-<method>`."""
        return dict(self.reuse).get(method, f"{self.name}-{method}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudyConfig":
        """Inverse of to_dict; unknown keys raise ValueError (a study.json from another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise ValueError(f"study settings hold unknown field(s) {extra}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if "reuse" in kw:
            kw["reuse"] = tuple(tuple(p) for p in kw["reuse"])
        return cls(**kw)


def current_state(state: dict[str, Any]) -> dict[str, Any]:
    """A study.json's contents under the current mode names. Without `recipe_version` (written before the head
    recipe, engine.fewshot.modes) its `finetune` was the whole network: `modes` and `gradcam_mode` renamed to
    `full_finetune`, and `recipe_version` set. A copy; the current version is returned as it is."""
    if int(state.get("recipe_version") or 1) >= RECIPE_VERSION:
        return state
    cfg = dict(state.get("config") or {})
    if "modes" in cfg:
        cfg["modes"] = current_modes(cfg["modes"], 1)
    if "gradcam_mode" in cfg:
        cfg["gradcam_mode"] = current_mode(cfg["gradcam_mode"], 1)
    return {**state, "config": cfg, "recipe_version": RECIPE_VERSION}


def eval_tag(path: str | Path, taken: set[str]) -> str:
    """A short folder-safe label of an eval manifest (its folder's name), unique among `taken`."""
    p = Path(path)
    base = p.parent.name if p.name == "manifest.csv" else p.stem
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "eval"
    tag, i = base, 2
    while tag in taken:
        tag, i = f"{base}-{i}", i + 1
    return tag
