"""engine.store under faults: a disk that fills up mid-import, uploads labeled in the image's own
transaction, label edits that conflict, hostile finding names."""
from __future__ import annotations

import errno
import io
import sqlite3
import zipfile

import numpy as np
import pytest
from PIL import Image

import engine.store.files as store_files
from engine.diskspace import DiskFullError as AnyDiskFull
from engine.names import InvalidNameError
from engine.store import DiskFullError, LabelConflictError, Store


def png_bytes(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(32, 40)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(blobs: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in blobs.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws")
    yield s
    s.close()


def fill_up_after(monkeypatch, n_ok: int) -> None:
    """The disk is full after `n_ok` pixel files were written (ENOSPC on the next write)."""
    count = {"n": 0}
    real = store_files._open_tmp

    class Full:
        def __init__(self, path):
            self.f = real(path)

        def write(self, data):
            count["n"] += 1
            if count["n"] > n_ok:
                self.f.write(data[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(store_files, "_open_tmp", Full)


def test_folder_import_on_a_full_disk_reports_exactly_what_was_committed(store, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"im{i}.png").write_bytes(png_bytes(i))
    fill_up_after(monkeypatch, 4)
    with pytest.raises(DiskFullError) as info:
        store.import_paths([src])
    e = info.value
    assert len(e.committed) == 4 and all(r.image_id is not None for r in e.committed)
    assert "4 of 6 files were imported before the disk filled up and are kept" in str(e)
    assert "nothing was imported" not in str(e)
    assert f"free space in {store.images_dir}" in str(e)
    assert store.table_counts()["images"] == 4
    assert sorted(store.images()["id"]) == sorted(r.image_id for r in e.committed)
    assert not [p for p in store.workspace.rglob("*") if ".tmp" in p.name]
    monkeypatch.undo()  # space again: the rest imports, the first four are duplicates
    res = store.import_paths([src])
    assert sum(r.duplicate for r in res) == 4 and store.table_counts()["images"] == 6


def test_free_space_is_checked_before_a_pixel_file_is_written(store, monkeypatch):
    monkeypatch.setattr(store_files, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError) as info:
        store.import_bytes("a.png", png_bytes(1))
    msg = str(info.value)
    assert f"free space in {store.images_dir}" in msg and "needs about" in msg and "1000 B free" in msg
    assert "nothing was imported" in msg
    assert isinstance(info.value, AnyDiskFull) and isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert store.table_counts()["images"] == 0 and not list(store.images_dir.iterdir())


def test_upload_images_and_labels_commit_together(store, monkeypatch):
    # a ZIP of 4 images labeled 'nodule: present'; the disk fills up at the third
    data = zip_of({f"im{i}.png": png_bytes(10 + i) for i in range(4)})
    fill_up_after(monkeypatch, 2)
    with pytest.raises(DiskFullError) as info:
        store.import_bytes("batch.zip", data, label=("nodule", 1))
    committed = info.value.committed
    assert [r.name for r in committed] == ["batch.zip/im0.png", "batch.zip/im1.png"]
    assert "2 of 4 files were imported" in str(info.value)
    df = store.images("nodule")
    assert len(df) == 2 and (df["nodule"] == 1).all()  # every stored image is labeled, none unlabeled
    monkeypatch.undo()
    res = store.import_bytes("batch.zip", data, label=("nodule", 1))
    assert [r.duplicate for r in res] == [True, True, False, False]
    df = store.images("nodule")
    assert len(df) == 4 and (df["nodule"] == 1).all()


def test_a_failed_label_write_rolls_back_the_image_too(store, monkeypatch):
    real = Store._label_upload

    def broken(c, image_id, label, duplicate):
        real(c, image_id, label, duplicate)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "_label_upload", staticmethod(broken))
    with pytest.raises(DiskFullError, match="nothing was imported"):
        store.import_bytes("x.png", png_bytes(3), label=("effusion", 0))
    assert store.table_counts()["images"] == 0 and store.table_counts()["labels"] == 0
    assert not list(store.images_dir.iterdir())


def test_upload_label_never_flips_a_duplicate_labeled_the_other_way(store):
    [r] = store.import_bytes("a.png", png_bytes(5), label=("mass", 0))
    [again] = store.import_bytes("a-copy.png", png_bytes(5), label=("mass", 1))
    assert again.duplicate and again.label_kept and again.image_id == r.image_id
    assert store.images("mass")["mass"].tolist() == [0.0]
    [unlabeled] = store.import_bytes("b.png", png_bytes(6))
    [dup] = store.import_bytes("b-copy.png", png_bytes(6), label=("mass", 1))
    assert dup.duplicate and not dup.label_kept
    assert dict(zip(store.images("mass")["id"], store.images("mass")["mass"]))[unlabeled.image_id] == 1.0
    with pytest.raises(ValueError, match="not 1"):
        store.import_bytes("c.png", png_bytes(7), label=("mass", 2))
    with pytest.raises(InvalidNameError):
        store.import_bytes("c.png", png_bytes(7), label=("../x", 1))
    assert store.table_counts()["images"] == 2


def test_upload_report_claims_a_label_only_for_the_images_that_got_it(store):
    """Issue 12 item 7: re-uploading images labeled absent as present said "labeled mass: present"."""
    from engine.store import upload_label_report

    store.import_bytes("a.png", png_bytes(5), label=("mass", 0))
    res = store.import_bytes("a-copy.png", png_bytes(5), label=("mass", 1))
    ok = [r for r in res if r.error is None]
    kept = sum(r.label_kept for r in ok)
    text, warn = upload_label_report(0, 1, len(ok) - kept, kept, "mass", True)
    assert "mass: present" in text and "none was labeled" in text and "labeled it" not in text
    assert "1 of these images was already in the workspace labeled *mass: absent*" in warn
    assert "never changes an existing label" in warn
    text, warn = upload_label_report(2, 1, 2, 1, "mass", True)
    assert text == "Imported 2 new images (1 already in the workspace); labeled 2 of them *mass: present*."
    assert "*mass: absent*" in warn
    assert upload_label_report(3, 0, 3, 0, "mass", False) == (
        "Imported 3 new images and labeled them *mass: absent*.", None)
    assert upload_label_report(1, 0, 0, 0, None, None) == ("Imported 1 new image.", None)


def test_label_edits_detect_a_conflicting_change(store):
    ids = [store.import_bytes(f"{i}.png", png_bytes(20 + i))[0].image_id for i in range(3)]
    store.set_labels("nodule", {ids[0]: 1, ids[1]: 0})
    seen = {ids[0]: 1, ids[1]: 0, ids[2]: None}  # what session A's editor shows
    store.set_labels("nodule", {ids[1]: 1}, expected={ids[1]: 0})  # session B saves first
    with pytest.raises(LabelConflictError) as info:
        store.set_labels("nodule", {ids[1]: None, ids[2]: 1}, expected=seen)
    e = info.value
    shown = f"image-{ids[1]:06d}"  # the stored (neutral) name
    assert list(e.conflicts) == [ids[1]] and e.conflicts[ids[1]] == (shown, 0, 1)
    assert "changed by someone else" in str(e) and f"{shown}: absent -> present" in str(e) and "Reload" in str(e)
    labels = store.images("nodule").set_index("id")["nodule"]
    assert labels[ids[1]] == 1 and np.isnan(labels[ids[2]])  # nothing of A's save was applied
    # with the current labels as `expected` the save goes through; NaN counts as unlabeled
    assert store.set_labels("nodule", {ids[2]: 1}, expected={ids[2]: float("nan"), ids[1]: 1}) == 1


@pytest.mark.parametrize("name", ["../../../../tmp/x/ESCAPED", "a/b", "..", ".hidden", "C:evil", "x\\y",
                                  "a,b", 'q"', "tab\there", "nul\x00", "-flag", "x" * 65, "", "   ", "ends."])
def test_hostile_finding_names_are_refused_everywhere(store, name):
    [r] = store.import_bytes("a.png", png_bytes(30))
    before = store.table_counts()
    for call in (lambda: store.add_finding(name), lambda: store.set_labels(name, {r.image_id: 1}),
                 lambda: store.import_bytes("b.png", png_bytes(31), label=(name, 1))):
        with pytest.raises(InvalidNameError):
            call()
    store.add_finding("ok")
    with pytest.raises(InvalidNameError):
        store.rename_finding("ok", name)
    store.delete_finding("ok")
    assert store.table_counts() == before
