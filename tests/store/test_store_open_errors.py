"""Opening a workspace database fails with a clear StoreOpenError (locked by another writer, read-only
file system, missing folder, not a database) instead of sqlite3.OperationalError, and a database
deleted or replaced under a running store is noticed before a write goes into the unlinked file
(issue 22, Build 6)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store import DatabaseGoneError, Store, StoreError, StoreOpenError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick_lock(monkeypatch):
    """Writers wait 0.3 s for a lock instead of 30 s."""
    monkeypatch.setattr(Store, "busy_timeout_s", 0.3)


def test_a_database_locked_by_another_writer_says_so(tmp_path, quick_lock):
    ws = tmp_path / "ws"
    ws.mkdir()
    other = sqlite3.connect(ws / "store.sqlite", isolation_level=None)  # another program, rollback journal
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreOpenError, match="is locked by another writer") as e:
            Store(ws)
        assert "close that program or wait for its job to finish, then retry" in str(e.value)
        assert not isinstance(e.value.__cause__, StoreOpenError) and isinstance(e.value, StoreError)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_current_workspace_opens_while_another_process_writes_and_a_write_says_busy(tmp_path, quick_lock):
    ws = tmp_path / "ws"
    Store(ws).close()
    other = sqlite3.connect(ws / "store.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another scarce-cxr mid-write
    try:
        store = Store(ws)  # no migration needed: opens without waiting for the write lock
        assert store.findings() == []
        with pytest.raises(StoreError, match="busy or locked"):
            store.add_finding("nodule")
        store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs root and unshare -m for a real read-only mount")
@pytest.mark.parametrize("existing", [True, False], ids=["existing-workspace", "new-workspace"])
def test_a_workspace_on_a_read_only_file_system_says_so(tmp_path, existing):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    ws = mnt / "ws"
    if existing:
        s = Store(ws)
        s.add_finding("nodule")
        s.close()
    code = ("from engine.store import Store, StoreOpenError\n"
            f"try:\n    Store({str(ws)!r})\nexcept StoreOpenError as e:\n    print('OPEN-ERROR', e)\n")
    script = (f"mount --bind {mnt} {mnt} && mount -o remount,ro,bind {mnt} {mnt} && "
              f"{sys.executable} -c \"$CODE\"")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "CODE": code}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OPEN-ERROR cannot open the workspace:" in out.stdout and "read-only file system" in out.stdout
    assert "Traceback" not in out.stderr


def test_a_workspace_path_that_is_a_file_or_missing_says_check_the_path(tmp_path):
    f = tmp_path / "ws"
    f.write_text("not a folder")
    with pytest.raises(StoreOpenError, match="is missing or is not a folder"):
        Store(f)
    inside_a_file = f / "nested"
    with pytest.raises(StoreOpenError, match="check the path"):
        Store(inside_a_file)


def test_a_file_that_is_not_a_database_says_restore_or_move_it(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "store.sqlite").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreOpenError, match="is not a scarce-cxr database or is damaged"):
        Store(ws)
    assert (ws / "store.sqlite").read_bytes() == b"this is not SQLite" * 100  # left as it was


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_under_a_running_store_refuses_to_write(tmp_path, how):
    ws = tmp_path / "ws"
    store = Store(ws)
    store.add_finding("nodule")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        Store(ws).close()  # someone opened the workspace afresh: a new, empty database at that path
    with pytest.raises(DatabaseGoneError, match=f"was deleted or replaced while scarce-cxr had it open") as e:
        store.add_finding("effusion")
    assert "nothing was written" in str(e.value) and "Restart the app" in str(e.value)
    store.close()
    if how == "replaced":
        fresh = Store(ws)
        assert fresh.findings() == []  # the write did not land anywhere
        fresh.close()


def test_the_app_shows_a_workspace_that_cannot_be_opened_as_a_message(monkeypatch):
    from streamlit.testing.v1 import AppTest

    from engine import paths

    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")
    ws = paths.workspace_dir()
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "store.sqlite").write_bytes(b"garbage, not SQLite" * 100)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = "\n".join(e.value for e in at.error)
    assert "cannot open the workspace" in errors and "is not a scarce-cxr database or is damaged" in errors
