"""Regions of a finding for the Grad-CAM study: explicit box/mask CSVs, else the manifest's own."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.explain.localization import region_mask


def load_regions(manifest, finding: str, boxes_csv: str | Path | None = None,
                 masks_csv: str | Path | None = None) -> tuple[str, pd.DataFrame | None]:
    """(kind, rows of `finding`): explicit masks/boxes CSVs win; else the manifest's masks, then boxes.

    kind is "mask", "box" or "none". Explicit CSVs are read with the manifest's own validation, their
    paths relative to their own folder.
    """
    from engine.data import manifest as mf

    if boxes_csv is not None and masks_csv is not None:
        raise ValueError("give either --boxes or --masks, not both")
    for given, kind in ((masks_csv, "mask"), (boxes_csv, "box")):
        if given is not None:
            df = mf.load_regions(given, manifest, kind)
            return kind, df[df["finding"] == finding].reset_index(drop=True)
    if manifest.masks is not None and (manifest.masks["finding"] == finding).any():
        return "mask", manifest.masks[manifest.masks["finding"] == finding].reset_index(drop=True)
    if manifest.boxes is not None and (manifest.boxes["finding"] == finding).any():
        return "box", manifest.boxes[manifest.boxes["finding"] == finding].reset_index(drop=True)
    return "none", None


def region_for(kind: str, rows: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """Union of one image's boxes or masks as a bool mask of the image's shape."""
    from engine.data.io import read_image

    if kind == "box":
        return region_mask(rows[["x", "y", "w", "h"]].to_numpy(np.float64), shape)
    out = np.zeros(shape, bool)
    for mp in rows["mask_path"]:
        m, _ = read_image(Path(mp))
        if m.shape != tuple(shape):
            raise ValueError(f"mask {mp} is {m.shape[1]}x{m.shape[0]} pixels but its image is "
                             f"{shape[1]}x{shape[0]}; masks must have the image's size")
        out |= m > 0.5
    return out
