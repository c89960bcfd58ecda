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

Layout of this package: ``common`` (limits, ImageReadError, ImageMeta, scaling), ``detect`` (format
from content, declared size), ``codestream`` (JPEG / JPEG 2000 headers), ``raster`` (Pillow),
``tiff`` (tifffile fallback), ``orientation`` (EXIF/TIFF Orientation), ``dicom`` (parsing and the
checks before decoding) and ``dicom_values`` (padding, modality LUT, VOI LUT / window). Import the
public names from ``engine.data.io``.
"""
from __future__ import annotations

import os

import numpy as np

from engine.data.io.codestream import jpeg_variant
from engine.data.io.common import (_SUPPORTED, BOMB_MIN_PIXELS, MAX_EXPANSION, MAX_PIXELS, READER_VERSION,
                                   ImageMeta, ImageReadError)
from engine.data.io.detect import _load_bytes, declared_size, describe_content, detect_format
from engine.data.io.dicom import _read_dicom
from engine.data.io.dicom_values import pixel_padding_mask
from engine.data.io.orientation import apply_orientation
from engine.data.io.raster import _read_raster

__all__ = ["BOMB_MIN_PIXELS", "MAX_EXPANSION", "MAX_PIXELS", "READER_VERSION", "ImageMeta", "ImageReadError", "apply_orientation",
           "declared_size", "describe_content", "detect_format", "jpeg_variant", "pixel_padding_mask", "read_image"]


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
