"""engine.atomic: the one atomic-write implementation (temp file, fsync, os.replace, fsync the folder)."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from engine import atomic
from engine.atomic import atomic_open, atomic_path, atomic_write, atomic_write_text, replace_dir
from engine.diskspace import DiskFullError


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_bytes_str_and_writer_give_the_same_file(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    atomic_write(tmp_path / "b.txt", "h\u00e9\r\n")                      # str: UTF-8, newlines untranslated
    atomic_write(tmp_path / "sub" / "c.txt", lambda tmp: Path(tmp).write_text("w"))  # folder made on demand
    atomic_write_text(tmp_path / "d.txt", "t")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "h\u00e9\r\n".encode()
    assert (tmp_path / "sub" / "c.txt").read_text() == "w" and (tmp_path / "d.txt").read_text() == "t"
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert not _temps(tmp_path)


def test_atomic_open_text_and_binary(tmp_path):
    with atomic_open(tmp_path / "x.json", "w") as fh:
        json.dump({"a": 1}, fh)
    with atomic_open(tmp_path / "y.bin") as fh:
        fh.write(b"yy")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert (tmp_path / "y.bin").read_bytes() == b"yy"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_open(tmp_path / "z", "a"):
            pass
    assert not (tmp_path / "z").exists() and not _temps(tmp_path)


def test_an_error_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "keep.txt"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(dest, "w") as fh:
            fh.write("half")
            raise RuntimeError("boom")
    with pytest.raises(KeyError):
        atomic_write(dest, lambda tmp: {}["missing"])
    assert dest.read_text() == "old" and not _temps(tmp_path)


def test_a_full_disk_inside_the_write_is_a_disk_full_error(tmp_path):
    dest = tmp_path / "f.txt"
    atomic_write_text(dest, "old")
    with pytest.raises(DiskFullError, match="f.txt"):
        with atomic_path(dest) as tmp:
            Path(tmp).write_text("part")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert dest.read_text() == "old" and not _temps(tmp_path)


def test_the_durability_rule_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write(tmp_path / "d.bin", b"1")
    assert calls == [("fsync", "file"), ("replace", "d.bin"), ("fsync", "dir")]


def test_replace_dir_swaps_a_whole_folder(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    new = tmp_path / ".out.tmp-1-ab"
    (new / "sub").mkdir(parents=True)
    (new / "sub" / "new.txt").write_text("new")
    assert replace_dir(new, dest) == dest
    assert (dest / "sub" / "new.txt").read_text() == "new" and not (dest / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # temp and moved-aside folders gone
    fresh = tmp_path / ".fresh.tmp-1-cd"
    fresh.mkdir()
    (fresh / "f").write_text("f")
    replace_dir(fresh, tmp_path / "made")                              # no earlier folder: a plain rename
    assert (tmp_path / "made" / "f").read_text() == "f"
