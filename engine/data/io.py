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
* TIFF PhotometricInterpretation (TIFF 6.0, tag 262) is honoured at every bit depth and byte order:
  ``WhiteIsZero`` (min-is-white, value 0) is inverted after scaling, so dense tissue is bright as
  with ``BlackIsZero``. Pillow inverts 1- to 8-bit min-is-white itself; 16-bit, 32-bit and float
  samples are inverted here. TIFFs Pillow cannot open (big-endian 16-bit min-is-white, 12-bit or
  other odd bit depths, signed or float layouts it lacks) are read with tifffile, under the same
  rules (integer samples above 8 bits stretched min-max; up to 8 bits divided by 2**bits - 1).
* Orientation: the EXIF Orientation tag (EXIF 2.32 tag 0x0112; TIFF 6.0 tag 274, the same values
  1-8) of JPEG, PNG (eXIf chunk) and TIFF files is applied when reading, exactly as
  ``PIL.ImageOps.exif_transpose`` does, so a phone photo of a film comes in upright; ``width`` and
  ``height`` in the meta are those of the upright array.
* JPEG variants Pillow cannot decode (12-bit Extended, Lossless, hierarchical, JPEG-LS) are refused
  with their name and the advice to convert them to a 16-bit PNG or DICOM, never as "corrupt".
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
Pixel padding (DICOM PS3.3 C.7.5.1.1.2): stored values equal to Pixel Padding Value (0028,0120), or
between it and Pixel Padding Range Limit (0028,0121) inclusive, are not image content. They are left
out of the min-max stretch and come out as 0 (background, the colour of the letterbox padding) after
windowing and MONOCHROME1 inversion, for windowed and window-less images alike. An image that is all
padding is refused.
Colour DICOM (RGB/YBR) is converted to luminance without windowing. Compressed transfer syntaxes
(JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's plugins
(pylibjpeg with -libjpeg, -openjpeg, -rle; Pillow). When decoding fails the message says which of
three things happened: no decoder plugin for that transfer syntax is installed (names the package to
install), pydicom has no decoder for it at all (says to decompress the file), or a decoder is
installed and the data is truncated (the compressed frame stops before its end-of-image marker) or
corrupt / of a variant the installed decoders cannot handle (quotes each plugin's reason).
Files without preamble or file meta are read with ``force=True``; their transfer syntax is taken
from the encoding pydicom detected.

Never in ``ImageMeta``: names, IDs, dates, UIDs, institutions or any other free-text tag. Only
code-string values (Modality, View Position, Photometric Interpretation) are copied, and only when
they look like code strings.

Decompression cost (refused cheaply, from headers, before any pixel buffer is allocated)
-----------------------------------------------------------------------------------------
* Images above :data:`MAX_PIXELS` (40 MP: twice the largest chest detector, 43 cm at 0.1 mm).
* Decompression bombs: an image above :data:`BOMB_MIN_PIXELS` whose decoded buffer would be more
  than :data:`MAX_EXPANSION` times the compressed data (a PNG of one colour, a DICOM whose JPEG /
  JPEG 2000 frame is a few bytes). Real radiographs carry detector noise and compress at most about
  20:1 even with wide black borders; an 8900 x 8900 PNG of 77 KB is 1000:1.
* DICOM frames whose codestream (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) declares another size than
  Rows x Columns: the decoder would allocate what the codestream says.
* Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99), which pydicom inflates in one unbounded
  call: the data set is first inflated here in 1 MiB steps without keeping the output, and refused
  once it passes :data:`MAX_EXPANSION` times its compressed size (and 64 MiB).
:func:`declared_size` reads the pixel size from a header alone (for upload budgets).

Refused with :class:`ImageReadError` (a message saying what is wrong and what to do): missing or
empty files, unknown formats, truncated or corrupt data, the decompression costs above,
multi-frame DICOM and multi-page TIFF/PNG,
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

__all__ = ["BOMB_MIN_PIXELS", "MAX_EXPANSION", "MAX_PIXELS", "READER_VERSION", "ImageMeta", "ImageReadError", "apply_orientation",
           "declared_size", "describe_content", "detect_format", "jpeg_variant", "pixel_padding_mask", "read_image"]

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
# padding, TIFF min-is-white, EXIF/TIFF orientation). Stores key a file's bytes with it.
READER_VERSION: Final[int] = 2
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


# ----------------------------------------------------------------------------------------- entry


def read_image(src: str | os.PathLike[str] | bytes | bytearray | memoryview, *,
               name: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Decode a PNG/JPEG/TIFF/DICOM file (path or bytes) to (float32 HxW in [0, 1], ImageMeta).

    `name`: how messages call the file (default: the quoted path, or "the image data" for bytes);
    callers that must keep a path out of logs (it may hold a patient's name) pass a neutral one.
    Raises ImageReadError for anything it cannot turn into a trustworthy single grey image,
    including images too large or too expensive to decode (see "Decompression cost" above).
    """
    data, default_name = _load_bytes(src)
    name = default_name if name is None else name
    fmt = detect_format(data)
    if fmt is None:
        raise ImageReadError(f"{name} is not a {_SUPPORTED} image ({describe_content(data)}). "
                             f"Convert it to PNG or DICOM and use the converted file.")
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


def describe_content(data: bytes) -> str:
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


def _pillow_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow's decoder holds per pixel: 1 for 1-bit/8-bit single-band and palette, 2 for
    16-bit, 4 for 32-bit and every multi-band mode (Pillow stores RGB/LA/CMYK as 4 bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from a file's header alone, without decoding any pixels, or None
    when the content is no PNG/JPEG/TIFF/DICOM or its header cannot be parsed (read_image then says
    why). Cheap (microseconds for raster headers, a partial parse for DICOM); used to budget an
    upload's total pixels before decoding any of it. Deflated DICOM is not inflated here: None."""
    fmt = detect_format(data[:1024])
    try:
        if fmt == "png":
            if data[12:16] != b"IHDR" or len(data) < 24:
                return None
            w, h = struct.unpack_from(">II", data, 16)
            return fmt, int(w), int(h)
        if fmt == "jpeg":
            found = _jpeg_frame_size(data)
            return None if found is None else (fmt, found[0], found[1])
        if fmt == "tiff":
            im = _OPENERS["tiff"](io.BytesIO(data))
            return fmt, int(im.width), int(im.height)
        if fmt == "dicom":
            if _DEFLATED_TS in data[:4096]:
                return None
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True,
                                 specific_tags=["Rows", "Columns"])
            rows, cols = ds.get("Rows"), ds.get("Columns")
            return (fmt, int(cols), int(rows)) if rows and cols else None
    except Exception:  # any parse failure: unknown size, read_image reports what is wrong
        return None
    return None


# ---------------------------------------------------------------------------------------- raster


def _read_raster(data: bytes, name: str, fmt: str) -> tuple[np.ndarray, ImageMeta]:
    try:
        # The plugin's opener parses the header only; calling it directly (not Image.open) skips
        # Pillow's own, larger decompression-bomb limit so that ours below decides, with a clear message.
        im = _OPENERS[fmt](io.BytesIO(data))
    except _DECODE_ERRORS as e:
        if fmt == "tiff":
            return _read_tiff_tifffile(data, name, pillow_error=e)
        _refuse_jpeg_variant(data, name, fmt)
        raise ImageReadError(f"{name} starts like a {fmt.upper()} file but its header is truncated or corrupt "
                             f"({e}); re-export or download it again.") from e
    _check_size(im.width, im.height, name)
    _check_expansion(im.width, im.height, _pillow_bytes_per_pixel(im.mode), len(data), name)
    if im.format in ("PNG", "TIFF") and getattr(im, "n_frames", 1) > 1:
        raise ImageReadError(f"{name} holds {im.n_frames} images (multi-page {im.format}); scarce-cxr reads "
                             f"single-image files: save the radiograph you want on its own.")
    mode = im.mode
    try:
        orientation = _exif_orientation(im)
        if im.format == "JPEG" and mode == "RGB":
            im.draft("L", im.size)  # decode the stored BT.601 luma (Y) only: ~1.5x faster at 224 px
        im.load()
        if fmt == "tiff" and _ORIENTATION_TAG not in im.tag_v2:
            orientation = 1  # Pillow's TIFF loader turned it upright itself (and dropped the tag)
        img, bits = _pil_to_unit_gray(im)
    except _DECODE_ERRORS as e:
        if fmt == "tiff":
            return _read_tiff_tifffile(data, name, pillow_error=e)
        _refuse_jpeg_variant(data, name, fmt)
        raise ImageReadError(f"{name} could not be decoded: the {fmt.upper()} data is truncated or corrupt "
                             f"({e}). Re-export or download it again.") from e
    if fmt == "tiff" and _tiff_min_is_white(im) and not _pillow_inverted(mode):
        img = np.subtract(np.float32(1.0), img, out=img)  # TIFF 6.0 WhiteIsZero: 0 is white
    img = apply_orientation(img, orientation)
    return img, ImageMeta(source_format=fmt, width=img.shape[1], height=img.shape[0], bits=bits,
                          photometric=mode)


# TIFF 6.0 tags (section 8 "Baseline Fields"): 262 PhotometricInterpretation (0 = WhiteIsZero,
# 1 = BlackIsZero, 2 = RGB, 3 = palette), 274 Orientation (= EXIF 0x0112).
_TIFF_PHOTOMETRIC: Final = 262
_ORIENTATION_TAG: Final = 0x0112  # EXIF 2.32 section 4.6.4 A; TIFF 6.0 tag 274


def _tiff_min_is_white(im: Image.Image) -> bool:
    tags = getattr(im, "tag_v2", None)
    return tags is not None and tags.get(_TIFF_PHOTOMETRIC) == 0


def _pillow_inverted(mode: str) -> bool:
    """Pillow's TIFF decoder inverts WhiteIsZero itself only for 1- to 8-bit samples (rawmodes
    '1;I', 'L;2I', 'L;4I', 'L;I'); 16-bit, 32-bit and float samples come out as stored."""
    return mode in ("1", "L")


def _exif_orientation(im: Image.Image) -> int:
    """EXIF/TIFF Orientation 1-8 of a Pillow image (1 when absent or invalid)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:  # a damaged EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an HxW array stored with EXIF/TIFF Orientation `orientation` (1-8) upright.

    The values are those of EXIF 2.32 (tag 0x0112) and TIFF 6.0 (tag 274): 1 = upright, 2 = mirrored,
    3 = rotated 180, 4 = flipped vertically, 5 = transposed, 6 = stored rotated 90 degrees counter-
    clockwise (turned clockwise to display), 7 = transversed, 8 = stored rotated 90 clockwise. The
    result equals ``PIL.ImageOps.exif_transpose``'s; shape (H, W) becomes (W, H) for 5-8. Any other
    value leaves the array as it is. Returns a C-contiguous array (a copy unless orientation is 1).
    """
    if orientation == 2:
        out = img[:, ::-1]
    elif orientation == 3:
        out = img[::-1, ::-1]
    elif orientation == 4:
        out = img[::-1]
    elif orientation == 5:
        out = img.T
    elif orientation == 6:
        out = np.rot90(img, -1)
    elif orientation == 7:
        out = img[::-1, ::-1].T
    elif orientation == 8:
        out = np.rot90(img, 1)
    else:
        return img
    return np.ascontiguousarray(out)


# JPEG start-of-frame markers (ITU-T T.81 Table B.1; JPEG-LS: T.87) -> the process they code.
_JPEG_SOF: Final = {
    0xC0: "Baseline", 0xC1: "Extended, process 4", 0xC2: "Progressive", 0xC3: "Lossless, process 14",
    0xC5: "hierarchical sequential", 0xC6: "hierarchical progressive", 0xC7: "hierarchical lossless",
    0xC9: "Extended, arithmetic-coded", 0xCA: "Progressive, arithmetic-coded",
    0xCB: "Lossless, arithmetic-coded", 0xCD: "hierarchical, arithmetic-coded",
    0xCE: "hierarchical progressive, arithmetic-coded", 0xCF: "hierarchical lossless, arithmetic-coded",
    0xF7: "JPEG-LS",
}


def jpeg_variant(data: bytes) -> tuple[str, int] | None:
    """(process name, sample precision in bits) from a JPEG stream's first SOF marker, else None.

    Follows ITU-T T.81 Annex B: marker segments after SOI are walked by their 2-byte lengths until
    a start-of-frame marker (SOF0-SOF15 except DHT/JPG/DAC, or JPEG-LS SOF55), whose first byte
    is the sample precision P.
    """
    i = _sof_offset(data)
    if i is None or i + 4 >= len(data):
        return None
    return _JPEG_SOF[data[i + 1]], data[i + 4]


def _sof_offset(data: bytes) -> int | None:
    """Offset of a JPEG/JPEG-LS stream's first start-of-frame marker (ITU-T T.81 B.2.2), else None."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF:
            return i
        if marker == 0xDA or length < 2:
            return None
        i += 2 + length
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG/JPEG-LS frame header: SOF = FFCn, Lf(2), P(1), Y(2), X(2), Nf(1)."""
    i = _sof_offset(data)
    if i is None or i + 9 > len(data):
        return None
    height, width = struct.unpack_from(">HH", data, i + 5)
    return int(width), int(height)


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG 2000 codestream (ITU-T T.800 A.5.1: SOC FF4F, SIZ FF51, Lsiz, Rsiz,
    Xsiz, Ysiz, XOsiz, YOsiz) or of a JP2 file holding one; None when there is none."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096) if not frame.startswith(b"\xff\x4f\xff\x51") else 0
    if at < 0 or at + 24 > len(frame):
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, at + 8)
    return int(xsiz - xo), int(ysiz - yo)


def _refuse_jpeg_variant(data: bytes, name: str, fmt: str) -> None:
    """Raise a precise ImageReadError when a JPEG Pillow failed on is a variant Pillow cannot decode
    (anything but 8-bit Baseline/Extended/Progressive Huffman coding); return otherwise."""
    if fmt != "jpeg":
        return
    found = jpeg_variant(data)
    if found is None:
        return
    process, bits = found
    if bits == 8 and process in ("Baseline", "Extended, process 4", "Progressive"):
        return  # a variant Pillow reads: the data itself is damaged
    what = f"{bits}-bit JPEG ({process})" if process != "JPEG-LS" else f"{bits}-bit JPEG-LS image"
    raise ImageReadError(f"{name} is a valid-looking {what}, a JPEG variant the image reader (Pillow) cannot "
                         f"decode; it is not necessarily damaged. Convert it to a 16-bit PNG or to DICOM "
                         f"(which keeps all {bits} bits) and import that.")


def _read_tiff_tifffile(data: bytes, name: str, pillow_error: BaseException) -> tuple[np.ndarray, ImageMeta]:
    """TIFFs Pillow cannot open or decode, read with tifffile (TIFF 6.0 baseline + extensions)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            pages = tf.pages
            if len(pages) > 1:
                raise ImageReadError(f"{name} holds {len(pages)} images (multi-page TIFF); scarce-cxr reads "
                                     f"single-image files: save the radiograph you want on its own.")
            page = pages.first
            _check_size(int(page.imagewidth), int(page.imagelength), name)
            photometric = int(page.photometric)
            bits = int(page.bitspersample)
            _check_expansion(int(page.imagewidth), int(page.imagelength),
                             max(1, int(page.samplesperpixel)) * max(1, -(-bits // 8)), len(data), name)
            compression = getattr(page.compression, "name", str(page.compression))
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else 1
            try:
                arr = page.asarray()
            except ImageReadError:
                raise
            except Exception as e:  # tifffile raises NotImplementedError/ValueError/... per codec
                variant = f"{bits}-bit, {compression} compression"
                if isinstance(e, NotImplementedError) or "imagecodecs" in str(e):
                    raise ImageReadError(
                        f"{name} is a TIFF ({variant}) that Pillow cannot read ({pillow_error}) and tifffile can "
                        f"only decode with the 'imagecodecs' package, which is not installed ({e}). Install it "
                        f"(pip install imagecodecs), or save the image as a 16-bit TIFF or PNG and import that.") from e
                raise ImageReadError(
                    f"{name} is a TIFF ({variant}) that neither Pillow ({pillow_error}) nor tifffile "
                    f"({type(e).__name__}: {e}) can decode: the data is truncated or corrupt. Re-export or "
                    f"download it again.") from e
            colormap = page.colormap
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"{name} starts like a TIFF file but neither Pillow ({pillow_error}) nor tifffile "
                             f"({type(e).__name__}: {e}) can read it: the file is truncated or corrupt. Re-export or "
                             f"download it again.") from e
    img = _tifffile_to_unit_gray(arr, photometric, bits, colormap, name)
    img = apply_orientation(img, orientation if 1 <= orientation <= 8 else 1)
    kind = {0: "min-is-white", 1: "min-is-black", 2: "RGB", 3: "palette"}.get(photometric, str(photometric))
    return img, ImageMeta(source_format="tiff", width=img.shape[1], height=img.shape[0], bits=bits,
                          photometric=f"{arr.dtype.str.lstrip('<>|=')} {kind}")


def _tifffile_to_unit_gray(arr: np.ndarray, photometric: int, bits: int, colormap, name: str) -> np.ndarray:
    """tifffile page array -> float32 HxW in [0, 1] under the module's raster rules (TIFF 6.0 tag 262)."""
    if photometric in (0, 1):                                   # WhiteIsZero / BlackIsZero, HxW
        if arr.ndim == 3 and arr.shape[-1] > 1:
            arr = arr[..., 0]                                   # extra samples (alpha) dropped
        if arr.ndim != 2:
            raise ImageReadError(f"{name}: greyscale TIFF decoded to shape {arr.shape}, expected HxW.")
        if arr.dtype.kind == "f":
            img = arr.astype(np.float32)
            if not np.isfinite(img).all():
                raise ImageReadError(f"{name} contains NaN or infinite pixel values; re-export it from the source.")
            if not (img.size and img.min() >= 0.0 and img.max() <= 1.0):
                img = _minmax(img)
        elif arr.dtype == bool:
            img = arr.astype(np.float32)
        elif bits <= 8:
            img = arr.astype(np.float32) * np.float32(1.0 / (2 ** bits - 1))   # container maximum
        else:
            img = _minmax(arr)                                  # raw detector values
        if photometric == 0:
            img = np.subtract(np.float32(1.0), img, out=img)
        return np.clip(img, 0.0, 1.0, out=img)
    if photometric == 3 and colormap is not None:               # palette: colormap (3, 2**bits) uint16
        rgb = np.moveaxis(colormap[:, arr], 0, -1).astype(np.float32) / np.float32(65535.0)
        return np.clip(rgb @ _BT601, 0.0, 1.0)
    if photometric == 2 and arr.ndim == 3 and arr.shape[-1] >= 3:
        top = np.float32(1.0) if arr.dtype.kind == "f" else np.float32(2 ** bits - 1)
        return np.clip(arr[..., :3].astype(np.float32) @ _BT601 / top, 0.0, 1.0)
    raise ImageReadError(f"{name} is a TIFF with photometric interpretation {photometric} and shape {arr.shape}, "
                         f"which scarce-cxr does not read; save it as a greyscale (min-is-black) TIFF or PNG.")


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

    _refuse_deflate_bomb(data, name)
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
    _check_compressed_frame(ds, cols, rows, name)
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
        padding = pixel_padding_mask(stored, ds)
        if padding is not None and padding.all():
            raise ImageReadError(f"{name}: every pixel equals the Pixel Padding Value, so the image holds no "
                                 f"content; export the radiograph again.")
        img = _monochrome_to_unit(stored, ds, padding)
        if photometric == "MONOCHROME1":
            img = np.subtract(np.float32(1.0), img, out=img)  # inversion after windowing
        if padding is not None:
            img[padding] = 0.0  # padding is background, whatever the window or polarity
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    meta = ImageMeta(source_format="dicom", width=cols, height=rows, bits=bits, photometric=photometric,
                     modality=_code_string(ds.get("Modality")), view=_code_string(ds.get("ViewPosition")))
    return img, meta


def _refuse_deflate_bomb(data: bytes, name: str) -> None:
    """Deflated Explicit VR Little Endian (PS3.5 A.5): pydicom inflates the whole data set in one
    unbounded zlib call. Inflate it here first, 1 MiB at a time without keeping the output, and
    refuse it once it passes MAX_EXPANSION times its compressed size (at least 64 MiB)."""
    if _DEFLATED_TS not in data[:4096]:
        return
    from pydicom import filereader

    fp = io.BytesIO(data)
    try:
        filereader.read_preamble(fp, True)
        meta = filereader._read_file_meta_info(fp)
    except Exception:  # no readable file meta: dcmread reports what is wrong
        return
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED_TS.decode():
        return
    start = fp.tell()
    compressed = len(data) - start
    limit = max(_INFLATE_FLOOR, MAX_EXPANSION * compressed)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    view = memoryview(data)[start:]
    try:
        for i in range(0, len(view), 1 << 16):
            pending = bytes(view[i:i + (1 << 16)])
            while pending:
                total += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
                if total > limit:
                    raise ImageReadError(
                        f"{name} is a deflated DICOM whose {_kib(compressed)} of compressed data inflate to more "
                        f"than {limit / 2**20:,.0f} MiB (over {MAX_EXPANSION}:1); radiographs compress at most about "
                        f"30:1. The file is corrupt or built to exhaust memory (a decompression bomb), so it was "
                        f"refused before reading it. Export the image again, uncompressed.")
            if inflater.eof:
                break
    except zlib.error:
        return  # corrupt deflate data: dcmread reports it


def _check_compressed_frame(ds, cols: int, rows: int, name: str) -> None:
    """Refuse, before decoding, an encapsulated (compressed) frame whose codestream declares another
    size than Rows x Columns (the decoder allocates what the codestream says), or whose pixels would
    expand more than MAX_EXPANSION times the compressed data (a decompression bomb)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not getattr(tsyntax, "is_compressed", False) or "PixelData" not in ds:
        return
    frame = _first_frame(ds)
    size = None
    if frame is not None:
        if frame[:2] == b"\xff\xd8":
            size = _jpeg_frame_size(frame)
        elif frame[:4] == b"\xff\x4f\xff\x51" or frame[4:8] == b"jP  ":
            size = _j2k_size(frame)
    if size is not None and size != (cols, rows):
        _check_size(*size, name)
        raise ImageReadError(
            f"{name}: its compressed frame declares a {size[0]}x{size[1]} image but the DICOM header says "
            f"{cols}x{rows} (Columns x Rows); the file is corrupt or crafted, so it was refused before decoding. "
            f"Export the image again.")
    samples = int(ds.get("SamplesPerPixel") or 1)
    allocated = int(ds.get("BitsAllocated") or 16)
    try:
        compressed = len(ds.PixelData)
    except (TypeError, AttributeError):
        return
    _check_expansion(cols, rows, samples * max(1, -(-allocated // 8)), compressed, name, "compressed pixel data")


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
    try:
        return ds.pixel_array
    except (RuntimeError, NotImplementedError, *_DECODE_ERRORS, KeyError, IndexError, AttributeError) as e:
        raise ImageReadError(_decode_failure(ds, name, e)) from e


def _decode_failure(ds, name: str, error: BaseException) -> str:
    """The message for pixel data that did not decode: missing decoder, no decoder at all, truncated
    data, or corrupt data / an unsupported variant, decided from the decoder registry and the data."""
    from pydicom.pixels.decoders.base import get_decoder

    tsyntax = ds.file_meta.TransferSyntaxUID
    ts = f"'{tsyntax.name}'"
    if not tsyntax.is_compressed:
        return (f"{name}: the uncompressed pixel data ({ts}) is shorter than its header says or malformed "
                f"({error}); the file is truncated or corrupt: export the image again.")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        return (f"{name} uses the {ts} transfer syntax, for which no decoder exists in pydicom; decompress it "
                f"to Explicit VR Little Endian (e.g. `gdcmconv --raw in.dcm out.dcm`) or export it uncompressed.")
    if not decoder.is_available:
        packages = next((pkgs for key, pkgs in _DECODER_PACKAGES if key in tsyntax.keyword.upper()),
                        "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle")
        return (f"{name} uses the {ts} transfer syntax and no installed decoder can read it (missing decoder: no plugin for it is installed). "
                f"Install one: pip install {packages}")
    plugins = ", ".join(decoder.available_plugins)
    reasons = " ".join(str(error).split())
    frame = _first_frame(ds)
    if frame is not None and _frame_truncated(frame, tsyntax):
        return (f"{name}: the {ts} pixel data is truncated: the compressed image stops before its end-of-image "
                f"marker ({len(frame)} bytes), so the installed decoders ({plugins}) cannot finish it. The file "
                f"was cut short in a copy or export: export it again.")
    variant = jpeg_variant(frame) if frame is not None and frame[:2] == b"\xff\xd8" else None
    hint = f" The image is a {variant[1]}-bit JPEG ({variant[0]})." if variant else ""
    return (f"{name}: the {ts} pixel data is corrupt, or a variant the installed decoders ({plugins}) cannot "
            f"handle.{hint} Their reasons: {reasons}. Export the image again, or uncompressed (Explicit VR "
            f"Little Endian).")


def _first_frame(ds) -> bytes | None:
    """The first encapsulated frame's bytes (PS3.5 A.4), or None when they cannot be separated."""
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # malformed item structure: no frame to inspect
        return None


def _frame_truncated(frame: bytes, tsyntax) -> bool:
    """JPEG, JPEG-LS and JPEG 2000 codestreams end with the marker FFD9 (EOI / EOC; ITU-T T.81 B.2.1,
    T.87, T.800 A.4.4), followed at most by the one 0x00 that pads a DICOM item to even length
    (PS3.5 A.4). RLE has no end marker and is never called truncated here."""
    if "RLE" in tsyntax.keyword.upper():
        return False
    end = frame[:-1] if frame.endswith(b"\x00") else frame
    return not end.endswith(b"\xff\xd9")


def _color_dicom_to_gray(rgb: np.ndarray, ds) -> np.ndarray:
    """HxWx3 RGB (pydicom converts YBR to RGB) -> BT.601 luminance / container max."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ImageReadError(f"colour DICOM decoded to shape {rgb.shape}, expected HxWx3; the file is corrupt.")
    top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
    luma = rgb.astype(np.float32) @ _BT601                                       # HxW f32
    return np.clip(luma * np.float32(1.0 / top), 0.0, 1.0)


def pixel_padding_mask(stored: np.ndarray, ds) -> np.ndarray | None:
    """Bool HxW: the pixels that are padding, not image content (DICOM PS3.3 C.7.5.1.1.2); None if none.

    `stored` holds the stored pixel values (before the modality LUT), as ``ds.pixel_array`` returns
    them. Padding is every value equal to Pixel Padding Value (0028,0120) or, when Pixel Padding
    Range Limit (0028,0121) is present, every value between the two inclusive (either may be the
    larger). Both are compared as stored values, signed when Pixel Representation is 1; a value
    written as US for signed data is read as two's complement of Bits Allocated.
    """
    ppv = _padding_value(ds, "PixelPaddingValue")
    if ppv is None:
        return None
    limit = _padding_value(ds, "PixelPaddingRangeLimit")
    lo, hi = (ppv, ppv) if limit is None else (min(ppv, limit), max(ppv, limit))
    mask = (stored >= lo) & (stored <= hi) if lo != hi else stored == lo
    return mask if mask.any() else None


def _padding_value(ds, keyword: str) -> int | None:
    """A US-or-SS padding attribute as a stored-value integer (None when absent or unreadable)."""
    elem = ds.get(keyword)
    if elem is None:
        return None
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    allocated = int(ds.get("BitsAllocated") or 16)
    if isinstance(elem, (bytes, bytearray)):  # VR left ambiguous ("US or SS") by a forced read
        if len(elem) not in (2, 4):
            return None
        little = ds.original_encoding[1] is not False
        fmt = ("<" if little else ">") + {2: "h", 4: "i"}[len(elem)] if signed else \
            ("<" if little else ">") + {2: "H", 4: "I"}[len(elem)]
        return int(struct.unpack(fmt, bytes(elem))[0])
    try:
        value = int(elem[0] if isinstance(elem, (list, tuple)) or type(elem).__name__ == "MultiValue" else elem)
    except (TypeError, ValueError, IndexError):
        return None
    if signed and value >= 1 << (allocated - 1):
        value -= 1 << allocated
    return value


def _monochrome_to_unit(stored: np.ndarray, ds, padding: np.ndarray | None = None) -> np.ndarray:
    """Stored values HxW -> modality LUT -> VOI LUT / window / min-max -> float32 [0, 1] (no inversion).

    `padding` (bool HxW) marks pixels left out of the min-max range (PS3.3 C.7.5.1.1.2).
    """
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
    if padding is None:
        return _minmax(values)
    content = values[~padding]                                # (K,) the image proper
    return _scale_between(values, float(content.min()), float(content.max()))


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
