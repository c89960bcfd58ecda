"""Listing image files by content (engine.data.listing), and every place that lists: folder-per-class
manifests, `pretrain --data FOLDER`, the store's folder and ZIP imports (issue 13, item 4)."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.cli import main as cli
from engine.data.adapters import from_folder_tree
from engine.data.io import read_image
from engine.data.listing import list_images, skipped_summary, sniff_bytes
from engine.data.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT.parent / "shared" / "cases"


@pytest.fixture(scope="module")
def case_tree() -> Path:
    tree = CASES / "folder-extensionless-dicom" / "tree"
    if not tree.is_dir():
        pytest.skip(f"shared case not found at {tree}")
    return tree


def _dx(seed: int) -> Dataset:
    """A DX image with the study/series attributes a DICOMDIR record needs (PS3.3 F.5)."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName = "DUMMY", "Dummy^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20240101", "120000", "1", 1, seed + 1
    ds.Modality = "DX"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (32, 32)).astype("<u2").tobytes()
    return ds


def _sr() -> Dataset:
    """A Basic Text SR (no pixel data), as CDs carry beside the images."""
    ds = _dx(99)
    for kw in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
               "HighBit", "PixelRepresentation", "PixelData"):
        delattr(ds, kw)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.Modality = "SR"
    return ds


def _cd(root: Path, n: int = 3, seed: int = 0) -> Path:
    """A patient CD as pydicom's FileSet writes it (PS3.10, PS3.11): DICOMDIR + PT*/ST*/SE*/IM* without
    extensions."""
    fs = FileSet()
    for i in range(n):
        fs.add(_dx(seed + i))
    fs.write(root)
    return root


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24)).astype(np.uint8)).save(path, format="PNG")


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_case_tree_gives_five_rows_and_three_pneumonia(case_tree, tmp_path, capsys):
    """README: `manifest from-folder tree --out m.csv` -> 5 rows, 3 with pneumonia = 1 (was 1)."""
    out = tmp_path / "m.csv"
    assert cli(["manifest", "from-folder", str(case_tree), "--out", str(out)]) == 0
    m = load_manifest(out)
    assert len(m) == 5 and m.findings == ["pneumonia"]
    assert sorted(Path(p).name for p in m.df.loc[m.df["pneumonia"] == 1, "path"]) == ["IM000001", "IM000002",
                                                                                         "scan3.dcm"]
    for p in m.paths:  # every listed file is one the reader reads
        read_image(p)


def test_listing_decides_by_content_and_reports_every_skipped_file(tmp_path):
    cd = _cd(tmp_path / "patient_cd")
    _save(_sr(), cd / "DICOM" / "REPORT01")                                 # a report: no pixel data
    (cd / "README.TXT").write_text("Viewer instructions\n")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="BMP")
    (cd / "scan.bmp").write_bytes(buf.getvalue())                           # listed before, then refused
    (cd / "empty.png").write_bytes(b"")
    _png(cd / "photo.dat", 1)                                               # a PNG with a wrong suffix
    _png(cd / ".thumbs" / "t.png", 2)                                       # hidden: ignored silently
    (cd / "Thumbs.db").write_bytes(b"\x00" * 64)
    with zipfile.ZipFile(cd / "more.zip", "w") as zf:
        zf.writestr("x.txt", "x")

    listing = list_images(cd)
    names = [Path(f).relative_to(cd).as_posix() for f in listing.files]
    assert len([n for n in names if n.startswith("PT000000/ST")]) == 3 and all("/IM" in n for n in names[:-1])
    assert names[-1] == "photo.dat"
    reasons = dict(listing.skipped)
    assert set(reasons) == {"DICOMDIR", "DICOM/REPORT01", "README.TXT", "scan.bmp", "empty.png", "more.zip"}
    assert "DICOMDIR" in reasons["DICOMDIR"] and "index" in reasons["DICOMDIR"]
    assert "no pixel data" in reasons["DICOM/REPORT01"] and "Text SR" in reasons["DICOM/REPORT01"]
    assert reasons["README.TXT"] == "text, not an image"
    assert "BMP" in reasons["scan.bmp"] and "convert it to PNG" in reasons["scan.bmp"]
    assert "0 bytes" in reasons["empty.png"] and "extract it" in reasons["more.zip"]
    for f in listing.files:
        read_image(f)

    summary = listing.skipped_summary(limit=2)
    assert summary.startswith(f"skipped 6 files in {cd} that are not a readable image: ")
    assert "DICOM/REPORT01 (" in summary and "DICOMDIR (" in summary and "... (4 more)" in summary
    assert list_images(cd, archives=True).archives == [str(cd / "more.zip")]
    assert skipped_summary([], "x") == ""


def test_dicomdir_is_recognised_by_content_even_when_renamed(tmp_path):
    cd = _cd(tmp_path / "cd", n=1)
    data = (cd / "DICOMDIR").read_bytes()
    assert sniff_bytes(data, "INDEX")[0] is None and "DICOMDIR" in sniff_bytes(data, "INDEX")[1]
    assert sniff_bytes(next(cd.rglob("IM*")).read_bytes(), "IM000000") == ("dicom", "")


def test_from_folder_tree_with_cd_trees_in_class_folders_and_splits(tmp_path, caplog):
    root = tmp_path / "study"
    _cd(root / "train" / "pneumonia" / "cd1", n=2, seed=0)                  # nested CD: PT*/ST*/SE*/IM*
    _cd(root / "test" / "pneumonia" / "cd2", n=1, seed=10)
    _png(root / "train" / "normal" / "n1.png", 3)
    _png(root / "test" / "normal" / "n2.png", 4)
    (root / "train" / "labels.txt").write_text("loose file beside the class folders")
    with caplog.at_level(logging.WARNING, logger="engine.data.adapters"):
        events = []
        out = from_folder_tree(root, tmp_path / "m.csv", on_event=events.append)
    df = pd.read_csv(out)
    assert len(df) == 5 and int(df["pneumonia"].sum()) == 3
    assert df.groupby("split")["pneumonia"].sum().to_dict() == {"test": 1, "train": 2}
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 files" in warning                                      # 2 DICOMDIRs + the loose file
    assert "train/labels.txt (not inside a class folder)" in warning
    assert "train/pneumonia/cd1/DICOMDIR (DICOMDIR" in warning
    assert any(e.kind == "warning" and "skipped 3 files" in e.message for e in events)


def test_from_folder_tree_without_images_names_what_it_skipped(tmp_path):
    (tmp_path / "t" / "pneumonia").mkdir(parents=True)
    (tmp_path / "t" / "pneumonia" / "a.bmp").write_bytes(b"BM" + b"\x00" * 100)
    with pytest.raises(ValueError, match=r"no image files \(PNG, JPEG, TIFF or DICOM\) found .*skipped 1 file .*a\.bmp \(a BMP"):
        from_folder_tree(tmp_path / "t", tmp_path / "m.csv")


def test_cli_from_folder_reports_skipped_files_on_stderr(case_tree, tmp_path):
    """The skipped-files warning reaches the terminal (stderr), the manifest path stdout, exit 0."""
    tree = tmp_path / "tree"
    _cd(tree / "pneumonia", n=2)
    _png(tree / "normal" / "a.png", 1)
    (tree / "normal" / "notes.txt").write_text("x")
    out = subprocess.run([sys.executable, "-m", "engine", "manifest", "from-folder", str(tree), "--out",
                          str(tmp_path / "m.csv")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "skipped 2 files" in out.stderr and "normal/notes.txt (text, not an image)" in out.stderr
    assert "pneumonia/DICOMDIR" in out.stderr
    assert len(pd.read_csv(tmp_path / "m.csv")) == 3


def test_pretrain_folder_listing_uses_content(tmp_path, caplog):
    from engine.ssl.pretrain import resolve_image_paths

    cd = _cd(tmp_path / "cd", n=2)
    _png(cd / "extra" / "x.PNG", 5)
    with caplog.at_level(logging.WARNING):
        paths = resolve_image_paths(cd)
    assert len(paths) == 3 and paths == sorted(paths)
    assert sum("/IM" in p for p in paths) == 2
    assert "skipped 1 file" in caplog.text and "DICOMDIR" in caplog.text
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images found .*a\.txt \(text"):
        resolve_image_paths(tmp_path / "none")


def test_store_folder_and_zip_imports_list_by_content(tmp_path):
    from engine.store import Store

    cd = _cd(tmp_path / "cd", n=2)
    (cd / "notes.txt").write_text("x")
    store = Store(tmp_path / "ws")
    try:
        events = []
        res = store.import_paths([cd], on_event=events.append)
        ok = sorted(r.name for r in res if r.error is None)
        assert len(ok) == 2 and all(n.startswith("cd/PT000000/") for n in ok)
        skipped = {r.name: r.error for r in res if r.error}
        assert set(skipped) == {"cd/DICOMDIR", "cd/notes.txt"}
        assert "skipped: DICOMDIR" in skipped["cd/DICOMDIR"] and "skipped: text" in skipped["cd/notes.txt"]
        assert any(e.kind == "warning" and "skipped 2 files" in e.message for e in events)

        buf = io.BytesIO()                                                  # the same CD as a ZIP upload
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(cd.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(cd).as_posix())
        events.clear()
        res = store.import_bytes("cd.zip", buf.getvalue(), on_event=events.append)
        assert sorted(r.name for r in res if r.error is None and r.duplicate) == sorted(
            "cd.zip/" + n.removeprefix("cd/") for n in ok)
        errs = {r.name: r.error for r in res if r.error}
        assert set(errs) == {"cd.zip/DICOMDIR", "cd.zip/notes.txt"} and "skipped: DICOMDIR" in errs["cd.zip/DICOMDIR"]
        assert any(e.kind == "warning" and "skipped 2 files in cd.zip" in e.message for e in events)

        renamed = tmp_path / "archive_without_suffix"                      # a ZIP found by content
        renamed.write_bytes(buf.getvalue())
        assert sum(r.error is None for r in store.import_paths([renamed])) == 2
    finally:
        store.close()
