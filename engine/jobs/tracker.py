"""Job state as watchers see it: `JobSnapshot` (an immutable copy) and `Tracker`, which folds a job's
events into a snapshot's fields, live (the owning runner) or from the stored events (any other runner).

ETA: an exponential moving average of the step rate (steps/s). Each new sample, dt seconds after the
previous one, gets weight min(ETA_ALPHA_MAX, 1 - exp(-dt / ETA_TAU_S)): fast jobs average over about
ETA_TAU_S seconds, slow ones (a trial every few minutes) over the last few steps, so one slow or fast
step moves the estimate by at most ETA_ALPHA_MAX of the difference.
"""
from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.events import Event

__all__ = ["ACTIVE_STATES", "ETA_ALPHA_MAX", "ETA_SPACING_S", "ETA_TAU_S", "FINAL_STATES", "HISTORY_CAP", "JobSnapshot",
           "LOG_TAIL", "MAX_WARNINGS", "RESUMABLE_STATES", "Tracker", "always_kept", "event_from_stored"]

ACTIVE_STATES = frozenset({"queued", "running"})
FINAL_STATES = frozenset({"done", "failed", "cancelled", "interrupted"})
RESUMABLE_STATES = ("interrupted", "cancelled", "failed")
LOG_TAIL = 50             # messages kept in a snapshot's log
MAX_WARNINGS = 100
HISTORY_CAP = 2000        # metric points kept; halved (every other point) when exceeded
ETA_SPACING_S = 0.25      # (time, step) samples for the rate are at least this far apart
ETA_TAU_S = 30.0
ETA_ALPHA_MAX = 0.3


@dataclass(frozen=True)
class JobSnapshot:
    """A copy of one job's state; safe to keep and read from any thread."""

    id: int
    kind: str
    params: dict[str, Any]              # the stored params (JSON object; `JobParams.to_json` of typed kinds)
    state: str                          # queued|running|done|failed|cancelled|interrupted
    step: int | None
    total: int | None
    progress: float | None              # step / total in [0, 1], when both are known
    eta_s: float | None                 # seconds left from the recent step rate (running jobs only)
    metrics: dict[str, float]           # latest metrics
    history: list[dict[str, float]]     # metric dicts with "step" and "time", oldest first (capped)
    log: list[str]                      # last LOG_TAIL messages, "HH:MM:SS message"
    warnings: list[str]
    error: str | None                   # the exception message of a failed job
    result: dict[str, Any] | None       # what the job function returned
    created: float
    updated: float
    device: str | None = None
    message: str = ""                   # latest message
    runs: int = 0                       # 1 + number of resumes, once started

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES


class Tracker:
    """Folds a job's events into the fields of a snapshot (used live and to rebuild from the store).

    `row`: a job row of `Store.job` (id, kind, params, state, created, updated; optional step, total,
    error, result, device, runs)."""

    def __init__(self, row: Mapping[str, Any]):
        self.id = int(row["id"])
        self.kind = str(row["kind"])
        self.params = dict(row.get("params") or {})
        self.state = str(row["state"])
        self.step: int | None = row.get("step")
        self.total: int | None = row.get("total")
        self.error: str | None = row.get("error")
        self.result: dict | None = row.get("result")
        self.created = float(row["created"])
        self.updated = float(row["updated"])
        self.device: str | None = row.get("device")
        self.runs = int(row.get("runs") or 0)
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._hist_stride = 1
        self._hist_seen = 0
        self.log: deque[str] = deque(maxlen=LOG_TAIL)
        self.warnings: list[str] = []
        self.message = ""
        self._sample: tuple[float, int] | None = None  # the last (time, step) rate sample
        self._rate_ema: float | None = None             # smoothed steps per second
        self._last: tuple[float, int] | None = None
        self.last_seq = 0  # for rebuilt trackers: last stored event folded in

    def apply(self, ev: Event) -> None:
        """Fold one event in: step (and the rate behind the ETA), total, metrics (history), message."""
        t = float(ev.time)
        if ev.step is not None:
            self._apply_step(int(ev.step), t)
        if ev.total is not None:
            self.total = int(ev.total)
        if ev.metrics:
            self.metrics = {k: float(v) for k, v in ev.metrics.items()}
            self._add_history({"step": float(self.step if self.step is not None else self._hist_seen),
                               "time": t, **self.metrics})
        if ev.message:
            self._apply_message(ev, t)
        self.updated = max(self.updated, t)

    def _apply_step(self, step: int, t: float) -> None:
        if self.step is not None and step < self.step:  # a new run (resume) restarted its count
            self._sample, self._rate_ema = None, None
        self.step = step
        if self._sample is None:
            self._sample = (t, step)
        elif t - self._sample[0] >= ETA_SPACING_S:
            t0, s0 = self._sample
            if step > s0:
                r = (step - s0) / (t - t0)
                a = min(ETA_ALPHA_MAX, 1.0 - math.exp(-(t - t0) / ETA_TAU_S))
                self._rate_ema = r if self._rate_ema is None else a * r + (1.0 - a) * self._rate_ema
                self._sample = (t, step)
        self._last = (t, step)

    def _apply_message(self, ev: Event, t: float) -> None:
        self.message = ev.message
        stamp = time.strftime("%H:%M:%S", time.localtime(t))
        prefix = "WARNING: " if ev.level == "warning" else "ERROR: " if ev.level == "error" else ""
        self.log.append(f"{stamp} {prefix}{ev.message}")
        is_warning = ev.kind == "warning" or ev.level == "warning"
        if is_warning and (not self.warnings or self.warnings[-1] != ev.message):
            self.warnings.append(ev.message)
            del self.warnings[:-MAX_WARNINGS]

    def _add_history(self, point: dict[str, float]) -> None:
        self._hist_seen += 1
        if (self._hist_seen - 1) % self._hist_stride:
            return
        self.history.append(point)
        if len(self.history) > HISTORY_CAP:
            self.history = self.history[::2]
            self._hist_stride *= 2

    def eta(self, now: float) -> float | None:
        """Seconds left at time `now` (running jobs with a known total and a measured rate), else None."""
        if self.state != "running" or not self.total or self.step is None or self._last is None:
            return None
        if not self._rate_ema or self._rate_ema <= 0:
            return None
        t1, s1 = self._last
        left = (self.total - s1) / self._rate_ema - (now - t1)
        return max(0.0, left)

    def fold_stored(self, events: list[Mapping[str, Any]]) -> None:
        """Apply events as `Store.events` returns them, remembering the last one's sequence number."""
        for d in events:
            self.apply(event_from_stored(d))
            self.last_seq = d["seq"]

    def snapshot(self) -> JobSnapshot:
        progress = None
        if self.total and self.step is not None:
            progress = min(1.0, max(0.0, self.step / self.total))
        return JobSnapshot(
            id=self.id, kind=self.kind, params=json.loads(json.dumps(self.params)), state=self.state,
            step=self.step, total=self.total, progress=progress, eta_s=self.eta(time.time()),
            metrics=dict(self.metrics), history=[dict(p) for p in self.history], log=list(self.log),
            warnings=list(self.warnings), error=self.error,
            result=None if self.result is None else json.loads(json.dumps(self.result, default=str)),
            created=self.created, updated=self.updated, device=self.device, message=self.message, runs=self.runs)


def event_from_stored(d: Mapping[str, Any]) -> Event:
    """The Event of a `Store.events` row."""
    return Event(step=d["step"], total=d["total"], metrics=d["metrics"] or {}, message=d["message"] or "",
                 level=d["level"], kind=d["kind"], time=d["time"])


def always_kept(ev: Event) -> bool:
    """Events always persisted (never coalesced away)."""
    return bool(ev.message) or ev.level != "info" or ev.kind in ("warning", "result", "log")
