"""One id scheme (issue 22, Build 2) in the `import` job: NIH / PadChest imports keep the datasets' public image ids
as the stored names (they stay visible on every page), other sources are stored as `image-<id>`; an upload job's
result lists `file <k>` -> stored image id for the page's report, never the uploaded names."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.jobs import JobRunner
from engine.store import Store
from engine.tasks import ImportParams, register_all


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24), dtype=np.uint8)).save(path)


def _nih(root: Path) -> Path:
    """A miniature NIH ChestX-ray14 release (official headers, nested image folders)."""
    rows = [("00000001_000.png", "Cardiomegaly", 1), ("00000001_001.png", "No Finding", 1),
            ("00000002_000.png", "Cardiomegaly|Nodule", 2), ("00000003_000.png", "No Finding", 3),
            ("00000004_000.png", "Nodule", 4), ("00000005_000.png", "No Finding", 5)]
    root.mkdir()
    head = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "wt") as fh:
        fh.write(head + "".join(f"{n},{f},0,{p},50,M,PA,24,24,0.1,0.1\n" for n, f, p in rows))
    for k, (n, _, _) in enumerate(rows):
        _png(root / f"images_00{1 + k % 2}" / "images" / n, seed=k)
    return root


@pytest.fixture
def runner(tmp_path):
    store = Store(tmp_path / "ws")
    r = JobRunner(store, device="cpu")
    register_all(r)
    yield r
    r.shutdown()
    store.close()


def test_an_nih_import_keeps_the_dataset_image_ids_as_names(runner, tmp_path):
    job = runner.submit("import", ImportParams(source="nih", path=str(_nih(tmp_path / "nih"))))
    snap = runner.wait(job, 120)
    assert snap.state == "done", snap.error
    names = sorted(runner.store.images()["name"])
    assert names == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png",
                     "00000004_000.png", "00000005_000.png"]


def test_a_folder_import_is_stored_under_neutral_names(runner, tmp_path):
    for k in range(2):
        _png(tmp_path / "folder" / f"SMITH_{k}.png", seed=10 + k)
    snap = runner.wait(runner.submit("import", ImportParams(source="folder", path=str(tmp_path / "folder"))), 120)
    assert snap.state == "done", snap.error
    assert sorted(runner.store.images()["name"]) == ["image-000001", "image-000002"]


def test_an_upload_job_lists_file_positions_with_their_stored_ids(runner):
    blobs = []
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(20 + k % 2).integers(0, 256, (24, 24), dtype=np.uint8)).save(buf, "PNG")
        blobs.append((f"DOE_{k}.png", buf.getvalue()))  # the third repeats the first's pixels
    folder = runner.store.stage_upload(blobs)
    snap = runner.wait(runner.submit("import", ImportParams(source="upload", path=str(folder))), 120)
    assert snap.state == "done", snap.error
    assert snap.result["stored"] == [["file 1", 1, False], ["file 2", 2, False], ["file 3", 1, True]]
    assert "DOE" not in str(snap.result) and "DOE" not in str(snap.params)
