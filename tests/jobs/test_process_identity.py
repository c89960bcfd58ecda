"""engine.process: one home of owner strings and liveness; a pid reused by a younger process never keeps a
dead writer's temp files or markers; engine.atomic sits above it and no longer imports engine.reservations."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import atomic, process

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times need /proc")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_process_started_after_a_file_was_written_did_not_write_it():
    child = _sleeper()
    try:
        t = process.started_at(child.pid)
        assert t is not None and abs(t - time.time()) < 30
        assert process.pid_alive(child.pid) and process.pid_alive(child.pid, not_after=time.time())
        assert not process.pid_alive(child.pid, not_after=t - 600)  # the file predates the process: reused pid
    finally:
        child.kill()
        child.wait()
    assert not process.pid_alive(child.pid)


def test_stale_temps_of_a_reused_pid_are_removed_and_a_live_writers_kept(tmp_path):
    child = _sleeper()
    try:
        old = tmp_path / f".weights.safetensors.{child.pid}.abc123.tmp"  # written long before `child` started
        old.write_bytes(b"x")
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        live = tmp_path / f".other.json.{child.pid}.def456.tmp"         # written by `child`'s lifetime
        live.write_bytes(b"y")
        os.utime(live, (time.time() - 120, time.time() - 120))
        t0 = process.started_at(child.pid)
        os.utime(live, (t0 + 1, t0 + 1))
        removed = atomic.remove_stale_temps(tmp_path, min_age_s=0)
        assert removed == [old] and live.exists()
    finally:
        child.kill()
        child.wait()


def test_writer_markers_follow_their_process_identity(tmp_path):
    with atomic.writer_marker(tmp_path) as marker:
        assert marker.read_text() == process.process_owner() and len(atomic.live_writers(tmp_path)) == 1
        host, pid, start = process.process_owner()[4:].rsplit(":", 2)
        forged = tmp_path / f"{pid}.feedface.writer"  # this pid, but another start time: a reused pid
        forged.write_text(f"pid:{host}:{pid}:{int(start) + 1}")
        assert len(atomic.live_writers(tmp_path)) == 1 and not forged.exists()
    assert atomic.live_writers(tmp_path) == []


def test_owner_strings_round_trip(tmp_path):
    owner = process.job_owner(tmp_path / "ws", 7)
    assert process.parse_job_owner(owner) == ((tmp_path / "ws").resolve(), 7)
    assert process.parse_job_owner(process.process_owner()) is None
    assert process.process_active(process.process_owner()) is True
    assert process.process_active(owner) is None  # a job's state is its store's answer, not a process's


def _engine_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("engine")}
    return names


def test_process_identity_sits_below_atomic_and_reservations():
    root = Path(atomic.__file__).parent
    assert _engine_imports(root / "process.py") == set()
    assert _engine_imports(root / "atomic.py") == {"engine.diskspace", "engine.process"}
    reservations = _engine_imports(root / "reservations.py")
    assert "engine.process" in reservations and "engine.store.jobs" in reservations
    for f in ("reservations.py", "jobs/liveness.py"):
        text = (root / f).read_text()
        assert "/proc/" not in text and "os.kill" not in text and "sqlite3" not in text, f
