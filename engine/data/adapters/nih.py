"""NIH ChestX-ray14 as it ships (label table, official split lists, BBox_List) -> manifest CSV + boxes.csv."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.adapters.common import NORMAL_NAMES, _all_files, finding_name, _report
from engine.data.manifest import write_manifest
from engine.events import OnEvent


NIH_TABLES = ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz")  # the full release's label table
NIH_SAMPLE_TABLES = ("sample_labels*.csv", "sample_labels*.csv.gz")  # Kaggle's 5% sample: the same columns
NIH_PNG_SIZE = 1024  # ChestX-ray14 PNGs are 1024 x 1024; BBox_List_2017 coordinates refer to that grid
NIH_BOX_ALIASES = {"infiltrate": "infiltration"}  # BBox_List says "Infiltrate", Data_Entry "Infiltration"


def _find_one(root: Path, patterns: Sequence[str], required: bool, what: str,
              on_event: OnEvent | None) -> Path | None:
    hits = sorted({p for pat in patterns for p in root.glob(pat) if p.is_file()})
    if not hits:
        if required:
            raise ValueError(f"no {what} in {root} (looked for {', '.join(patterns)})")
        return None
    if len(hits) > 1:
        _report(on_event, f"several {what} files in {root}: using {hits[-1].name} "
                          f"(ignoring {', '.join(h.name for h in hits[:-1])})", warn=True)
    return hits[-1]


def _index_images(root: Path) -> dict[str, str]:
    """file name -> path for every file under root/images*/ (recursive; first in sorted order wins).

    Not a listing by extension or content: the label table names the images, and a named file that
    is not a readable image is reported when it is read (by the import or the cache), with its reason.
    """
    index: dict[str, str] = {}
    for d in sorted(p for p in root.glob("images*") if p.is_dir()):
        for f in _all_files(d):
            index.setdefault(os.path.basename(f), f)
    return index


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    return {ln.strip() for ln in pd.read_csv(path, header=None, dtype=str)[0].dropna()}


def from_nih(root: str | Path, out: str | Path, check_files: bool = True,
             on_event: OnEvent | None = None) -> Path:
    """NIH ChestX-ray14 as it ships -> manifest CSV (+ boxes.csv) at `out`; returns its path.

    Reads ``Data_Entry_2017*.csv[.gz]`` (the newest name when several; else the Kaggle sample's
    ``sample_labels.csv``, which has the same columns), ``BBox_List_2017.csv[.gz]``
    (optional; its ``Bbox [x,y,w,h]`` header and trailing empty columns as released) and the official
    ``train_val_list.txt`` / ``test_list.txt`` when present (-> split ``train`` / ``test``). Images are
    looked up by file name anywhere under ``root/images*/``. One column per finding label
    (``No Finding`` -> all 0), ``patient_id`` from ``Patient ID``. Boxes refer to the 1024-px PNG grid
    and are rescaled when the image file on disk has another size. With `check_files` rows whose
    image is not on disk are dropped (and counted); without, they point to ``root/images/<name>``.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"NIH ChestX-ray14 folder not found: {root}")
    entry = (_find_one(root, NIH_TABLES, False, "Data_Entry_2017 label table", on_event)
             or _find_one(root, NIH_SAMPLE_TABLES, False, "sample_labels table", on_event))
    if entry is None:
        raise ValueError(f"no NIH label table in {root}: looked for {', '.join(NIH_TABLES + NIH_SAMPLE_TABLES)} "
                         "(Data_Entry_2017.csv of the full release, or sample_labels.csv of the Kaggle sample); "
                         "put it in that folder, beside images/")
    table, onehot, findings = _nih_labels(entry)
    index = _index_images(root)
    names = table["name"].to_numpy(dtype=object)
    present = np.fromiter((n in index for n in names), dtype=bool, count=len(names))
    keep = present if check_files else np.ones(len(names), dtype=bool)
    if check_files:
        if not present.any():
            raise ValueError(f"none of the {len(names)} images of {entry.name} is under {root}/images*/; "
                             "put the PNGs there, or pass check_files=False (--no-check-files) to write the "
                             "manifest anyway")
        if (~present).any():
            _report(on_event, f"NIH: dropped {int((~present).sum())} of {len(names)} rows whose image is not "
                              f"under {root}/images*/ (kept {int(present.sum())})", warn=True)
    default_dir = root / "images"
    df = pd.DataFrame({
        "path": [index.get(n) or str(default_dir / n) for n in names[keep]],
        "patient_id": table["patient_id"].to_numpy(dtype=object)[keep],
    })
    split = _nih_splits(root, names[keep], on_event)
    if split is not None:
        df["split"] = split
    labels = onehot[findings].to_numpy(dtype=np.float64)[keep]  # (N_kept, F)
    df = pd.concat([df, pd.DataFrame(labels, columns=findings)], axis=1)

    bbox = _find_one(root, ["BBox_List_2017*.csv", "BBox_List_2017*.csv.gz"], False, "BBox_List_2017 table", on_event)
    boxes = None
    if bbox is not None:
        boxes = _nih_boxes(bbox, dict(zip(names[keep], df["path"])), findings, check_files, on_event)
    _report(on_event, f"NIH: {len(df)} images, {len(findings)} findings"
                      + (f", {len(boxes)} boxes" if boxes is not None else ""))
    return write_manifest(df, out, boxes=boxes)


def _nih_labels(entry: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(table: name, labels, patient_id; one-hot (N, labels) by finding name; sorted findings without
    the normal label) of an NIH label table. Raises ValueError when a needed column is missing."""
    cols = {"Image Index": "name", "Finding Labels": "labels", "Patient ID": "patient_id"}
    try:
        table = pd.read_csv(entry, usecols=list(cols), dtype=str).rename(columns=cols)
    except ValueError as e:  # usecols names a column the file lacks
        raise ValueError(f"{entry.name} is not an NIH label table: it needs the columns "
                         f"{', '.join(cols)} ({e})") from None
    table = table.dropna(subset=["name"]).drop_duplicates("name")
    onehot = table["labels"].fillna("").str.get_dummies(sep="|")  # (N, labels incl. "No Finding")
    onehot.columns = [finding_name(c) for c in onehot.columns]
    onehot = onehot.T.groupby(level=0).max().T  # merge labels that only differed in spelling
    return table, onehot, sorted(c for c in onehot.columns if c and c not in NORMAL_NAMES)


def _nih_splits(root: Path, kept: np.ndarray, on_event: OnEvent | None) -> np.ndarray | None:
    """Split per kept image name from the official lists ("test", "train" or ""); None without lists."""
    train = _read_list(_find_one(root, ["train_val_list.txt", "train_val_list*.txt"], False, "train list", on_event))
    test = _read_list(_find_one(root, ["test_list.txt", "test_list*.txt"], False, "test list", on_event))
    if not (train or test):
        return None
    return np.where(np.isin(kept, list(test)), "test", np.where(np.isin(kept, list(train)), "train", ""))


def _nih_boxes(bbox: Path, name_to_path: dict[str, str], findings: list[str], check_files: bool,
               on_event: OnEvent | None) -> pd.DataFrame:
    raw = pd.read_csv(bbox)
    if raw.shape[1] < 6:
        raise ValueError(f"{bbox.name} has {raw.shape[1]} columns; expected Image Index, Finding Label, x, y, w, h")
    b = raw.iloc[:, :6].copy()  # the header reads "Bbox [x", "y", "w", "h]" + unnamed empties
    b.columns = ["name", "finding", "x", "y", "w", "h"]
    b["finding"] = b["finding"].map(finding_name).replace(NIH_BOX_ALIASES)
    b = b[b["name"].isin(name_to_path.keys())]
    unknown = sorted(set(b["finding"]) - set(findings))
    if unknown:
        _report(on_event, f"{bbox.name}: dropped boxes of labels that are no finding column: {unknown}", warn=True)
        b = b[b["finding"].isin(findings)]
    b = b.assign(path=b["name"].map(name_to_path))
    if check_files and len(b):
        from PIL import Image  # header only: Image.open does not decode pixels

        scale = {}
        for name, path in zip(b["name"].unique(), b.drop_duplicates("name")["path"]):
            with Image.open(path) as im:
                scale[name] = (im.width / NIH_PNG_SIZE, im.height / NIH_PNG_SIZE)
        sx = b["name"].map(lambda n: scale[n][0]).to_numpy(dtype=np.float64)
        sy = b["name"].map(lambda n: scale[n][1]).to_numpy(dtype=np.float64)
        b["x"], b["w"] = b["x"] * sx, b["w"] * sx
        b["y"], b["h"] = b["y"] * sy, b["h"] * sy
    return b[["path", "finding", "x", "y", "w", "h"]].reset_index(drop=True)
