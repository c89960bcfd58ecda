"""Typed field checks shared by the classifier's schema validation (metadata, calibration, thresholds)."""
from __future__ import annotations

import math
from typing import Any


def finite_number(v: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """`v` as a float when it is a real number (not a bool) in [lo, hi]; else ValueError naming `what`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not lo <= v <= hi:
        raise ValueError(f"{what} must be a finite number in [{lo}, {hi}]; got {v!r}")
    return float(v)


def bounded_list(v: Any, what: str, max_len: int) -> list:
    """`v` when it is a list of at most `max_len` items; else ValueError naming `what`."""
    if not isinstance(v, list) or len(v) > max_len:
        raise ValueError(f"{what} must be a list of at most {max_len} values; got {type(v).__name__}")
    return v
