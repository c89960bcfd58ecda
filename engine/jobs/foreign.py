"""Jobs this runner does not run (another process's, or finished before it started): snapshots
rebuilt from the stored events, incrementally, and owners that died noticed while watching."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.jobs.tracker import ACTIVE_STATES, JobSnapshot, Tracker
from engine.store import Store

__all__ = ["REAP_INTERVAL_S", "ForeignJobs"]

REAP_INTERVAL_S = 5.0     # how often snapshots of other runners' active jobs check their owner


class ForeignJobs:
    """Trackers of jobs rebuilt from the store. `alive(owner)` tells a live runner from a dead one."""

    def __init__(self, store: Store, alive: Callable[[str | None], bool]):
        self.store = store
        self.alive = alive
        self._lock = threading.Lock()
        self._trackers: dict[int, Tracker] = {}
        self._last_reap = 0.0

    def rebuild(self, job_id: int) -> Tracker:
        """A fresh tracker of the job from all its stored events. Raises KeyError for an unknown id."""
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        t = Tracker(row)
        t.fold_stored(self.store.events(job_id))
        t.state, t.error, t.result, t.runs = row["state"], row["error"], row["result"], int(row["runs"])
        return t

    def forget(self, job_id: int) -> None:
        with self._lock:
            self._trackers.pop(job_id, None)

    def snapshot(self, row: Mapping[str, Any]) -> JobSnapshot:
        """The snapshot of a stored job row, folding in only the events not seen yet. An active job
        whose owner died meanwhile becomes `interrupted` first (checked every REAP_INTERVAL_S)."""
        job_id = int(row["id"])
        if row["state"] in ACTIVE_STATES and time.monotonic() - self._last_reap >= REAP_INTERVAL_S:
            self._last_reap = time.monotonic()
            if self.store.interrupt_orphans(self.alive):
                row = self.store.job(job_id) or row
        with self._lock:
            t = self._trackers.get(job_id)
        if t is None:
            t = Tracker(row)
        if t.updated != row["updated"] or t.state != row["state"] or t.last_seq == 0:
            t.fold_stored(self.store.events(job_id, after_seq=t.last_seq))
            t.state, t.error, t.result = row["state"], row["error"], row["result"]
            t.step, t.total, t.runs, t.device = row["step"], row["total"], int(row["runs"]), row["device"]
            t.updated = row["updated"]
        with self._lock:
            self._trackers[job_id] = t
            return t.snapshot()
