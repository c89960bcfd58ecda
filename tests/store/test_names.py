"""engine.names: the one validator for user-supplied names and the inside-its-root check for write paths."""
from __future__ import annotations

import os

import pytest

from engine.names import InvalidNameError, UnsafePathError, check_name, inside


@pytest.mark.parametrize("kind,name", [("finding", "pleural effusion"), ("finding", "Pleural_Thickening"),
                                       ("finding", "épanchement"), ("finding", "covid-19 (pcr+)"),
                                       ("checkpoint", "moco_v2-resnet18-nih.v2"), ("init", "random"),
                                       ("init", "random-resnet50"), ("classifier", "mass-random-probe-20250101-1200")])
def test_ordinary_names_pass(kind, name):
    assert check_name(f"  {name} ", kind) == name


@pytest.mark.parametrize("name", ["../../../../tmp/x/ESCAPED", "..", ".", ".hidden", "a/b", "a\\b", "C:x", "x*",
                                  "a,b", "q'", 'q"', "a\x00b", "a\nb", "-x", "x.", "x" * 65, "", " "])
@pytest.mark.parametrize("kind", ["finding", "classifier", "checkpoint", "init"])
def test_hostile_names_fail_for_every_kind(name, kind):
    with pytest.raises(InvalidNameError):
        check_name(name, kind)


def test_kind_specific_rules():
    with pytest.raises(InvalidNameError, match="reserved column"):
        check_name("Path", "finding")
    with pytest.raises(InvalidNameError, match="built-in"):
        check_name("imagenet", "checkpoint")
    with pytest.raises(InvalidNameError, match="no spaces"):
        check_name("my backbone", "checkpoint")
    with pytest.raises(InvalidNameError, match="must be text"):
        check_name(["x"], "init")
    with pytest.raises(ValueError, match="unknown name kind"):
        check_name("x", "file")


def test_inside_resolves_and_refuses_escapes(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    assert inside(root, "results", "a.csv") == (root / "results" / "a.csv").resolve()
    for parts in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "x")):
        with pytest.raises(UnsafePathError, match="outside"):
            inside(root, *parts)
    os.symlink(tmp_path / "elsewhere", root / "link")
    with pytest.raises(UnsafePathError):
        inside(root, "link", "file.txt")
