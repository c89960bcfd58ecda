"""engine.store: import, dedupe, labels, regions, export, migrations, disk-full, concurrency."""
from __future__ import annotations

import errno
import io
import multiprocessing as mp
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import engine.store.files as store_files
from engine.events import Cancelled, Event
from engine.data.io import read_image
from engine.data.manifest import ManifestError, load_manifest
from engine.store import SCHEMA_VERSION, DiskFullError, Store, StoreError, connect, migrate


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def noise(seed: int, shape=(40, 48), dtype=np.uint8) -> np.ndarray:
    hi = 255 if dtype == np.uint8 else 4095  # 12-bit values in a 16-bit container
    return np.random.default_rng(seed).integers(0, hi + 1, size=shape).astype(dtype)


def state(store: Store) -> tuple:
    """Everything an import may change: row counts of every table and the pixel/mask folders."""
    listing = sorted(p.relative_to(store.workspace).as_posix()
                     for d in (store.images_dir, store.masks_dir) for p in d.iterdir())
    return store.table_counts(), listing


def make_manifest(root: Path, n: int = 6) -> Path:
    """A manifest with 6 images of 3 patients, 2 findings, 1 box and 1 mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i in range(n):
        Image.fromarray(noise(100 + i)).save(root / "images" / f"im{i}.png")
        rows.append({"path": f"images/im{i}.png", "patient_id": f"PAT-{i // 2}", "split": "test" if i == 0 else "train",
                     "nodule": i % 2, "effusion": "" if i == 3 else int(i < 3)})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame([{"path": "images/im1.png", "finding": "nodule", "x": 3, "y": 4, "w": 10, "h": 8}]).to_csv(
        root / "boxes.csv", index=False)
    mask = np.zeros((40, 48), np.uint8)
    mask[5:15, 20:30] = 255
    Image.fromarray(mask).save(root / "masks" / "m1.png")
    pd.DataFrame([{"path": "images/im1.png", "finding": "nodule", "mask_path": "masks/m1.png"}]).to_csv(
        root / "masks.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "ws")
    yield s
    s.close()


# ------------------------------------------------------------------------------------------ import


def test_import_8_and_16_bit_pixels_are_kept_and_duplicates_detected(store):
    a8, a16 = noise(1), noise(2, dtype=np.uint16)
    (r8,) = store.import_bytes("a.png", png_bytes(a8))
    (r16,) = store.import_bytes("b.png", png_bytes(a16))
    assert r8.error is None and r16.error is None and not r8.duplicate and r8.image_id != r16.image_id

    with Image.open(store.image_file(r8.image_id)) as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), a8)
    with Image.open(store.image_file(r16.image_id)) as im:
        assert im.mode.startswith("I;16")
    # The stored pixels reproduce what the reader decoded (8 bit exactly, 16 bit within 1/65535).
    np.testing.assert_array_equal(store.image_array(r8.image_id), read_image(png_bytes(a8))[0])
    np.testing.assert_allclose(store.image_array(r16.image_id), read_image(png_bytes(a16))[0], atol=1 / 65535)
    assert store.image_file(r8.image_id).name == f"{store.images()['file'][0].split('/')[-1]}"

    before = state(store)
    (dup,) = store.import_bytes("same-pixels-other-name.png", png_bytes(a8))
    assert dup.duplicate and dup.image_id == r8.image_id and dup.error is None
    assert state(store) == before

    df = store.images()
    assert list(df["name"]) == [f"image-{r8.image_id:06d}", f"image-{r16.image_id:06d}"]  # neutral (PHI)
    assert list(df["name_key"]) == [store.name_key("a.png"), store.name_key("b.png")]
    assert list(df[["width", "height", "bits"]].iloc[1]) == [48, 40, 16]
    assert store.thumbnail(r8.image_id, size=24).shape == (20, 24)
    assert store.thumbnail(r8.image_id, size=24).dtype == np.uint8  # second call comes from the cache


def test_dicom_import_records_no_patient_data(store, shared_data):
    import pydicom

    src = shared_data / "dicom" / "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    phi = [str(v) for v in (ds.get("PatientID"), ds.get("PatientName"), ds.get("PatientBirthDate"))
           if v not in (None, "")]
    assert phi, "the test file should carry patient tags"
    (r,) = store.import_paths([src])
    assert r.error is None
    meta = store.image_meta(r.image_id)
    assert (meta["source_format"], meta["modality"], meta["width"], meta["height"]) == ("dicom", "DX", 1024, 1024)
    store.close()  # checkpoint the WAL so the main file holds everything
    blob = b"".join(p.read_bytes() for p in store.workspace.rglob("*") if p.is_file())
    for value in phi:
        assert value.encode() not in blob


def test_zip_members_imported_individually_with_guards(store):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scans/one.png", png_bytes(noise(3)))
        zf.writestr("scans/two.png", png_bytes(noise(4)))
        zf.writestr("scans/broken.png", b"this is a text file")
        zf.writestr("__MACOSX/scans/._one.png", b"resource fork")
        zf.writestr("scans/.DS_Store", b"\0\0\0")
    data = buf.getvalue()

    before = state(store)
    store.max_zip_members = 2
    (too_many,) = store.import_bytes("batch.zip", data)
    assert too_many.image_id is None and "more than the 2" in too_many.error and "split" in too_many.error
    store.max_zip_members = 100
    store.max_zip_bytes = 100
    (too_big,) = store.import_bytes("batch.zip", data)
    assert too_big.image_id is None and "expands to" in too_big.error
    assert state(store) == before

    store.max_zip_bytes = 2**30
    results = store.import_bytes("batch.zip", data)
    by_name = {r.name: r for r in results}
    assert sorted(by_name) == ["batch.zip/scans/broken.png", "batch.zip/scans/one.png", "batch.zip/scans/two.png"]
    assert by_name["batch.zip/scans/one.png"].image_id and by_name["batch.zip/scans/two.png"].image_id
    bad = by_name["batch.zip/scans/broken.png"]
    assert bad.image_id is None and bad.error.startswith("batch.zip/scans/broken.png: ") and "not a" in bad.error
    assert store.table_counts()["images"] == 2

    (corrupt,) = store.import_bytes("bad.zip", data[: len(data) // 2])
    assert corrupt.image_id is None and "ZIP" in corrupt.error


def test_import_folder_recursively(store, tmp_path):
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / ".hidden").mkdir()
    Image.fromarray(noise(5)).save(root / "a.png")
    Image.fromarray(noise(6)).save(root / "sub" / "b.jpg", quality=95)
    Image.fromarray(noise(7)).save(root / "sub" / ".hidden" / "c.png")
    (root / "notes.txt").write_text("not an image")
    results = store.import_paths([root, tmp_path / "missing.png"])
    assert [r.name for r in results if r.error is None] == ["folder/a.png", "folder/sub/b.jpg"]
    notes, missing = [r for r in results if r.error]   # a folder's non-images are reported, not dropped
    assert notes.name == "folder/notes.txt" and "skipped: text, not an image" in notes.error
    assert "missing.png" in missing.error and "no such file" in missing.error


# -------------------------------------------------------------------------------- labels, findings


def test_labels_findings_counts_and_delete(store):
    ids = [store.import_bytes(f"{i}.png", png_bytes(noise(10 + i)))[0].image_id for i in range(4)]
    store.add_finding("nodule")
    assert store.set_labels("nodule", {ids[0]: 1, ids[1]: 0, ids[2]: True}) == 3
    assert store.counts() == {"nodule": {"positive": 2, "negative": 1, "unknown": 1}}

    before = state(store)
    with pytest.raises(ValueError, match="not 1"):
        store.set_labels("nodule", {ids[3]: 2})
    with pytest.raises(ValueError, match="no images with ids"):
        store.set_labels("nodule", {ids[0]: 0, 999: 1})
    with pytest.raises(ValueError, match="reserved"):
        store.add_finding("path")
    assert state(store) == before and store.images("nodule")["nodule"].tolist()[0] == 1.0

    store.set_labels("nodule", {ids[2]: None, ids[3]: 0.0})
    store.set_labels("effusion", {ids[3]: 1})  # a new finding is added on first use
    assert store.findings() == ["nodule", "effusion"]
    store.rename_finding("nodule", "lung nodule")
    df = store.images()
    assert df["lung nodule"].fillna(-1).tolist() == [1.0, 0.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="already exists"):
        store.rename_finding("lung nodule", "effusion")
    store.delete_finding("effusion")
    assert store.findings() == ["lung nodule"] and store.table_counts()["labels"] == 3
    with pytest.raises(ValueError, match="unknown finding"):
        store.images("effusion")

    f0 = store.image_file(ids[0])
    assert store.delete_images([ids[0], ids[1]]) == 2
    assert not f0.exists() and len(store.images()) == 2
    assert store.counts()["lung nodule"] == {"positive": 0, "negative": 1, "unknown": 1}


# --------------------------------------------------------------------------------- manifest in/out


def test_manifest_import_export_roundtrip(store, tmp_path):
    csv = make_manifest(tmp_path / "src")
    summary = store.import_manifest(csv)
    assert (summary.images, summary.duplicates, summary.regions) == (6, 0, 2)
    assert summary.findings == ["nodule", "effusion"] and summary.labels == 11
    assert store.counts() == {"nodule": {"positive": 3, "negative": 3, "unknown": 0},
                              "effusion": {"positive": 3, "negative": 2, "unknown": 1}}
    im1 = summary.image_ids[1]
    regions = {r["kind"]: r for r in store.regions(im1)}
    assert regions["box"]["x"] == 3 and regions["box"]["w"] == 10
    assert (regions["mask"]["x"], regions["mask"]["y"], regions["mask"]["w"], regions["mask"]["h"]) == (20, 5, 10, 10)
    mask_path = Path(regions["mask"]["mask_path"])
    assert mask_path.parent == store.masks_dir and mask_path.exists()
    assert store.images()["name"][0] == f"image-{summary.image_ids[0]:06d}"
    assert store.images()["name_key"][0] == store.name_key("im0.png")

    out = store.export_manifest(tmp_path / "export" / "m.csv")
    m = load_manifest(out)
    assert all(Path(p).is_absolute() and Path(p).parent == store.images_dir for p in m.df["path"])
    assert m.findings == ["nodule", "effusion"] and m.labels("nodule").tolist() == [0, 1, 0, 1, 0, 1]
    assert np.isnan(m.labels("effusion")[3])
    pids = m.df["patient_id"].tolist()
    assert pids[0] == pids[1] != pids[2] and not any("PAT" in p for p in pids)  # grouped, not copied
    assert m.df["split"].tolist()[:2] == ["test", "train"]
    assert len(m.boxes) == 1 and len(m.masks) == 1
    np.testing.assert_array_equal(read_image(m.df["path"][2])[0], read_image(tmp_path / "src/images/im2.png")[0])

    sub = store.export_manifest(tmp_path / "export" / "m.csv", image_ids=summary.image_ids[2:], findings=["effusion"])
    m2 = load_manifest(sub)
    assert len(m2.df) == 4 and m2.findings == ["effusion"] and m2.boxes is None and m2.masks is None

    again = store.import_manifest(csv)  # idempotent: duplicates, regions replaced not doubled
    assert (again.images, again.duplicates) == (0, 6) and again.image_ids == summary.image_ids
    assert store.table_counts()["regions"] == 2 and store.table_counts()["images"] == 6


def test_manifest_with_unreadable_image_imports_nothing(store, tmp_path):
    csv = make_manifest(tmp_path / "src")
    (tmp_path / "src" / "images" / "im4.png").write_bytes(b"garbage that is not a png")
    before = state(store)
    with pytest.raises(ManifestError) as ei:
        store.import_manifest(csv)
    assert any("im4.png" in p for p in ei.value.problems)
    assert state(store) == before


def test_manifest_import_cancelled_midway_leaves_nothing(store, tmp_path):
    csv = make_manifest(tmp_path / "src")
    stop = threading.Event()

    def on_event(ev):
        if ev.step == 2:
            stop.set()

    before = state(store)
    with pytest.raises(Cancelled):
        store.import_manifest(csv, on_event=on_event, stop=stop)
    assert state(store) == before
    assert store.import_manifest(csv).images == 6  # and it can simply be run again


# ------------------------------------------------------------------------------- failures, schema


class _FullDisk:
    """A file object whose write runs out of space after a few bytes."""

    def __init__(self, path):
        self.f = open(path, "xb")

    def write(self, data):
        self.f.write(data[:16])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_while_writing_pixels_changes_nothing(store, tmp_path, monkeypatch):
    store.import_bytes("ok.png", png_bytes(noise(20)))
    before = state(store)
    monkeypatch.setattr(store_files, "_open_tmp", _FullDisk)
    with pytest.raises(DiskFullError, match=f"disk full: free space in {store.images_dir}"):
        store.import_bytes("new.png", png_bytes(noise(21)))
    with pytest.raises(DiskFullError, match="disk full"):
        store.import_manifest(make_manifest(tmp_path / "src"))
    assert state(store) == before
    assert not any(p.name.endswith(".tmp") for p in store.workspace.rglob("*"))


def test_disk_full_at_commit_changes_nothing(store, tmp_path):
    store.import_bytes("ok.png", png_bytes(noise(22)))
    before = state(store)

    def full(conn):
        raise sqlite3.OperationalError("database or disk is full")

    store._commit = full
    with pytest.raises(DiskFullError, match=f"free space in {store.workspace}"):
        store.import_bytes("new.png", png_bytes(noise(23)))
    with pytest.raises(DiskFullError):
        store.import_manifest(make_manifest(tmp_path / "src"))
    with pytest.raises(DiskFullError):
        store.set_labels("x", {1: 1})
    del store._commit
    assert state(store) == before


def test_old_schema_is_migrated_and_newer_refused(tmp_path):
    ws = tmp_path / "old"
    ws.mkdir()
    conn = connect(ws / "store.sqlite")
    assert migrate(conn, target=1) == 0
    conn.execute("INSERT INTO images(sha256, name, file, width, height, bits, source_format, created)"
                 " VALUES ('abc', 'old.png', 'images/abc.png', 4, 4, 8, 'png', 0)")
    conn.execute("INSERT INTO findings VALUES ('nodule', 0)")
    conn.execute("INSERT INTO labels VALUES (1, 'nodule', 1)")
    conn.close()

    s = Store(ws)
    assert s.schema_version == SCHEMA_VERSION > 1
    assert s.counts() == {"nodule": {"positive": 1, "negative": 0, "unknown": 0}}
    job = s.create_job("toy", {"a": 1})
    assert s.add_events(job, [Event(step=1, total=2, metrics={"loss": 0.5})], step=1) == 1
    assert "checkpoints" in {r[0] for r in s._conn().execute("SELECT name FROM sqlite_master WHERE type='table'")}
    s._conn().execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    s.close()
    with pytest.raises(StoreError, match="newer"):
        Store(ws)


def test_job_tables_api(store):
    a = store.create_job("toy", {"n": 3}, device="cpu", owner="dead-owner", state="running")
    b = store.create_job("toy", {"n": 4}, owner="live-owner")
    seq = store.add_events(a, [Event(step=i, total=3, message=f"m{i}") for i in range(3)], step=2, total=3)
    assert seq == 3 and [e["seq"] for e in store.events(a, after_seq=1)] == [2, 3]
    assert store.job(a)["step"] == 2 and store.job(a)["params"] == {"n": 3}
    assert store.interrupt_orphans(lambda owner: owner == "live-owner") == [a]
    assert store.job(a)["state"] == "interrupted" and store.job(b)["state"] == "queued"
    assert store.transition_job(a, ["interrupted"], state="queued") and not store.transition_job(a, ["done"], state="x")
    rid = store.add_result("sweep", "demo sweep", store.workspace / "results" / "s.csv", {"auc": 0.8}, job_id=a)
    (res,) = store.results("sweep")
    assert res["id"] == rid and res["summary"] == {"auc": 0.8}
    assert res["path"] == str(store.workspace / "results" / "s.csv")  # stored relative, returned absolute


# ------------------------------------------------------------------------------------- concurrency


def test_threads_share_one_store(store):
    ids = [store.import_bytes(f"{i}.png", png_bytes(noise(30 + i)))[0].image_id for i in range(8)]
    errors: list[BaseException] = []

    def label(k: int) -> None:
        try:
            for _ in range(10):
                store.set_labels(f"f{k}", {i: (i + k) % 2 for i in ids})
                store.counts()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=label, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.counts() == {f"f{k}": {"positive": 4, "negative": 4, "unknown": 0} for k in range(4)}


def _reader(workspace: str, reads, done, out) -> None:
    """Child process: read counts until the parent is done writing; report what it saw."""
    s = Store(Path(workspace))
    seen, bad = set(), 0
    while not done.is_set():
        c = s.counts().get("flip", {"positive": 0, "negative": 0, "unknown": 6})
        seen.add(c["positive"])
        bad += c["positive"] + c["negative"] + c["unknown"] != 6
        with reads.get_lock():
            reads.value += 1
    out.put((len(seen), bad))


def test_second_process_reads_while_this_one_writes(store):
    ids = [store.import_bytes(f"{i}.png", png_bytes(noise(40 + i)))[0].image_id for i in range(6)]
    ctx = mp.get_context("spawn")
    reads, done, out = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_reader, args=(str(store.workspace), reads, done, out))
    proc.start()

    def wait_for_reads(n: int) -> None:
        deadline = time.monotonic() + 60
        while reads.value < n and time.monotonic() < deadline and proc.is_alive():
            time.sleep(0.002)

    try:
        wait_for_reads(1)
        for k in range(21):  # one transaction each, interleaved with the other process's reads
            store.set_labels("flip", {i: int(j < k % 7) for j, i in enumerate(ids)})
            wait_for_reads(reads.value + 2)  # the second of these reads began after the commit
        done.set()
        distinct, inconsistent = out.get(timeout=60)
    finally:
        done.set()
        proc.join(30)
    assert proc.exitcode == 0
    assert inconsistent == 0 and distinct == 7  # it saw every state, always as whole transactions
