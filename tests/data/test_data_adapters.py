"""Adapters: folder trees, NIH ChestX-ray14 and PadChest as they ship, and rare-finding selection."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.data.adapters import (
    findings_with_min_patients,
    finding_name,
    from_folder_tree,
    from_nih,
    from_padchest,
    padchest_labels,
)
from engine.data.manifest import load_manifest

PADCHEST_CSV = "padchest_meta/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def _png(path: Path, size: tuple[int, int] = (16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 100).save(path)


# --------------------------------------------------------------------------------------- folder tree


def test_folder_tree_one_vs_rest_with_normal_folder(tmp_path):
    root = tmp_path / "tree"
    _png(root / "NORMAL" / "n1.png")
    _png(root / "NORMAL" / "n2.jpg")
    _png(root / "Pneumonia" / "p1.png")
    _png(root / "Pneumonia" / "deeper" / "p2.png")
    _png(root / "pleural  effusion" / "e1.png")
    (root / "Pneumonia" / "notes.txt").write_text("not an image")
    _png(root / "Pneumonia" / ".hidden.png")
    events = []
    out = from_folder_tree(root, root / "manifest.csv", on_event=events.append)
    m = load_manifest(out)
    assert m.findings == ["pleural effusion", "pneumonia"] and "patient_id" in m.df  # (the path when absent)
    by_name = {Path(p).name: row for p, row in zip(m.df["path"], m.df[m.findings].to_numpy())}
    assert set(by_name) == {"n1.png", "n2.jpg", "p1.png", "p2.png", "e1.png"}
    assert by_name["n1.png"].tolist() == [0, 0] and by_name["p2.png"].tolist() == [0, 1]
    assert by_name["e1.png"].tolist() == [1, 0]
    assert "NORMAL/n1.png" in out.read_text()  # written relative to the manifest's folder
    assert "2 normal" in events[-1].message


def test_folder_tree_with_split_folders(tmp_path):
    for split in ("train", "test"):
        _png(tmp_path / split / "NORMAL" / f"{split}_n.png")
        _png(tmp_path / split / "PNEUMONIA" / f"{split}_p.png")
    m = load_manifest(from_folder_tree(tmp_path, tmp_path / "m.csv"))
    assert m.findings == ["pneumonia"]
    assert sorted(zip(m.df["split"], m.df["pneumonia"])) == [("test", 0), ("test", 1), ("train", 0), ("train", 1)]


@pytest.mark.parametrize("layout, needle", [
    ({"train/a/x.png", "cats/y.png"}, "mixes split folders"),
    ({"normal/x.png"}, "only has normal images"),
    ({"a/readme.txt"}, "no image files"),
    (set(), "no sub-folders"),
])
def test_folder_tree_errors(tmp_path, layout, needle):
    for rel in layout:
        p = tmp_path / "r" / rel
        if rel.endswith(".png"):
            _png(p)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")
    (tmp_path / "r").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=needle):
        from_folder_tree(tmp_path / "r", tmp_path / "m.csv")


# ----------------------------------------------------------------------------------------------- NIH


def test_nih_as_it_ships(shared_data, tmp_path):
    events = []
    out = from_nih(shared_data / "nih_meta", tmp_path / "nih.csv", on_event=events.append)
    m = load_manifest(out)
    assert len(m.findings) == 14 and "pleural_thickening" in m.findings and "no finding" not in m.findings
    rows = {Path(p).name: r for p, r in zip(m.df["path"], m.df.to_dict("records"))}
    assert set(rows) == {"00000001_000.png", "00027426_000.png"}
    assert rows["00000001_000.png"]["cardiomegaly"] == 1 and rows["00000001_000.png"]["patient_id"] == "1"
    assert sum(rows["00027426_000.png"][f] for f in m.findings) == 0  # No Finding -> all 0
    assert rows["00027426_000.png"]["patient_id"] == "27426"
    dropped = [e for e in events if e.kind == "warning"]
    assert dropped and "dropped 112118 of 112120" in dropped[0].message
    assert m.boxes is not None and len(m.boxes) == 0  # neither image has a box; boxes.csv still written


def _nih_root(tmp: Path) -> Path:
    """A miniature NIH release with the official headers, nested image folders and split lists."""
    root = tmp / "nih"
    entry = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
             "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
             "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
             "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
             "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171\n"
             "00000003_000.png,Infiltration|Nodule,0,3,76,F,PA,2500,2048,0.168,0.168\n"
             "00000004_000.png,Mass,0,4,40,F,AP,2500,2048,0.168,0.168\n")
    root.mkdir()
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "wt") as fh:
        fh.write(entry)
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000003_000.png,Infiltrate,100,200,300,400,,,\n"
        "00000003_000.png,Nodule,512,512,20,10,,,\n"
        "00000004_000.png,Mass,0,0,50,50,,,\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n")
    _png(root / "images_001" / "images" / "00000001_000.png")
    _png(root / "images_001" / "images" / "00000001_001.png")
    _png(root / "images_002" / "images" / "00000002_000.png")
    _png(root / "images_002" / "images" / "00000003_000.png", size=(512, 512))  # downsampled by 2
    return root  # 00000004_000.png is missing on disk


def test_nih_splits_boxes_and_missing_images(tmp_path):
    root = _nih_root(tmp_path)
    m = load_manifest(from_nih(root, root / "manifest.csv"))
    names = [Path(p).name for p in m.df["path"]]
    assert names == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]
    assert m.df["split"].tolist() == ["train", "train", "train", "test"]
    assert m.df["patient_id"].tolist() == ["1", "1", "2", "3"]
    assert m.findings == ["cardiomegaly", "emphysema", "infiltration", "mass", "nodule"]
    assert m.labels("emphysema").tolist() == [0, 1, 0, 0] and m.labels("nodule").tolist() == [0, 0, 0, 1]
    b = m.boxes.sort_values("finding").reset_index(drop=True)
    assert b["finding"].tolist() == ["infiltration", "nodule"]  # "Infiltrate" mapped; missing image's box dropped
    assert b.loc[0, ["x", "y", "w", "h"]].tolist() == [50, 100, 150, 200]  # 1024-px grid -> 512-px file
    assert findings_with_min_patients(m, 1) == [("cardiomegaly", 1), ("emphysema", 1), ("infiltration", 1),
                                                ("nodule", 1)]

    m2 = load_manifest(from_nih(root, tmp_path / "all.csv", check_files=False), check_files=False)
    assert len(m2) == 5 and m2.df["path"].iloc[4] == str(root / "images" / "00000004_000.png")
    assert len(m2.boxes) == 3 and m2.boxes["w"].max() == 300  # no rescaling without files


def test_nih_errors(tmp_path):
    with pytest.raises(ValueError, match="Data_Entry_2017"):
        from_nih(tmp_path, tmp_path / "m.csv")
    root = _nih_root(tmp_path)
    shutil.rmtree(root / "images_001")
    shutil.rmtree(root / "images_002")
    with pytest.raises(ValueError, match="none of the 5 images"):
        from_nih(root, root / "m.csv")


# ------------------------------------------------------------------------------------------ PadChest


@pytest.fixture(scope="module")
def padchest_table(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / PADCHEST_CSV, usecols=["Projection", "Labels"], dtype=str)


RARE = ("hiatal hernia", "calcified granuloma", "pulmonary fibrosis")


def _positives(onehot: np.ndarray, findings: list[str], rows: np.ndarray | None = None) -> list[int]:
    col = {f: j for j, f in enumerate(findings)}
    sel = onehot if rows is None else onehot[rows]
    return [int(sel[:, col[f]].sum()) for f in RARE]


def test_padchest_label_counts_reproduce_the_published_figures(padchest_table):
    """The shared README's figures count entries written exactly 'hiatal hernia' over all 160,861
    rows; entries written ' hiatal hernia' (leading space) are the same finding and are merged by default."""
    assert len(padchest_table) == 160861
    exact, f_exact, labeled = padchest_labels(padchest_table["Labels"], exact_labels=True)
    assert _positives(exact, f_exact) == [2153, 3025, 760]
    merged, f_merged, _ = padchest_labels(padchest_table["Labels"])
    assert _positives(merged, f_merged) == [2363, 3194, 1228]
    frontal = padchest_table["Projection"].isin(["PA", "AP"]).to_numpy()  # the adapter's default filter
    assert _positives(merged, f_merged, frontal) == [1531, 2025, 683]
    assert "normal" not in f_merged and "" not in f_merged and "copd signs" in f_merged
    assert int((~labeled).sum()) == 103 + 777  # 'nan' cells and [''] lists carry no labels


def test_padchest_adapter_on_the_official_table_format(shared_data, tmp_path):
    head = pd.read_csv(shared_data / PADCHEST_CSV, nrows=3000, dtype=str)  # the shipped columns, unchanged
    csv = tmp_path / "PADCHEST_head.csv.gz"
    head.to_csv(csv, index=False)
    events = []
    m = load_manifest(from_padchest(csv, tmp_path / "pc.csv", check_files=False, on_event=events.append),
                      check_files=False)
    frontal = head[head["Projection"].isin(["PA", "AP"])]
    onehot, findings, labeled = padchest_labels(frontal["Labels"])
    assert len(m) == int(labeled.sum()) and len(m) > 1500
    assert m.df["patient_id"].tolist() == frontal["PatientID"][labeled].tolist()
    assert m.df["path"].iloc[0] == str(tmp_path / frontal["ImageDir"].iloc[0] / frontal["ImageID"].iloc[0])
    used = [f for f, n in zip(findings, onehot[labeled].sum(0)) if n]
    assert m.findings == used
    assert [m.counts()[f]["positive"] for f in used] == [int(n) for n in onehot[labeled].sum(0) if n]
    assert any("PadChest:" in e.message and "rows kept" in e.message for e in events)


def test_padchest_images_root_projection_and_checks(tmp_path):
    header = "ImageID,ImageDir,PatientID,Projection,Labels,Other\n"
    rows = ["a.png,0,P1,PA,\"['normal']\",x", "b.png,0,P1,PA,\"[' Hiatal  Hernia', 'COPD signs']\",x",
            "c.png,1,P2,L,\"['hiatal hernia']\",x", "d.png,1,P3,AP,\"['cardiomegaly', '']\",x",
            "e.png,2,P4,PA,nan,x", "f.png,2,P5,PA,\"['cardiomegaly']\",x"]
    csv = tmp_path / "table.csv"
    csv.write_text(header + "\n".join(rows) + "\n")
    imgs = tmp_path / "imgs"
    for d, n in [("0", "a.png"), ("0", "b.png"), ("1", "c.png"), ("1", "d.png"), ("2", "e.png")]:
        _png(imgs / d / n)  # f.png is missing
    m = load_manifest(from_padchest(csv, tmp_path / "m.csv", images_root=imgs))
    assert [Path(p).name for p in m.df["path"]] == ["a.png", "b.png", "d.png"]
    assert m.findings == ["cardiomegaly", "copd signs", "hiatal hernia"]
    assert m.df[m.findings].to_numpy().tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert m.df["patient_id"].tolist() == ["P1", "P1", "P3"]
    m = load_manifest(from_padchest(csv, tmp_path / "m2.csv", images_root=imgs, projections=None))
    assert len(m) == 4 and m.labels("hiatal hernia").tolist() == [0, 1, 1, 0]
    assert findings_with_min_patients(m, 1) == [("hiatal hernia", 2), ("cardiomegaly", 1), ("copd signs", 1)]
    with pytest.raises(ValueError, match=r"unknown PadChest projection\(s\) \['LATERAL'\]"):
        from_padchest(csv, tmp_path / "m3.csv", images_root=imgs, projections=["LATERAL"])
    with pytest.raises(ValueError, match="no rows of table.csv have projection COSTAL"):
        from_padchest(csv, tmp_path / "m3.csv", images_root=imgs, projections=["COSTAL"])
    with pytest.raises(ValueError, match="none of the"):
        from_padchest(csv, tmp_path / "m4.csv", images_root=tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    bad.write_text(header + "a.png,0,P1,PA,\"__import__('os')\",x\n")
    with pytest.raises(ValueError, match="cannot be parsed"):
        from_padchest(bad, tmp_path / "m5.csv", check_files=False)


def test_finding_name_normalization():
    assert finding_name("  COPD   signs ") == "copd signs"
    assert finding_name("Pleural_Thickening") == "pleural_thickening"


def test_findings_with_min_patients_counts_patients_not_images(tmp_path):
    for n in "abcdef":
        _png(tmp_path / f"{n}.png")
    (tmp_path / "m.csv").write_text("path,patient_id,nodule,mass\na.png,P1,1,0\nb.png,P1,1,1\nc.png,P1,1,0\n"
                                    "d.png,P2,1,\ne.png,P3,0,1\nf.png,P4,,1\n")
    m = load_manifest(tmp_path / "m.csv")
    assert findings_with_min_patients(m, 2) == [("mass", 3), ("nodule", 2)]
    assert findings_with_min_patients(m, 3) == [("mass", 3)]
    assert np.isnan(m.labels("mass")[3])
