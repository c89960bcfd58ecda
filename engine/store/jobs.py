"""Persistence of background jobs (engine.jobs): the job rows, their event log and cancel flags.

A job row holds its kind, params (JSON), state (queued|running|done|failed|cancelled|interrupted),
progress, error, result (JSON), device, owner (the JobRunner's token) and resume count; its events are
numbered 1, 2, ... per job. Every change is one transaction, so another process sees whole updates.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.events import Event

__all__ = ["JobsMixin", "job_active"]

ACTIVE_STATES = ("queued", "running")


def job_active(workspace: str | Path, job_id: int) -> bool:
    """Whether job `job_id` of the workspace is still queued or running, read without opening the store
    for writing (a read-only connection: no migration, no file created). False when the workspace, its
    database or the job is gone; True when the database cannot be read now (busy, locked): the caller
    must then not give away what the job holds (engine.reservations)."""
    db = Path(workspace) / "store.sqlite"
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = con.execute("SELECT state FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return True
    return row is not None and row[0] in ACTIVE_STATES


class JobsMixin:
    """Store methods for jobs and their events (mixed into engine.store.Store)."""

    _JOB_FIELDS = frozenset({"state", "step", "total", "error", "result", "device", "owner",
                             "cancel_requested", "runs", "params"})

    def create_job(self, kind: str, params: Mapping[str, Any], device: str | None = None,
                   owner: str | None = None, state: str = "queued") -> int:
        """Insert a job row (params stored as JSON); returns its id."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute("INSERT INTO jobs(kind, params_json, state, created, updated, device, owner)"
                            " VALUES (?,?,?,?,?,?,?)",
                            (kind, json.dumps(dict(params)), state, now, now, device, owner))
        return int(cur.lastrowid)

    def delete_job(self, job_id: int) -> None:
        """Remove a job and its events (a job refused at submit time)."""
        with self._tx() as c:
            c.execute("DELETE FROM jobs WHERE id=?", (int(job_id),))

    def update_job(self, job_id: int, **fields: Any) -> None:
        """Set job columns: state, step, total, error, result (dict), device, owner,
        cancel_requested, runs, params (dict). `updated` is set to now."""
        sets, vals = self._job_sets(fields)
        with self._tx() as c:
            c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*vals, int(job_id)))

    def _job_sets(self, fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
        bad = set(fields) - self._JOB_FIELDS
        if bad:
            raise ValueError(f"unknown job fields {sorted(bad)}")
        cols, vals = ["updated=?"], [time.time()]
        for k, v in fields.items():
            if k == "result":
                k, v = "result_json", None if v is None else json.dumps(v, default=str)
            elif k == "params":
                k, v = "params_json", json.dumps(dict(v))
            cols.append(f"{k}=?")
            vals.append(v)
        return ", ".join(cols), vals

    def transition_job(self, job_id: int, from_states: Iterable[str], **fields: Any) -> bool:
        """Update a job only if its state is one of `from_states` (atomic check-and-set)."""
        states = list(from_states)
        sets, vals = self._job_sets(fields)
        with self._tx() as c:
            cur = c.execute(f"UPDATE jobs SET {sets} WHERE id=? AND state IN ({','.join('?' * len(states))})",
                            (*vals, int(job_id), *states))
        return cur.rowcount == 1

    def add_event(self, job_id: int, event: Event) -> int:
        """Append one event; returns its seq (1, 2, ... per job)."""
        return self.add_events(job_id, [event])

    def add_events(self, job_id: int, events: Sequence[Event], **job_fields: Any) -> int:
        """Append events and (optionally) update the job row in one transaction; returns the last seq."""
        with self._tx() as c:
            seq = self._insert_events(c, job_id, events)
            if job_fields:
                sets, vals = self._job_sets(job_fields)
                c.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*vals, int(job_id)))
        return seq

    @staticmethod
    def _insert_events(c: sqlite3.Connection, job_id: int, events: Sequence[Event]) -> int:
        seq = int(c.execute("SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id=?",
                            (int(job_id),)).fetchone()[0])
        rows = []
        for e in events:
            seq += 1
            rows.append((int(job_id), seq, float(e.time), e.level, e.kind, e.message or "",
                         json.dumps(e.metrics) if e.metrics else None, e.step, e.total))
        c.executemany("INSERT INTO job_events(job_id, seq, time, level, kind, message, metrics_json, step, total)"
                      " VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return seq

    @staticmethod
    def _job_dict(r: sqlite3.Row) -> dict[str, Any]:
        return {"id": r["id"], "kind": r["kind"], "params": json.loads(r["params_json"]), "state": r["state"],
                "step": r["step"], "total": r["total"], "error": r["error"],
                "result": None if r["result_json"] is None else json.loads(r["result_json"]),
                "created": r["created"], "updated": r["updated"], "device": r["device"], "owner": r["owner"],
                "cancel_requested": bool(r["cancel_requested"]), "runs": r["runs"]}

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The job's row as a dict (params and result decoded), or None when there is none."""
        r = self._conn().execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        return None if r is None else self._job_dict(r)

    def jobs(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first, optionally only some states."""
        q, args = "SELECT * FROM jobs", []
        if states is not None:
            states = list(states)
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args += states
        q += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [self._job_dict(r) for r in self._conn().execute(q, args)]

    def events(self, job_id: int, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > after_seq, oldest first: {seq, time, level, kind, message, metrics, step, total}."""
        q = "SELECT * FROM job_events WHERE job_id=? AND seq>? ORDER BY seq" + (f" LIMIT {int(limit)}" if limit else "")
        return [{"seq": r["seq"], "time": r["time"], "level": r["level"], "kind": r["kind"], "message": r["message"],
                 "metrics": json.loads(r["metrics_json"]) if r["metrics_json"] else {},
                 "step": r["step"], "total": r["total"]}
                for r in self._conn().execute(q, (int(job_id), int(after_seq)))]

    def cancel_requests(self, job_ids: Sequence[int]) -> list[int]:
        """The subset of `job_ids` whose cancel flag is set."""
        ids = [int(i) for i in job_ids]
        if not ids:
            return []
        q = f"SELECT id FROM jobs WHERE cancel_requested=1 AND id IN ({','.join('?' * len(ids))})"
        return [int(r[0]) for r in self._conn().execute(q, ids)]

    def interrupt_orphans(self, is_alive: Callable[[str | None], bool]) -> list[int]:
        """Jobs left `queued`/`running` whose owner is not alive become `interrupted`; returns their ids."""
        with self._tx() as c:
            rows = c.execute("SELECT id, owner FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            dead = [int(r["id"]) for r in rows if not is_alive(r["owner"])]
            now = time.time()
            c.executemany("UPDATE jobs SET state='interrupted', owner=NULL, updated=? WHERE id=?",
                          [(now, i) for i in dead])
            note = Event(message="interrupted: the process running this job stopped; resume it to continue "
                                 "from its last saved state", level="warning", kind="log", time=now)
            for i in dead:
                self._insert_events(c, i, [note])
        return dead
