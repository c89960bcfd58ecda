"""Findings and per-image labels (1 present, 0 absent, no row = unknown); finding names pass
engine.names. Saving labels can check what the caller saw first (`expected`), so two sessions
editing the same finding never overwrite each other silently (LabelConflictError)."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.names import RESERVED_FINDINGS, InvalidNameError, check_name
from engine.store.errors import LabelConflictError

__all__ = ["LabelsMixin", "RESERVED_COLUMNS", "check_finding_name"]

RESERVED_COLUMNS = RESERVED_FINDINGS  # column names a finding may not take (engine.names)


def check_finding_name(name: str) -> str:
    """A stripped, valid finding name (engine.names.check_name, kind "finding"); raises
    engine.names.InvalidNameError (a ValueError) saying what is wrong."""
    return check_name(name, "finding")


def _unknown(v: Any) -> bool:
    """Whether a label value means unknown: None, pandas NA or NaN."""
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _label_rows(finding: str, labels: Mapping[int, int | float | bool | None]
                ) -> tuple[list[tuple[int, str, int]], list[tuple[int, str]]]:
    """(rows to set, rows to clear) of a label edit; ValueError for a value other than 1/0/unknown."""
    sets: list[tuple[int, str, int]] = []
    clears: list[tuple[int, str]] = []
    for image_id, v in labels.items():
        if _unknown(v):
            clears.append((int(image_id), finding))
        elif v in (0, 1):  # also True/False/0.0/1.0
            sets.append((int(image_id), finding, int(v)))
        else:
            raise ValueError(f"label {v!r} for image {image_id} is not 1 (present), 0 (absent) or None (unknown)")
    return sets, clears


class LabelsMixin:
    """Store methods for findings and labels (mixed into engine.store.Store)."""

    def findings(self) -> list[str]:
        """Finding names in the order they were added."""
        return [r[0] for r in self._conn().execute("SELECT name FROM findings ORDER BY rowid")]

    def add_finding(self, name: str) -> str:
        """Add a finding (no-op when it exists); returns the stored (stripped) name."""
        n = check_finding_name(name)
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", (n, time.time()))
        return n

    def delete_finding(self, name: str) -> None:
        """Delete a finding with its labels and regions (images stay); KeyError when unknown."""
        with self._tx() as c:
            masks = [r[0] for r in c.execute("SELECT mask_file FROM regions WHERE finding=? AND mask_file IS NOT NULL",
                                             (name,))]
            if c.execute("DELETE FROM findings WHERE name=?", (name,)).rowcount == 0:
                raise KeyError(f"unknown finding {name!r}")
        self._discard_files(masks)

    def rename_finding(self, old: str, new: str) -> str:
        """Rename a finding; its labels and regions follow. KeyError when `old` is unknown,
        ValueError when `new` exists or is not a valid name."""
        n = check_finding_name(new)
        with self._tx() as c:
            if c.execute("SELECT 1 FROM findings WHERE name=?", (old,)).fetchone() is None:
                raise KeyError(f"unknown finding {old!r}")
            if n != old and c.execute("SELECT 1 FROM findings WHERE name=?", (n,)).fetchone() is not None:
                raise ValueError(f"a finding named {n!r} already exists; delete it first or pick another name")
            c.execute("UPDATE findings SET name=? WHERE name=?", (n, old))
        return n

    def set_labels(self, finding: str, labels: Mapping[int, int | float | bool | None],
                   expected: Mapping[int, int | float | bool | None] | None = None) -> int:
        """Set labels of one finding: 1 present, 0 absent, None (or NaN) unknown. The finding is
        added when new. Unknown image ids or other values raise ValueError and change nothing.

        `expected` (optional) maps image ids to the labels the caller saw before editing; when any of
        them changed meanwhile (another session saved first), LabelConflictError is raised listing
        them and nothing is changed. Returns the number of images touched."""
        n = check_finding_name(finding)
        sets, clears = _label_rows(n, labels)
        ids = sorted({int(i) for i in labels})
        with self._tx() as c:
            self._check_ids(c, ids)  # in chunks: "Mark all unlabeled absent" may pass more ids than SQLite's limit
            if expected:
                self._check_expected(c, n, expected)
            c.execute("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)", (n, time.time()))
            c.executemany("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", sets)
            c.executemany("DELETE FROM labels WHERE image_id=? AND finding=?", clears)
        return len(ids)

    def set_labels_many(self, labels: Mapping[str, Mapping[int, int | float | bool | None]]) -> int:
        """Set the labels of several findings in ONE transaction (a label CSV: all or nothing).

        `labels` maps finding -> {image id: 1 | 0 | None}. Every finding name, every value and every
        image id is checked before anything is written; problems of all findings are reported together
        in one ValueError (engine.names.InvalidNameError when only names are wrong) and nothing is
        changed. Findings are added when new. The store's own errors (StoreError when the database is
        locked by another writer, DiskFullError) also leave every label as it was. Returns the number
        of distinct images touched."""
        names: dict[str, str] = {}
        problems: list[str] = []
        for f in labels:
            try:
                names[f] = check_finding_name(f)
            except ValueError as e:
                problems.append(str(e))
        rows: dict[str, tuple[list[tuple[int, str, int]], list[tuple[int, str]]]] = {}
        for f, vals in labels.items():
            if f in names:
                try:
                    rows[f] = _label_rows(names[f], vals)
                except ValueError as e:
                    problems.append(f"finding {names[f]!r}: {e}")
        if problems:
            only_names = len(problems) == len(labels) - len(names)
            raise (InvalidNameError if only_names else ValueError)("; ".join(problems) + "; nothing was labeled")
        ids = sorted({int(i) for vals in labels.values() for i in vals})
        with self._tx() as c:
            self._check_ids(c, ids)
            now = time.time()
            c.executemany("INSERT OR IGNORE INTO findings(name, created) VALUES (?, ?)",
                          [(n, now) for n in names.values()])
            for sets, clears in rows.values():
                c.executemany("INSERT OR REPLACE INTO labels(image_id, finding, value) VALUES (?,?,?)", sets)
                c.executemany("DELETE FROM labels WHERE image_id=? AND finding=?", clears)
        return len(ids)

    @staticmethod
    def _check_ids(c: sqlite3.Connection, ids: list[int]) -> None:
        """ValueError naming the image ids (of `ids`) that are not in the workspace."""
        found: set[int] = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            found |= {r[0] for r in c.execute(f"SELECT id FROM images WHERE id IN ({','.join('?' * len(part))})",
                                              part)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(f"no images with ids {missing[:10]} in this workspace; nothing was labeled")

    def _check_expected(self, c: sqlite3.Connection, finding: str,
                        expected: Mapping[int, int | float | bool | None]) -> None:
        """Raise LabelConflictError when a current label differs from what the caller saw."""
        def norm(v: Any) -> int | None:
            return None if _unknown(v) else int(v)

        ids = sorted({int(i) for i in expected})
        now: dict[int, int] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            now.update(c.execute(f"SELECT image_id, value FROM labels WHERE finding=? AND image_id IN "
                                 f"({','.join('?' * len(part))})", (finding, *part)).fetchall())
        changed = {i: (norm(expected[i]), now.get(i)) for i in ids if norm(expected[i]) != now.get(i)}
        if changed:
            names = dict(c.execute(f"SELECT id, name FROM images WHERE id IN ({','.join('?' * len(changed))})",
                                   list(changed)).fetchall())
            raise LabelConflictError(finding, {i: (names.get(i, f"image {i}"), old, new)
                                               for i, (old, new) in changed.items()})

    def counts(self) -> dict[str, dict[str, int]]:
        """{finding: {"positive", "negative", "unknown"}} over all images."""
        with self._read() as c:
            total = int(c.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            out = {f: {"positive": 0, "negative": 0, "unknown": total}
                   for (f,) in c.execute("SELECT name FROM findings ORDER BY rowid")}
            for f, pos, neg in c.execute(
                    "SELECT finding, SUM(value = 1), SUM(value = 0) FROM labels GROUP BY finding"):
                out[f] = {"positive": int(pos), "negative": int(neg), "unknown": total - int(pos) - int(neg)}
        return out
