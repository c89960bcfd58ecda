"""Process identity: the one place that says who owns something and whether that owner still runs.

Owner strings (stored in reservations, writer markers and job rows):

    pid:<host>:<pid>:<start>   a process (`process_owner()`): a command-line run, a writer of the store
    job:<workspace>:<id>       an app job (`job_owner(ws, id)`); whether it is still queued or running is
                               the workspace store's answer (engine.reservations.owner_active asks it)

A pid alone does not identify a process: the OS gives a freed pid to a later process. Every liveness
check here therefore also compares the process's start time (Linux: /proc/<pid>/stat field 22, clock
ticks since boot; `started_at` converts it to seconds since the epoch with /proc/stat's `btime`):

- `process_active(owner)`: the owner's recorded start time must equal the running process's;
- `pid_alive(pid, not_after=t)`: for names that carry only a pid (temp files, marker names), the
  process must have started no later than `t` (the file's mtime): a process started after the file
  was written cannot have written it, so its pid was reused.

Where start times cannot be read (not Linux, or another user's process hidden by hidepid) the checks
fall back to "the pid exists". Stdlib only: engine.atomic and engine.jobs import this module; it
imports nothing from the engine.
"""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

__all__ = ["job_owner", "parse_job_owner", "pid_alive", "process_active", "process_owner", "runner_token",
           "start_time", "started_at"]

_CLOCK_SLACK_S = 2.0  # start times come in clock ticks (1/100 s) and mtimes may be rounded by the filesystem


def start_time(pid: int) -> str:
    """A process's start time as recorded by the OS (/proc/<pid>/stat field 22, clock ticks since boot);
    "" when it cannot be read (not Linux, no such process)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # fields after "(comm)": state is field 3, starttime 22


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def started_at(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (resolution: one clock tick); None when
    unknown (not Linux, no such process)."""
    ticks, boot = start_time(pid), _boot_time()
    if not ticks or boot is None:
        return None
    return boot + int(ticks) / os.sysconf("SC_CLK_TCK")


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # PermissionError: it exists, owned by another user
    return True


def pid_alive(pid: int, not_after: float | None = None) -> bool:
    """Whether a process with this pid runs on this host, and (with `not_after`, seconds since the epoch,
    e.g. the mtime of a file it wrote) started no later than that time: a younger process holds a
    reused pid and is not the one asked about."""
    pid = int(pid)
    if not _pid_exists(pid):
        return False
    if not_after is None:
        return True
    t = started_at(pid)
    return t is None or t <= not_after + _CLOCK_SLACK_S


def process_owner(pid: int | None = None) -> str:
    """The owner string of a process: `pid:<host>:<pid>:<start time>` (this process by default)."""
    pid = os.getpid() if pid is None else int(pid)
    return f"pid:{socket.gethostname()}:{pid}:{start_time(pid)}"


def process_active(owner: str) -> bool | None:
    """For a `pid:` owner: whether that very process still runs (same pid and start time). None when it
    ran on another host or the string is not a `pid:` owner (cannot tell)."""
    if not owner.startswith("pid:"):
        return None
    try:
        host, pid, start = owner[4:].rsplit(":", 2)
        pid_n = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if not _pid_exists(pid_n):
        return False
    now = start_time(pid_n)
    return not (start and now and now != start)  # a reused pid is another process


def job_owner(workspace: str | Path, job_id: int) -> str:
    """The owner string of an app job: `job:<resolved workspace>:<id>`."""
    return f"job:{Path(workspace).expanduser().resolve()}:{int(job_id)}"


def parse_job_owner(owner: str) -> tuple[Path, int] | None:
    """(workspace, job id) of a `job:` owner; None for any other string."""
    if not owner.startswith("job:"):
        return None
    ws, _, jid = owner[4:].rpartition(":")
    try:
        return Path(ws), int(jid)
    except ValueError:
        return None


def runner_token() -> str:
    """A new token for a job runner of this process, `<host>-<pid>-<random>` (a file name on every OS;
    engine.jobs.liveness tells a live runner by the file lock it holds, not by the pid)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
