"""Greyscale DICOM stored values -> [0, 1]: pixel padding, modality LUT, VOI LUT Sequence or
window, min-max (DICOM PS3.3 C.7.5.1.1.2, C.11.1-2; the order is in engine.data.io's docstring)."""
from __future__ import annotations

import struct

import numpy as np

from engine.data.io.common import ImageReadError, _minmax, _scale_between


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
