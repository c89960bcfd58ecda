"""engine.jobs: a real stepwise job through the whole state machine, persistence, restart + resume,
scheduling (CPU overlap, GPU serialization), throttled event writes."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

from engine.events import Event, check_stop
from engine.jobs import HISTORY_CAP, JobContext, JobRunner, _Tracker
from engine.store import Store

BARRIERS: dict[str, threading.Barrier] = {}
GATES: dict[str, threading.Event] = {}
RUNNING = {"now": 0, "max": 0}
RUNNING_LOCK = threading.Lock()


def squares(params: dict, ctx: JobContext) -> dict:
    """Sum of i*i for i < n, one step at a time, resumable from <workdir>/state.json.

    params: n; pause_at (block at that step until stopped, first run only); fail_at (raise there).
    """
    n = int(params["n"])
    state_file = ctx.workdir / "state.json"
    start, acc = 0, 0
    if ctx.resume and state_file.exists():
        start, acc = json.loads(state_file.read_text())
    ctx.log(f"starting at step {start}")
    for i in range(start, n):
        if params.get("fail_at") == i:
            raise ValueError(f"step {i} failed: the value of fail_at asked for it")
        acc += i * i
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([i + 1, acc]))
        tmp.replace(state_file)
        ctx.on_event(Event(step=i + 1, total=n, metrics={"acc": float(acc)}))
        if params.get("pause_at") == i + 1 and not ctx.resume:
            ctx.stop.wait(60)  # blocked mid-way until cancelled (or the process is killed)
        check_stop(ctx.stop)
    return {"acc": acc, "started_at": start}


def meet(params: dict, ctx: JobContext) -> dict:
    """Returns only if another job reaches the same barrier while this one waits (proves overlap)."""
    BARRIERS[params["barrier"]].wait(timeout=20)
    return {"met": True}


def exclusive(params: dict, ctx: JobContext) -> dict:
    """Counts how many of these run at once; holds until its gate opens."""
    with RUNNING_LOCK:
        RUNNING["now"] += 1
        RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    try:
        ctx.on_event(Event(step=1, total=2, message="holding the device"))
        assert GATES[params["gate"]].wait(20)
    finally:
        with RUNNING_LOCK:
            RUNNING["now"] -= 1
    return {"ok": True}


def chatty(params: dict, ctx: JobContext) -> dict:
    """Many progress events in a burst, three warnings among them."""
    n = int(params["n"])
    for i in range(n):
        ctx.on_event(Event(step=i + 1, total=n, metrics={"loss": 1.0 / (i + 1)}))
        if i in (10, 500, n - 2):
            ctx.on_event(Event(step=i + 1, total=n, message=f"collapse warning {i}", level="warning", kind="warning"))
    return {"n": n}


def wait_until(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws")
    yield s
    s.close()


@pytest.fixture
def runner(store):
    r = JobRunner(store, device="cpu")
    r.register("squares", squares, uses_gpu=False)
    yield r
    r.shutdown()


def test_job_runs_to_done_and_is_recorded(store, runner):
    job = runner.submit("squares", {"n": 30})
    snap = runner.wait(job, timeout=30)
    assert snap.state == "done" and snap.error is None
    assert snap.result == {"acc": sum(i * i for i in range(30)), "started_at": 0}
    assert (snap.step, snap.total, snap.progress) == (30, 30, 1.0)
    assert snap.metrics == {"acc": float(sum(i * i for i in range(30)))}
    assert [p["step"] for p in snap.history] == list(range(1, 31))
    assert any("starting at step 0" in line for line in snap.log) and "done in" in snap.log[-1]
    assert (runner.workdir(job) / "job.log").read_text().count("\n") >= 3

    row = store.job(job)
    assert row["state"] == "done" and row["result"] == snap.result and row["step"] == 30
    # A second runner (another server process) sees the same job, rebuilt from the stored events.
    other = JobRunner(store, device="cpu")
    try:
        seen = other.snapshot(job)
        assert (seen.state, seen.result, seen.step, seen.total) == ("done", snap.result, 30, 30)
        assert seen.history[-1]["acc"] == snap.metrics["acc"] and seen.log[-1].endswith(snap.log[-1].split(" ", 1)[1])
        assert [s.id for s in other.jobs()] == [job]
    finally:
        other.shutdown()
    with pytest.raises(ValueError, match="unknown job kind 'nope'; registered kinds: squares"):
        runner.submit("nope", {})
    with pytest.raises(ValueError, match="JSON"):
        runner.submit("squares", {"n": object()})


def test_cancel_mid_way_then_resume_finishes(store, runner):
    job = runner.submit("squares", {"n": 12, "pause_at": 5})
    wait_until(lambda: runner.snapshot(job).step == 5)
    assert runner.snapshot(job).state == "running"
    assert runner.cancel(job)
    snap = runner.wait(job, timeout=20)
    assert snap.state == "cancelled" and snap.error is None and snap.resumable
    assert json.loads((runner.workdir(job) / "state.json").read_text()) == [5, sum(i * i for i in range(5))]
    assert store.job(job)["state"] == "cancelled"
    assert not runner.cancel(job)

    assert runner.resume(job) == job
    snap = runner.wait(job, timeout=20)
    assert snap.state == "done" and snap.runs == 2
    assert snap.result == {"acc": sum(i * i for i in range(12)), "started_at": 5}
    with pytest.raises(ValueError, match="only interrupted, cancelled, failed"):
        runner.resume(job)


def test_failing_job_keeps_message_and_logs_traceback(store, runner):
    job = runner.submit("squares", {"n": 10, "fail_at": 3})
    snap = runner.wait(job, timeout=20)
    assert snap.state == "failed"
    assert snap.error == "step 3 failed: the value of fail_at asked for it"
    assert store.job(job)["error"] == snap.error and "ERROR: step 3 failed" in snap.log[-1]
    log = (runner.workdir(job) / "job.log").read_text()
    assert "Traceback (most recent call last)" in log and "fail_at" in log

    runner.register("boom", lambda p, c: 1 / 0, uses_gpu=False)
    snap = runner.wait(runner.submit("boom", {}), timeout=20)
    assert snap.state == "failed" and snap.error == "ZeroDivisionError: division by zero"


@pytest.mark.skipif(not hasattr(threading, "get_native_id") or not hasattr(os, "setpriority"),
                    reason="per-thread priorities are a Linux feature")
def test_jobs_run_at_job_niceness_and_never_raise_their_thread_priority(store, runner):
    """A job's thread runs at nice JOB_NICENESS (page script runs in the same process come first); one started
    from an already nicer thread keeps that thread's value; the thread that submitted is left as it was."""
    from engine.jobs.runner import JOB_NICENESS

    def own_nice(tid: int | None = None) -> int:
        return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())

    runner.register("nice", lambda p, c: {"nice": own_nice()}, uses_gpu=False)
    before = own_nice()
    snap = runner.wait(runner.submit("nice", {}), timeout=20)
    assert snap.state == "done" and snap.result["nice"] == max(before, JOB_NICENESS)
    assert own_nice() == before

    box: dict = {}

    def submit_from_a_nicer_thread() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, JOB_NICENESS + 5))
        box["job"] = runner.submit("nice", {})

    t = threading.Thread(target=submit_from_a_nicer_thread)
    t.start()
    t.join()
    snap = runner.wait(box["job"], timeout=20)
    assert snap.state == "done" and snap.result["nice"] == min(19, JOB_NICENESS + 5)


def _serve(workspace: str, job_box) -> None:
    """Child process: a server whose job pauses at step 3 until the parent kills the process."""
    store = Store(Path(workspace))
    runner = JobRunner(store, device="cpu")
    runner.register("squares", squares, uses_gpu=False)
    job_box.value = runner.submit("squares", {"n": 8, "pause_at": 3})
    time.sleep(120)


def test_server_restart_marks_interrupted_and_resume_continues(store):
    ctx = mp.get_context("spawn")
    job_box = ctx.Value("i", 0)
    proc = ctx.Process(target=_serve, args=(str(store.workspace), job_box), daemon=True)
    proc.start()
    try:
        wait_until(lambda: job_box.value and (store.job(job_box.value) or {}).get("step") == 3, timeout=60)
        job = job_box.value
        # A second runner while the first process lives: the job is someone else's and still running.
        watcher = JobRunner(store, device="cpu")
        assert watcher.interrupted == [] and watcher.snapshot(job).state == "running"
        assert watcher.snapshot(job).step == 3
        watcher.shutdown()
    finally:
        proc.kill()
        proc.join(10)
    assert store.job(job)["state"] == "running"  # nobody told the store the server died

    runner = JobRunner(store, device="cpu")  # the restarted server
    try:
        assert runner.interrupted == [job]
        snap = runner.snapshot(job)
        assert snap.state == "interrupted" and snap.resumable and snap.step == 3
        assert "interrupted" in snap.log[-1] and "resume" in snap.warnings[-1]
        with pytest.raises(ValueError, match="unknown job kind"):
            runner.resume(job)
        runner.register("squares", squares, uses_gpu=False)
        runner.resume(job)
        snap = runner.wait(job, timeout=20)
        assert snap.state == "done" and snap.result == {"acc": sum(i * i for i in range(8)), "started_at": 3}
        steps = [p["step"] for p in snap.history]  # stored (coalesced) history, then the resumed run's
        assert 3 in steps and steps[-5:] == [4, 5, 6, 7, 8] and steps == sorted(steps)
    finally:
        runner.shutdown()


def test_cpu_jobs_overlap_gpu_jobs_serialize(store):
    runner = JobRunner(store, device="cpu")
    runner.register("meet", meet, uses_gpu=False)
    runner.register("exclusive", exclusive, uses_gpu=True)
    try:
        BARRIERS["b1"] = threading.Barrier(2)
        a, b = runner.submit("meet", {"barrier": "b1"}), runner.submit("meet", {"barrier": "b1"})
        assert runner.wait(a, 30).result == {"met": True} and runner.wait(b, 30).result == {"met": True}

        GATES["g1"], GATES["g2"] = threading.Event(), threading.Event()
        RUNNING.update(now=0, max=0)
        g1, g2 = runner.submit("exclusive", {"gate": "g1"}), runner.submit("exclusive", {"gate": "g2"})
        wait_until(lambda: runner.snapshot(g1).step == 1)
        # While the first GPU job holds the device, CPU work still runs and the second GPU job waits.
        BARRIERS["b2"] = threading.Barrier(2)
        c, d = runner.submit("meet", {"barrier": "b2"}), runner.submit("meet", {"barrier": "b2"})
        assert runner.wait(c, 30).state == "done" and runner.wait(d, 30).state == "done"
        assert runner.snapshot(g2).state == "queued"
        assert runner.cancel(g2)
        g3 = runner.submit("exclusive", {"gate": "g2"})
        assert runner.wait(g2, 10).state == "cancelled" and runner.snapshot(g3).state == "queued"
        GATES["g1"].set()
        GATES["g2"].set()
        assert runner.wait(g1, 20).state == "done" and runner.wait(g3, 20).state == "done"
        assert RUNNING["max"] == 1
    finally:
        for g in GATES.values():
            g.set()
        runner.shutdown()


def test_cancel_from_another_runner(store, runner):
    job = runner.submit("squares", {"n": 6, "pause_at": 2})
    wait_until(lambda: runner.snapshot(job).step == 2)
    other = JobRunner(store, device="cpu")
    try:
        assert other.cancel(job)
        assert runner.wait(job, timeout=20).state == "cancelled"
        wait_until(lambda: other.snapshot(job).state == "cancelled")
    finally:
        other.shutdown()


def test_event_writes_are_throttled_but_warnings_and_last_event_kept(store):
    runner = JobRunner(store, device="cpu")
    runner.register("chatty", chatty, uses_gpu=False)
    try:
        job = runner.submit("chatty", {"n": 3000})
        snap = runner.wait(job, timeout=60)
    finally:
        runner.shutdown()
    assert snap.state == "done" and len(snap.warnings) == 3 and snap.step == 3000
    events = store.events(job)
    assert len(events) < 300  # 3000 progress events coalesced
    assert [e["message"] for e in events if e["level"] == "warning"] == [
        "collapse warning 10", "collapse warning 500", "collapse warning 2998"]
    assert max(e["step"] or 0 for e in events) == 3000 and store.job(job)["step"] == 3000
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_tracker_eta_and_history_cap():
    t = _Tracker({"id": 1, "kind": "k", "state": "running", "created": 0.0, "updated": 0.0})
    for step, when in ((0, 100.0), (10, 101.0), (20, 102.0)):
        t.apply(Event(step=step, total=100, time=when))
    assert t.eta(now=102.0) == pytest.approx(8.0)  # 80 steps left at 10 steps/s
    assert t.eta(now=105.0) == pytest.approx(5.0)
    for i in range(5 * HISTORY_CAP):
        t.apply(Event(step=i, total=5 * HISTORY_CAP, metrics={"loss": float(i)}, time=200.0 + i))
    assert HISTORY_CAP // 2 <= len(t.history) <= HISTORY_CAP
    steps = [p["step"] for p in t.history]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] >= 5 * HISTORY_CAP - 8
    t.state = "done"
    assert t.eta(now=1e9) is None


def test_stopping_the_server_interrupts_running_jobs_after_they_save_their_state(tmp_path):
    """What the app runs at server exit (interrupt_on_exit): the job sees `stop`, saves, and ends `interrupted`."""
    import threading

    from engine.events import Cancelled, check_stop, emit
    from engine.jobs import JobRunner
    from engine.store import Store

    started, saved = threading.Event(), []

    def slow(params, ctx):
        for step in range(10_000):
            started.set()
            try:
                check_stop(ctx.stop)
            except Cancelled:
                saved.append(step)
                raise
            emit(ctx.on_event, step=step, total=10_000)
            threading.Event().wait(0.01)

    store = Store(tmp_path / "ws")
    runner = JobRunner(store)
    runner.register("slow", slow, uses_gpu=True)
    running, queued = runner.submit("slow", {}), runner.submit("slow", {})
    assert started.wait(30)
    assert sorted(runner.interrupt_all(timeout=30)) == sorted([running, queued])
    assert saved, "the running job saw stop and saved its state"
    assert store.job(running)["state"] == store.job(queued)["state"] == "interrupted"
    fresh = JobRunner(store)  # after a restart: resumable
    assert fresh.snapshot(running).resumable
    fresh.shutdown()


def test_eta_is_an_exponential_moving_average_of_the_step_rate():
    """Issue 12 item 7: one slow step (a trial that took 5x longer) moved the ETA from 17 to 52 minutes."""
    from engine.jobs import ETA_ALPHA_MAX

    t = _Tracker({"id": 1, "kind": "k", "state": "running", "created": 0.0, "updated": 0.0})
    for step in range(11):  # one step a minute
        t.apply(Event(step=step, total=100, time=60.0 * step))
    assert t.eta(now=600.0) == pytest.approx(90 * 60.0)
    t.apply(Event(step=11, total=100, time=600.0 + 300.0))  # one step took 5 minutes
    rate = (1 - ETA_ALPHA_MAX) / 60.0 + ETA_ALPHA_MAX / 300.0  # at most ETA_ALPHA_MAX of the new rate
    assert t.eta(now=900.0) == pytest.approx(89 / rate)
    assert t.eta(now=900.0) < 1.5 * 89 * 60.0  # a raw last-interval rate would say 5x
    t.apply(Event(step=0, total=50, time=1000.0))  # a resumed run counts again from 0
    assert t.eta(now=1000.0) is None
