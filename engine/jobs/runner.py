"""`JobRunner`: runs registered job kinds in background threads (see the package docstring, engine.jobs).

Scheduling: jobs registered with `uses_gpu=True` run one at a time through one lock (also on a
CPU-only machine: two pretraining runs fighting over two cores help nobody); CPU jobs run beside
them, at most `max_cpu_jobs` at once. Waiting jobs stay `queued`, first come first served.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomic import remove_stale_temps
from engine.jobs.cleanup import remove_orphan_files
from engine.events import Cancelled, Event
from engine.jobs.context import JobContext, JobFn, JobKind, OnSubmit
from engine.jobs.exit_hook import run_before_thread_shutdown
from engine.jobs.live import FLUSH_INTERVAL_S, LiveJob, append_log, stamp
from engine.jobs.liveness import OwnerLock
from engine.jobs.params import JobParams
from engine.jobs.foreign import REAP_INTERVAL_S, ForeignJobs
from engine.jobs.tracker import ACTIVE_STATES, RESUMABLE_STATES, JobSnapshot, Tracker
from engine.store import OrphanReport, Store

if TYPE_CHECKING:
    import torch

__all__ = ["CANCEL_POLL_S", "JOB_NICENESS", "REAP_INTERVAL_S", "JobRunner", "error_text", "lower_thread_priority"]

CANCEL_POLL_S = 0.5       # how often the store is asked for cancel requests from other runners
JOB_NICENESS = 10         # the nice value job threads run at (unless their thread was already nicer)


def lower_thread_priority(nice: int = JOB_NICENESS) -> int | None:
    """Set the calling thread's nice value to `nice` if it is lower (a thread never gets a higher priority here)
    and return the value in force; None where the platform has no per-thread priority (Linux keeps one nice
    value per thread, setpriority(2); threads and processes it starts later inherit it).

    A job's thread calls it first, so the page script runs that share the server process with the jobs (and
    the machine's other programs) come before a training loop when the cores are busy; the job still gets
    every cycle nothing else wants. Raises nothing."""
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return None
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        return max(current, nice)
    except OSError:
        return None


def error_text(e: BaseException) -> str:
    """What a user sees for a failed job: the message (plus the type for unexpected exceptions)."""
    msg = str(e).strip()
    if isinstance(e, (ValueError, RuntimeError, OSError, LookupError)) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class JobRunner:
    """Runs registered job kinds in background threads; see the engine.jobs docstring."""

    def __init__(self, store: Store, device: torch.device | str = "auto", max_cpu_jobs: int = 4):
        from engine.device import resolve_device

        self.store = store
        self.device = resolve_device(device)
        self.max_cpu_jobs = max(1, int(max_cpu_jobs))
        self._owner = OwnerLock(store.workspace)
        self.token = self._owner.token
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._kinds: dict[str, JobKind] = {}
        self._live: dict[int, LiveJob] = {}
        self._queue: list[int] = []
        self._gpu_busy = False
        self._cpu_running = 0
        self._foreign = ForeignJobs(store, self._owner.alive)
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self.interrupted: list[int] = store.interrupt_orphans(self._owner.alive)
        self._owner.sweep_dead()  # lock files of runners that died owning no job
        # temp files of writers killed mid-write (never a live writer's: see engine.atomic)
        self.removed_temps: list[Path] = remove_stale_temps(store.workspace)
        # pixel files of imports killed before their rows committed (never a live import's: see Store)
        self.removed_orphans: OrphanReport = remove_orphan_files(store)

    # ------------------------------------------------------------------------------ registration

    def register(self, kind: str, fn: JobFn, uses_gpu: bool, on_submit: OnSubmit | None = None,
                 params_type: type[JobParams] | None = None) -> None:
        """Register (or replace) a job kind. `fn(params, ctx)` returns the result (a JSON-able mapping).

        params_type: the kind's JobParams class; `submit` then validates the params into it (once),
        stores its `to_json()`, and `fn` gets an instance. Without it `fn` gets the stored dict.
        on_submit(params, job_id, runner): runs in `submit` once the job has an id and before it is
        queued (e.g. to reserve the name of what it will write); when it raises, the job is deleted
        and `submit` raises that error."""
        with self._lock:
            self._kinds[kind] = JobKind(fn, uses_gpu, params_type, on_submit)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def _kind(self, kind: str) -> JobKind:
        try:
            return self._kinds[kind]
        except KeyError:
            known = ", ".join(self.kinds) or "none"
            raise ValueError(f"unknown job kind {kind!r}; registered kinds: {known}") from None

    def _device_for(self, uses_gpu: bool) -> torch.device:
        import torch

        return self.device if uses_gpu else torch.device("cpu")

    def workdir(self, job_id: int) -> Path:
        return self.store.workspace / "runs" / f"job-{int(job_id)}"

    # ------------------------------------------------------------------------------------ submit

    def submit(self, kind: str, params: JobParams | Mapping[str, Any] | None = None) -> int:
        """Queue a job; returns its id. `params`: the kind's JobParams (or a JSON object it is built
        from); for kinds without a params class a JSON-able dict (it is stored).

        Raises ValueError for an unknown kind, invalid params or params that are not JSON-able, and
        whatever the kind's `on_submit` check raises (e.g. `engine.reservations.NameTakenError`); a
        refused job leaves no row behind."""
        if self._closed:
            raise RuntimeError("this JobRunner was shut down; create a new one")
        spec = self._kind(kind)
        if spec.params_type is not None:
            typed: JobParams | dict[str, Any] = spec.params_type.from_json(params)
            stored = typed.to_json()
        else:
            if isinstance(params, JobParams):
                params = params.to_json()
            typed = stored = dict(params or {})
            try:
                json.dumps(stored)
            except (TypeError, ValueError) as e:
                raise ValueError(f"job params must be JSON-able (numbers, strings, lists, dicts): {e}") from None
        job_id = self.store.create_job(kind, stored, device=str(self._device_for(spec.uses_gpu)), owner=self.token)
        if spec.on_submit is not None:
            try:
                spec.on_submit(typed, job_id, self)
            except BaseException:
                self.store.delete_job(job_id)
                raise
        row = self.store.job(job_id)
        assert row is not None
        self._start(self._new_live(Tracker(row), spec, resume=False))
        return job_id

    def resume(self, job_id: int) -> int:
        """Re-run an interrupted, cancelled or failed job under the same id with ctx.resume=True.
        Returns the job id (the same one)."""
        job_id = int(job_id)
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        spec = self._kind(row["kind"])
        with self._lock:
            live = self._live.get(job_id)
            if live is not None and not live.done.is_set():
                raise ValueError(f"job {job_id} is still {live.tracker.state}; only finished jobs can be resumed")
        if row["state"] not in RESUMABLE_STATES:
            raise ValueError(f"job {job_id} is {row['state']}; only {', '.join(RESUMABLE_STATES)} jobs can be resumed")
        if not self.store.transition_job(job_id, RESUMABLE_STATES, state="queued", owner=self.token, error=None,
                                         cancel_requested=0, device=str(self._device_for(spec.uses_gpu))):
            raise ValueError(f"job {job_id} was resumed or changed by someone else meanwhile")
        tracker = self._foreign.rebuild(job_id)
        tracker.state, tracker.error, tracker.result = "queued", None, None
        self._foreign.forget(job_id)
        self._start(self._new_live(tracker, spec, resume=True))
        return job_id

    def _new_live(self, tracker: Tracker, spec: JobKind, resume: bool) -> LiveJob:
        return LiveJob(tracker=tracker, fn=spec.fn, params_type=spec.params_type, uses_gpu=spec.uses_gpu,
                       resume=resume, store=self.store, workdir=self.workdir(tracker.id), lock=self._lock)

    def _start(self, live: LiveJob) -> None:
        job_id = live.tracker.id
        with self._cond:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True, name="jobs-cancel-watch")
                self._watcher.start()
            self._live[job_id] = live
            self._queue.append(job_id)
            live.thread = threading.Thread(target=self._run, args=(live,), daemon=True,
                                           name=f"job-{job_id}-{live.tracker.kind}")
            live.thread.start()

    # ------------------------------------------------------------------------------ worker side

    def _can_start(self, live: LiveJob) -> bool:
        same_class = [j for j in self._queue if self._live[j].uses_gpu == live.uses_gpu]
        if not same_class or same_class[0] != live.tracker.id:
            return False
        return not self._gpu_busy if live.uses_gpu else self._cpu_running < self.max_cpu_jobs

    def _take_slot(self, live: LiveJob) -> bool:
        """Wait for the job's turn and take its slot; False when it was cancelled while queued."""
        t = live.tracker
        with self._cond:
            while not self._can_start(live) and not live.stop.is_set():
                self._cond.wait(timeout=1.0)
            self._queue.remove(t.id)
            if live.stop.is_set():
                t.state = "cancelled"
                self._cond.notify_all()
                return False
            if live.uses_gpu:
                self._gpu_busy = True
            else:
                self._cpu_running += 1
            t.state = "running"
            t.runs += 1
            return True

    def _free_slot(self, live: LiveJob) -> None:
        with self._cond:
            if live.uses_gpu:
                self._gpu_busy = False
            else:
                self._cpu_running -= 1
            self._cond.notify_all()

    def _run(self, live: LiveJob) -> None:
        """The job's thread: wait for a slot, call the function, record how it ended."""
        t = live.tracker
        lower_thread_priority()
        if not self._take_slot(live):
            self._finish(live, "cancelled", Event(message="cancelled before it started", kind="log"))
            return
        started = time.time()
        try:
            live.workdir.mkdir(parents=True, exist_ok=True)
            live.persist(Event(message=("resumed" if live.resume else "started") + f" on {t.device}", kind="log"),
                         state="running", runs=t.runs)
            ctx = JobContext(job_id=t.id, device=self._device_for(live.uses_gpu), on_event=live.on_event,
                             stop=live.stop, resume=live.resume, workdir=live.workdir, store=self.store)
            params = live.params_type.from_json(t.params, strict=False) if live.params_type else dict(t.params)
            result = live.fn(params, ctx)
            if result is not None and not isinstance(result, Mapping):
                result = {"value": result}
            t.result = None if result is None else json.loads(json.dumps(dict(result), default=str))
            state, final = "done", Event(message=f"done in {_duration(time.time() - started)}", kind="log")
        except Cancelled:
            state, final = "cancelled", Event(message="cancelled; resume continues from the saved state", kind="log")
        except BaseException as e:  # noqa: BLE001 - a job's failure must never kill the runner
            t.error = error_text(e)
            append_log(live.workdir, [f"{stamp(time.time())} FAILED\n{traceback.format_exc()}"])
            state, final = "failed", Event(message=t.error, level="error", kind="log")
        finally:
            self._free_slot(live)
        self._finish(live, state, final)

    def _finish(self, live: LiveJob, state: str, final: Event) -> None:
        t = live.tracker
        with self._lock:
            t.state = state
        try:
            for attempt in range(3):  # the final state must reach the store; retry a busy/failing write
                try:
                    if attempt == 0:
                        live.persist(final, state=state, error=t.error, result=t.result, owner=None,
                                     cancel_requested=0)
                    else:
                        live.flush(state=state, error=t.error, result=t.result, owner=None, cancel_requested=0)
                    break
                except Exception:  # noqa: BLE001
                    if attempt == 2:
                        raise
                    time.sleep(1.0)
        finally:
            live.done.set()
            with self._cond:
                self._cond.notify_all()

    def _watch(self) -> None:
        """Background upkeep of this runner's jobs: write events left pending by a job that went
        quiet (so the last event always reaches the store), and pick up cancel requests other
        runners (processes) left in the store."""
        last_poll = 0.0
        while not self._stopped.wait(FLUSH_INTERVAL_S):
            with self._lock:
                active = [lv for lv in self._live.values() if not lv.done.is_set()]
            now = time.monotonic()
            for lv in active:
                if lv.pending and now - lv.last_flush >= FLUSH_INTERVAL_S:
                    lv.flush()
            if now - last_poll < CANCEL_POLL_S:
                continue
            last_poll = now
            ids = [lv.tracker.id for lv in active if not lv.stop.is_set()]
            try:
                wanted = self.store.cancel_requests(ids)
            except Exception:  # noqa: BLE001 - a busy store only delays a cancel
                continue
            if wanted:
                with self._cond:
                    for j in wanted:
                        self._live[j].stop.set()
                    self._cond.notify_all()

    # ------------------------------------------------------------------------------- watch side

    def snapshot(self, job_id: int) -> JobSnapshot:
        """A copy of the job's state: live from memory when this runner runs it, else rebuilt from
        the store (incrementally, from the events it has not folded in yet). Raises KeyError for an
        unknown id."""
        job_id = int(job_id)
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                return live.tracker.snapshot()
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        return self._foreign.snapshot(row)

    def jobs(self, limit: int | None = 200) -> list[JobSnapshot]:
        """Snapshots of the workspace's jobs, newest first."""
        out = []
        for row in self.store.jobs(limit=limit):
            with self._lock:
                live = self._live.get(int(row["id"]))
                snap = live.tracker.snapshot() if live is not None else None
            out.append(snap if snap is not None else self._foreign.snapshot(row))
        return out

    def cancel(self, job_id: int) -> bool:
        """Ask a queued or running job to stop (it becomes `cancelled`). Works for jobs of another
        runner too (through the store). Returns False when the job was not active."""
        job_id = int(job_id)
        with self._cond:
            live = self._live.get(job_id)
            if live is not None:
                if live.done.is_set():
                    return False
                live.stop.set()
                self._cond.notify_all()
                return True
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        if row["state"] not in ACTIVE_STATES:
            return False
        self.store.update_job(job_id, cancel_requested=1)
        return True

    def wait(self, job_id: int, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has finished (or `timeout` seconds passed); returns its snapshot."""
        job_id = int(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            live.done.wait(timeout)
            return self.snapshot(job_id)
        while True:
            snap = self.snapshot(job_id)
            if not snap.active or (deadline is not None and time.monotonic() >= deadline):
                return snap
            time.sleep(0.1)

    # ---------------------------------------------------------------------------------- shutdown

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel this runner's active jobs, wait for their threads, release the owner lock."""
        self._closed = True
        self._owner.closed = True  # from now on its own jobs count as orphans
        self._stopped.set()
        with self._cond:
            lives = [lv for lv in self._live.values() if not lv.done.is_set()]
            for lv in lives:
                lv.stop.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for lv in lives:
            lv.done.wait(max(0.0, deadline - time.monotonic()))
        self._owner.release()

    def interrupt_all(self, timeout: float = 30.0) -> list[int]:
        """Stop this runner's active jobs at their next step (each saves a resumable state) and record
        them as `interrupted`, so that after a restart they offer Resume. A job that fails while the
        process shuts down (its thread pools refuse work) counts as interrupted too."""
        try:
            active = [j["id"] for j in self.store.jobs(states=("queued", "running")) if j["owner"] == self.token]
            self.shutdown(timeout=timeout)
            for jid in active:
                if self.store.transition_job(jid, ("queued", "running", "cancelled", "failed"), state="interrupted",
                                             owner=None, error=None):
                    self.store.add_event(jid, Event(message="the server stopped; resume continues from the saved "
                                                            "state", kind="log"))
            return active
        except Exception:  # noqa: BLE001 - best effort while the process exits; a restart marks orphans anyway
            return []

    def interrupt_on_exit(self, timeout: float = 30.0) -> None:
        """Run `interrupt_all` when the process exits normally (Ctrl-C, SIGTERM), *before* the standard
        library shuts its thread pools down (engine.jobs.exit_hook says why and how)."""
        run_before_thread_shutdown(lambda: self.interrupt_all(timeout))


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(math.floor(s)), 60)
    return f"{m} min {s} s" if m < 60 else f"{m // 60} h {m % 60} min"
