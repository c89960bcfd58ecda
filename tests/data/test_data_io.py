"""engine.data.io.read_image on real DICOM files, hand-built DICOMs and PNG/JPEG/TIFF round trips."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from engine.data.io import ImageMeta, detect_format, read_image

REPO = Path(__file__).resolve().parents[2]
SIIM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH_DX = "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
META_KEYS = {"source_format", "width", "height", "bits", "photometric", "modality", "view"}


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture(scope="module")
def sources(dicom_dir: Path) -> list[dict[str, str]]:
    with open(dicom_dir / "SOURCES.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def decoded(dicom_dir: Path) -> dict[str, tuple[np.ndarray, ImageMeta]]:
    """Every .dcm file in the shared folder, read once for the whole module."""
    return {p.name: read_image(p) for p in sorted(dicom_dir.glob("*.dcm"))}


def _stored(path: Path) -> np.ndarray:
    """Stored pixel values straight from pydicom (no LUTs), for hand-computed expectations."""
    ds = pydicom.dcmread(path, force=True)
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds.pixel_array


def _linear_window(y: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, output in [0, 1]."""
    return np.clip((y - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


# ----------------------------------------------------------------------------- shared DICOM files


def test_every_shared_dicom_matches_its_sources_row(dicom_dir, sources, decoded):
    listed = {row["path"] for row in sources}
    assert set(decoded) == listed, "SOURCES.csv and the folder disagree; every file must be read"
    for row in sources:
        img, meta = decoded[row["path"]]
        assert img.dtype == np.float32 and img.ndim == 2 and img.flags.c_contiguous
        assert img.shape == (int(row["rows"]), int(row["cols"]))
        assert (meta.height, meta.width) == img.shape
        assert meta.source_format == "dicom"
        assert meta.bits == int(row["bits_stored"])
        assert meta.photometric == row["photometric"].split()[0]
        assert meta.modality == row["modality"]
        assert meta.view == ("" if row["view"].startswith("(") else row["view"])
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.std() > 0.05, f"{row['path']} came back nearly constant"


def test_fake_monochrome1_is_the_inverse_of_the_siim_file(decoded):
    siim, _ = decoded[SIIM]
    fake, meta = decoded["Fake_MONOHR1.dcm"]
    assert meta.photometric == "MONOCHROME1"
    assert abs(float(fake.mean()) - (1.0 - float(siim.mean()))) < 1e-4
    assert _corr(siim, fake) < -0.999
    np.testing.assert_allclose(fake, 1.0 - siim, atol=1e-6)


def test_rg1_three_encodings_agree(decoded):
    unc, _ = decoded["RG1_UNCR.dcm"]
    j2k_lossless, _ = decoded["RG1_J2KR.dcm"]
    j2k_lossy, _ = decoded["RG1_J2KI.dcm"]
    assert np.array_equal(unc, j2k_lossless)
    err = np.abs(unc - j2k_lossy)
    assert 0.0 < float(err.mean()) < 0.005, "lossy J2K should differ a little from the original, not a lot"
    assert float(err.max()) < 0.05
    assert _corr(unc, j2k_lossy) > 0.999


def test_rg1_window_and_inversion_by_hand(dicom_dir, decoded):
    # 15-bit MONOCHROME1, WC/WW 15000/30000, no rescale: 1 - LINEAR window of the stored values.
    stored = _stored(dicom_dir / "RG1_UNCR.dcm")[::7, ::7].astype(np.float64)
    expected = 1.0 - _linear_window(stored, 15000, 30000)
    np.testing.assert_allclose(decoded["RG1_UNCR.dcm"][0][::7, ::7], expected, atol=2e-6)


def test_ten_bit_monochrome1_without_preamble_is_windowed_and_inverted(dicom_dir, decoded):
    path = dicom_dir / "CR-MONO1-10-chest.dcm"
    head = path.read_bytes()[:132]
    assert head[128:132] != b"DICM", "this file is the no-preamble case"
    img, meta = decoded[path.name]
    assert (meta.bits, meta.photometric) == (10, "MONOCHROME1")
    stored = _stored(path).astype(np.float64)                      # 0..979, WC/WW 550/1024
    np.testing.assert_allclose(img, 1.0 - _linear_window(stored, 550, 1024), atol=2e-6)
    assert _corr(img, stored) < -0.99                              # inversion applied
    assert float(img.max() - img.min()) > 0.5                      # spans a sensible part of [0, 1]
    assert 0.2 < float(img.mean()) < 0.8
    assert not np.array_equal(img, 1.0 - (stored - stored.min()) / np.ptp(stored)), "window ignored"


def test_jpeg_baseline_and_window_free_files_use_min_max(dicom_dir, decoded):
    ds = pydicom.dcmread(dicom_dir / SIIM)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    for name in (SIIM, NIH_DX):
        stored = _stored(dicom_dir / name).astype(np.float64)
        expected = (stored - stored.min()) / (stored.max() - stored.min())
        np.testing.assert_allclose(decoded[name][0], expected, atol=1e-6)


def test_bytes_input_equals_path_input(dicom_dir, decoded):
    for name in ("CR-MONO1-10-chest.dcm", SIIM):
        img, meta = read_image((dicom_dir / name).read_bytes())
        assert np.array_equal(img, decoded[name][0]) and meta == decoded[name][1]
    img, meta = read_image(str(dicom_dir / "Fake_MONOHR1.dcm"))
    assert np.array_equal(img, decoded["Fake_MONOHR1.dcm"][0])


def test_meta_holds_no_patient_identifying_data(dicom_dir, decoded):
    for path in sorted(dicom_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        secrets = {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate",
                                                 "InstitutionName", "StudyInstanceUID", "SOPInstanceUID",
                                                 "AccessionNumber", "StudyDescription")}
        secrets = {s for s in secrets if len(s) >= 3}
        assert secrets, f"{path.name}: expected identifying tags to test against"
        meta_dict = decoded[path.name][1].to_dict()
        assert set(meta_dict) == META_KEYS
        dumped = json.dumps(meta_dict)
        for s in secrets:
            assert s not in dumped, f"{path.name}: identifying value leaked into ImageMeta"


# ----------------------------------------------------------------- other transfer syntaxes (pydicom)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"])
def test_jpeg_ls_rle_j2k_and_big_endian_decode_identically(name):
    ref, ref_meta = read_image(get_testdata_file("MR_small.dcm"))  # signed 16-bit, WC/WW 600/1600
    img, meta = read_image(get_testdata_file(name))
    assert meta == ref_meta
    assert np.array_equal(img, ref)
    stored = _stored(Path(get_testdata_file("MR_small.dcm"))).astype(np.float64)
    np.testing.assert_allclose(ref, _linear_window(stored, 600, 1600), atol=2e-6)


def test_colour_dicom_becomes_luminance():
    rgb_img, meta = read_image(get_testdata_file("SC_rgb_rle.dcm"))
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    rgb = ds.pixel_array.astype(np.float64)
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    assert meta.photometric == "RGB" and rgb_img.shape == rgb.shape[:2]
    np.testing.assert_allclose(rgb_img, expected, atol=1e-5)
    ybr_img, _ = read_image(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    assert np.abs(ybr_img - rgb_img).max() < 3 / 255      # same picture stored as YBR_FULL_422


# -------------------------------------------------------------------------- hand-built DICOMs


def _build_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                 transfer_syntax=ExplicitVRLittleEndian, **tags) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "AP"
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-123456"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


STORED = np.array([[0, 100, 150], [200, 250, 400]], dtype=np.uint16)
# Rescale y = 2 x - 100 -> [[-100, 100, 200], [300, 400, 700]]; LINEAR window C=300, W=401:
# (y - 299.5) / 400 + 0.5, clipped to [0, 1].
EXPECTED_LINEAR = np.array([[0.0, 0.00125, 0.25125], [0.50125, 0.75125, 1.0]], dtype=np.float32)


def test_rescale_then_window_matches_hand_computation():
    data = _build_dicom(STORED, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=300, WindowWidth=401)
    img, meta = read_image(data)
    np.testing.assert_allclose(img, EXPECTED_LINEAR, atol=1e-6)
    assert meta.to_dict() == {"source_format": "dicom", "width": 3, "height": 2, "bits": 12,
                              "photometric": "MONOCHROME2", "modality": "DX", "view": "AP"}
    assert "Doe" not in json.dumps(meta.to_dict()) and "PID-123456" not in json.dumps(meta.to_dict())


def test_monochrome1_inverts_after_windowing_and_first_window_wins():
    data = _build_dicom(STORED, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100,
                        WindowCenter=[300, 10], WindowWidth=[401, 5])
    img, _ = read_image(data)
    np.testing.assert_allclose(img, 1.0 - EXPECTED_LINEAR, atol=1e-6)


def test_linear_exact_and_sigmoid_voi_functions():
    y = STORED.astype(np.float64) * 2 - 100
    exact, _ = read_image(_build_dicom(STORED, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=300,
                                       WindowWidth=401, VOILUTFunction="LINEAR_EXACT"))
    np.testing.assert_allclose(exact, np.clip((y - 300) / 401 + 0.5, 0, 1), atol=1e-6)
    sig, _ = read_image(_build_dicom(STORED, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=300,
                                     WindowWidth=401, VOILUTFunction="SIGMOID"))
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-4 * (y - 300) / 401)), atol=1e-6)


def test_voi_lut_sequence_is_preferred_and_scaled_by_its_entries():
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 100, 16])   # 4 entries, first mapped stored value 100, 16 bits
    item.add_new("LUTData", "US", [0, 1000, 3000, 4000])  # uses 12 of the declared 16 bits
    stored = np.array([[50, 100, 101], [102, 103, 999]], dtype=np.uint16)
    img, _ = read_image(_build_dicom(stored, VOILUTSequence=[item], WindowCenter=5, WindowWidth=2))
    np.testing.assert_allclose(img, [[0.0, 0.0, 0.25], [0.75, 1.0, 1.0]], atol=1e-6)


def test_no_window_uses_min_max_of_modality_values_and_bad_window_falls_back():
    expected = (STORED - 0.0) / 400.0
    img, _ = read_image(_build_dicom(STORED))
    np.testing.assert_allclose(img, expected, atol=1e-6)
    img, _ = read_image(_build_dicom(STORED, WindowCenter=100, WindowWidth=0.5))  # invalid for LINEAR
    np.testing.assert_allclose(img, expected, atol=1e-6)
    neg, _ = read_image(_build_dicom(STORED, RescaleSlope=-1, RescaleIntercept=0))
    np.testing.assert_allclose(neg, 1.0 - expected, atol=1e-6)   # negative slope flips the min-max
    flat, _ = read_image(_build_dicom(np.full((4, 5), 7, np.uint16)))
    assert flat.shape == (4, 5) and not flat.any()                 # constant image is legal: all 0


def test_rle_encoded_build_equals_uncompressed():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(48, 40), dtype=np.uint16)
    plain, _ = read_image(_build_dicom(pixels, WindowCenter=2048, WindowWidth=4096))
    rle, _ = read_image(_build_dicom(pixels, WindowCenter=2048, WindowWidth=4096, transfer_syntax=RLELossless))
    assert np.array_equal(plain, rle)
    np.testing.assert_allclose(plain, _linear_window(pixels.astype(np.float64), 2048, 4096), atol=2e-6)


# --------------------------------------------------------------------- PNG / JPEG / TIFF round trips


def _gray8(h: int = 40, w: int = 56) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((xx * 4 + yy * 2) % 256).astype(np.uint8)


def _save(tmp_path: Path, im: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_lossless_8bit_gray_round_trip(tmp_path, ext):
    arr = _gray8()
    img, meta = read_image(_save(tmp_path, Image.fromarray(arr), f"g.{ext}"))
    assert img.dtype == np.float32 and meta.bits == 8 and meta.photometric == "L"
    assert meta.source_format == ext and (meta.width, meta.height) == (56, 40)
    np.testing.assert_array_equal(img, arr.astype(np.float32) / 255)


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16bit_gray_is_stretched_min_max(tmp_path, ext):
    arr = (_gray8().astype(np.uint16) * 16 + 100)          # 12-bit values 100..4180 in a 16-bit container
    img, meta = read_image(_save(tmp_path, Image.fromarray(arr), f"g16.{ext}"))
    assert meta.bits == 16 and meta.photometric.startswith("I;16")
    expected = (arr.astype(np.float64) - arr.min()) / (arr.max() - arr.min())
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_jpeg_gray_and_color_round_trip(tmp_path):
    arr = _gray8()
    img, meta = read_image(_save(tmp_path, Image.fromarray(arr), "g.jpg", quality=95))
    assert meta.source_format == "jpeg" and meta.photometric == "L" and meta.bits == 8
    assert np.abs(img - arr / 255).mean() < 2 / 255
    rgb = np.stack([arr, 255 - arr, np.full_like(arr, 60)], axis=-1)
    img, meta = read_image(_save(tmp_path, Image.fromarray(rgb), "c.jpg", quality=95))
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    assert meta.photometric == "RGB" and img.shape == arr.shape
    assert np.abs(img - luma).mean() < 3 / 255


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_rgb_becomes_bt601_luminance(tmp_path, ext):
    arr = _gray8()
    rgb = np.stack([arr, 255 - arr, np.full_like(arr, 60)], axis=-1)
    img, meta = read_image(_save(tmp_path, Image.fromarray(rgb), f"c.{ext}"))
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    assert meta.photometric == "RGB"
    assert np.abs(img - luma).max() <= 0.5 / 255 + 1e-6     # rounding of the 8-bit luma only


def test_alpha_is_composited_over_black(tmp_path):
    arr = _gray8()
    alpha = np.where(np.arange(arr.shape[1]) < 28, 255, 64).astype(np.uint8)[None, :].repeat(arr.shape[0], 0)
    rgba = np.dstack([arr, arr, arr, alpha])
    img, meta = read_image(_save(tmp_path, Image.fromarray(rgba, "RGBA"), "a.png"))
    assert meta.photometric == "RGBA"
    np.testing.assert_allclose(img, arr / 255 * alpha / 255, atol=1e-5)
    la, meta = read_image(_save(tmp_path, Image.fromarray(np.dstack([arr, alpha]), "LA"), "la.png"))
    assert meta.photometric == "LA"
    np.testing.assert_allclose(la, img, atol=1e-5)


def test_palette_and_one_bit_images(tmp_path):
    idx = (_gray8() // 64).astype(np.uint8)                  # indices 0..3
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (255, 255, 255)]
    pal = Image.fromarray(idx, "P")
    pal.putpalette([c for rgb in colors for c in rgb] + [0] * (256 - 4) * 3)
    img, meta = read_image(_save(tmp_path, pal, "p.png"))
    lum = np.array([0.0, 76 / 255, 150 / 255, 1.0])          # Pillow's BT.601 integer luma of each colour
    assert meta.photometric == "P"
    np.testing.assert_allclose(img, lum[idx], atol=1e-6)
    transparent = _save(tmp_path, pal, "pt.png", transparency=3)  # white index fully transparent
    timg, _ = read_image(transparent)                        # -> RGBA, float BT.601 luma times alpha
    np.testing.assert_allclose(timg, np.array([0.0, 0.299, 0.587, 0.0])[idx], atol=1e-6)
    bits = _gray8() > 128
    img, meta = read_image(_save(tmp_path, Image.fromarray(bits), "b.png"))
    assert meta.bits == 1 and meta.photometric == "1"
    np.testing.assert_array_equal(img, bits.astype(np.float32))


def test_float_and_32bit_tiff(tmp_path):
    f = (_gray8() / 300.0).astype(np.float32)                  # already in [0, 1]: kept
    img, meta = read_image(_save(tmp_path, Image.fromarray(f), "f.tiff"))
    assert meta.photometric == "F"
    np.testing.assert_array_equal(img, f)
    i32 = _gray8().astype(np.int32) * 1000 - 5000
    img, meta = read_image(_save(tmp_path, Image.fromarray(i32), "i.tiff"))
    assert meta.photometric == "I"
    np.testing.assert_allclose(img, (i32 - i32.min()) / np.ptp(i32), atol=1e-6)


def test_format_detected_by_content_not_name(tmp_path, dicom_dir):
    png = tmp_path / "really_a_png.jpg"
    Image.fromarray(_gray8()).save(png, format="PNG")
    assert read_image(png)[1].source_format == "png"
    dcm = tmp_path / "scan.bin"
    dcm.write_bytes((dicom_dir / "CR-MONO1-10-chest.dcm").read_bytes())
    assert read_image(dcm)[1].source_format == "dicom"
    assert detect_format(dcm.read_bytes()[:132]) == "dicom"
    # A DICOM whose preamble is a TIFF header (RG1_UNCR) is still DICOM.
    head = (dicom_dir / "RG1_UNCR.dcm").read_bytes()[:132]
    assert head[:4] == b"II*\x00" and detect_format(head) == "dicom"


def test_png_bytes_equal_path(tmp_path):
    path = _save(tmp_path, Image.fromarray(_gray8()), "g.png")
    a, ma = read_image(path)
    b, mb = read_image(path.read_bytes())
    assert np.array_equal(a, b) and ma == mb


# ----------------------------------------------------------------------------------------- CLI


def test_cli_info_prints_one_json_object(dicom_dir, decoded):
    name = "CR-MONO1-10-chest.dcm"
    out = subprocess.run([sys.executable, "-m", "engine", "info", str(dicom_dir / name)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    img, meta = decoded[name]
    assert {k: info[k] for k in META_KEYS} == meta.to_dict()
    assert info["min"] == pytest.approx(float(img.min()), abs=1e-6)
    assert info["max"] == pytest.approx(float(img.max()), abs=1e-6)
    assert info["mean"] == pytest.approx(float(img.mean()), abs=1e-6)
    assert 0.0 <= info["min"] < info["mean"] < info["max"] <= 1.0
