"""Self-supervised pretraining: MoCo v2 (+ VICReg variance), Barlow Twins, SparK, DINO; one loop.

Public API: `PretrainConfig`, `pretrain` (uint8 image array -> checkpoint), `pretrain_from_data`
(manifest CSV / folder -> cache -> checkpoint), the per-method configs, `collapse_metrics`.
"""
from engine.ssl.augment import AugmentConfig
from engine.ssl.barlow_twins import BarlowConfig
from engine.ssl.dino import DINOConfig
from engine.ssl.moco_v2 import MoCoConfig
from engine.ssl.monitor import CollapseMonitor, collapse_metrics
from engine.ssl.pretrain import METHODS, NonFiniteLossError, PretrainConfig, pretrain, pretrain_from_data
from engine.ssl.spark import SparKConfig

__all__ = [
    "AugmentConfig", "BarlowConfig", "CollapseMonitor", "DINOConfig", "METHODS", "MoCoConfig", "NonFiniteLossError",
    "PretrainConfig", "SparKConfig", "collapse_metrics", "pretrain", "pretrain_from_data",
]
