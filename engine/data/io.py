"""Read any supported X-ray image into a float32 HxW array in [0, 1] plus a non-identifying meta record.

    img, meta = read_image("chest.dcm")      # or a PNG/JPEG/TIFF path, or the file's bytes

The format is detected from the content, never from the file name: a text file renamed ``.png`` is
refused as "not an image", and a DICOM file named ``.bin`` (or without a 128-byte preamble) is read.

Raster images (PNG, JPEG, TIFF through Pillow)
----------------------------------------------
* 8-bit samples (modes ``L``, ``RGB``, ``P``, ``LA``, ``RGBA``, ...) are divided by the container
  maximum 255: such files were already windowed for display by whoever exported them, so their
  grey levels are kept as they are. 1-bit images (mode ``1``) map to exactly 0 and 1.
* 16-bit and 32-bit integer samples (``I;16``, ``I``) are stretched from their own minimum to their
  own maximum, the same rule as a DICOM file without any VOI (window) information. Reason: 16-bit
  PNG/TIFF radiographs carry raw detector values whose used range depends on the detector, not on
  the container (PadChest's 16-bit PNGs mostly hold 12-bit values); dividing by 65535 would squeeze
  a 12-bit image into 1/16 of [0, 1], which the uint8 resolution cache would then quantize to 16
  grey levels. A constant image maps to 0.
* Float samples (``F``) are kept when they already lie in [0, 1], else stretched min-max;
  NaN or infinite samples are refused.
* Colour becomes luminance with the ITU-R BT.601 weights (0.299 R + 0.587 G + 0.114 B), the same
  as Pillow's ``convert("L")`` and a JPEG's own Y channel (RGB JPEGs are decoded straight to Y).
  Palette images go through their palette. Alpha is composited over black, the colour the
  letterbox padding uses, so a transparent region reads as "no signal"; an opaque alpha changes
  nothing.
* ``meta.photometric`` is the Pillow mode of the file (``L``, ``I;16``, ``RGB``, ``RGBA``, ``P``,
  ``1``, ...), ``meta.bits`` the bits per decoded sample, ``modality`` and ``view`` are empty.

DICOM (pydicom 3 and its pixel-data plugins)
--------------------------------------------
Stored values -> modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept) -> VOI LUT
Sequence, else Window Center/Width (first value when multi-valued; LINEAR, LINEAR_EXACT or SIGMOID
as the VOI LUT Function says), else the full min-max of the modality values -> MONOCHROME1
inversion (after windowing, so the window applies to the stored polarity) -> [0, 1]. An invalid
window (width < 1 for LINEAR) falls back to min-max. VOI LUT output is scaled by the minimum and
maximum of the LUT's own entries (real files often declare 16 bits for 12-bit LUT data).
Presentation LUT Shape is not applied on top: in CR/DX it restates the MONOCHROME1/2 polarity.
Colour DICOM (RGB/YBR) is converted to luminance without windowing. Compressed transfer syntaxes
(JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's plugins
(pylibjpeg with -libjpeg, -openjpeg, -rle; Pillow); a missing plugin names the package to install.
Files without preamble or file meta are read with ``force=True``; their transfer syntax is taken
from the encoding pydicom detected.

Never in ``ImageMeta``: names, IDs, dates, UIDs, institutions or any other free-text tag. Only
code-string values (Modality, View Position, Photometric Interpretation) are copied, and only when
they look like code strings.

Refused with :class:`ImageReadError` (a message saying what is wrong and what to do): missing or
empty files, unknown formats, truncated or corrupt data, images above :data:`MAX_PIXELS` (checked
from the header before any pixel buffer is allocated), multi-frame DICOM and multi-page TIFF/PNG,
DICOM without pixel data (structured reports, PDFs, presentation states), palette-colour or float
DICOM, and any result that is not finite.
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

__all__ = ["MAX_PIXELS", "ImageMeta", "ImageReadError", "detect_format", "read_image"]

# Largest image accepted, in pixels (width * height). The biggest chest radiographs are about
# 4300 x 4300 = 18.5 MP (43 cm detectors at 0.1 mm); 80 MP leaves room for any real radiograph
# while refusing "decompression bombs" before a buffer is allocated (80 MP float32 = 320 MB).
MAX_PIXELS: Final[int] = 80_000_000

_OPENERS: Final = {"png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.jpeg_factory,
                   "tiff": TiffImagePlugin.TiffImageFile}
_SUPPORTED = "PNG, JPEG, TIFF or DICOM"
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")
_U8_TO_UNIT: Final[np.ndarray] = np.arange(256, dtype=np.float32) / np.float32(255.0)  # uint8 -> [0,1]
_BT601: Final[np.ndarray] = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class ImageReadError(ValueError):
    """An image that cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class ImageMeta:
    """Non-identifying description of a decoded image (never names, IDs, dates, UIDs, institutions).

    source_format: "png" | "jpeg" | "tiff" | "dicom"; width/height: pixels of the returned array;
    bits: bits per decoded sample (DICOM: Bits Stored); photometric: DICOM Photometric
    Interpretation, or the Pillow mode for raster files; modality: DICOM Modality ("CR", "DX", ...)
    or ""; view: DICOM View Position ("PA", "AP", "LL", ...) or "" when unknown.
    """

    source_format: str
    width: int
    height: int
    bits: int
    photometric: str
    modality: str = ""
    view: str = ""

    def to_dict(self) -> dict[str, str | int]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- entry


def read_image(src: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple[np.ndarray, ImageMeta]:
    """Decode a PNG/JPEG/TIFF/DICOM file (path or bytes) to (float32 HxW in [0, 1], ImageMeta).

    Raises ImageReadError for anything it cannot turn into a trustworthy single grey image.
    """
    data, name = _load_bytes(src)
    fmt = detect_format(data)
    if fmt is None:
        raise ImageReadError(f"{name} is not a {_SUPPORTED} image ({_describe_content(data)}). "
                             f"Convert it to PNG or DICOM and import it again.")
    img, meta = _read_dicom(data, name) if fmt == "dicom" else _read_raster(data, name, fmt)
    if img.ndim != 2 or img.size == 0:
        raise ImageReadError(f"{name} decoded to an array of shape {img.shape}, not a 2-D image.")
    if not np.isfinite(img).all():
        raise ImageReadError(f"{name} contains NaN or infinite pixel values; re-export it from the source.")
    return img, meta


def detect_format(head: bytes) -> str | None:
    """'png' | 'jpeg' | 'tiff' | 'dicom' from the first bytes of a file (>= 132 for DICOM), else None."""
    if head[128:132] == b"DICM":  # first: some DICOM preambles are TIFF headers (dual-personality files)
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a tag of group 0002 or 0008, followed by an
    explicit VR (two upper-case letters) or, little-endian only, a 4-byte implicit length."""
    if len(head) < 12:
        return False
    vr = head[4:6]
    explicit = vr.isalpha() and vr.isupper()
    group_le, element_le = struct.unpack_from("<HH", head, 0)
    if group_le in (0x0002, 0x0008) and element_le <= 0x0100:
        (length,) = struct.unpack_from("<I", head, 4)
        return explicit or length < 1 << 16 or length == 0xFFFFFFFF
    group_be, element_be = struct.unpack_from(">HH", head, 0)
    return group_be in (0x0002, 0x0008) and element_be <= 0x0100 and explicit


def _load_bytes(src: str | os.PathLike[str] | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the image data"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = f"'{path}'"
        if not path.exists():
            raise ImageReadError(f"{name} does not exist; check the path.")
        if path.is_dir():
            raise ImageReadError(f"{name} is a folder, not an image file; pick a file inside it.")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageReadError(f"{name} cannot be read ({e.strerror}); check its permissions.") from e
    else:
        raise TypeError(f"read_image takes a path or bytes, not {type(src).__name__}")
    if not data:
        raise ImageReadError(f"{name} is empty (0 bytes); the copy or download probably failed, fetch it again.")
    return data, name


def _describe_content(data: bytes) -> str:
    head = data[:64]
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive; extract it or import it as a ZIP"
    for magic, kind in ((b"BM", "BMP"), (b"GIF8", "GIF"), (b"RIFF", "WebP/RIFF"), (b"%PDF", "PDF"),
                        (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream")):
        if head.startswith(magic):
            return f"its content is {kind}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"its content starts with bytes {head[:8].hex(' ')}"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return "it contains text, whatever its file name says"
    return f"its content starts with bytes {head[:8].hex(' ')}"


def _check_size(width: int, height: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{name} declares an empty image ({width}x{height}); the file is corrupt.")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name} declares {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit for one radiograph (refused before decoding). "
            f"If it is genuine, downsample it before importing.")


# ---------------------------------------------------------------------------------------- raster


def _read_raster(data: bytes, name: str, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    try:
        # The plugin's opener parses the header only; calling it directly (not Image.open) skips
        # Pillow's own, larger decompression-bomb limit so that ours below decides, with a clear message.
        im = _OPENERS[fmt](io.BytesIO(data))
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{name} starts like a {fmt.upper()} file but its header is truncated or corrupt "
                             f"({e}); re-export or download it again.") from e
    _check_size(im.width, im.height, name)
    if im.format in ("PNG", "TIFF") and getattr(im, "n_frames", 1) > 1:
        raise ImageReadError(f"{name} holds {im.n_frames} images (multi-page {im.format}); scarce-cxr reads "
                             f"single-image files: save the radiograph you want on its own.")
    mode = im.mode
    try:
        if im.format == "JPEG" and mode == "RGB":
            im.draft("L", im.size)  # decode the stored BT.601 luma (Y) only: ~1.5x faster at 224 px
        im.load()
        img, bits = _pil_to_unit_gray(im)
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{name} could not be decoded: the {fmt.upper()} data is truncated or corrupt "
                             f"({e}). Re-export or download it again.") from e
    return img, ImageMeta(source_format=fmt, width=im.width, height=im.height, bits=bits, photometric=mode)


def _pil_to_unit_gray(im: Image.Image) -> tuple[np.ndarray, int]:
    """Loaded Pillow image -> (float32 HxW in [0, 1], bits per decoded sample)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32), 1                              # bool -> {0, 1}
    if mode == "L":
        return _U8_TO_UNIT[np.asarray(im)], 8                                   # HxW uint8 -> f32
    if mode.startswith("I;16") or mode == "I":
        return _minmax(np.asarray(im)), 16 if mode.startswith("I;16") else 32
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("float image contains NaN or infinite values")
        inside = arr.size and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
        return (arr.copy() if inside else _minmax(arr)), 32
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode == "RGB":
        return _U8_TO_UNIT[np.asarray(im.convert("L"))], 8                      # BT.601 luma
    if mode == "LA":
        la = np.asarray(im)                                                     # HxWx2 uint8
        return _U8_TO_UNIT[la[..., 0]] * _U8_TO_UNIT[la[..., 1]], 8             # over black
    if mode == "RGBA":
        rgba = np.asarray(im)                                                   # HxWx4 uint8
        luma = rgba[..., :3] @ _BT601                                           # HxW f32 in [0,255]
        return np.clip(luma * (1 / 255) * _U8_TO_UNIT[rgba[..., 3]], 0.0, 1.0), 8
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: Pillow knows how to get to 8-bit RGB.
    return _U8_TO_UNIT[np.asarray(im.convert("RGB").convert("L"))], 8


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Stretch any numeric HxW array to float32 [0, 1] by its own min and max (constant -> 0)."""
    out = arr.astype(np.float32)  # exact for integers up to 2**24; 32-bit ints lose low bits only
    lo, hi = float(out.min()), float(out.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel values contain NaN or infinity")
    if hi <= lo:
        return np.zeros_like(out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


# ----------------------------------------------------------------------------------------- DICOM


_DECODER_PACKAGES: Final[tuple[tuple[str, str], ...]] = (
    ("JPEG2000", "pylibjpeg pylibjpeg-openjpeg"),
    ("JPEGLS", "pylibjpeg pylibjpeg-libjpeg"),
    ("JPEG", "pylibjpeg pylibjpeg-libjpeg"),
    ("RLE", "pylibjpeg pylibjpeg-rle"),
    ("HTJ2K", "pylibjpeg pylibjpeg-openjpeg"),
)
_COLOR_PHOTOMETRICS: Final = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


def _read_dicom(data: bytes, name: str) -> tuple[np.ndarray, ImageMeta]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, *_DECODE_ERRORS, KeyError, IndexError, AttributeError) as e:
        # Only the error type: a parser message may quote a tag value, which could be identifying.
        raise ImageReadError(f"{name} looks like DICOM but cannot be parsed ({type(e).__name__}); the file is "
                             f"corrupt or truncated: export it again from the PACS.") from e
    if len(ds) == 0:  # pydicom gives up silently (with a warning) on data sets cut off mid-element
        raise ImageReadError(f"{name} has a DICOM header but no readable data set: the file is truncated or "
                             f"corrupt. Export it again from the PACS.")
    _ensure_transfer_syntax(ds, name)
    _check_dicom_is_single_image(ds, name)
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    _check_size(cols, rows, name)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise ImageReadError(f"{name} is a palette-colour DICOM; only greyscale (MONOCHROME1/2) or RGB/YBR "
                             f"radiographs are supported. Export it as MONOCHROME2.")
    if photometric not in _COLOR_PHOTOMETRICS | {"MONOCHROME1", "MONOCHROME2"}:
        raise ImageReadError(f"{name} has an unsupported Photometric Interpretation "
                             f"{_code_string(photometric) or '(missing)'}; expected MONOCHROME1/2, RGB or YBR.")
    stored = _decode_dicom_pixels(ds, name)
    if photometric in _COLOR_PHOTOMETRICS:
        img = _color_dicom_to_gray(stored, ds)
    else:
        img = _monochrome_to_unit(stored, ds)
        if photometric == "MONOCHROME1":
            img = np.subtract(np.float32(1.0), img, out=img)  # inversion after windowing
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    meta = ImageMeta(source_format="dicom", width=cols, height=rows, bits=bits, photometric=photometric,
                     modality=_code_string(ds.get("Modality")), view=_code_string(ds.get("ViewPosition")))
    return img, meta


def _code_string(value: object) -> str:
    """A DICOM CS value if it is one (upper-case code, <= 16 chars), else "" (keeps free text out)."""
    if value is None:
        return ""
    text = str(value).strip().upper()
    return text if _CODE_STRING.fullmatch(text) else ""


def _ensure_transfer_syntax(ds, name: str) -> None:
    """Files without file meta (no preamble) get the transfer syntax pydicom detected while parsing."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        raise ImageReadError(f"{name} has no transfer syntax and its encoding cannot be inferred; "
                             f"re-export it as a standard DICOM file (Part 10, with file meta).")
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid


def _sop_class_name(ds) -> str:
    uid = ds.get("SOPClassUID")
    label = getattr(uid, "name", "") if uid is not None else ""
    modality = _code_string(ds.get("Modality"))
    return " ".join(p for p in (label and f"a {label}", modality and f"(modality {modality})") if p) or "a DICOM object"


def _check_dicom_is_single_image(ds, name: str) -> None:
    if "PixelData" not in ds:
        kind = _sop_class_name(ds)
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(f"{name} is {kind} with floating-point pixel data (a parametric map), not a "
                                 f"radiograph; import the X-ray image itself.")
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if rows and cols:
            raise ImageReadError(f"{name} has no pixel data although its header describes a {cols}x{rows} image: "
                                 f"the file is truncated or its pixel data was removed. Export the image again.")
        raise ImageReadError(f"{name} is {kind} with no pixel data, so it is not an image (e.g. a report or "
                             f"presentation state); import the X-ray image itself.")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ImageReadError(f"{name} is a multi-frame DICOM ({frames} frames); scarce-cxr accepts single-frame "
                             f"radiographs. Export the frame you want as its own DICOM or PNG.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples not in (1, 3):
        raise ImageReadError(f"{name} has {samples} samples per pixel; only greyscale (1) or colour (3) "
                             f"radiographs are supported.")


def _decode_dicom_pixels(ds, name: str) -> np.ndarray:
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        if "plugin" in str(e) or "missing" in str(e):
            packages = next((pkgs for key, pkgs in _DECODER_PACKAGES if key in tsyntax.keyword.upper()),
                            "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")
            raise ImageReadError(f"{name} uses the '{tsyntax.name}' transfer syntax and no installed decoder "
                                 f"can read it. Install one: pip install {packages}  ({e})") from e
        raise ImageReadError(f"{name}: pixel data in '{tsyntax.name}' cannot be decoded ({e}).") from e
    except (*_DECODE_ERRORS, KeyError, IndexError, AttributeError) as e:
        raise ImageReadError(f"{name}: pixel data ('{tsyntax.name}') is truncated or corrupt ({e}); "
                             f"export the image again.") from e


def _color_dicom_to_gray(rgb: np.ndarray, ds) -> np.ndarray:
    """HxWx3 RGB (pydicom converts YBR to RGB) -> BT.601 luminance / container max."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(f"colour DICOM decoded to shape {rgb.shape}, expected HxWx3; the file is corrupt.")
    top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    luma = rgb.astype(np.float32) @ _BT601                                       # HxW f32
    return np.clip(luma * np.float32(1.0 / top), 0.0, 1.0)


def _monochrome_to_unit(stored: np.ndarray, ds) -> np.ndarray:
    """Stored values HxW -> modality LUT -> VOI LUT / window / min-max -> float32 [0, 1] (no inversion)."""
    from pydicom.pixels import apply_modality_lut

    if stored.ndim != 2:
        raise ImageReadError(f"greyscale DICOM decoded to shape {stored.shape}, expected HxW; the file is corrupt.")
    values = stored
    identity = float(ds.get("RescaleSlope", 1) or 1) == 1.0 and float(ds.get("RescaleIntercept", 0) or 0) == 0.0
    if ds.get("ModalityLUTSequence") or not identity:
        values = apply_modality_lut(stored, ds)       # float64 for rescale, uint for a LUT

    for voi in (_voi_lut_sequence, _window):
        out = voi(values, ds)
        if out is not None:
            return out
    return _minmax(values)


def _voi_lut_sequence(values: np.ndarray, ds) -> np.ndarray | None:
    """VOI LUT Sequence (first item) -> float32 [0, 1] scaled by the LUT's own entries; None if absent/invalid."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if not seq or not seq[0].get("LUTDescriptor") or seq[0].get("LUTData") is None:
        return None
    if values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # VOI LUT inputs are integers by definition
    try:
        lut_out = apply_voi_lut(values, ds, index=0, prefer_lut=True)                # HxW uint
        table = apply_voi_lut(np.arange(-(1 << 17), 1 << 17), ds, index=0, prefer_lut=True)  # every entry
    except (ValueError, TypeError, IndexError, NotImplementedError, AttributeError):
        return None  # malformed LUT (e.g. unsupported entry size): fall back to the window
    return _scale_between(lut_out, float(table.min()), float(table.max()))


def _window(values: np.ndarray, ds) -> np.ndarray | None:
    """Window Center/Width (first pair, VOI LUT Function) -> float32 [0, 1]; None if absent/invalid."""
    from pydicom.pixels import apply_windowing

    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        windowed = apply_windowing(values, ds, index=0)                          # HxW f64 in [y_min, y_max]
        # pydicom maps the window onto [y_min, y_max] (from Bits Stored and the rescale); read that
        # range off two probes far outside any window instead of re-deriving pydicom's rule here.
        with np.errstate(over="ignore"):
            y_lo, y_hi = apply_windowing(np.array([-1e300, 1e300]), ds, index=0)
    except (ValueError, TypeError, IndexError, ZeroDivisionError):
        return None  # invalid window (e.g. width < 1 for LINEAR, unknown VOI LUT Function)
    if y_hi == y_lo:
        return None
    return _scale_between(windowed, float(y_lo), float(y_hi))


def _scale_between(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(arr - lo) / (hi - lo) as float32 clipped to [0, 1]; hi < lo allowed (negative slope)."""
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.float32)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)
