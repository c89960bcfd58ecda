"""What a job function gets (`JobContext`) and what it is (`JobFn`, `OnSubmit`)."""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.events import Event, OnEvent
from engine.store import Store

from engine.jobs.params import JobParams

if TYPE_CHECKING:
    import torch

    from engine.jobs.runner import JobRunner

__all__ = ["JobContext", "JobFn", "JobKind", "OnSubmit"]


@dataclass(frozen=True)
class JobContext:
    """What a job function gets besides its params."""

    job_id: int
    device: torch.device | str   # the runner's device for uses_gpu jobs, cpu otherwise
    on_event: OnEvent            # report progress: ctx.on_event(Event(step=..., total=..., metrics=...))
    stop: threading.Event        # set by cancel(); check it between steps (engine.events.check_stop)
    resume: bool                 # True when re-run by resume(): continue from the state in workdir
    workdir: Path                # <workspace>/runs/job-<id>/, stable across resumes
    store: Store | None = None   # the workspace store (e.g. for import jobs)

    def log(self, message: str, level: str = "info") -> None:
        """Shorthand for a message event (level "warning" also lands in the snapshot's warnings)."""
        self.on_event(Event(message=message, level=level, kind="warning" if level == "warning" else "log"))


class JobFn(Protocol):
    """A job kind's function: params (its JobParams class when registered with one, else the stored
    dict) and the context; returns a JSON-able mapping (the result) or None."""

    def __call__(self, params: Any, ctx: JobContext, /) -> Mapping[str, Any] | None: ...


class OnSubmit(Protocol):
    """A submit-time check (e.g. reserving a name): raises to refuse the job."""

    def __call__(self, params: JobParams | dict[str, Any], job_id: int, runner: JobRunner, /) -> None: ...


class JobKind:
    """A registered kind: its function, whether it takes the GPU slot, its params class and submit check."""

    __slots__ = ("fn", "on_submit", "params_type", "uses_gpu")

    def __init__(self, fn: JobFn, uses_gpu: bool, params_type: type[JobParams] | None, on_submit: OnSubmit | None):
        self.fn, self.uses_gpu, self.params_type, self.on_submit = fn, bool(uses_gpu), params_type, on_submit

    def load(self, stored: Mapping[str, Any]) -> JobParams | dict[str, Any]:
        """The params a job function gets from a stored row: typed when the kind has a params class
        (keys an older version stored and this one no longer knows are ignored), else a dict copy."""
        if self.params_type is None:
            return dict(stored)
        return self.params_type.from_json(stored, strict=False)
