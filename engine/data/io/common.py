"""Shared pieces of the image reader: size and decompression limits, the error, the meta record,
value scaling and the code-string filter (see engine.data.io for the rules they implement)."""
from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin, TiffImagePlugin

# Largest image accepted, in pixels (width * height). The biggest chest radiographs are about
# 4300 x 4300 = 18.5 MP (43 cm detectors at 0.1 mm); 40 MP is twice that. Decoding one costs about
# 10 bytes per pixel at its peak (decoder buffer + float32 + a scaling copy): 40 MP is ~400 MB, 1-3 s.
MAX_PIXELS: Final[int] = 40_000_000
# Decompression bombs: above BOMB_MIN_PIXELS (decoding below it costs < ~80 MB and < 0.5 s), a
# decoded buffer more than MAX_EXPANSION times the compressed bytes is refused before decoding.
# Radiographs (noisy detector data) compress 1.5-5:1 losslessly, < 30:1 as JPEG, even with wide
# black borders; one-colour images compress 1000:1 (PNG) and more (JPEG 2000, deflated DICOM).
BOMB_MIN_PIXELS: Final[int] = 8_000_000
MAX_EXPANSION: Final[int] = 200
# Bumped whenever read_image returns other pixels for some file than before (2: issue 13's pixel
# padding, TIFF min-is-white, EXIF/TIFF orientation; 3: extreme floats stretched in float64, issue 22).
# Stores key a file's bytes with it.
READER_VERSION: Final[int] = 3
_INFLATE_FLOOR: Final[int] = 64 * 2**20  # deflated DICOM: always allowed to inflate this much
_DEFLATED_TS: Final = b"1.2.840.10008.1.2.1.99"

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


def _check_size(width: int, height: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{name} declares an empty image ({width}x{height}); the file is corrupt.")
    if width * height > MAX_PIXELS:
        raise ImageReadError(
            f"{name} declares {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f}-megapixel limit for one radiograph (refused before decoding). "
            f"If it is genuine, downsample it before importing.")


def _check_expansion(width: int, height: int, bytes_per_pixel: float, compressed: int, name: str,
                     what: str = "data") -> None:
    """Refuse a decompression bomb: more than BOMB_MIN_PIXELS pixels whose decoded buffer
    (`bytes_per_pixel` each) exceeds MAX_EXPANSION times the `compressed` byte count."""
    pixels = width * height
    decoded = pixels * bytes_per_pixel
    if pixels <= BOMB_MIN_PIXELS or decoded <= MAX_EXPANSION * max(compressed, 1):
        return
    raise ImageReadError(
        f"{name} declares a {width}x{height} image ({pixels / 1e6:.0f} MP, {decoded / 2**20:.0f} MiB to decode) in "
        f"only {_kib(compressed)} of {what}, a {decoded / max(compressed, 1):,.0f}:1 expansion; radiographs "
        f"compress at most about 30:1. The file is truncated or corrupt, or built to exhaust memory (a "
        f"decompression bomb), so it was refused before decoding. Re-export the image from its source.")


def _kib(n: int) -> str:
    return f"{n} bytes" if n < 10_240 else f"{n / 1024:,.0f} KiB"


# Above this span or magnitude, a float32 stretch overflows (x - lo reaches float32's 3.4e38) or its
# scale 1 / (hi - lo) falls below float32's smallest normal number (1.2e-38): stretch in float64.
_F32_SAFE: Final[float] = 1e30


def _stretch_in_f64(lo: float, hi: float) -> bool:
    return abs(hi - lo) > _F32_SAFE or max(abs(lo), abs(hi)) > _F32_SAFE


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Stretch any numeric HxW array to float32 [0, 1] by its own min and max (constant -> 0). Raises
    ValueError for NaN or infinite values. Extreme values (a float32 TIFF spanning +-3e38) are
    stretched in float64, which float32 arithmetic would overflow (saturating much of the image)."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel values contain NaN or infinity")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    if _stretch_in_f64(lo, hi):
        out = ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        return np.clip(out, 0.0, 1.0, out=out)
    out = arr.astype(np.float32)  # exact for integers up to 2**24; 32-bit ints lose low bits only
    lo, hi = float(np.float32(lo)), float(np.float32(hi))  # = out's min and max (rounding is monotonic)
    if hi <= lo:
        return np.zeros_like(out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _scale_between(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(arr - lo) / (hi - lo) as float32 clipped to [0, 1]; hi < lo allowed (negative slope); in
    float64 when the values are extreme (see `_minmax`)."""
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.float32)
    if _stretch_in_f64(lo, hi):
        out = ((arr.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        return np.clip(out, 0.0, 1.0, out=out)
    out = (arr.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _code_string(value: object) -> str:
    """A DICOM CS value if it is one (upper-case code, <= 16 chars), else "" (keeps free text out)."""
    if value is None:
        return ""
    text = str(value).strip().upper()
    return text if _CODE_STRING.fullmatch(text) else ""
