"""EXIF / TIFF Orientation (EXIF 2.32 tag 0x0112, TIFF 6.0 tag 274): read it, and turn an array upright."""
from __future__ import annotations

from typing import Final

import numpy as np
from PIL import Image

from engine.data.io.common import _DECODE_ERRORS

_ORIENTATION_TAG: Final = 0x0112  # EXIF 2.32 section 4.6.4 A; TIFF 6.0 tag 274


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
