"""Folder-per-class trees (Kermany's layout) -> manifest CSV."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.adapters.common import NORMAL_NAMES, SPLIT_NAMES, finding_name, _loose_files, _report, _subdirs
from engine.data.listing import list_images, skipped_summary
from engine.data.manifest import write_manifest
from engine.events import OnEvent


def from_folder_tree(root: str | Path, out: str | Path, on_event: OnEvent | None = None) -> Path:
    """Folder-per-class tree -> manifest CSV at `out`; returns its path.

    Layout ``root/<class>/**/<image>`` or, with splits, ``root/<split>/<class>/**/<image>`` where
    every top-level folder is one of train / val / valid / validation / test (Kermany's layout).
    Each class folder becomes one finding column, one-vs-rest: 1 for the images in that folder,
    0 for all others. A folder named normal / no_finding / healthy / negative (any case) gives no
    column: its images are 0 everywhere. Folder trees carry no patient ids, so the manifest has no
    `patient_id` column (splits are then per image).

    Images are found by content at any depth (`engine.data.listing.list_images`): PNG, JPEG, TIFF and
    DICOM whatever their names, so extension-less DICOM files of patient CDs (``DICOM/.../IM000001``)
    are rows; ``DICOMDIR`` and DICOM objects without pixel data are not. Every file left out (in a
    class folder, or loose beside the class folders) is reported with its reason, as one warning
    (count + first names) through `on_event` and the logger. Raises ValueError when `root` is no
    folder, has no class folders, mixes split and class folders, or holds no image or no finding.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"folder not found: {root}")
    split_like, groups = _class_folders(root)
    paths, splits, classes, skipped = _list_class_folders(root, groups, split_like)
    if skipped:
        _report(on_event, f"folder tree: {skipped_summary(sorted(skipped), str(root))}", warn=True)
    if not paths:
        raise ValueError(f"no image files (PNG, JPEG, TIFF or DICOM) found in the class folders of {root}"
                         + (f" ({skipped_summary(sorted(skipped), str(root))})" if skipped else ""))
    findings = sorted({c for c in classes if c not in NORMAL_NAMES})
    if not findings:
        raise ValueError(f"{root} only has normal images; add a folder per finding beside the normal one")
    cls = np.asarray(classes, dtype=object)
    df = pd.DataFrame({"path": paths})
    if split_like:
        df["split"] = splits
    for f in findings:
        df[f] = (cls == f).astype(np.float64)
    n_norm = int(np.isin(cls, list(NORMAL_NAMES)).sum())
    _report(on_event, f"folder tree {root}: {len(df)} images, findings {findings}, {n_norm} normal")
    return write_manifest(df, out)


def _class_folders(root: Path) -> tuple[bool, list[tuple[str, Path]]]:
    """(whether the top folders are splits, [(split or "", class folder)]) of a folder-per-class tree.
    Raises ValueError for no sub-folders, or split folders mixed with other folders."""
    top = _subdirs(root)
    if not top:
        raise ValueError(f"{root} has no sub-folders; put the images of each class in its own folder "
                         "(e.g. root/normal/, root/pneumonia/)")
    split_like = [d for d in top if d.name.lower() in SPLIT_NAMES]
    if split_like and len(split_like) != len(top):
        others = [d.name for d in top if d not in split_like]
        raise ValueError(f"{root} mixes split folders ({', '.join(d.name for d in split_like)}) with other "
                         f"folders ({', '.join(others)}); use either root/<class>/ or root/<split>/<class>/")
    if split_like:
        return True, [(s.name.lower(), c) for s in top for c in _subdirs(s)]
    return False, [("", c) for c in top]


def _list_class_folders(root: Path, groups: list[tuple[str, Path]], split_like: bool
                        ) -> tuple[list[str], list[str], list[str], list[tuple[str, str]]]:
    """(image paths, their splits, their class names, [(file, why it was left out)]) of a folder tree."""
    paths: list[str] = []
    splits: list[str] = []
    classes: list[str] = []
    skipped = [(name, "not inside a class folder") for name in _loose_files(root)]
    if split_like:
        skipped += [(f"{s.name}/{name}", "not inside a class folder") for s in _subdirs(root)
                    for name in _loose_files(s)]
    for split, cdir in groups:
        listing = list_images(cdir)
        prefix = cdir.relative_to(root).as_posix()
        skipped += [(f"{prefix}/{rel}", why) for rel, why in listing.skipped]
        paths += listing.files
        splits += [split] * len(listing.files)
        classes += [finding_name(cdir.name)] * len(listing.files)
    return paths, splits, classes, skipped
