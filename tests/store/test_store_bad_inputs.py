"""Issue 2 "Done when": a corpus of bad inputs each gives a clear error and leaves the store unchanged
(row counts of every table and the images/ and masks/ folder listings)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.data.manifest import ManifestError
from engine.store import Store

DX = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"  # uncompressed, 1024x1024


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (8-bit grey) with one tiny IDAT chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def dicom_variants(src: Path, out: Path) -> dict[str, Path]:
    """Real DICOM mutated into one without pixel data and one with two frames."""
    import pydicom

    ds = pydicom.dcmread(src)
    no_pixels = out / "no_pixels.dcm"
    del ds.PixelData
    ds.save_as(no_pixels)

    ds = pydicom.dcmread(src)
    multi = out / "two_frames.dcm"
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(multi)
    return {"no_pixels.dcm": no_pixels, "two_frames.dcm": multi}


def state(store: Store) -> tuple:
    listing = sorted(p.relative_to(store.workspace).as_posix()
                     for d in (store.images_dir, store.masks_dir) for p in d.iterdir())
    return store.table_counts(), listing


@pytest.fixture
def populated(tmp_path) -> Store:
    """A store that already holds images, labels, a region-free finding and a job."""
    s = Store(tmp_path / "ws")
    ids = [s.import_bytes(f"ok{i}.png", png_bytes(np.full((16, 16), 40 * i, np.uint8)))[0].image_id for i in range(3)]
    s.set_labels("nodule", {ids[0]: 1, ids[1]: 0})
    s.create_job("toy", {})
    yield s
    s.close()


def test_bad_image_files_give_clear_errors_and_change_nothing(populated, tmp_path, shared_data):
    good = png_bytes((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    corpus = {
        "empty.png": b"",
        "truncated.png": good[: len(good) // 2],
        "notes.png": b"Patient notes, not an image.\n" * 20,
        "huge.png": png_header_only(20000, 20000),
    }
    for name, data in corpus.items():
        (corpus_dir / name).write_bytes(data)
    dicoms = dicom_variants(shared_data / "dicom" / DX, corpus_dir)
    expected = {  # what each error must say (the reader's wording, any of these)
        "empty.png": ("empty", "0 bytes"),
        "truncated.png": ("truncated", "corrupt"),
        "notes.png": ("not a",),
        "huge.png": ("megapixel", "too large", "limit"),
        "no_pixels.dcm": ("no pixel data",),
        "two_frames.dcm": ("multi-frame", "frames"),
    }

    before = state(populated)
    by_bytes = [r for name in expected for r in populated.import_bytes(name, (corpus_dir / name).read_bytes())]
    by_path = populated.import_paths([corpus_dir])
    assert state(populated) == before

    assert len(by_bytes) == len(expected) and len(by_path) == len(expected)
    for r in by_bytes + by_path:
        base = r.name.split("/")[-1]
        assert r.image_id is None and not r.duplicate
        assert r.error and r.error.startswith(f"{r.name}: "), r
        assert any(k in r.error.lower() for k in expected[base]), r.error
    assert dicoms  # both DICOM variants were part of the corpus


def _manifest(root: Path, labels: list[object], missing: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, v in enumerate(labels):
        p = root / "images" / f"x{i}.png"
        if i >= missing:
            Image.fromarray(np.full((12, 12), 10 * i + 5, np.uint8)).save(p)
        rows.append({"path": f"images/x{i}.png", "effusion": v, "nodule": i % 2})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_manifest_with_missing_files_changes_nothing(populated, tmp_path):
    csv = _manifest(tmp_path / "m", [1, 0, 1, 0], missing=2)
    before = state(populated)
    with pytest.raises(ManifestError) as ei:
        populated.import_manifest(csv)
    text = "\n".join(ei.value.problems)
    assert "x0.png" in text and "x1.png" in text and "x2.png" not in text
    assert state(populated) == before


def test_manifest_finding_with_one_class_changes_nothing(populated, tmp_path):
    csv = _manifest(tmp_path / "m", [1, 1, "", 1])
    before = state(populated)
    with pytest.raises(ManifestError) as ei:
        populated.import_manifest(csv)
    (problem,) = ei.value.problems
    assert "effusion" in problem and "only one class" in problem
    assert state(populated) == before
