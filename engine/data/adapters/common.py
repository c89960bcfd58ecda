"""What every adapter shares: finding-name canonicalization, the normal and split folder names, the
report of dropped rows (on_event + the ``engine.data.adapters`` logger) and file listings."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from engine.data.listing import is_ignored
from engine.data.manifest import Manifest
from engine.events import OnEvent, emit

log = logging.getLogger("engine.data.adapters")  # one logger for every adapter (the CLI shows its warnings)

NORMAL_NAMES = frozenset({"normal", "no finding", "no_finding", "nofinding", "no findings", "healthy", "negative"})
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
_WS = re.compile(r"\s+")


def finding_name(label: str) -> str:
    """Canonical finding column name: lowercase, trimmed, inner whitespace collapsed to one space."""
    return _WS.sub(" ", str(label).strip().lower())


def _report(on_event: OnEvent | None, message: str, warn: bool = False) -> None:
    (log.warning if warn else log.info)(message)
    emit(on_event, message=message, kind="warning" if warn else "log", level="warning" if warn else "info")


def _all_files(folder: Path) -> list[str]:
    """Every non-hidden file under `folder` (recursive), sorted; for look-ups by a table's file names."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        out.extend(os.path.join(dirpath, f) for f in filenames if not is_ignored(f))
    return sorted(out)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def _loose_files(folder: Path) -> list[str]:
    """Non-hidden files directly in `folder` (not in a class folder), sorted by name."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not is_ignored(p.name))


def findings_with_min_patients(manifest: Manifest, n: int) -> list[tuple[str, int]]:
    """Findings with at least `n` distinct positive patients, most first: [(finding, n_patients)].

    This is how the PadChest few-shot study picked rare findings with enough patients to sample from.
    """
    if not manifest.findings:
        return []
    pos = manifest.df[manifest.findings].eq(1)  # (N, F) bool
    per_patient = pos.groupby(manifest.df["patient_id"].to_numpy()).any()  # (patients, F)
    counts = per_patient.sum()
    out = [(f, int(counts[f])) for f in manifest.findings if int(counts[f]) >= n]
    return sorted(out, key=lambda fc: (-fc[1], fc[0]))
