"""Which job runners are alive: each holds an exclusive file lock `<workspace>/runs/.runners/<token>.lock`
for its lifetime and stamps its token on the jobs it runs; the OS drops the lock when the process
dies, so a later runner tells a dead owner from a live one without clocks or heartbeats. The token is
engine.process.runner_token (the one home of process identity; a held lock cannot outlive its process,
so no pid or start time is compared here)."""
from __future__ import annotations

from pathlib import Path

import filelock

from engine.process import runner_token

__all__ = ["OwnerLock"]


class OwnerLock:
    """This runner's liveness lock (taken at construction) and the liveness test of other owners."""

    def __init__(self, workspace: Path):
        self.token = runner_token()
        self.dir = Path(workspace) / "runs" / ".runners"
        self.dir.mkdir(parents=True, exist_ok=True)
        # thread_local=False: release() may run on another thread than the one that took it
        self._lock = filelock.FileLock(self.dir / f"{self.token}.lock", timeout=0, thread_local=False)
        self._lock.acquire()
        self.closed = False

    def alive(self, owner: str | None) -> bool:
        """Whether the runner with token `owner` still runs (this one: until `release`). Removes the
        lock file of a dead owner as a side effect."""
        if not owner:
            return False
        if owner == self.token:
            return not self.closed
        path = self.dir / f"{owner}.lock"
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

    def sweep_dead(self) -> None:
        """Delete the lock files of runners that died owning no job."""
        for stale in self.dir.glob("*.lock"):
            if stale.stem != self.token:
                self.alive(stale.stem)

    def release(self) -> None:
        """Drop the lock (the runner sets `closed` first, when it starts shutting down)."""
        self.closed = True
        if self._lock.is_locked:
            self._lock.release()
