"""PNG, JPEG and TIFF through Pillow -> float32 HxW in [0, 1] (rules: engine.data.io's docstring).
TIFFs Pillow cannot read go to engine.data.io.tiff (tifffile)."""
from __future__ import annotations

import io
from typing import Final

import numpy as np
from PIL import Image

from engine.data.io.codestream import jpeg_variant
from engine.data.io.common import (_BT601, _DECODE_ERRORS, _OPENERS, _U8_TO_UNIT, ImageMeta, ImageReadError,
                                   _check_expansion, _check_size, _minmax)
from engine.data.io.orientation import _ORIENTATION_TAG, _exif_orientation, apply_orientation
from engine.data.io.tiff import _read_tiff_tifffile


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


def _tiff_min_is_white(im: Image.Image) -> bool:
    tags = getattr(im, "tag_v2", None)
    return tags is not None and tags.get(_TIFF_PHOTOMETRIC) == 0


def _pillow_inverted(mode: str) -> bool:
    """Pillow's TIFF decoder inverts WhiteIsZero itself only for 1- to 8-bit samples (rawmodes
    '1;I', 'L;2I', 'L;4I', 'L;I'); 16-bit, 32-bit and float samples come out as stored."""
    return mode in ("1", "L")


def _pillow_bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow's decoder holds per pixel: 1 for 1-bit/8-bit single-band and palette, 2 for
    16-bit, 4 for 32-bit and every multi-band mode (Pillow stores RGB/LA/CMYK as 4 bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


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
