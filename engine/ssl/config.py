"""`PretrainConfig`: the settings of one pretraining run, validated once, JSON-able.

Method settings are the method's own frozen config dataclass (engine/ssl/<method>.py, found through
the registry, engine/ssl/registry.py); recipes that fill them in: engine/ssl/presets.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.ssl.augment import AugmentConfig
from engine.ssl.monitor import ERANK_MIN, STD_MIN, CollapseControl, parse_collapse_control
from engine.ssl.registry import MethodSpec, get_method

SSL_ARCHS = ("resnet18", "resnet50")
# Config fields a resume may change (they do not alter the trajectory).
RESUME_FREE = frozenset({"save_every_steps", "save_every_seconds", "monitor_every_steps", "monitor_images",
                         "collapse_std_min", "collapse_erank_min", "data_on_device", "sync_every_steps",
                         "online_eval", "online_eval_every"})
BUILTIN_INITS = ("random", "imagenet")


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Method defaults follow each paper (see engine/ssl/<method>.py).

    Raises ValueError on construction for an unknown method / arch / init, out-of-range numbers, a
    method_config of another method, an image size its patch does not divide, or collapse control
    for a method without a weight to adjust (or with the monitor off).
    """

    method: str = "moco_v2"
    arch: str = "resnet18"
    epochs: int = 100
    batch_size: int = 256  # global batch over all ranks
    image_size: int = 224
    lr: float | None = None  # peak lr; None = recipe base_lr * batch_size / 256
    weight_decay: float | None = None  # None = recipe's
    warmup_epochs: float | None = None  # None = recipe's (capped at 10% of a short run)
    seed: int = 0
    max_steps: int | None = None  # cap on total steps (the cosine schedule spans the capped run)
    save_every_steps: int = 500
    # also save when this many wall-clock seconds passed since the last save (or the start): a kill
    # loses at most this much training, even before the first `save_every_steps`; 0 = steps only
    save_every_seconds: float = 300.0
    monitor_every_steps: int = 100
    monitor_images: int = 256
    collapse_std_min: float = STD_MIN  # collapse warning below this normalized std (engine.ssl.monitor)
    collapse_erank_min: float = ERANK_MIN  # collapse warning below this effective rank
    amp: bool | None = None  # None = on for CUDA (bf16, else fp16 + GradScaler), off on CPU
    channels_last: bool | None = None  # None = on for CUDA
    # "random" | "imagenet" (MoCo-transfer: start SSL from ImageNet weights) | the name of a checkpoint of the
    # same arch (a warm start: its backbone continues, heads and optimizer start afresh; the lineage is recorded)
    init: str = "random"
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    method_config: Any = None  # MoCoConfig | BarlowConfig | SparKConfig | DINOConfig | ...; None = defaults
    # Adaptive collapse control (engine.ssl.monitor.CollapseControl; "erank:TARGET" or a dict also
    # accepted): None = off. Acts at every collapse-monitor reading.
    collapse_control: CollapseControl | None = None
    # Where the batches come from; neither changes the trajectory (both may change on resume):
    # data_on_device: the whole uint8 image set held on the training device, batches indexed there (no host
    # round trip per step); None = on for CUDA when it takes < 1/4 of the free device memory, off on CPU.
    data_on_device: bool | None = None
    # sync_every_steps: read the losses back to the host every N steps (one device sync per N steps instead of
    # one per step); None = 1 on CPU, 20 on CUDA. With N > 1 a non-finite loss is caught up to N-1 steps late:
    # the run still stops with NonFiniteLossError and the last state saved (always after a check) is kept.
    sync_every_steps: int | None = None
    # Online evaluation (engine.ssl.online_eval): "MANIFEST:FINDING", kNN AUC of the backbone features on that
    # labeled set every `online_eval_every` collapse-monitor readings; None = off. Neither changes training.
    online_eval: str | None = None
    online_eval_every: int = 1

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if self.arch not in SSL_ARCHS:
            raise ValueError(f"SSL pretraining supports {', '.join(SSL_ARCHS)}, not {self.arch!r}")
        if self.init not in BUILTIN_INITS:
            from engine.names import InvalidNameError, check_name

            try:
                check_name(self.init, "init")
            except InvalidNameError as e:
                raise ValueError(f"init must be 'random', 'imagenet' or a checkpoint name to warm-start from, "
                                 f"not {self.init!r} ({e})") from None
        for name, lo in (("epochs", 1), ("batch_size", 2), ("image_size", 32), ("save_every_steps", 1),
                         ("monitor_every_steps", 0), ("monitor_images", 2)):
            if getattr(self, name) < lo:
                raise ValueError(f"{name} must be >= {lo} (got {getattr(self, name)})")
        if self.sync_every_steps is not None and self.sync_every_steps < 1:
            raise ValueError(f"sync_every_steps must be >= 1 (got {self.sync_every_steps})")
        if not self.save_every_seconds >= 0:
            raise ValueError(f"save_every_seconds must be >= 0 (got {self.save_every_seconds})")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (got {self.max_steps})")
        self._set_method_config(spec)
        if isinstance(self.aug, dict):
            object.__setattr__(self, "aug", from_dict(AugmentConfig, self.aug))
        patch = getattr(self.method_config, "patch", None)
        if patch and self.image_size % patch:
            fit = max(1, self.image_size // patch) * patch
            raise ValueError(f"{self.method} needs image_size divisible by its patch {patch} "
                             f"(got {self.image_size}); use e.g. --image-size {fit}")
        object.__setattr__(self, "collapse_control", parse_collapse_control(self.collapse_control))
        if self.collapse_control is not None:
            if spec.collapse_knob is None:
                raise ValueError("--collapse-control: " + (
                    spec.no_collapse_control or f"{self.method} has no regularization weight to adjust"))
            if self.monitor_every_steps < 1:
                raise ValueError("--collapse-control acts on the collapse monitor's readings, but the monitor is off "
                                 "(monitor_every_steps 0); set --monitor-every N (e.g. 25)")
        if self.online_eval:
            from engine.ssl.online_eval import parse_online_eval

            parse_online_eval(self.online_eval)
            if self.monitor_every_steps < 1 or self.online_eval_every < 1:
                raise ValueError("--online-eval runs at collapse-monitor readings: set --monitor-every N >= 1 and "
                                 "--online-eval-every >= 1")

    def _set_method_config(self, spec: MethodSpec) -> None:
        """None -> the method's defaults, a dict -> its config class; another method's config is refused."""
        cls = spec.config_cls
        if self.method_config is None:
            object.__setattr__(self, "method_config", cls())
        elif isinstance(self.method_config, dict):
            object.__setattr__(self, "method_config", from_dict(cls, self.method_config))
        elif type(self.method_config) is not cls:
            raise ValueError(f"method_config for {self.method} must be a {cls.__name__}, "
                             f"not {type(self.method_config).__name__}")

    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry (engine.ssl.registry)."""
        return get_method(self.method)

    @property
    def recipe(self) -> Any:
        """The method's optimizer recipe (engine.ssl.common.OptimRecipe)."""
        return self.spec.recipe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """From `to_dict()` output or JSON job params (lists become tuples, nested configs dicts)."""
        return from_dict(cls, d)


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """`cls(**d)` with lists as tuples; raises ValueError naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
