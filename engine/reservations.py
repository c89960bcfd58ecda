"""Checkpoint names reserved when a pretraining run is submitted, so two runs never share one name.

    reserve_checkpoint("moco-r18-nih", owner=job_owner(ws, 12), checkpoint_dir=ckpts)   # at submit
    ... the run trains and exports checkpoints/moco-r18-nih.safetensors ...
    release_checkpoint("moco-r18-nih", owner=job_owner(ws, 12), checkpoint_dir=ckpts)   # once exported

A reservation is a small JSON file `<checkpoint_dir>/.reserved/<name>.json` (owner, created, pid,
host), created under one file lock per checkpoints folder, so every process and every app server
sharing that folder sees it. Rules (`reserve_checkpoint`):

- the same owner may reserve again (a resumed job keeps its name);
- a name held by a queued or running job is never given away, not even with `replace`;
- a name held by a job that ended without exporting (failed, cancelled, interrupted) is kept for its
  resume; `replace=True` hands it to the new run;
- a name whose backbone already exists is refused unless `replace=True` (the user asked to overwrite);
- the name of a backbone shipped with scarce-cxr (`checkpoints/shipped/`, engine.paths.shipped_dir)
  is never given to a run, whatever the flags: the registry would ignore the user's file anyway.

Owners (engine.process, the one home of owner strings and liveness): app jobs are `job:<workspace>:<id>`;
whether such a job is still active is the workspace store's answer (engine.store.job_active, read-only),
so reservations of a deleted workspace or a finished job go stale by themselves. Owners of command-line
runs (`python -m engine pretrain`) are `pid:<host>:<pid>:<start>` (`process_owner()`): active while that
process runs on this host (its start time tells a reused pid apart); on another host their state is
unknown and counts as active.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from engine import paths
from engine.atomic import atomic_write_text
from engine.names import check_name, inside
from engine.process import job_owner, parse_job_owner, process_active, process_owner

__all__ = ["NameTakenError", "job_owner", "owner_active", "process_owner", "release_checkpoint",
           "reserve_checkpoint", "reserved_checkpoints", "shipped_name"]

RESERVED_DIR = ".reserved"
_LOCK_TIMEOUT_S = 30.0


class NameTakenError(ValueError):
    """The checkpoint name is taken (an existing backbone, or another run's reservation)."""


def shipped_name(name: str) -> bool:
    """True when a backbone of that name ships with scarce-cxr (checkpoints/shipped/<name>.*)."""
    d = paths.shipped_dir()
    return d is not None and any((d / f"{name}{ext}").exists() for ext in (".safetensors", ".json"))


def owner_active(owner: str) -> bool | None:
    """For a job owner: True while the job is queued or running, False once it ended (or its
    workspace or job is gone). For a command-line owner (`process_owner`): whether its process still
    runs on this host. None when unknown (another host, another kind of owner)."""
    if owner.startswith("pid:"):
        return process_active(owner)
    parsed = parse_job_owner(owner)
    if parsed is None:
        return None
    from engine.store.jobs import job_active

    return job_active(*parsed)


def _folder(checkpoint_dir: str | Path) -> Path:
    d = Path(checkpoint_dir).expanduser().resolve() / RESERVED_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def _read(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("owner"), str) else None


def _describe(rec: dict[str, Any]) -> str:
    parsed = parse_job_owner(rec["owner"])
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(rec.get("created", 0))))
    if parsed is not None:
        ws, jid = parsed
        return f"pretraining job {jid} of the workspace {ws} (submitted {when})"
    if rec["owner"].startswith("pid:"):
        host, pid = (rec["owner"][4:].rsplit(":", 2) + ["", ""])[:2]
        return f"the command-line run `python -m engine pretrain` (process {pid} on {host}, started {when})"
    return f"{rec['owner']} (since {when})"


def reserve_checkpoint(name: str, owner: str, checkpoint_dir: str | Path, *, replace: bool = False,
                       is_active: Callable[[str], bool | None] = owner_active) -> Path:
    """Reserve `name` in `checkpoint_dir` for `owner`; returns the reservation file.

    Raises `engine.names.InvalidNameError` for an invalid checkpoint name and `NameTakenError`
    (a ValueError saying who holds it and what to do) when the name is a shipped backbone's (always),
    a backbone of that name exists and `replace` is False, or another owner holds the name (always
    while that owner is active; for an ended owner unless `replace`). Owners whose state is unknown
    (None from `is_active`) count as active.
    """
    name = check_name(name, "checkpoint")
    if shipped_name(name):
        raise NameTakenError(f"{name!r} is the name of a backbone shipped with scarce-cxr (checkpoints/shipped/); "
                             "shipped names are reserved, even with replace or resume: pick another name")
    folder = _folder(checkpoint_dir)
    path = inside(folder, f"{name}.json")
    with FileLock(str(folder / ".lock"), timeout=_LOCK_TIMEOUT_S):
        rec = _read(path)
        if rec is not None and rec["owner"] == owner:
            return path
        if rec is not None:
            active = is_active(rec["owner"])
            if active is None or active:
                raise NameTakenError(f"the backbone name {name!r} is reserved by {_describe(rec)}, which is still "
                                     "queued or running; pick another name, or cancel that run first")
            if not replace:
                raise NameTakenError(f"the backbone name {name!r} is reserved by {_describe(rec)}, which stopped "
                                     "before finishing; resume that run, pick another name, or ask to replace it "
                                     "(--replace on the command line, replace=True in the API) to give the name "
                                     "to this run")
        exists = (Path(checkpoint_dir).expanduser().resolve() / f"{name}.safetensors").exists()
        if exists and not replace:
            raise NameTakenError(f"a backbone named {name!r} already exists in {checkpoint_dir}; pick another name, "
                                 "or ask to replace it (--replace on the command line, replace=True in the API) "
                                 "to overwrite it")
        body = json.dumps({"name": name, "owner": owner, "created": time.time(), "pid": os.getpid(),
                           "host": socket.gethostname(), "replace": bool(replace)})
        atomic_write_text(path, body)
    return path


def release_checkpoint(name: str, owner: str, checkpoint_dir: str | Path) -> bool:
    """Drop `owner`'s reservation of `name` (after the backbone was exported); True if one was dropped.
    Another owner's reservation is left alone."""
    name = check_name(name, "checkpoint")
    folder = _folder(checkpoint_dir)
    path = inside(folder, f"{name}.json")
    with FileLock(str(folder / ".lock"), timeout=_LOCK_TIMEOUT_S):
        rec = _read(path)
        if rec is None or rec["owner"] != owner:
            return False
        path.unlink(missing_ok=True)
    return True


def reserved_checkpoints(checkpoint_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{name: reservation record} of every reserved name in `checkpoint_dir`."""
    d = Path(checkpoint_dir).expanduser().resolve() / RESERVED_DIR
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(d.glob("*.json")) if d.exists() else []:
        rec = _read(p)
        if rec is not None:
            out[p.stem] = rec
    return out
