"""Progress events and cancellation shared by every long engine entry point.

Long functions take `on_event: Callable[[Event], None] | None` and `stop: threading.Event | None`.
They call `emit(on_event, ...)` as they go, check `check_stop(stop)` between steps (after leaving a
resumable state behind) and raise `Cancelled` when asked to stop.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


class Cancelled(Exception):
    """Raised by a long engine function after it saw `stop` set and saved its resumable state."""


@dataclass(frozen=True)
class Event:
    step: int | None = None  # steps done so far
    total: int | None = None  # steps planned, when known
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    level: str = "info"  # "info" | "warning" | "error"
    kind: str = "progress"  # "progress" | "metrics" | "log" | "warning" | "result"
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OnEvent = Callable[[Event], None]


def emit(on_event: OnEvent | None, **kw: Any) -> None:
    if on_event is not None:
        on_event(Event(**kw))


def check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled("stopped on request")


def as_log(on_event: OnEvent | None) -> OnEvent | None:
    """Forward a sub-phase's events (caching, embedding, a stage-one finetune) without their step/total.

    A job's progress bar counts one thing from 0 to its total, monotonically (e.g. a sweep's trials, a
    build's trainings). A sub-phase that counts something else (images decoded, batches embedded) would
    make the bar jump (73/160 -> 0/41 -> 118/160), so its counts travel only inside its messages
    ("embedded 23/23 images"); events without a message are dropped.
    """
    if on_event is None:
        return None

    def forward(ev: Event) -> None:
        if not ev.message and not ev.metrics:
            return
        kind = "log" if ev.kind in (None, "progress", "metrics") else ev.kind
        on_event(Event(message=ev.message, level=ev.level, kind=kind, time=ev.time,
                       metrics={} if ev.kind == "metrics" else dict(ev.metrics)))

    return forward
