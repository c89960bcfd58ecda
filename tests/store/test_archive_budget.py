"""ZIP archives are budgeted like files (issue 22, Build 4): their images count for the background
decision, members are sniffed through a stream (non-images never inflated), members whose declared
size or expansion is absurd are refused before inflating, and a large archive import in the
background job reports progress per member and stops on cancel."""
from __future__ import annotations

import io
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

from engine.events import Cancelled
from engine.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws")
    yield s
    s.close()


def png_bytes(seed: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


class _ReadCounter:
    """Counts the bytes every ZIP member stream hands out (zipfile.ZipExtFile.read), per member name."""

    def __init__(self, monkeypatch):
        self.by_member: dict[str, int] = {}
        orig = zipfile.ZipExtFile.read
        counter = self

        def read(f, n=-1):
            out = orig(f, n)
            key = f.name
            counter.by_member[key] = counter.by_member.get(key, 0) + len(out)
            return out

        monkeypatch.setattr(zipfile.ZipExtFile, "read", read)


def test_a_zip_of_many_small_images_counts_each_image_for_the_background_decision(store):
    n = store.background_upload_files + 10
    data = zip_of({f"scans/im{i:04d}.png": png_bytes(i) for i in range(n)} | {"notes.txt": b"not an image"})
    assert len(data) < 100_000  # a small archive: by files it is 1, by images it is n
    budget = store.budget_upload([("many.zip", data)])
    assert budget == (n * 64, n)  # the text member is no image: it counts 0
    assert store.upload_in_background(budget.images, budget.pixels)
    one = store.budget_upload([("a.png", png_bytes(1)), ("b.zip", zip_of({"b.png": png_bytes(2)}))])
    assert one.images == 2 and not store.upload_in_background(one.images, one.pixels)
    assert store.check_upload([("many.zip", data)]) == budget.pixels  # the old call still answers pixels


def test_a_non_image_member_is_skipped_from_its_first_bytes_without_inflating_the_rest(store, monkeypatch):
    rng = np.random.default_rng(0)
    pdf = b"%PDF-1.7\n" + rng.integers(0, 256, 4 * 2**20, dtype=np.uint8).tobytes()  # 4 MiB, incompressible
    data = zip_of({"report.pdf": pdf, "scan.png": png_bytes(3)})
    reads = _ReadCounter(monkeypatch)
    res = {r.name: r for r in store.import_bytes("study.zip", data)}
    assert res["study.zip/scan.png"].image_id is not None
    skipped = res["study.zip/report.pdf"]
    assert skipped.image_id is None and "skipped: a PDF document, not an image" in skipped.error
    assert reads.by_member["report.pdf"] <= 2 * 512  # the budget's and the import's sniff: 512 bytes each
    assert store.table_counts()["images"] == 1


def test_a_zip_bomb_member_is_refused_from_the_directory_before_inflating(store, monkeypatch):
    # a PNG signature followed by 64 MiB of zeros: 64 KiB in the archive, a 1000:1 expansion
    bomb = png_bytes(5)[:33] + bytes(64 * 2**20)
    data = zip_of({"bomb0.png": bomb, "bomb1.png": bomb, "fine.png": png_bytes(6)})
    assert len(data) < 2**20
    reads = _ReadCounter(monkeypatch)
    tracemalloc.start()
    try:
        budget = store.budget_upload([("bombs.zip", data)])
        results = store.import_bytes("bombs.zip", data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert budget.images == 1  # the bombs are never counted as images to decode
    res = {r.name: r for r in results}
    for k in (0, 1):
        err = res[f"bombs.zip/bomb{k}.png"].error
        assert "64 MiB packed into" in err and "ZIP bomb" in err and "refused before inflating" in err
        assert f"bomb{k}.png" not in reads.by_member  # not one byte of it was inflated
    assert res["bombs.zip/fine.png"].image_id is not None
    assert peak < 16 * 2**20  # the bombs would need 64 MiB each
    assert store.table_counts()["images"] == 1


def test_a_member_declaring_more_than_the_member_limit_is_refused_before_inflating(store, monkeypatch):
    store.max_member_bytes = 2**20
    big = png_bytes(7)[:33] + np.random.default_rng(7).integers(0, 256, 2 * 2**20, dtype=np.uint8).tobytes()
    data = zip_of({"big.png": big}, zipfile.ZIP_STORED)  # stored: a 1:1 "expansion", only the size is absurd
    reads = _ReadCounter(monkeypatch)
    (res,) = store.import_bytes("big.zip", data)
    assert res.image_id is None and "declares 2 MiB, more than the 1 MiB allowed for one image" in res.error
    assert "big.png" not in reads.by_member


def test_small_members_are_never_refused_for_their_ratio(store):
    flat = np.zeros((512, 512), dtype=np.uint16)  # an uncompressed flat TIFF zips at ~1000:1 but is small
    buf = io.BytesIO()
    Image.fromarray(flat).save(buf, "TIFF")
    (res,) = store.import_bytes("flat.zip", zip_of({"flat.tif": buf.getvalue()}))
    assert res.error is None and res.image_id is not None


def test_a_large_archive_in_the_background_job_reports_progress_per_member_and_stops_on_cancel(store):
    n = 12
    folder = store.stage_upload([("DOE_JOHN.zip", zip_of({f"im{i:02d}.png": png_bytes(100 + i) for i in range(n)}))])
    stop, seen = threading.Event(), []

    def on_event(ev):
        if ev.kind == "progress":
            seen.append((ev.step, ev.total))
            if ev.step == 4:
                stop.set()  # the user pressed Cancel while the archive was being imported

    with pytest.raises(Cancelled):
        store.import_staged(folder, on_event=on_event, stop=stop)
    assert seen[:4] == [(1, n), (2, n), (3, n), (4, n)]  # progress counts the archive's images
    assert store.table_counts()["images"] == 4  # stopped between members, not after the whole archive
    assert folder.exists()  # kept for a retry
    results = store.import_staged(folder)  # the retry: the 4 are duplicates, the rest new
    assert sum(r.duplicate for r in results) == 4 and store.table_counts()["images"] == n
    assert all(r.name.startswith("file 1/") for r in results)  # never the original name
