"""read_image on real-world inputs (issue 13): DICOM pixel padding, TIFF min-is-white at every depth and
byte order, EXIF/TIFF orientation, and decoder messages that tell the truth.

Each case of ../shared/cases/ is checked against its README's expected value; generated variants cover
the rest of each kind (both photometric interpretations, windowed and window-less, signed data, both
byte orders, every orientation value, each compressed syntax).
"""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000MCLossless, JPEGBaseline8Bit,
    RLELossless, generate_uid,
)

from engine.cli import main as cli
from engine.data.io import ImageReadError, apply_orientation, jpeg_variant, pixel_padding_mask, read_image

CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


@pytest.fixture(scope="module")
def cases() -> Path:
    if not CASES.is_dir():
        pytest.skip(f"shared cases not found at {CASES}")
    return CASES


def _info(path: Path, capsys) -> dict:
    assert cli(["info", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def _info_error(path: Path, capsys) -> str:
    assert cli(["info", str(path)]) == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------ DICOM pixel padding


def test_case_tiny_padding_exact_values(cases, capsys):
    """README: 500 -> 0, 1000 -> 0.167, 2000 -> 0.5, 3500 -> 1, padding -> 0 (min-max over non-padding)."""
    img, meta = read_image(cases / "dicom-pixel-padding" / "tiny_2x3.dcm")
    expected = np.array([[0.0, 1.0, 0.0], [0.5, 500 / 3000, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(img, expected, atol=1e-6)
    out = _info(cases / "dicom-pixel-padding" / "tiny_2x3.dcm", capsys)
    assert out["max"] == 1.0 and out["min"] == 0.0 and out["mean"] == pytest.approx(expected.mean(), abs=1e-6)


def test_case_padding_border_is_background_and_anatomy_spans_full_range(cases):
    path = cases / "dicom-pixel-padding" / "padding_nowindow.dcm"
    img, _ = read_image(path)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array
    pad = stored == int(ds.PixelPaddingValue)
    assert pad[:6].all() and pad[:, :8].all() and pad[:, -8:].all()          # the border
    assert (img[pad] == 0).all()
    content = stored[~pad].astype(np.float64)
    expected = (content - content.min()) / (content.max() - content.min())       # README's hand computation
    np.testing.assert_allclose(img[~pad], expected, atol=1e-6)
    assert img[~pad].max() == 1.0                                                  # was 0.189 before


def _dx(pixels: np.ndarray, *, photometric="MONOCHROME2", ppv=None, limit=None, window=None, signed=False,
        syntax=ExplicitVRLittleEndian, slope=None) -> bytes:
    """A minimal single-frame DX file around `pixels` (int HxW)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 14, 13
    ds.PixelRepresentation = 1 if signed else 0
    if ppv is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", ppv)
    if limit is not None:
        ds.add_new(0x00280121, "SS" if signed else "US", limit)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, -100, "US"
    dtype = ("<" if syntax != ExplicitVRBigEndian else ">") + ("i2" if signed else "u2")
    ds.PixelData = pixels.astype(dtype).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=syntax != ExplicitVRBigEndian,
               enforce_file_format=True)
    return buf.getvalue()


def _anatomy(signed: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = -1500 if signed else 500
    img = base + rng.integers(0, 3001, size=(24, 32))           # (24, 32) values base..base+3000
    return img


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian])
def test_padding_is_background_for_every_polarity_window_sign_and_syntax(photometric, windowed, signed, syntax):
    pixels = _anatomy(signed)
    pad_value = -2000 if signed else 16383
    pixels[:, :5] = pad_value                                   # left border = padding
    content = np.ones(pixels.shape, bool)
    content[:, :5] = False
    window = (0 if signed else 2000, 2400) if windowed else None
    img, meta = read_image(_dx(pixels, photometric=photometric, ppv=pad_value, window=window, signed=signed,
                               syntax=syntax))
    assert meta.photometric == photometric
    assert (img[~content] == 0).all()
    vals = pixels[content].astype(np.float64)
    if windowed:  # the same file without padding attributes gives the content pixels unchanged
        ref, _ = read_image(_dx(pixels, photometric=photometric, window=window, signed=signed, syntax=syntax))
        np.testing.assert_allclose(img[content], ref[content], atol=1e-6)
    else:
        expected = (vals - vals.min()) / (vals.max() - vals.min())
        if photometric == "MONOCHROME1":
            expected = 1 - expected
        np.testing.assert_allclose(img[content], expected, atol=2e-6)
        assert img[content].max() == pytest.approx(1.0) and img[content].min() == pytest.approx(0.0)


def test_padding_range_limit_covers_every_value_between_either_order():
    pixels = _anatomy(False)
    pixels[0, :] = 0
    pixels[1, :] = 50
    pixels[2, :] = 99                                          # 0..99 = padding (PS3.3 C.7.5.1.1.2)
    for ppv, limit in ((0, 99), (99, 0)):
        img, _ = read_image(_dx(pixels, ppv=ppv, limit=limit))
        assert (img[:3] == 0).all()
        vals = pixels[3:].astype(np.float64)
        np.testing.assert_allclose(img[3:], (vals - vals.min()) / (vals.max() - vals.min()), atol=2e-6)


def test_padding_with_modality_rescale_and_no_padding_present():
    pixels = _anatomy(False)
    pixels[-2:] = 16383
    img, _ = read_image(_dx(pixels, ppv=16383, slope=2.0))   # padding is matched on stored values
    assert (img[-2:] == 0).all() and img[:-2].max() == 1.0 and img[:-2].min() == 0.0
    clean = _anatomy(False)
    a, _ = read_image(_dx(clean, ppv=16383))                   # declared, but no pixel has it
    b, _ = read_image(_dx(clean))
    np.testing.assert_array_equal(a, b)
    ds = pydicom.dcmread(io.BytesIO(_dx(clean, ppv=16383)))
    assert pixel_padding_mask(ds.pixel_array, ds) is None


def test_all_padding_is_refused():
    pixels = np.full((8, 8), 16383)
    with pytest.raises(ImageReadError, match="every pixel equals the Pixel Padding Value"):
        read_image(_dx(pixels, ppv=16383))


# ----------------------------------------------------------------------------- TIFF polarity


def _spine_brighter(img: np.ndarray) -> bool:
    return float(img[:, 32].mean()) > float(img[:, 19].mean())


def test_case_tiffs_spine_brighter_than_lung(cases, capsys):
    folder = cases / "tiff16-min-is-white"
    got = {f.name: read_image(f)[0] for f in sorted(folder.glob("*.tif"))}
    assert set(got) == {"w16_le_miniswhite.tif", "w16_normal_control.tif", "w8_miniswhite_control.tif"}
    for name, img in got.items():
        assert _spine_brighter(img), name
    # README: 16-bit min-is-black gives spine 1.0, lung 0.0; the min-is-white file holds the same picture
    np.testing.assert_allclose(got["w16_le_miniswhite.tif"], got["w16_normal_control.tif"], atol=1e-6)
    assert got["w16_le_miniswhite.tif"][:, 32].mean() == pytest.approx(1.0)
    out = _info(folder / "w16_le_miniswhite.tif", capsys)
    assert out["bits"] == 16 and out["mean"] == pytest.approx(float(got["w16_normal_control.tif"].mean()), abs=1e-6)


def _radiograph16() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:64]
    lung = 800 + 30 * ((x - 19) ** 2 < 30)                     # dark lung band at column 19
    spine = 3000 * (np.abs(x - 32) < 3)                         # bright spine at column 32
    return (lung + spine + y).astype(np.uint16)                 # (64, 64) 12-bit values


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
def test_min_is_white_is_inverted_at_every_depth_and_byte_order(tmp_path, byteorder, dtype):
    """TIFF 6.0 PhotometricInterpretation 0 (WhiteIsZero) vs 1 (BlackIsZero) of the same samples."""
    raw = _radiograph16()
    if dtype == "uint8":
        black = (raw // 16).astype(np.uint8)
    elif dtype == "float32":
        black = (raw / 4095.0).astype(np.float32)
    else:
        black = raw.astype(dtype)
    if dtype == "uint8":
        white = 255 - black                                     # the same picture, stored min-is-white
    elif dtype == "float32":
        white = (1.0 - black).astype(np.float32)
    else:
        white = (black.max() + black.min() - black).astype(black.dtype)
    f_black, f_white = tmp_path / "black.tif", tmp_path / "white.tif"
    tifffile.imwrite(f_black, black, byteorder=byteorder, photometric="minisblack")
    tifffile.imwrite(f_white, white, byteorder=byteorder, photometric="miniswhite")
    a, meta_a = read_image(f_black)
    b, meta_b = read_image(f_white)
    assert meta_a.source_format == meta_b.source_format == "tiff"
    assert _spine_brighter(a) and _spine_brighter(b), (dtype, byteorder)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert meta_b.bits == black.dtype.itemsize * 8


def _tiff12_big_endian(arr: np.ndarray, photometric: int) -> bytes:
    """A 12-bit packed, uncompressed, big-endian single-strip TIFF (TIFF 6.0 section 2/8), written by
    hand because tifffile cannot pack 12-bit samples without imagecodecs."""
    h, w = arr.shape
    rows = []
    for r in arr.astype(np.uint16):
        bits = "".join(f"{v:012b}" for v in r)
        bits += "0" * (-len(bits) % 8)
        rows.append(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    data = b"".join(rows)
    tags = [(256, 3, w), (257, 3, h), (258, 3, 12), (259, 3, 1), (262, 3, photometric), (273, 4, 0), (277, 3, 1),
            (278, 3, h), (279, 4, len(data))]
    offset = 8 + 2 + 12 * len(tags) + 4
    out = b"MM\x00*" + struct.pack(">IH", 8, len(tags))
    for tag, typ, val in tags:
        val = offset if tag == 273 else val
        out += struct.pack(">HHI", tag, typ, 1) + (struct.pack(">HH", val, 0) if typ == 3 else struct.pack(">I", val))
    return out + b"\x00\x00\x00\x00" + data


def test_twelve_bit_tiff_names_the_missing_codec():
    """Neither Pillow nor tifffile without imagecodecs unpack 12-bit samples: the message says so
    (not "corrupt") and what to do."""
    raw = _radiograph16()
    data = _tiff12_big_endian(raw, photometric=0)
    assert tifffile.TiffFile(io.BytesIO(data)).pages.first.bitspersample == 12   # a well-formed file
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        with pytest.raises(ImageReadError) as e:
            read_image(data)
        msg = str(e.value)
        assert "12-bit" in msg and "imagecodecs" in msg and "16-bit" in msg and "corrupt" not in msg
    else:  # with imagecodecs the file is read, min-is-white honoured
        img, meta = read_image(data)
        assert meta.bits == 12 and _spine_brighter(1 - img)


# ------------------------------------------------------------------------------- orientation


def test_case_exif6_jpeg_is_upright(cases, capsys):
    f = cases / "jpeg-exif-orientation" / "exif6_gray.jpg"
    img, meta = read_image(f)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(f)), dtype=np.float32) / 255
    assert img.shape == (48, 64) and (meta.width, meta.height) == (64, 48)
    np.testing.assert_allclose(img, ref, atol=1e-6)
    assert img[:8, :8].mean() == pytest.approx(0.68, abs=0.01)
    out = _info(f, capsys)
    assert (out["width"], out["height"]) == (64, 48)


def _marker_image() -> np.ndarray:
    img = np.full((40, 56), 60, np.uint8)                       # (H, W) = (40, 56), not square
    img[:6, :10] = 250                                          # bright marker top-left
    img[-4:, -4:] = 150
    return img


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, fmt, orientation):
    im = Image.fromarray(_marker_image())
    f = tmp_path / f"o{orientation}.{fmt.lower()}"
    if fmt == "TIFF":
        im.save(f, format=fmt, tiffinfo={274: orientation})
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(f, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    if fmt == "JPEG":  # lossy: compare with Pillow's own transpose of the decoded JPEG
        with Image.open(f) as src:
            ref = np.asarray(ImageOps.exif_transpose(src), dtype=np.float32) / 255
    else:              # lossless: the stored array turned upright (apply_orientation == Pillow, tested below)
        ref = apply_orientation(_marker_image().astype(np.float32) / 255, orientation)
    img, meta = read_image(f)
    assert img.shape == ref.shape and (meta.height, meta.width) == ref.shape
    np.testing.assert_allclose(img, ref, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_16bit_tiff_read_by_tifffile(tmp_path, orientation):
    raw = _radiograph16()[:, :48]                               # (64, 48)
    f = tmp_path / "o.tif"
    tifffile.imwrite(f, raw.astype(">u2"), byteorder=">", photometric="miniswhite",
                     extratags=[(274, "H", 1, orientation, True)])
    img, _ = read_image(f)
    expected = apply_orientation(1 - (raw - raw.min()) / (raw.max() - raw.min()), orientation)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_apply_orientation_equals_pillow_for_every_value():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for o in range(0, 10):
        im = Image.fromarray(arr)
        exif = im.getexif()
        exif[0x0112] = o
        buf = io.BytesIO()
        im.save(buf, format="PNG", exif=exif)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
        np.testing.assert_array_equal(apply_orientation(arr, o), ref, err_msg=str(o))


# ----------------------------------------------------------------------------- decoder messages


def test_case_intact_and_truncated_j2k(cases, capsys):
    folder = cases / "decoder-messages"
    img, meta = read_image(folder / "intact_j2k.dcm")
    assert meta.source_format == "dicom" and img.shape == (64, 64)
    err = _info_error(folder / "truncated_j2k.dcm", capsys)
    assert "truncated" in err and "export it again" in err
    assert "missing decoder" not in err and "pip install" not in err and "no installed decoder" not in err


def test_case_12bit_jpeg_names_the_variant(cases, capsys):
    f = cases / "decoder-messages" / "valid_12bit_extended.jpg"
    assert jpeg_variant(f.read_bytes()) == ("Extended, process 4", 12)
    err = _info_error(f, capsys)
    assert "12-bit JPEG" in err and "16-bit PNG" in err and "DICOM" in err
    assert "truncated or corrupt" not in err


def test_damaged_8bit_jpeg_is_still_called_corrupt(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_marker_image()).save(buf, format="JPEG")
    assert jpeg_variant(buf.getvalue()) == ("Baseline", 8)
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(buf.getvalue()[:200])


def _with_frame(data: bytes, edit) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([edit(frame)])
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def compressed(cases) -> dict[str, bytes]:
    """The intact J2K case, the same image uncompressed and as RLE, and a JPEG baseline DICOM."""
    j2k = (cases / "decoder-messages" / "intact_j2k.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(j2k))
    ds.decompress()
    native = io.BytesIO()
    ds.save_as(native)
    out = {"j2k": j2k, "native": native.getvalue()}
    jpg = io.BytesIO()
    Image.fromarray(_marker_image()).save(jpg, format="JPEG", quality=90)
    ds2 = pydicom.dcmread(io.BytesIO(native.getvalue()))
    ds2.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds2.Rows, ds2.Columns = _marker_image().shape
    ds2.BitsAllocated, ds2.BitsStored, ds2.HighBit = 8, 8, 7
    ds2.PixelData = encapsulate([jpg.getvalue()])
    buf = io.BytesIO()
    ds2.save_as(buf)
    out["jpeg"] = buf.getvalue()
    ds3 = pydicom.dcmread(io.BytesIO(native.getvalue()))
    ds3.compress(RLELossless)
    buf = io.BytesIO()
    ds3.save_as(buf)
    out["rle"] = buf.getvalue()
    return out


@pytest.mark.parametrize("kind", ["j2k", "jpeg"])
def test_truncated_compressed_frames_say_truncated(compressed, kind):
    img, _ = read_image(compressed[kind])                      # intact: reads
    assert img.shape == ((64, 64) if kind == "j2k" else _marker_image().shape)
    cut = _with_frame(compressed[kind], lambda fr: fr[: len(fr) // 2])
    with pytest.raises(ImageReadError) as e:
        read_image(cut)
    msg = str(e.value)
    assert "truncated" in msg and "end-of-image marker" in msg and "pip install" not in msg


def test_complete_but_corrupt_frame_says_corrupt_and_quotes_the_decoders(compressed):
    def scramble(fr: bytes) -> bytes:
        mid = bytearray(fr)
        mid[2:len(mid) - 3] = bytes(len(mid) - 5)               # keep SOC and EOC, zero the rest
        return bytes(mid)

    with pytest.raises(ImageReadError) as e:
        read_image(_with_frame(compressed["j2k"], scramble))
    msg = str(e.value)
    assert "corrupt" in msg and "pylibjpeg" in msg and "pip install" not in msg and "truncated" not in msg


def test_rle_roundtrip_reads_and_truncated_native_is_refused(compressed):
    a, _ = read_image(compressed["rle"])
    b, _ = read_image(compressed["native"])
    np.testing.assert_array_equal(a, b)
    ds = pydicom.dcmread(io.BytesIO(compressed["native"]))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(buf.getvalue())


def test_no_decoder_in_pydicom_says_decompress(compressed):
    ds = pydicom.dcmread(io.BytesIO(compressed["j2k"]))
    ds.file_meta.TransferSyntaxUID = JPEG2000MCLossless
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(ImageReadError) as e:
        read_image(buf.getvalue())
    assert "no decoder exists" in str(e.value) and "Explicit VR Little Endian" in str(e.value)


def test_missing_plugin_says_missing_decoder_and_names_package(compressed, monkeypatch):
    decoder = get_decoder(pydicom.dcmread(io.BytesIO(compressed["j2k"])).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(ImageReadError) as e:
        read_image(compressed["j2k"])
    assert "missing decoder" in str(e.value) and "pip install pylibjpeg pylibjpeg-openjpeg" in str(e.value)
