"""The Data page's writes on a really full disk (issue 22, Build 3): the workspace lives on a small tmpfs that is
filled to the last byte, then each page action runs through AppTest. The page shows the store's "disk full"
message (no traceback), nothing in the store changed, and once space is freed the same action goes through.
Needs root to mount the tmpfs (skipped with the reason otherwise); tests/app/test_data_page_faults.py covers the
same actions with the fault injected at the commit, everywhere."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from test_data_page_faults import ACTIONS, errors, state, workspace


@pytest.fixture(autouse=True)
def _no_autopretrain(monkeypatch):
    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")


@pytest.fixture
def tmpfs_workspace(tmp_path, monkeypatch):
    """An 8 MiB tmpfs holding the app's workspace."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root; test_data_page_faults.py injects the same fault")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()})")
    monkeypatch.setenv("SCARCE_CXR_WORKSPACE", str(mnt / "workspace"))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder) -> os.PathLike:
    """Fill the file system of `folder` to the last byte; returns the filler file (delete it to free the space)."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert shutil.disk_usage(folder).free == 0
    return filler


@pytest.mark.parametrize("action", list(ACTIONS))
def test_page_write_on_a_really_full_disk(action, tmpfs_workspace, tmp_path):
    at = workspace()
    from ui.services import services

    store = services().store
    with store._tx() as c:  # (a no-op write) then empty the WAL, so the next commit needs new blocks
        c.execute("SELECT 1")
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = state(store)
    filler = fill(tmpfs_workspace)
    do = ACTIONS[action]
    do(at, tmp_path) if action == "import by path" else do(at)
    assert not at.exception, [e.value for e in at.exception]
    msg = errors(at)
    assert "disk full" in msg and "nothing was" in msg.lower(), (action, msg)
    filler.unlink()
    assert state(store) == before, action
    do(at, tmp_path) if action == "import by path" else do(at)  # with space again, the same action goes through
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, errors(at)
    assert state(store) != before, action
