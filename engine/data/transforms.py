"""Working-resolution transforms: fit any image into an S x S square and map coordinates both ways.

Every model in scarce-cxr sees square uint8 images of one working size S. `fit_square` makes them:

* ``mode="pad"`` (default): aspect-preserving resize so the **longer** side is S, centred, zero-padded.
  Nothing of the chest is cut away, which matters for lesions near the edge of the film.
* ``mode="crop"``: resize so the **shorter** side is S and centre-crop the longer side.

Downsampling is area-style and antialiased (PIL's BOX filter on the float image: every output pixel
is the exact area average of the input pixels it covers); upsampling is bilinear. The resize runs on
the float32 image and is quantized once at the end, so 16-bit sources keep their precision until then.

A `Letterbox` records the geometry so heatmaps (`unfit`) and boxes (`box_to_square`,
`box_from_square`) move between the square and the original image exactly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image

Mode = Literal["pad", "crop"]
Box = tuple[float, float, float, float]  # x, y, w, h in pixels (x to the right, y down)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one `fit_square` call.

    The original image (orig_h x orig_w) is resized by `scale` to (new_h, new_w) and placed with its
    top-left corner at (`top`, `left`) in the S x S square. In pad mode top/left are >= 0 (the border
    is zero padding); in crop mode one of them is <= 0 (that much of the resized image is cut away).
    """

    scale: float  # nominal scale: size / max(h, w) (pad) or size / min(h, w) (crop)
    top: int
    left: int
    orig_h: int
    orig_w: int
    size: int

    @property
    def new_h(self) -> int:
        return max(1, round(self.orig_h * self.scale))

    @property
    def new_w(self) -> int:
        return max(1, round(self.orig_w * self.scale))

    @property
    def scale_y(self) -> float:
        """Exact vertical scale (new_h / orig_h); differs from `scale` by the rounding of new_h."""
        return self.new_h / self.orig_h

    @property
    def scale_x(self) -> float:
        return self.new_w / self.orig_w

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Letterbox":
        return cls(float(d["scale"]), int(d["top"]), int(d["left"]), int(d["orig_h"]), int(d["orig_w"]),
                   int(d["size"]))


def letterbox_for(h: int, w: int, size: int, mode: Mode = "pad") -> Letterbox:
    """The geometry `fit_square` uses for an h x w image (pure; no pixels needed)."""
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {h}x{w}")
    if size < 1:
        raise ValueError(f"working size must be a positive number of pixels, got {size}")
    if mode == "pad":
        scale = size / max(h, w)
    elif mode == "crop":
        scale = size / min(h, w)
    else:
        raise ValueError(f"unknown fit mode {mode!r}; use 'pad' or 'crop'")
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    # Centre: positive offsets pad, negative offsets crop (floor division keeps both symmetric).
    return Letterbox(scale=scale, top=(size - new_h) // 2, left=(size - new_w) // 2,
                     orig_h=h, orig_w=w, size=size)


def _resize_f32(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Antialiased resize of a float32 HxW array (area average down, bilinear up)."""
    h, w = img.shape
    if (new_h, new_w) == (h, w):
        return img
    down = new_h <= h and new_w <= w
    resample = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32)).resize(
        (new_w, new_h), resample=resample)
    return np.asarray(out, dtype=np.float32)  # (new_h, new_w)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (values outside [0, 1] are clipped)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def fit_square(img: np.ndarray, size: int, mode: Mode = "pad") -> tuple[np.ndarray, Letterbox]:
    """Resize a float32 HxW image in [0, 1] into a uint8 size x size square (see module doc)."""
    if img.ndim != 2:
        raise ValueError(f"fit_square expects a 2-D grayscale image (H, W), got shape {img.shape}")
    if img.dtype.kind != "f":
        raise ValueError(f"fit_square expects a float image in [0, 1] (engine.data.io.read_image), got {img.dtype}")
    lb = letterbox_for(img.shape[0], img.shape[1], size, mode)
    resized = _resize_f32(img.astype(np.float32, copy=False), lb.new_h, lb.new_w)  # (new_h, new_w)
    out = np.zeros((size, size), dtype=np.uint8)  # (S, S)
    # Intersection of the placed image with the square, in square and in resized coordinates.
    y0, x0 = max(lb.top, 0), max(lb.left, 0)
    y1, x1 = min(lb.top + lb.new_h, size), min(lb.left + lb.new_w, size)
    out[y0:y1, x0:x1] = to_uint8(resized[y0 - lb.top:y1 - lb.top, x0 - lb.left:x1 - lb.left])
    return out, lb


def unfit(map_sq: np.ndarray, lb: Letterbox, fill: float = 0.0) -> np.ndarray:
    """Bring an S x S map (a heatmap, a mask probability) back to the original orig_h x orig_w grid.

    Bilinear, sub-pixel exact: the square region the original image occupies is resampled onto the
    original pixel grid. In crop mode the parts of the original that were cut away get `fill`.
    """
    if map_sq.shape != (lb.size, lb.size):
        raise ValueError(f"map has shape {map_sq.shape}, expected ({lb.size}, {lb.size}) for this letterbox")
    m = np.asarray(map_sq, dtype=np.float32)
    # Pad so the image's region [left, left+new_w) x [top, top+new_h) lies inside the array.
    pad_y, pad_x = max(0, -lb.top), max(0, -lb.left)
    if pad_y or pad_x:
        m = np.pad(m, ((pad_y, pad_y + 1), (pad_x, pad_x + 1)), constant_values=fill)
    x0, y0 = lb.left + pad_x, lb.top + pad_y
    out = Image.fromarray(np.ascontiguousarray(m, dtype=np.float32)).resize(
        (lb.orig_w, lb.orig_h), resample=Image.Resampling.BILINEAR,
        box=(x0, y0, x0 + lb.new_w, y0 + lb.new_h))
    return np.asarray(out, dtype=np.float32)  # (orig_h, orig_w)


def box_to_square(box: Box, lb: Letterbox, clip: bool = False) -> Box:
    """Map a pixel box (x, y, w, h) of the original image into square coordinates.

    With `clip=True` the box is intersected with the square (crop mode can push it outside);
    a box entirely outside becomes zero-sized at the nearest edge.
    """
    x, y, w, h = (float(v) for v in box)
    sx, sy = lb.scale_x, lb.scale_y
    X, Y, W, H = x * sx + lb.left, y * sy + lb.top, w * sx, h * sy
    if clip:
        X0, Y0 = min(max(X, 0.0), lb.size), min(max(Y, 0.0), lb.size)
        X1, Y1 = min(max(X + W, 0.0), lb.size), min(max(Y + H, 0.0), lb.size)
        X, Y, W, H = X0, Y0, X1 - X0, Y1 - Y0
    return X, Y, W, H


def box_from_square(box: Box, lb: Letterbox, clip: bool = True) -> Box:
    """Inverse of `box_to_square`: a square-coordinate box (x, y, w, h) to original pixels.

    With `clip=True` (default) the result is intersected with the original image (a box drawn on
    pad-mode padding maps outside the film).
    """
    X, Y, W, H = (float(v) for v in box)
    sx, sy = lb.scale_x, lb.scale_y
    x, y, w, h = (X - lb.left) / sx, (Y - lb.top) / sy, W / sx, H / sy
    if clip:
        x0, y0 = min(max(x, 0.0), lb.orig_w), min(max(y, 0.0), lb.orig_h)
        x1, y1 = min(max(x + w, 0.0), lb.orig_w), min(max(y + h, 0.0), lb.orig_h)
        x, y, w, h = x0, y0, x1 - x0, y1 - y0
    return x, y, w, h
