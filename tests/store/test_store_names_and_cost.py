"""Issue 14 items 6 and 7 in the store: file names (which may identify a patient) never reach the
store or its exports, and uploads are checked for duplicates by their bytes and budgeted by their
declared pixels before anything is decoded."""
from __future__ import annotations

import io
import sqlite3
import struct
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

import engine.data.io as image_io
from engine.store import SCHEMA_VERSION, Store, UploadTooLargeError, connect, migrate
from ui.labels import labels_from_csv

PHI = "SURNAME_GIVEN_MRN12345"


def png_bytes(seed: int, size: int = 24) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def workspace_bytes(store: Store) -> bytes:
    """Every byte under the workspace (the database, its WAL, pixels, exports)."""
    return b"".join(p.read_bytes() for p in sorted(store.workspace.rglob("*")) if p.is_file())


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws")
    yield s
    s.close()


@pytest.fixture
def decodes(monkeypatch):
    """Counts read_image calls (the store imports it from engine.data.io at call time)."""
    calls: list[int] = []
    real = image_io.read_image

    def counting(src, **kw):
        calls.append(1)
        return real(src, **kw)

    monkeypatch.setattr(image_io, "read_image", counting)
    return calls


# ------------------------------------------------------------------------------------- item 7: PHI


def test_identifying_file_names_never_reach_the_store_or_its_exports(store, tmp_path):
    (up,) = store.import_bytes(f"{PHI}.dcm.png", png_bytes(1), label=("nodule", 1))
    assert up.name == f"{PHI}.dcm.png" and up.error is None  # shown back to the uploader, this session only
    zipped = store.import_bytes(f"{PHI}_series.zip", zip_bytes({f"{PHI}/IM000001": png_bytes(2)}))
    folder = tmp_path / f"{PHI}_CD" / "DICOM"
    folder.mkdir(parents=True)
    (folder / f"{PHI}_3.png").write_bytes(png_bytes(3))
    from_folder = store.import_paths([folder.parent])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / f"{PHI}_4.png").write_bytes(png_bytes(4))
    (tmp_path / "m" / "x_5.png").write_bytes(png_bytes(5))
    (tmp_path / "m" / "manifest.csv").write_text(f"path,nodule\n{PHI}_4.png,1\nx_5.png,0\n")
    store.import_manifest(tmp_path / "m" / "manifest.csv")
    ids = [up.image_id, zipped[0].image_id, from_folder[0].image_id]
    df = store.images()
    assert len(df) == 5 and list(df["name"]) == [f"image-{i:06d}" for i in df["id"]]
    for i in ids:
        assert store.image_meta(i)["name"] == f"image-{i:06d}"
    store.export_manifest(store.workspace / "results" / "export.csv")
    store.add_result("sweep", "r", store.workspace / "results", {})
    store.close()
    for con in (sqlite3.connect(store.db_path),):  # fold the WAL in, then look at every byte
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    blob = workspace_bytes(store)
    for fragment in (PHI, "SURNAME", "MRN12345"):
        assert fragment.encode() not in blob and fragment.encode("utf-16-le") not in blob, fragment


def test_keep_names_keeps_them_and_errors_name_the_file_without_its_path(store, tmp_path):
    (r,) = store.import_bytes("phantom_001.png", png_bytes(1), keep_names=True)
    assert store.image_meta(r.image_id)["name"] == "phantom_001.png"
    bad = tmp_path / f"{PHI}" / "notes.txt"
    bad.parent.mkdir()
    bad.write_text("not an image")
    (res,) = store.import_paths([bad])
    assert res.name == "notes.txt" and res.image_id is None
    assert res.error.startswith("notes.txt: the file is not a PNG, JPEG, TIFF or DICOM image")
    assert str(tmp_path) not in res.error and PHI not in res.error


def test_a_label_csv_of_the_original_file_names_finds_neutrally_named_images(store):
    a = store.import_bytes("SMITH_JOHN.png", png_bytes(1))[0].image_id
    b = store.import_bytes(f"{PHI}.zip", zip_bytes({"cd/IM000001": png_bytes(2)}))[0].image_id
    old = store.import_bytes("kept.png", png_bytes(3), keep_names=True)[0].image_id
    csv = ("name;nodule\r\nC:\\exports\\SMITH_JOHN.png;1\r\nIM000001;0\r\nkept.png;1\r\n"
           f"image-{a:06d};1\r\nnobody.png;0\r\n").encode("cp1252")
    labels, unmatched = labels_from_csv(csv, store.images(), store.name_key)
    assert labels == {"nodule": {a: 1, b: 0, old: 1}} and unmatched == ["nobody.png"]
    labels, unmatched = labels_from_csv(csv, store.images())  # without the key: stored names only
    assert labels == {"nodule": {old: 1, a: 1}} and "SMITH_JOHN" in unmatched[0]


def test_a_v3_workspace_migrates_keeping_its_names(tmp_path):
    ws = tmp_path / "old"
    ws.mkdir()
    con = connect(ws / "store.sqlite")
    migrate(con, target=3)
    con.execute("INSERT INTO images(sha256, name, file, width, height, bits, source_format, created)"
                " VALUES ('abc', 'old/a.png', 'images/abc.png', 4, 4, 8, 'png', 0)")
    con.close()
    with Store(ws) as s:
        assert s.schema_version == SCHEMA_VERSION == 4
        df = s.images()
        assert list(df["name"]) == ["old/a.png"] and df["name_key"].isna().all()
        labels, _ = labels_from_csv(b"name,nodule\na.png,1\n", df, s.name_key)
        assert labels == {"nodule": {1: 1}}


# ---------------------------------------------------------------------------- item 6: decode cost


def test_copies_are_duplicates_by_their_bytes_before_decoding(store, decodes):
    one = png_bytes(7)
    res = store.import_bytes("eight.zip", zip_bytes({f"copy{i}.png": one for i in range(8)}))
    assert [r.duplicate for r in res] == [False] + [True] * 7 and len({r.image_id for r in res}) == 1
    assert len(decodes) == 1                                   # the 7 copies were never decoded
    store.import_bytes("eight-again.zip", zip_bytes({f"c{i}.png": one for i in range(8)}))
    assert len(decodes) == 1
    # same pixels in other bytes: decoded once, recognized by pixels, then remembered by bytes
    arr = np.asarray(Image.open(io.BytesIO(one)))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
    for _ in range(2):
        (r,) = store.import_bytes("other-bytes.png", buf.getvalue())
        assert r.duplicate and r.image_id == res[0].image_id
    assert len(decodes) == 2


def test_a_reader_change_decodes_known_files_again(store, decodes, monkeypatch):
    store.import_bytes("a.png", png_bytes(1))
    store.import_bytes("a.png", png_bytes(1))
    assert len(decodes) == 1
    monkeypatch.setattr(image_io, "READER_VERSION", image_io.READER_VERSION + 1)
    (r,) = store.import_bytes("a.png", png_bytes(1))
    assert len(decodes) == 2 and r.duplicate                   # same pixels under the new reader: same image


def test_an_upload_over_the_pixel_budget_is_refused_whole_before_decoding(store, decodes, monkeypatch):
    monkeypatch.setattr(Store, "max_upload_pixels", 3 * 24 * 24 - 1)
    zipped = zip_bytes({f"im{i}.png": png_bytes(i) for i in range(3)})
    (res,) = store.import_bytes("big.zip", zipped)
    assert res.image_id is None and "3 images" in res.error and "gigapixels" in res.error
    assert "Import from a folder" in res.error and decodes == [] and store.images().empty
    with pytest.raises(UploadTooLargeError, match="nothing was imported"):
        store.check_upload([("a.png", png_bytes(1)), ("b.png", png_bytes(2)), ("c.zip", zip_bytes({"c": png_bytes(3)}))])
    assert store.check_upload([("a.png", png_bytes(1)), ("b.zip", zip_bytes({"b": png_bytes(2)}))]) == 2 * 24 * 24
    assert store.check_upload([("t.txt", b"text")]) == 0


def _one_colour_png(width: int, height: int) -> bytes:
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(b"\x00" * (width + 1)) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_the_issue_zip_of_eight_8900_square_pngs_is_refused_per_file_in_little_time_and_memory(store):
    bomb = _one_colour_png(8900, 8900)
    zipped = zip_bytes({f"copy{i}.png": bomb for i in range(8)})  # the issue: 617 KB, 26 s and 1 GB before
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        res = store.import_bytes("bombs.zip", zipped)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(res) == 8 and all(r.image_id is None and "megapixel limit" in r.error for r in res)
    assert res[0].error.startswith("bombs.zip/copy0.png: the image data declares 8900x8900")
    assert elapsed < 5.0 and peak < 64 * 2**20, (elapsed, peak / 2**20)
    assert store.images().empty
