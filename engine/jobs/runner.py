"""Background job runner: long engine work in threads, watched through thread-safe snapshots.

    runner = JobRunner(store, device="auto")
    runner.register("pretrain", pretrain_fn, uses_gpu=True)   # fn(params: dict, ctx: JobContext) -> dict
    job_id = runner.submit("pretrain", {"method": "moco_v2", "epochs": 5})
    snap = runner.snapshot(job_id)      # state, progress, eta_s, metrics, history, log, warnings, error
    runner.cancel(job_id)               # sets ctx.stop; the function saves its state and raises Cancelled
    runner.resume(job_id)               # same job id, ctx.resume=True, same ctx.workdir

States: queued -> running -> done | failed | cancelled; a job that was queued or running when its
server process died becomes `interrupted` the next time a JobRunner opens the store. `resume` works
on interrupted, cancelled and failed jobs and re-runs the **same job id** (same kind, params and
`workdir = <workspace>/runs/job-<id>/`) with `ctx.resume=True`; its events continue the same stream.

Scheduling: jobs registered with `uses_gpu=True` run one at a time through one lock (also on a
CPU-only machine: two pretraining runs fighting over two cores help nobody); CPU jobs run beside
them, at most `max_cpu_jobs` at once. Waiting jobs stay `queued`, first come first served.

Persistence: every job and its events go to the store (`jobs`, `job_events`). Progress-only events
are coalesced to at most one write per FLUSH_INTERVAL_S per job; events with a message, warnings,
errors and the final state are always written. A second JobRunner (another process, another server)
sees the same jobs: `snapshot()` of a job it does not run is rebuilt from the stored events, and
`cancel()` of such a job sets a flag in the store that the owning runner polls (every CANCEL_POLL_S).

Liveness: each runner holds an exclusive file lock `<workspace>/runs/.runners/<token>.lock` for its
lifetime and stamps its token on the jobs it runs; the OS drops the lock when the process dies, so a
later runner can tell a dead owner from a live one without clocks or heartbeats.

Worker threads never touch streamlit. Failures keep the exception message as `error` (no
traceback); the full traceback goes to `<workdir>/job.log` with every logged message.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from engine.atomic import remove_stale_temps
from engine.events import Cancelled, Event, OnEvent
from engine.store import OrphanReport, Store, StoreError

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "JobContext", "JobRunner", "JobSnapshot"]

ACTIVE_STATES = frozenset({"queued", "running"})
FINAL_STATES = frozenset({"done", "failed", "cancelled", "interrupted"})
RESUMABLE_STATES = ("interrupted", "cancelled", "failed")
FLUSH_INTERVAL_S = 0.2    # at most ~5 coalesced DB writes per second per job
log = logging.getLogger(__name__)
LOG_TAIL = 50             # messages kept in a snapshot's log
MAX_WARNINGS = 100
HISTORY_CAP = 2000        # metric points kept; halved (every other point) when exceeded
ETA_SPACING_S = 0.25      # (time, step) samples for the rate are at least this far apart
# ETA smoothing: an exponential moving average of the step rate (steps/s). Each new sample, dt seconds
# after the previous one, gets weight min(ETA_ALPHA_MAX, 1 - exp(-dt / ETA_TAU_S)): fast jobs average
# over about ETA_TAU_S seconds, slow ones (a trial every few minutes) over the last few steps, so one
# slow or fast step moves the estimate by at most ETA_ALPHA_MAX of the difference.
ETA_TAU_S = 30.0
ETA_ALPHA_MAX = 0.3
REAP_INTERVAL_S = 5.0     # how often snapshots of other runners' active jobs check their owner
CANCEL_POLL_S = 0.5       # how often the store is asked for cancel requests from other runners


@dataclass(frozen=True)
class JobContext:
    """What a job function gets besides its params."""

    job_id: int
    device: Any                  # torch.device: the runner's device for uses_gpu jobs, cpu otherwise
    on_event: OnEvent            # report progress: ctx.on_event(Event(step=..., total=..., metrics=...))
    stop: threading.Event        # set by cancel(); check it between steps (engine.events.check_stop)
    resume: bool                 # True when re-run by resume(): continue from the state in workdir
    workdir: Path                # <workspace>/runs/job-<id>/, stable across resumes
    store: Store | None = None   # the workspace store (e.g. for import jobs)

    def log(self, message: str, level: str = "info") -> None:
        """Shorthand for a message event (level "warning" also lands in the snapshot's warnings)."""
        self.on_event(Event(message=message, level=level, kind="warning" if level == "warning" else "log"))


@dataclass(frozen=True)
class JobSnapshot:
    """A copy of one job's state; safe to keep and read from any thread."""

    id: int
    kind: str
    params: dict[str, Any]
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


class _Tracker:
    """Folds a job's events into the fields of a snapshot (used live and to rebuild from the store)."""

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
        t = float(ev.time)
        if ev.step is not None:
            step = int(ev.step)
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
        if ev.total is not None:
            self.total = int(ev.total)
        if ev.metrics:
            self.metrics = {k: float(v) for k, v in ev.metrics.items()}
            self._add_history({"step": float(self.step if self.step is not None else self._hist_seen),
                               "time": t, **self.metrics})
        if ev.message:
            self.message = ev.message
            stamp = time.strftime("%H:%M:%S", time.localtime(t))
            prefix = "WARNING: " if ev.level == "warning" else "ERROR: " if ev.level == "error" else ""
            self.log.append(f"{stamp} {prefix}{ev.message}")
            is_warning = ev.kind == "warning" or ev.level == "warning"
            if is_warning and (not self.warnings or self.warnings[-1] != ev.message):
                self.warnings.append(ev.message)
                del self.warnings[:-MAX_WARNINGS]
        self.updated = max(self.updated, t)

    def _add_history(self, point: dict[str, float]) -> None:
        self._hist_seen += 1
        if (self._hist_seen - 1) % self._hist_stride:
            return
        self.history.append(point)
        if len(self.history) > HISTORY_CAP:
            self.history = self.history[::2]
            self._hist_stride *= 2

    def eta(self, now: float) -> float | None:
        if self.state != "running" or not self.total or self.step is None or self._last is None:
            return None
        if not self._rate_ema or self._rate_ema <= 0:
            return None
        t1, s1 = self._last
        left = (self.total - s1) / self._rate_ema - (now - t1)
        return max(0.0, left)

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


def _event_from_stored(d: Mapping[str, Any]) -> Event:
    return Event(step=d["step"], total=d["total"], metrics=d["metrics"] or {}, message=d["message"] or "",
                 level=d["level"], kind=d["kind"], time=d["time"])


def _keep(ev: Event) -> bool:
    """Events always persisted (never coalesced away)."""
    return bool(ev.message) or ev.level != "info" or ev.kind in ("warning", "result", "log")


def error_text(e: BaseException) -> str:
    """What a user sees for a failed job: the message (plus the type for unexpected exceptions)."""
    msg = str(e).strip()
    if isinstance(e, (ValueError, RuntimeError, OSError, LookupError)) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


@dataclass
class _Live:
    """A job this runner owns: its tracker plus the machinery to run it."""

    tracker: _Tracker
    fn: Callable[[dict, JobContext], Any]
    uses_gpu: bool
    resume: bool
    stop: threading.Event = field(default_factory=threading.Event)
    pending: list[Event] = field(default_factory=list)
    last_flush: float = 0.0
    flush_lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)


class JobRunner:
    """Runs registered job kinds in background threads; see the module docstring."""

    def __init__(self, store: Store, device: Any = "auto", max_cpu_jobs: int = 4):
        from engine.device import resolve_device

        self.store = store
        self.device = resolve_device(device)
        self.max_cpu_jobs = max(1, int(max_cpu_jobs))
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._locks_dir = store.workspace / "runs" / ".runners"
        self._locks_dir.mkdir(parents=True, exist_ok=True)
        # thread_local=False: shutdown() may release it from another thread than the one that took it
        self._owner_lock = filelock.FileLock(self._locks_dir / f"{self.token}.lock", timeout=0, thread_local=False)
        self._owner_lock.acquire()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._fns: dict[str, tuple[Callable[[dict, JobContext], Any], bool]] = {}
        self._on_submit: dict[str, Callable[[dict, int, JobRunner], None]] = {}
        self._live: dict[int, _Live] = {}
        self._queue: list[int] = []
        self._gpu_busy = False
        self._cpu_running = 0
        self._foreign: dict[int, _Tracker] = {}
        self._last_reap = 0.0
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self.interrupted: list[int] = store.interrupt_orphans(self._owner_alive)
        for stale in self._locks_dir.glob("*.lock"):  # lock files of runners that died owning no job
            if stale.stem != self.token:
                self._owner_alive(stale.stem)
        # temp files of writers killed mid-write (never a live writer's: see engine.atomic)
        self.removed_temps: list[Path] = remove_stale_temps(store.workspace)
        # pixel files of imports killed before their rows committed (never a live import's: see Store)
        self.removed_orphans: OrphanReport = self._remove_orphans()

    def _remove_orphans(self) -> OrphanReport:
        """Store.remove_orphan_files, reported as one log line (logger `engine.jobs`); a busy database
        skips it until the next start."""
        try:
            report = self.store.remove_orphan_files()
        except StoreError as e:
            log.warning("orphan file cleanup skipped in %s: %s", self.store.workspace, e)
            return OrphanReport()
        if report.files:
            log.warning("%s: %s", self.store.workspace, report)
        else:
            log.info("%s: no orphan image files", self.store.workspace)
        return report

    # ------------------------------------------------------------------------------ registration

    def register(self, kind: str, fn: Callable[[dict, JobContext], Any], uses_gpu: bool,
                 on_submit: Callable[[dict, int, JobRunner], None] | None = None) -> None:
        """fn(params, ctx) -> dict (the result). Registering a kind again replaces it.

        `on_submit(params, job_id, runner)` runs in `submit` once the job has an id and before it is
        queued (e.g. to reserve the name of what it will write); when it raises, the job is deleted
        and `submit` raises that error. Without the argument, `fn.on_submit` is used when `fn` has one."""
        on_submit = on_submit or getattr(fn, "on_submit", None)
        with self._lock:
            self._fns[kind] = (fn, bool(uses_gpu))
            if on_submit is None:
                self._on_submit.pop(kind, None)
            else:
                self._on_submit[kind] = on_submit

    @property
    def kinds(self) -> list[str]:
        return sorted(self._fns)

    def _fn(self, kind: str) -> tuple[Callable[[dict, JobContext], Any], bool]:
        try:
            return self._fns[kind]
        except KeyError:
            known = ", ".join(self.kinds) or "none"
            raise ValueError(f"unknown job kind {kind!r}; registered kinds: {known}") from None

    def _device_for(self, uses_gpu: bool) -> Any:
        import torch

        return self.device if uses_gpu else torch.device("cpu")

    def workdir(self, job_id: int) -> Path:
        return self.store.workspace / "runs" / f"job-{int(job_id)}"

    # ------------------------------------------------------------------------------------ submit

    def submit(self, kind: str, params: Mapping[str, Any] | None = None) -> int:
        """Queue a job; returns its id. `params` must be JSON-able (they are stored).

        Raises ValueError for an unknown kind or params that are not JSON-able, and whatever the
        kind's `on_submit` check raises (e.g. `engine.reservations.NameTakenError`); a refused job
        leaves no row behind."""
        if self._closed:
            raise RuntimeError("this JobRunner was shut down; create a new one")
        fn, uses_gpu = self._fn(kind)
        params = dict(params or {})
        try:
            json.dumps(params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"job params must be JSON-able (numbers, strings, lists, dicts): {e}") from None
        job_id = self.store.create_job(kind, params, device=str(self._device_for(uses_gpu)), owner=self.token)
        check = self._on_submit.get(kind)
        if check is not None:
            try:
                check(params, job_id, self)
            except BaseException:
                self.store.delete_job(job_id)
                raise
        row = self.store.job(job_id)
        assert row is not None
        self._start(_Live(tracker=_Tracker(row), fn=fn, uses_gpu=uses_gpu, resume=False))
        return job_id

    def resume(self, job_id: int) -> int:
        """Re-run an interrupted, cancelled or failed job under the same id with ctx.resume=True.
        Returns the job id (the same one)."""
        job_id = int(job_id)
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        fn, uses_gpu = self._fn(row["kind"])
        with self._lock:
            live = self._live.get(job_id)
            if live is not None and not live.done.is_set():
                raise ValueError(f"job {job_id} is still {live.tracker.state}; only finished jobs can be resumed")
        if row["state"] not in RESUMABLE_STATES:
            raise ValueError(f"job {job_id} is {row['state']}; only {', '.join(RESUMABLE_STATES)} jobs can be resumed")
        if not self.store.transition_job(job_id, RESUMABLE_STATES, state="queued", owner=self.token, error=None,
                                         cancel_requested=0, device=str(self._device_for(uses_gpu))):
            raise ValueError(f"job {job_id} was resumed or changed by someone else meanwhile")
        tracker = self._rebuild(job_id)
        tracker.state, tracker.error, tracker.result = "queued", None, None
        with self._lock:
            self._foreign.pop(job_id, None)
        self._start(_Live(tracker=tracker, fn=fn, uses_gpu=uses_gpu, resume=True))
        return job_id

    def _start(self, live: _Live) -> None:
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

    def _can_start(self, live: _Live) -> bool:
        same_class = [j for j in self._queue if self._live[j].uses_gpu == live.uses_gpu]
        if not same_class or same_class[0] != live.tracker.id:
            return False
        return not self._gpu_busy if live.uses_gpu else self._cpu_running < self.max_cpu_jobs

    def _run(self, live: _Live) -> None:
        t = live.tracker
        with self._cond:
            while not self._can_start(live) and not live.stop.is_set():
                self._cond.wait(timeout=1.0)
            self._queue.remove(t.id)
            if live.stop.is_set():
                t.state = "cancelled"
                self._cond.notify_all()
        if t.state == "cancelled":
            self._finish(live, "cancelled", Event(message="cancelled before it started", kind="log"))
            return
        with self._cond:
            if live.uses_gpu:
                self._gpu_busy = True
            else:
                self._cpu_running += 1
            t.state = "running"
            t.runs += 1
        workdir = self.workdir(t.id)
        started = time.time()
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            self._persist(live, Event(message=("resumed" if live.resume else "started") + f" on {t.device}",
                                      kind="log"),
                          state="running", runs=t.runs)
            ctx = JobContext(job_id=t.id, device=self._device_for(live.uses_gpu),
                             on_event=lambda ev: self._on_event(live, ev), stop=live.stop, resume=live.resume,
                             workdir=workdir, store=self.store)
            result = live.fn(dict(t.params), ctx)
            if result is not None and not isinstance(result, Mapping):
                result = {"value": result}
            t.result = None if result is None else json.loads(json.dumps(dict(result), default=str))
            state, final = "done", Event(message=f"done in {_duration(time.time() - started)}", kind="log")
        except Cancelled:
            state, final = "cancelled", Event(message="cancelled; resume continues from the saved state", kind="log")
        except BaseException as e:  # noqa: BLE001 - a job's failure must never kill the runner
            t.error = error_text(e)
            self._append_log(workdir, [f"{_stamp(time.time())} FAILED\n{traceback.format_exc()}"])
            state, final = "failed", Event(message=t.error, level="error", kind="log")
        finally:
            with self._cond:
                if live.uses_gpu:
                    self._gpu_busy = False
                else:
                    self._cpu_running -= 1
                self._cond.notify_all()
        self._finish(live, state, final)

    def _finish(self, live: _Live, state: str, final: Event) -> None:
        t = live.tracker
        with self._lock:
            t.state = state
        try:
            for attempt in range(3):  # the final state must reach the store; retry a busy/failing write
                try:
                    if attempt == 0:
                        self._persist(live, final, state=state, error=t.error, result=t.result, owner=None,
                                      cancel_requested=0)
                    else:
                        self._flush(live, state=state, error=t.error, result=t.result, owner=None,
                                    cancel_requested=0)
                    break
                except Exception:  # noqa: BLE001
                    if attempt == 2:
                        raise
                    time.sleep(1.0)
        finally:
            live.done.set()
            with self._cond:
                self._cond.notify_all()

    def _on_event(self, live: _Live, ev: Event | Mapping[str, Any]) -> None:
        if not isinstance(ev, Event):
            ev = Event(**dict(ev))
        with self._lock:
            live.tracker.apply(ev)
            if not _keep(ev) and live.pending and not _keep(live.pending[-1]):
                live.pending[-1] = ev  # coalesce progress-only events: the latest one wins
            else:
                live.pending.append(ev)
        urgent = ev.level in ("warning", "error") or ev.kind == "warning"
        if urgent or time.monotonic() - live.last_flush >= FLUSH_INTERVAL_S:
            self._flush(live)

    def _flush(self, live: _Live, **job_fields: Any) -> None:
        """Write pending events (and job fields) in one transaction; pick up cross-process cancels."""
        t = live.tracker
        with live.flush_lock:
            with self._lock:
                events, live.pending = live.pending, []
                fields = {"step": t.step, "total": t.total, **job_fields}
            try:
                self.store.add_events(t.id, events, **fields)
            except Exception as e:  # noqa: BLE001 - keep the job running; retry at the next flush
                with self._lock:
                    live.pending[:0] = events
                    msg = f"could not record progress in the store ({e}); will retry"
                    if msg not in t.warnings:
                        t.warnings.append(msg)
                if job_fields:
                    raise
                return
            finally:
                live.last_flush = time.monotonic()
            self._append_log(self.workdir(t.id), [_line(e) for e in events if e.message])

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
                    self._flush(lv)
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

    def _persist(self, live: _Live, ev: Event, **job_fields: Any) -> None:
        with self._lock:
            live.tracker.apply(ev)
            live.pending.append(ev)
        self._flush(live, **job_fields)

    @staticmethod
    def _append_log(workdir: Path, lines: list[str]) -> None:
        if not lines:
            return
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            with open(workdir / "job.log", "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError:
            pass  # the log file is a convenience; the store has the events

    # ------------------------------------------------------------------------------- watch side

    def snapshot(self, job_id: int) -> JobSnapshot:
        """A copy of the job's state: live from memory when this runner runs it, else rebuilt from
        the store (incrementally, from the events it has not folded in yet)."""
        job_id = int(job_id)
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                return live.tracker.snapshot()
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        return self._foreign_snapshot(row)

    def jobs(self, limit: int | None = 200) -> list[JobSnapshot]:
        """Snapshots of the workspace's jobs, newest first."""
        out = []
        for row in self.store.jobs(limit=limit):
            with self._lock:
                live = self._live.get(int(row["id"]))
                snap = live.tracker.snapshot() if live is not None else None
            out.append(snap if snap is not None else self._foreign_snapshot(row))
        return out

    def _rebuild(self, job_id: int) -> _Tracker:
        row = self.store.job(job_id)
        if row is None:
            raise KeyError(f"no job {job_id} in this workspace")
        t = _Tracker(row)
        for d in self.store.events(job_id):
            t.apply(_event_from_stored(d))
            t.last_seq = d["seq"]
        t.state, t.error, t.result, t.runs = row["state"], row["error"], row["result"], int(row["runs"])
        return t

    def _foreign_snapshot(self, row: Mapping[str, Any]) -> JobSnapshot:
        job_id = int(row["id"])
        if row["state"] in ACTIVE_STATES and time.monotonic() - self._last_reap >= REAP_INTERVAL_S:
            self._last_reap = time.monotonic()
            if self.store.interrupt_orphans(self._owner_alive):
                row = self.store.job(job_id) or row
        with self._lock:
            t = self._foreign.get(job_id)
        if t is None:
            t = _Tracker(row)
        if t.updated != row["updated"] or t.state != row["state"] or t.last_seq == 0:
            for d in self.store.events(job_id, after_seq=t.last_seq):
                t.apply(_event_from_stored(d))
                t.last_seq = d["seq"]
            t.state, t.error, t.result = row["state"], row["error"], row["result"]
            t.step, t.total, t.runs, t.device = row["step"], row["total"], int(row["runs"]), row["device"]
            t.updated = row["updated"]
        with self._lock:
            self._foreign[job_id] = t
            return t.snapshot()

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

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel this runner's active jobs, wait for their threads, release the owner lock."""
        self._closed = True
        self._stopped.set()
        with self._cond:
            lives = [lv for lv in self._live.values() if not lv.done.is_set()]
            for lv in lives:
                lv.stop.set()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for lv in lives:
            lv.done.wait(max(0.0, deadline - time.monotonic()))
        if self._owner_lock.is_locked:
            self._owner_lock.release()

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
        library shuts its thread pools down. Plain `atexit` runs too late: by then a job's data-loading
        pool already refuses work and the job would end as failed. `threading._register_atexit` hooks run
        first, newest first, at interpreter shutdown (concurrent.futures itself uses it)."""
        register = getattr(threading, "_register_atexit", None)
        if register is None:  # not CPython: the next start marks the jobs interrupted instead
            import atexit

            register = atexit.register
        register(lambda: self.interrupt_all(timeout))

    # ---------------------------------------------------------------------------------- liveness

    def _owner_alive(self, owner: str | None) -> bool:
        if not owner:
            return False
        if owner == self.token:
            return not self._closed
        path = self._locks_dir / f"{owner}.lock"
        if not path.exists():
            return False
        probe = filelock.FileLock(path, timeout=0)
        try:
            probe.acquire()
        except filelock.Timeout:
            return True
        try:
            probe.release()
        finally:
            path.unlink(missing_ok=True)
        return False


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _line(ev: Event) -> str:
    return f"{_stamp(ev.time)} {ev.level.upper():7s} {ev.message}"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(math.floor(s)), 60)
    return f"{m} min {s} s" if m < 60 else f"{m // 60} h {m % 60} min"
