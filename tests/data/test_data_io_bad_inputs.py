"""engine.data.io.read_image refuses bad inputs with ImageReadError messages that say what is wrong."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000

from engine.data.io import MAX_PIXELS, ImageReadError, read_image

NIH_DX = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _refused(src, *fragments: str) -> str:
    with pytest.raises(ImageReadError) as exc:
        read_image(src)
    msg = str(exc.value)
    for fragment in fragments:
        assert fragment.lower() in msg.lower(), f"{fragment!r} not in: {msg}"
    assert isinstance(exc.value, ValueError)
    return msg


def _gray(h: int = 64, w: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) % 256).astype(np.uint8)


# ------------------------------------------------------------------------------------ files


def test_missing_file_folder_and_empty_file(tmp_path):
    _refused(tmp_path / "nope.png", "does not exist")
    _refused(tmp_path, "folder")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    _refused(empty, "empty", "0 bytes")
    _refused(b"", "empty")


def test_text_renamed_png_and_unknown_formats(tmp_path):
    fake = tmp_path / "xray.png"
    fake.write_text("patient list\nthis is not an image\n")
    _refused(fake, "not a png, jpeg, tiff or dicom", "text")
    buf = io.BytesIO()
    Image.fromarray(_gray()).save(buf, format="BMP")
    _refused(buf.getvalue(), "not a png", "bmp")
    _refused(b"\x00\x01\x02\x03" * 64, "not a png", "convert it")


def test_wrong_argument_type_is_a_programming_error():
    with pytest.raises(TypeError):
        read_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(96, 96), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    _refused(cut, "truncated or corrupt")
    _refused(data[:40], fmt.lower())  # header only


def test_multipage_tiff_and_nan_float_tiff(tmp_path):
    pages = tmp_path / "pages.tiff"
    Image.fromarray(_gray()).save(pages, save_all=True, append_images=[Image.fromarray(_gray()[::-1].copy())])
    _refused(pages, "2 images", "single")
    bad = _gray().astype(np.float32) / 255
    bad[3, 4] = np.nan
    nan_tiff = tmp_path / "nan.tiff"
    Image.fromarray(bad).save(nan_tiff)
    _refused(nan_tiff, "nan")


# ----------------------------------------------------------------------------- huge headers


def test_20000_square_png_header_is_refused_before_decoding():
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)            # 8-bit grey, 400 MP
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))
    assert len(data) < 200
    tracemalloc.start()
    try:
        msg = _refused(data, "20000x20000", "megapixel", "before decoding")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"{MAX_PIXELS / 1e6:.0f}" in msg
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB: something allocated the pixel buffer"


def test_20000_square_dicom_with_short_data_is_refused_by_size(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / NIH_DX)
    ds.Rows = ds.Columns = 20000
    tracemalloc.start()
    try:
        _refused(_dicom_bytes(ds), "20000x20000", "megapixel")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_just_over_the_limit_is_refused_and_just_under_is_checked_by_size_only():
    side = int(MAX_PIXELS**0.5) + 1
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    _refused(data, "megapixel")
    side = int(MAX_PIXELS**0.5) - 1
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    msg = _refused(data, "truncated or corrupt")   # passes the size check, then has no pixel data
    assert "megapixel" not in msg


# ------------------------------------------------------------------------------------- DICOM


def test_dicom_without_pixel_data(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / NIH_DX)
    patient = str(ds.PatientName)
    del ds.PixelData
    msg = _refused(_dicom_bytes(ds), "no pixel data", "1024x1024 image", "export the image again")
    assert patient not in msg and str(ds.PatientID) not in msg
    # A real structured report:
    _refused(get_testdata_file("reportsi.dcm"), "basic text sr", "no pixel data", "not an image")


def test_multiframe_dicom(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / NIH_DX)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    _refused(_dicom_bytes(ds), "multi-frame", "2 frames", "single-frame")


def test_palette_colour_and_missing_rows_dicom(dicom_dir):
    _refused(get_testdata_file("examples_palette.dcm"), "palette")
    ds = pydicom.dcmread(dicom_dir / NIH_DX)
    del ds.Rows
    _refused(_dicom_bytes(ds), "empty image")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_truncated_dicom_pixel_data(dicom_dir):
    ds = pydicom.dcmread(dicom_dir / NIH_DX)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    _refused(_dicom_bytes(ds), "truncated or corrupt")
    data = (dicom_dir / "RG1_J2KI.dcm").read_bytes()
    _refused(data[: len(data) // 3], "truncated")


def test_missing_decoder_names_the_package(dicom_dir, monkeypatch):
    decoder = get_decoder(JPEG2000)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    _refused(dicom_dir / "RG1_J2KI.dcm", "no installed decoder", "pip install pylibjpeg pylibjpeg-openjpeg")
