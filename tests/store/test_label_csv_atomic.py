"""A label CSV is checked whole (every finding name, every value) before anything is written, and applied in one
transaction (issue 22, Build 3): one bad column or value, a full disk or a database locked by another writer
leaves every label as it was."""
from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from engine.names import InvalidNameError
from engine.store import DiskFullError, Store, StoreError
from ui.labels import LabelCSVError, labels_from_csv


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws")
    for i in range(3):
        s.import_bytes(f"scan{i}.png", png_bytes(i))
    s.set_labels("nodule", {1: 1, 2: 0})
    yield s
    s.close()


def labels_state(store: Store) -> tuple:
    with store._read() as c:
        return (tuple(store.findings()),
                tuple(c.execute("SELECT image_id, finding, value FROM labels ORDER BY 1, 2").fetchall()))


def test_every_bad_column_and_value_is_named_and_nothing_is_returned(store):
    csv = ("name,mass,effusion/pleural,=HYPERLINK(\"http://x\"),nodule\n"
           "scan0.png,1,1,1,maybe\nscan1.png,0,0,0,1\nscan2.png,yes,,,2\n").encode()
    with pytest.raises(LabelCSVError) as info:
        labels_from_csv(csv, store.images(), store.name_key)
    msg = str(info.value)
    assert msg.startswith("nothing was labeled")
    assert "'effusion/pleural' is not a valid finding name" in msg
    assert "=HYPERLINK" in msg and "is not a valid finding name" in msg.split("=HYPERLINK")[1]
    assert "column 'nodule' has unknown label values 'maybe' (line 2), '2' (line 4)" in msg
    assert "'mass'" not in msg  # the good column is not blamed


def test_a_valid_csv_is_applied_in_one_transaction(store):
    csv = b"name,mass,nodule\nscan0.png,1,0\nscan2.png,0,\nother.png,1,1\n"
    labels, unmatched = labels_from_csv(csv, store.images(), store.name_key)
    assert unmatched == ["other.png"]
    assert store.set_labels_many(labels) == 2
    imgs = store.images().set_index("id")
    assert imgs.loc[1, "mass"] == 1 and imgs.loc[3, "mass"] == 0 and np.isnan(imgs.loc[2, "mass"])
    assert imgs.loc[1, "nodule"] == 0 and np.isnan(imgs.loc[3, "nodule"]) and imgs.loc[2, "nodule"] == 0


def test_set_labels_many_checks_all_findings_before_writing(store):
    before = labels_state(store)
    with pytest.raises(InvalidNameError, match="nothing was labeled") as info:
        store.set_labels_many({"mass": {1: 1}, "a/b": {2: 1}, "=cmd": {3: 0}})
    assert "'a/b'" in str(info.value) and "'=cmd'" in str(info.value)
    with pytest.raises(ValueError, match=r"finding 'effusion': label 7 .*nothing was labeled"):
        store.set_labels_many({"mass": {1: 1}, "effusion": {2: 7}})
    with pytest.raises(ValueError, match=r"no images with ids \[99\]"):
        store.set_labels_many({"mass": {1: 1}, "effusion": {99: 1}})
    assert labels_state(store) == before


def test_set_labels_many_on_a_full_disk_changes_nothing(store):
    before = labels_state(store)

    def full(conn):
        raise sqlite3.OperationalError("database or disk is full")

    store._commit = full
    with pytest.raises(DiskFullError, match="free space in"):
        store.set_labels_many({"mass": {1: 1, 2: 0}, "effusion": {3: 1}})
    del store._commit
    assert labels_state(store) == before


def test_set_labels_many_with_the_database_locked_by_another_writer_changes_nothing(store, monkeypatch):
    import engine.store.db as db

    real = db.connect

    def quick(path, timeout=None):  # the store's connect(path, timeout=...), waiting 0.2 s for the lock, not 30 s
        return real(path, timeout=0.2)

    monkeypatch.setattr(db, "connect", quick)
    store.close()
    before = labels_state(store)
    other = sqlite3.connect(store.db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        with pytest.raises(StoreError, match="busy or locked"):
            store.set_labels_many({"mass": {1: 1}, "effusion": {3: 1}})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert labels_state(store) == before
