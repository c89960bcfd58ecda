"""Smaller faults of issue 22 (Build 6): a named pipe (FIFO) in an imported folder is skipped, never
opened (opening it would hang the import); a float32 TIFF spanning +-3e38 is stretched in float64
instead of overflowing float32 and saturating much of the image."""
from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from engine.data.io import ImageReadError, read_image
from engine.data.listing import list_images


def _png(path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(path, "PNG")


def _in_thread(fn, timeout: float = 60.0):
    """fn() in a daemon thread; fails the test (instead of hanging it) when fn blocks."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} hung (a FIFO was opened?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture
def folder_with_fifo(tmp_path):
    d = tmp_path / "cd"
    (d / "DICOM").mkdir(parents=True)
    _png(d / "DICOM" / "IM000001", 1)
    os.mkfifo(d / "DICOM" / "IM000002")  # no writer: opening it for reading blocks forever
    return d


def test_a_fifo_in_a_folder_is_listed_as_skipped_without_being_opened(folder_with_fifo):
    listing = _in_thread(lambda: list_images(folder_with_fifo))
    assert [os.path.basename(f) for f in listing.files] == ["IM000001"]
    ((rel, why),) = listing.skipped
    assert rel == "DICOM/IM000002" and why.startswith("a named pipe (FIFO), not a regular file")


def test_importing_a_folder_with_a_fifo_finishes_and_reports_it(folder_with_fifo, tmp_path):
    from engine.store import Store

    store = Store(tmp_path / "ws")
    results = _in_thread(lambda: store.import_paths([folder_with_fifo]))
    by = {r.name: r for r in results}
    assert by["cd/DICOM/IM000001"].image_id is not None
    assert "named pipe (FIFO)" in by["cd/DICOM/IM000002"].error
    fifo_itself = _in_thread(lambda: store.import_paths([folder_with_fifo / "DICOM" / "IM000002"]))
    assert fifo_itself[0].image_id is None and "named pipe (FIFO)" in fifo_itself[0].error
    store.close()


def test_read_image_refuses_a_fifo_without_opening_it(folder_with_fifo):
    with pytest.raises(ImageReadError, match="not a regular file"):
        _in_thread(lambda: read_image(folder_with_fifo / "DICOM" / "IM000002"))


def _float_tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.float32), mode="F").save(buf, "TIFF")
    return buf.getvalue()


def test_a_float32_tiff_spanning_the_whole_float32_range_is_stretched_without_overflow():
    ramp = np.linspace(-3e38, 3e38, 64 * 64, dtype=np.float64).astype(np.float32).reshape(64, 64)
    img, meta = read_image(_float_tiff(ramp))
    assert img.dtype == np.float32 and np.isfinite(img).all()
    assert (img >= 1.0).mean() < 0.01 and (img <= 0.0).mean() < 0.01  # was 43% saturated (float32 overflow)
    expected = (ramp.astype(np.float64) + 3e38) / 6e38
    np.testing.assert_allclose(img, expected, atol=1e-6)  # a linear ramp stays a linear ramp


def test_ordinary_float_and_16_bit_images_are_stretched_as_before():
    from engine.data.io.common import _minmax

    a = np.random.default_rng(0).normal(500.0, 200.0, (32, 32)).astype(np.float32)
    old = (a - np.float32(a.min())) * np.float32(1.0 / (float(a.max()) - float(a.min())))
    np.testing.assert_array_equal(_minmax(a), np.clip(old, 0, 1))  # bit-identical: stored pixel hashes unchanged
    u16 = np.random.default_rng(1).integers(0, 65536, (32, 32)).astype(np.uint16)
    f = u16.astype(np.float32)
    np.testing.assert_array_equal(_minmax(u16), np.clip((f - f.min()) * np.float32(1.0 / (f.max() - f.min())), 0, 1))
