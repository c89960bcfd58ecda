"""A job the runner owns while it runs: its tracker, its thread, and the path of its events to the store.

Progress-only events are coalesced to at most one write per FLUSH_INTERVAL_S; events with a message,
warnings, errors and the final state are always written (`engine.jobs.tracker.always_kept`). A write
that fails (a busy database) keeps the events pending and retries at the next flush; every message
also goes to `<workdir>/job.log`.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import Event
from engine.jobs.context import JobFn
from engine.jobs.params import JobParams
from engine.jobs.tracker import Tracker, always_kept
from engine.store import Store

__all__ = ["FLUSH_INTERVAL_S", "LiveJob", "append_log", "log_line", "stamp"]

FLUSH_INTERVAL_S = 0.2    # at most ~5 coalesced DB writes per second per job


@dataclass
class LiveJob:
    """One owned job. `lock` is the runner's lock (it guards the tracker and `pending`)."""

    tracker: Tracker
    fn: JobFn
    params_type: type[JobParams] | None
    uses_gpu: bool
    resume: bool
    store: Store
    workdir: Path
    lock: threading.RLock
    stop: threading.Event = field(default_factory=threading.Event)
    pending: list[Event] = field(default_factory=list)
    last_flush: float = 0.0
    flush_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def on_event(self, ev: Event | Mapping[str, Any]) -> None:
        """The job's `ctx.on_event`: fold the event in now, write it soon (urgent ones at once)."""
        if not isinstance(ev, Event):
            ev = Event(**dict(ev))
        with self.lock:
            self.tracker.apply(ev)
            if not always_kept(ev) and self.pending and not always_kept(self.pending[-1]):
                self.pending[-1] = ev  # coalesce progress-only events: the latest one wins
            else:
                self.pending.append(ev)
        urgent = ev.level in ("warning", "error") or ev.kind == "warning"
        if urgent or time.monotonic() - self.last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def persist(self, ev: Event, **job_fields: Any) -> None:
        """Record `ev` and the job's fields now (raises when the write fails)."""
        with self.lock:
            self.tracker.apply(ev)
            self.pending.append(ev)
        self.flush(**job_fields)

    def flush(self, **job_fields: Any) -> None:
        """Write pending events (and job fields) in one transaction. A failed write keeps the events
        for the next flush and adds a warning; it raises only when job fields were given."""
        t = self.tracker
        with self.flush_lock:
            with self.lock:
                events, self.pending = self.pending, []
                fields = {"step": t.step, "total": t.total, **job_fields}
            try:
                self.store.add_events(t.id, events, **fields)
            except Exception as e:  # noqa: BLE001 - keep the job running; retry at the next flush
                with self.lock:
                    self.pending[:0] = events
                    msg = f"could not record progress in the store ({e}); will retry"
                    if msg not in t.warnings:
                        t.warnings.append(msg)
                if job_fields:
                    raise
                return
            finally:
                self.last_flush = time.monotonic()
            append_log(self.workdir, [log_line(e) for e in events if e.message])


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def log_line(ev: Event) -> str:
    return f"{stamp(ev.time)} {ev.level.upper():7s} {ev.message}"


def append_log(workdir: Path, lines: list[str]) -> None:
    """Append lines to `<workdir>/job.log` (best effort: the store has the events)."""
    if not lines:
        return
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / "job.log", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError:
        pass  # the log file is a convenience; the store has the events
