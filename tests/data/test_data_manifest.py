"""Manifest loading, validation (all problems at once), counts and atomic writing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.manifest import ManifestError, load_manifest, manifest_csv_text, write_manifest


def _touch(folder: Path, *names: str) -> None:
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_reads_the_kermany_manifest(shared_data):
    m = load_manifest(shared_data / "kermany224" / "manifest.csv")
    assert len(m) == 5840 and m.findings == ["pneumonia", "bacterial", "viral"]
    c = m.counts()
    assert c["pneumonia"] == {"positive": 4265, "negative": 1575, "unknown": 0}
    assert c["bacterial"]["positive"] == 2772 and c["viral"]["positive"] == 1493
    assert (m.df["split"] == "train").sum() == 5216 and (m.df["split"] == "test").sum() == 624
    assert m.df["patient_id"].iloc[0] == "IM-0115"
    assert all(os.path.isabs(p) for p in m.df["path"]) and os.path.isfile(m.df["path"].iloc[-1])
    assert m.boxes is None and m.masks is None


def test_loads_relative_absolute_blank_and_regions(tmp_path):
    _touch(tmp_path, "img/a.png", "img/b.png", "masks/a_nod.png")
    other = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    _touch(other, "c.png")
    csv = _write(tmp_path / "manifest.csv", f"""
path,patient_id,split,nodule,effusion
img/a.png,P1,train,1,0
img/b.png,,test,0,
{other / 'c.png'},P2,,1.0,1
""")
    _write(tmp_path / "boxes.csv", "path,finding,x,y,w,h\nimg/a.png,nodule,10,12.5,30,40")
    _write(tmp_path / "masks.csv", "path,finding,mask_path\nimg/a.png,nodule,masks/a_nod.png")
    m = load_manifest(csv)
    assert m.findings == ["nodule", "effusion"]
    assert m.df["path"].tolist() == [str(tmp_path / "img/a.png"), str(tmp_path / "img/b.png"), str(other / "c.png")]
    assert m.df["patient_id"].tolist() == ["P1", str(tmp_path / "img/b.png"), "P2"]  # blank -> the path
    assert m.df["split"].tolist() == ["train", "test", ""]
    np.testing.assert_array_equal(m.labels("effusion"), [0.0, np.nan, 1.0])
    assert m.counts()["effusion"] == {"positive": 1, "negative": 1, "unknown": 1}
    assert m.boxes.iloc[0].to_dict() == {"path": str(tmp_path / "img/a.png"), "finding": "nodule",
                                         "x": 10.0, "y": 12.5, "w": 30.0, "h": 40.0}
    assert m.masks["mask_path"].iloc[0] == str(tmp_path / "masks/a_nod.png")
    with pytest.raises(ManifestError, match="unknown finding 'mass'"):
        m.labels("mass")


def test_every_problem_is_listed_at_once(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    missing = [f"gone/m{i:02d}.png" for i in range(12)]
    rows = ["a.png,P1,1,0,0", "b.png,P2,yes,0,1", "a.png,P3,0,2,0", ",P4,0,0,0"] + [f"{p},P9,0,0,0" for p in missing]
    csv = _write(tmp_path / "manifest.csv", "path,patient_id,nodule,mass,effusion\n" + "\n".join(rows))
    _write(tmp_path / "boxes.csv", "path,finding,x,y,w,h\nnot_listed.png,nodule,1,1,5,5\na.png,tumour,1,1,5,5\n"
                                   "b.png,mass,1,1,0,5")
    _write(tmp_path / "masks.csv", "path,finding,mask_path\na.png,nodule,masks/none.png")
    with pytest.raises(ManifestError) as ei:
        load_manifest(csv)
    problems = ei.value.problems
    text = "\n".join(problems)
    assert len(problems) == 9, text
    assert "column 'nodule'" in text and "line 3: 'yes'" in text
    assert "column 'mass'" in text and "line 4" in text
    assert "1 row(s) have an empty path: lines 5" in text
    assert "a.png" in text and "more than one row" in text
    assert "12 image file(s) not found" in text and "gone/m00.png" in text and "(2 more)" in text
    assert "not_listed.png" in text and "'tumour'" not in text and "tumour" in text
    assert "w > 0" in text and "mask file(s)" in text
    assert str(ei.value).startswith(f"{csv} has 9 problems")


@pytest.mark.parametrize("content, needle", [
    ("patient_id,nodule\nP1,1", "no 'path' column"),
    ("path,patient_id,split\na.png,P1,train", "no finding columns"),
    ("path,nodule", "header but no rows"),
    ("", "is empty"),
    ("path,nodule,nodule\na.png,1,0", "duplicate column names"),
    ("path,nodule\na.png,-1", "values other than 1, 0 or blank"),
    ("path,nodule\na.png,True", "values other than 1, 0 or blank"),
    ("path,nodule\na.png,NA", "values other than 1, 0 or blank"),
])
def test_structural_problems(tmp_path, content, needle):
    _touch(tmp_path, "a.png")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ManifestError, match=needle):
        load_manifest(tmp_path / "m.csv")


def test_missing_manifest_and_check_files_off(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.csv")
    csv = _write(tmp_path / "m.csv", "path,nodule\nx.png,1\ny.png,0")
    with pytest.raises(ManifestError, match="2 image file"):
        load_manifest(csv)
    assert len(load_manifest(csv, check_files=False)) == 2


def test_single_class_finding_is_a_warning_until_validated(tmp_path):
    _touch(tmp_path, "a.png", "b.png", "c.png")
    m = load_manifest(_write(tmp_path / "m.csv", "path,nodule,mass\na.png,1,1\nb.png,1,0\nc.png,,0"))
    c = m.counts()
    assert "warning" not in c["mass"]
    assert "only one class" in c["nodule"]["warning"] and c["nodule"]["positive"] == 2
    m.validate_finding("mass")
    with pytest.raises(ManifestError, match="only one class"):
        m.validate_finding("nodule")
    with pytest.raises(ManifestError, match="at least 2 of each"):
        m.validate_finding("mass", min_per_class=2)


def test_write_manifest_round_trip_and_relative_paths(tmp_path):
    _touch(tmp_path, "imgs/a.png", "imgs/b.png")
    outside = tmp_path.parent / f"{tmp_path.name}_out" / "c.png"
    _touch(outside.parent, "c.png")
    df = pd.DataFrame({"path": [str(tmp_path / "imgs/a.png"), "imgs/b.png", str(outside)],
                       "patient_id": ["p1", "p,2", "p3"], "nodule": [1.0, 0.0, np.nan],
                       "pleural effusion": np.array([0, 1, 1], dtype=np.uint8)})
    boxes = pd.DataFrame({"path": [str(tmp_path / "imgs/a.png")], "finding": ["nodule"],
                          "x": [1.0], "y": [2.0], "w": [3.0], "h": [4.0]})
    out = write_manifest(df, tmp_path / "manifest.csv", boxes=boxes)
    lines = out.read_text().splitlines()
    assert lines[0] == "path,patient_id,nodule,pleural effusion"
    assert lines[1:] == ["imgs/a.png,p1,1,0", 'imgs/b.png,"p,2",0,1', f"{outside},p3,,1"]
    m = load_manifest(out)
    assert m.df["path"].tolist() == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/b.png"), str(outside)]
    assert m.df["patient_id"].tolist() == ["p1", "p,2", "p3"]
    assert m.boxes["path"].tolist() == [str(tmp_path / "imgs/a.png")]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_write_manifest_refuses_bad_labels_and_leaves_the_old_file(tmp_path):
    target = _write(tmp_path / "m.csv", "path,nodule\na.png,1")
    before = target.read_bytes()
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        write_manifest(pd.DataFrame({"path": ["a.png"], "nodule": [2.0]}), target)
    with pytest.raises(ValueError, match="no finding columns"):
        manifest_csv_text(pd.DataFrame({"path": ["a.png"]}), tmp_path)
    assert target.read_bytes() == before


def _data_cli(argv: list[str]) -> int:
    """Run a data-area subcommand through its own parser (the full CLI imports every area)."""
    import argparse

    from engine.data.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_manifest_check(tmp_path, capsys):
    main = _data_cli

    _touch(tmp_path, "a.png", "b.png")
    good = _write(tmp_path / "m.csv", "path,nodule\na.png,1\nb.png,0")
    assert main(["manifest", "check", str(good)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["findings"]["nodule"] == {"positive": 1, "negative": 1, "unknown": 0}
    bad = _write(tmp_path / "bad.csv", "path,nodule\nmissing.png,1")
    assert main(["manifest", "check", str(bad)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and "missing.png" in out["problems"][0]
