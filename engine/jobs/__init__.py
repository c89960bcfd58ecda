"""Background job runner: long engine work in threads, watched through thread-safe snapshots.

    runner = JobRunner(store, device="auto")
    runner.register("pretrain", run_pretrain, uses_gpu=True, params_type=PretrainParams)
    job_id = runner.submit("pretrain", PretrainParams(method="moco_v2", out_name="mine", epochs=5))
    snap = runner.snapshot(job_id)      # state, progress, eta_s, metrics, history, log, warnings, error
    runner.cancel(job_id)               # sets ctx.stop; the function saves its state and raises Cancelled
    runner.resume(job_id)               # same job id, ctx.resume=True, same ctx.workdir

Modules (one concept each):
    params.py     JobParams: the frozen, validated params dataclass each job kind subclasses (to/from JSON)
    context.py    JobContext (what a job function gets), JobFn / OnSubmit protocols, JobKind (a registration)
    tracker.py    JobSnapshot and Tracker: events folded into progress, ETA, history, log, warnings
    live.py       LiveJob: an owned job's thread state and its coalesced event writes to the store
    foreign.py    ForeignJobs: snapshots of other runners' jobs rebuilt from the stored events
    liveness.py   OwnerLock: which runners are alive (a file lock per runner)
    exit_hook.py  the one private standard-library hook (run before thread pools shut down), isolated
    cleanup.py    what a runner removes when it opens a workspace (orphan pixel files), logged
    runner.py     JobRunner: registration, submit/resume, scheduling, cancel, wait, shutdown

States: queued -> running -> done | failed | cancelled; a job that was queued or running when its
server process died becomes `interrupted` the next time a JobRunner opens the store. `resume` works
on interrupted, cancelled and failed jobs and re-runs the **same job id** (same kind, params and
`workdir = <workspace>/runs/job-<id>/`) with `ctx.resume=True`; its events continue the same stream.

Typed params: a kind registered with `params_type` gets its params validated once at `submit` (a
ValueError refuses the job, no row is written), stored as that class's `to_json()` (a JSON object, as
before params were typed, so old rows load and resume) and handed to the function as an instance.

Scheduling: jobs registered with `uses_gpu=True` run one at a time through one lock (also on a
CPU-only machine: two pretraining runs fighting over two cores help nobody); CPU jobs run beside
them, at most `max_cpu_jobs` at once. Waiting jobs stay `queued`, first come first served. Job threads run
at nice JOB_NICENESS (runner.lower_thread_priority), so page script runs in the same process come first.

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

from engine.jobs.context import JobContext, JobFn, JobKind, OnSubmit
from engine.jobs.foreign import REAP_INTERVAL_S
from engine.jobs.live import FLUSH_INTERVAL_S
from engine.jobs.params import JobParams
from engine.jobs.runner import CANCEL_POLL_S, JobRunner, error_text
from engine.jobs.tracker import (ACTIVE_STATES, ETA_ALPHA_MAX, ETA_SPACING_S, ETA_TAU_S, FINAL_STATES, HISTORY_CAP,
                                 LOG_TAIL, MAX_WARNINGS, RESUMABLE_STATES, JobSnapshot, Tracker)

_Tracker = Tracker  # the name tests and older code import

__all__ = ["ACTIVE_STATES", "CANCEL_POLL_S", "ETA_ALPHA_MAX", "ETA_SPACING_S", "ETA_TAU_S", "FINAL_STATES",
           "FLUSH_INTERVAL_S", "HISTORY_CAP", "LOG_TAIL", "MAX_WARNINGS", "REAP_INTERVAL_S", "RESUMABLE_STATES",
           "JobContext", "JobFn", "JobKind", "JobParams", "JobRunner", "JobSnapshot", "OnSubmit", "Tracker",
           "error_text"]
