"""Heatmap overlays and the one-image-across-inits grid, as uint8 RGB arrays (numpy + PIL; no OpenCV).

`overlay(img, heat)` blends a colormapped heatmap over the grayscale X-ray with an opacity proportional to
the map (where the map is low the X-ray shows through unchanged) and can outline a region;
`grid(img, {init: heat}, regions)` puts the original at left and one overlay column per init, with the
init names (and optional scores) drawn above each column.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.explain.localization import Region, region_mask

OUTLINE_RGB = (0, 255, 0)


def _jet(x: np.ndarray) -> np.ndarray:
    """MATLAB/OpenCV-style jet: piecewise-linear blue -> cyan -> yellow -> red."""
    return np.clip(np.stack([1.5 - np.abs(4 * x - 3), 1.5 - np.abs(4 * x - 2), 1.5 - np.abs(4 * x - 1)], -1), 0, 1)


def _turbo(x: np.ndarray) -> np.ndarray:
    """Google's Turbo colormap, polynomial approximation (A. Mikhailov / R. Du, 2019)."""
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973))))
    return np.clip(np.stack([r, g, b], -1), 0, 1)


COLORMAPS = {"jet": _jet, "turbo": _turbo}


def colormap(heatmap: np.ndarray, name: str = "jet") -> np.ndarray:
    """float HxW in [0, 1] -> float32 HxWx3 RGB in [0, 1]."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    return COLORMAPS[name](np.clip(np.asarray(heatmap, np.float32), 0, 1)).astype(np.float32)


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary (`width` pixels) of a bool mask: mask minus its 4-neighbour erosion."""
    inner = mask.copy()
    for _ in range(max(1, width)):
        e = inner.copy()
        e[1:] &= inner[:-1]
        e[:-1] &= inner[1:]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        inner = e
    return mask & ~inner


def _gray_rgb(img: np.ndarray) -> np.ndarray:
    g = np.clip(np.asarray(img, np.float32), 0, 1)
    if g.ndim != 2:
        raise ValueError(f"expected a grayscale image HxW; got shape {g.shape}")
    return np.repeat(g[..., None], 3, axis=-1)


def _outline(rgb: np.ndarray, region: Region | None) -> np.ndarray:
    if region is None:
        return rgb
    m = region_mask(region, rgb.shape[:2])
    w = max(1, round(max(rgb.shape[:2]) / 256))
    rgb[contour(m, w)] = np.asarray(OUTLINE_RGB, np.float32) / 255.0
    return rgb


def overlay(
    img_f32: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.6,
    colormap_name: str = "jet",
    region: Region | None = None,
    proportional: bool = True,
) -> np.ndarray:
    """(1 - a) * X-ray + a * colormap(heatmap) per pixel, region outlined in green -> np.uint8 HxWx3.

    proportional (default): a = alpha * heatmap, so the colour's opacity follows the map (alpha = the opacity
    at the map's maximum) and the X-ray is left untouched where the map is 0; else a = alpha everywhere
    (a tint over the whole image). Raises ValueError for alpha outside [0, 1] or a heatmap of another shape."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    base = _gray_rgb(img_f32)
    if np.shape(heatmap) != base.shape[:2]:
        raise ValueError(f"heatmap shape {np.shape(heatmap)} differs from the image's {base.shape[:2]}")
    a = alpha * np.clip(np.asarray(heatmap, np.float32), 0, 1)[..., None] if proportional else alpha
    rgb = (1 - a) * base + a * colormap(heatmap, colormap_name)
    return (np.clip(_outline(rgb, region), 0, 1) * 255 + 0.5).astype(np.uint8)


def _fmt_scores(s: object) -> str:
    if isinstance(s, Mapping):
        parts = []
        for k, v in s.items():
            if isinstance(v, float):
                parts.append(f"{k} {v:.2f}")
            else:
                parts.append(f"{k} {v}")
        return "  ".join(parts)
    return "" if s is None else str(s)


def fit_text(text: str, width: float, font) -> str:
    """`text` shortened with a middle "..." so it draws within `width` pixels (a column's title never runs into
    the next column); the start and the end (e.g. a file name's extension or a '(finding)' suffix) stay."""
    if font.getlength(text) <= width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2:] if keep // 2 else ""
        short = head + "..." + tail
        if font.getlength(short) <= width:
            return short
    return "..." if font.getlength("...") <= width else ""


def grid(
    img_f32: np.ndarray,
    heatmaps: Mapping[str, np.ndarray],
    regions: Region | None = None,
    scores: Mapping[str, object] | None = None,
    alpha: float = 0.6,
    colormap_name: str = "jet",
    tile: int = 256,
    title: str = "original",
) -> np.ndarray:
    """Original (region outlined) at left, then one overlay per init -> np.uint8 (H', W', 3).

    Tiles are resized so their height is `tile` pixels; each column is headed by its init name and,
    when `scores[init]` is given (a string or a {name: value} dict), a second line with the scores.
    """
    cols = [(title, (np.clip(_outline(_gray_rgb(img_f32), regions), 0, 1) * 255 + 0.5).astype(np.uint8), None)]
    for name, heat in heatmaps.items():
        cols.append((name, overlay(img_f32, heat, alpha, colormap_name, regions), (scores or {}).get(name)))
    h, w = np.shape(img_f32)
    th, tw = tile, max(1, round(w * tile / h))
    font = ImageFont.load_default()
    line = 14
    header = line * (2 if scores else 1) + 6
    pad = 4
    canvas = Image.new("RGB", (len(cols) * (tw + pad) + pad, th + header + pad), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, rgb, s) in enumerate(cols):
        x0 = pad + i * (tw + pad)
        canvas.paste(Image.fromarray(rgb).resize((tw, th), Image.Resampling.BILINEAR), (x0, header))
        draw.text((x0 + 2, 2), fit_text(str(name), tw - 4, font), fill=(255, 255, 255), font=font)
        if s is not None:
            draw.text((x0 + 2, 2 + line), fit_text(_fmt_scores(s), tw - 4, font), fill=(200, 200, 200), font=font)
    return np.asarray(canvas, dtype=np.uint8)
