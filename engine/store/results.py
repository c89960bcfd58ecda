"""The index of what jobs produced in the workspace: results (sweeps, classifiers, Grad-CAM batches, ...).
The store records where the files are; it never reads or deletes them. Backbone checkpoints are indexed
by the registry's json beside each file (engine.models.registry), not here."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["ResultsMixin"]


class ResultsMixin:
    """Store methods for the results index (mixed into engine.store.Store)."""

    workspace: Path

    def _rel(self, p: Path | str) -> str:
        """`p` relative to the workspace when inside it, else as given."""
        p = Path(p)
        try:
            return p.resolve().relative_to(self.workspace).as_posix()
        except ValueError:
            return str(p)

    def _abs(self, s: str) -> str:
        return str(self.workspace / s) if not Path(s).is_absolute() else s

    def add_result(self, kind: str, name: str, path: Path | str, summary: Mapping[str, Any],
                   job_id: int | None = None) -> int:
        """Record a result (sweep, classifier, gradcam batch, ...); `path` is kept relative to the
        workspace when inside it. Returns its id."""
        with self._tx() as c:
            cur = c.execute("INSERT INTO results(kind, name, path, summary_json, job_id, created)"
                            " VALUES (?,?,?,?,?,?)",
                            (kind, name, self._rel(path), json.dumps(dict(summary), default=str), job_id, time.time()))
        return int(cur.lastrowid)

    def results(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Newest first: {id, kind, name, path (absolute), summary, job_id, created}."""
        q = "SELECT * FROM results" + (" WHERE kind=?" if kind else "") + " ORDER BY id DESC"
        return [{"id": r["id"], "kind": r["kind"], "name": r["name"], "path": self._abs(r["path"]),
                 "summary": json.loads(r["summary_json"]), "job_id": r["job_id"], "created": r["created"]}
                for r in self._conn().execute(q, (kind,) if kind else ())]

    def delete_result(self, result_id: int) -> None:
        """Forget a result (its files are left where they are)."""
        with self._tx() as c:
            c.execute("DELETE FROM results WHERE id=?", (int(result_id),))
