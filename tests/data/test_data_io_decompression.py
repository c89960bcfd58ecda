"""Decompression cost (issue 14 item 6): huge images, decompression bombs and crafted DICOM frames are
refused from their headers, cheaply (little memory, little time), with a message that says what to do."""
from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from engine.data.io import (BOMB_MIN_PIXELS, MAX_EXPANSION, MAX_PIXELS, ImageReadError, declared_size,
                            read_image)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _one_colour_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of one colour, compressed row by row (never the whole image in memory)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width                       # filter type 0 + the row's samples
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _refused_cheaply(data: bytes, *fragments: str, max_mib: float = 16, max_s: float = 2.0) -> str:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageReadError) as exc:
            read_image(data)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(exc.value)
    for f in fragments:
        assert f.lower() in msg.lower(), f"{f!r} not in: {msg}"
    assert peak < max_mib * 2**20, f"peak {peak / 2**20:.0f} MiB: something allocated the pixel buffer"
    assert elapsed < max_s, f"took {elapsed:.1f} s"
    return msg


def test_the_issue_png_8900_square_77_kb_is_refused_before_decoding():
    data = _one_colour_png(8900, 8900)
    assert len(data) < 200_000                             # the issue's file: 77 KB, ~500 MB and 8 s to decode
    msg = _refused_cheaply(data, "8900x8900", "megapixel", "before decoding", "downsample")
    assert f"{MAX_PIXELS / 1e6:.0f}" in msg


def test_a_one_colour_png_below_the_size_limit_is_refused_as_a_decompression_bomb():
    side = 6000                                            # 36 MP: under MAX_PIXELS, far over the expansion
    assert BOMB_MIN_PIXELS < side * side <= MAX_PIXELS
    data = _one_colour_png(side, side)
    msg = _refused_cheaply(data, "6000x6000", "decompression bomb", "refused before decoding", "re-export")
    ratio = side * side / len(data)
    assert ratio > MAX_EXPANSION and f"{ratio:,.0f}:1" in msg


def test_small_one_colour_images_and_large_noisy_ones_are_still_read():
    img, meta = read_image(_one_colour_png(1024, 1024))    # 1 MP: below BOMB_MIN_PIXELS, however compressible
    assert img.shape == (1024, 1024) and float(img.max()) == 0.0
    side = 3000                                            # 9 MP of detector-like noise: ~1:1, accepted
    assert side * side > BOMB_MIN_PIXELS
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    img, meta = read_image(buf.getvalue())
    assert (meta.width, meta.height) == (side, side)
    np.testing.assert_array_equal(np.rint(img[:5, :5] * 255).astype(np.uint8), arr[:5, :5])


def test_a_deflate_compressed_tiff_bomb_is_refused():
    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 0).save(buf, format="TIFF", compression="tiff_adobe_deflate")
    assert 4000 * 4000 > BOMB_MIN_PIXELS
    _refused_cheaply(buf.getvalue(), "4000x4000", "decompression bomb")


def _jpeg_dicom_with_frame(rows: int, cols: int, sof_w: int, sof_h: int) -> bytes:
    """pydicom's SC_jpeg_no_color_transform.dcm (baseline JPEG, 256 x 256 RGB) with its header and its
    frame's SOF patched."""
    ds = pydicom.dcmread(get_testdata_file("SC_jpeg_no_color_transform.dcm"))
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    i = 2
    while frame[i + 1] not in (0xC0, 0xC1, 0xC2):         # walk to the SOF marker segment
        i += 2 + struct.unpack_from(">H", frame, i + 2)[0]
    struct.pack_into(">HH", frame, i + 5, sof_h, sof_w)
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([bytes(frame)])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_dicom_frame_declaring_another_size_than_its_header_is_refused_before_decoding():
    data = _jpeg_dicom_with_frame(256, 256, sof_w=30000, sof_h=30000)      # 900 MP in the codestream
    _refused_cheaply(data, "30000x30000", "megapixel")
    data = _jpeg_dicom_with_frame(256, 256, sof_w=512, sof_h=1024)         # small, but not what the header says
    _refused_cheaply(data, "512x1024", "256x256", "corrupt or crafted")


def test_dicom_frame_bomb_is_refused_and_the_unpatched_file_still_reads():
    data = _jpeg_dicom_with_frame(4000, 4000, sof_w=4000, sof_h=4000)      # 16 MP RGB in a 3.5 KB frame
    _refused_cheaply(data, "4000x4000", "compressed pixel data", "decompression bomb")
    img, meta = read_image(_jpeg_dicom_with_frame(256, 256, sof_w=256, sof_h=256))  # unpatched sizes: read
    assert img.shape == (256, 256)
    img, meta = read_image(get_testdata_file("JPEG2000.dcm"))              # a 266-byte J2K frame, 0.26 MP
    assert img.shape == (1024, 256)


def _deflated_dicom(pixel_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian DICOM whose data set holds `pixel_bytes` zero bytes of
    pixel data, deflated in 1 MiB pieces (the test never holds the inflated data set)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "DX"
    ds.Rows = ds.Columns = 7000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds_buf = pydicom.filebase.DicomBytesIO()
    ds_buf.is_little_endian, ds_buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(ds_buf, ds)
    head = ds_buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = b"\x00" * 2**20
    parts = [comp.compress(head)]
    parts += [comp.compress(zeros) for _ in range(pixel_bytes // 2**20)]
    parts.append(comp.flush())
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    meta_buf = pydicom.filebase.DicomBytesIO()
    meta_buf.is_little_endian, meta_buf.is_implicit_VR = True, False
    pydicom.filewriter.write_file_meta_info(meta_buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + meta_buf.getvalue() + b"".join(parts)


def test_deflated_dicom_bomb_is_refused_before_pydicom_inflates_it():
    data = _deflated_dicom(98 * 2**20)                     # 98 MiB of pixel data in ~100 KB
    assert len(data) < 400_000
    _refused_cheaply(data, "deflated dicom", "decompression bomb", "uncompressed", max_s=3.0)
    img, meta = read_image(get_testdata_file("image_dfl.dcm"))  # an ordinary deflated DICOM still reads
    assert img.shape == (512, 512)


def test_declared_size_reads_headers_only():
    assert declared_size(_one_colour_png(8900, 8900)) == ("png", 8900, 8900)
    assert declared_size(_jpeg_dicom_with_frame(300, 200, 200, 300)) == ("dicom", 200, 300)
    buf = io.BytesIO()
    Image.new("L", (40, 30)).save(buf, format="JPEG")
    assert declared_size(buf.getvalue()) == ("jpeg", 40, 30)
    buf = io.BytesIO()
    Image.new("I;16", (41, 31)).save(buf, format="TIFF")
    assert declared_size(buf.getvalue()) == ("tiff", 41, 31)
    assert declared_size(b"name,finding\n") is None
    assert declared_size(_deflated_dicom(2**20)) is None   # never inflated here
