"""Dataset adapters: turn public datasets and plain folders into manifest CSVs.

Decisions (see docs/design.md, "Manifests"):

* Finding names are lowercased with surrounding whitespace removed and inner runs of whitespace
  collapsed (``"COPD signs"`` -> ``"copd signs"``, NIH ``"Pleural_Thickening"`` -> ``"pleural_thickening"``).
* "Normal" is the absence of findings, never a finding column: a ``normal`` class folder, NIH
  ``No Finding`` and PadChest ``normal`` all give 0 in every finding column.
* Labels absent from a report are negatives (0), as both datasets' papers use them.

Adapters that drop rows (missing image files, unlabeled rows) say how many through `on_event`
and the ``engine.data.adapters`` logger at WARNING level (which the CLI shows on stderr).
"""
from __future__ import annotations

import ast
import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from engine.events import OnEvent, emit
from engine.data.listing import is_ignored, list_images, skipped_summary
from engine.data.manifest import Manifest, write_manifest

log = logging.getLogger(__name__)

NORMAL_NAMES = frozenset({"normal", "no finding", "no_finding", "nofinding", "no findings", "healthy", "negative"})
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test"})
NIH_TABLES = ("Data_Entry_2017*.csv", "Data_Entry_2017*.csv.gz")  # the full release's label table
NIH_SAMPLE_TABLES = ("sample_labels*.csv", "sample_labels*.csv.gz")  # Kaggle's 5% sample: the same columns
NIH_PNG_SIZE = 1024  # ChestX-ray14 PNGs are 1024 x 1024; BBox_List_2017 coordinates refer to that grid
NIH_BOX_ALIASES = {"infiltrate": "infiltration"}  # BBox_List says "Infiltrate", Data_Entry "Infiltration"
PADCHEST_PROJECTIONS = ("PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE", "UNK")  # `Projection` values
PADCHEST_DEFAULT_PROJECTIONS = ("PA", "AP")  # frontal views; AP_horizontal (supine) and L are opt-in
_WS = re.compile(r"\s+")


def finding_name(label: str) -> str:
    """Canonical finding column name: lowercase, trimmed, inner whitespace collapsed to one space."""
    return _WS.sub(" ", str(label).strip().lower())


def _report(on_event: OnEvent | None, message: str, warn: bool = False) -> None:
    (log.warning if warn else log.info)(message)
    emit(on_event, message=message, kind="warning" if warn else "log", level="warning" if warn else "info")


def _all_files(folder: Path) -> list[str]:
    """Every non-hidden file under `folder` (recursive), sorted; for look-ups by a table's file names."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        out.extend(os.path.join(dirpath, f) for f in filenames if not is_ignored(f))
    return sorted(out)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def _loose_files(folder: Path) -> list[str]:
    """Non-hidden files directly in `folder` (not in a class folder), sorted by name."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not is_ignored(p.name))


# --------------------------------------------------------------------------------------- folder tree


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
    top = _subdirs(root)
    if not top:
        raise ValueError(f"{root} has no sub-folders; put the images of each class in its own folder "
                         "(e.g. root/normal/, root/pneumonia/)")
    split_like = [d for d in top if d.name.lower() in SPLIT_NAMES]
    if split_like and len(split_like) != len(top):
        others = [d.name for d in top if d not in split_like]
        raise ValueError(f"{root} mixes split folders ({', '.join(d.name for d in split_like)}) with other "
                         f"folders ({', '.join(others)}); use either root/<class>/ or root/<split>/<class>/")
    groups: list[tuple[str, Path]] = []  # (split, class folder)
    if split_like:
        for s in top:
            groups += [(s.name.lower(), c) for c in _subdirs(s)]
    else:
        groups = [("", c) for c in top]

    paths: list[str] = []
    splits: list[str] = []
    classes: list[str] = []
    skipped = [(name, "not inside a class folder") for name in _loose_files(root)]
    if split_like:
        skipped += [(f"{s.name}/{name}", "not inside a class folder") for s in top for name in _loose_files(s)]
    for split, cdir in groups:
        listing = list_images(cdir)
        prefix = cdir.relative_to(root).as_posix()
        skipped += [(f"{prefix}/{rel}", why) for rel, why in listing.skipped]
        paths += listing.files
        splits += [split] * len(listing.files)
        classes += [finding_name(cdir.name)] * len(listing.files)
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


# --------------------------------------------------------------------------------------------- NIH


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
    findings = sorted(c for c in onehot.columns if c and c not in NORMAL_NAMES)

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
    train = _read_list(_find_one(root, ["train_val_list.txt", "train_val_list*.txt"], False, "train list", on_event))
    test = _read_list(_find_one(root, ["test_list.txt", "test_list*.txt"], False, "test list", on_event))
    if train or test:
        kept = names[keep]
        df["split"] = np.where(np.isin(kept, list(test)), "test", np.where(np.isin(kept, list(train)), "train", ""))
    labels = onehot[findings].to_numpy(dtype=np.float64)[keep]  # (N_kept, F)
    df = pd.concat([df, pd.DataFrame(labels, columns=findings)], axis=1)

    bbox = _find_one(root, ["BBox_List_2017*.csv", "BBox_List_2017*.csv.gz"], False, "BBox_List_2017 table", on_event)
    boxes = None
    if bbox is not None:
        boxes = _nih_boxes(bbox, dict(zip(names[keep], df["path"])), findings, check_files, on_event)
    _report(on_event, f"NIH: {len(df)} images, {len(findings)} findings"
                      + (f", {len(boxes)} boxes" if boxes is not None else ""))
    return write_manifest(df, out, boxes=boxes)


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


# ---------------------------------------------------------------------------------------- PadChest


_PLAIN_ITEM = r"'[^'\\\n]*'"
_PLAIN_LIST = re.compile(rf"\[\s*(?:{_PLAIN_ITEM}\s*(?:,\s*{_PLAIN_ITEM}\s*)*,?\s*)?\]")
_PLAIN_STR = re.compile(r"'([^'\\\n]*)'")


def _parse_label_list(s: str) -> list[str]:
    """Parse one `Labels` cell ("['a', ' b']") safely; anything but a list of strings is an error.

    Lists of plain single-quoted strings (no escapes: all of PadChest) take a regex fast path that
    gives exactly what `ast.literal_eval` gives; anything else goes through `ast.literal_eval`.
    """
    if _PLAIN_LIST.fullmatch(s):
        return _PLAIN_STR.findall(s)
    value = ast.literal_eval(s)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Labels cell is not a list of strings: {s[:80]!r}")
    return list(value)


def padchest_labels(labels: pd.Series, exact_labels: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Parse a PadChest `Labels` column -> (onehot uint8 (N, F), findings, labeled bool (N,)).

    Each distinct cell string is parsed once (`ast.literal_eval`; the 160,861 rows hold ~29k distinct
    lists) and rows pick their row of the per-string table, so no Python loop runs over rows.
    Entries are normalized with `finding_name`; ``normal`` and empty entries give no column.
    With `exact_labels=True`, entries written with surrounding whitespace (e.g. ``' hiatal hernia'``,
    a serialization artifact on ~70k entries) are ignored instead of merged, which reproduces counts
    taken by exact string match (such as those quoted with the shared data: hiatal hernia 2,153).
    `labeled` is False for rows whose cell is empty or holds only empty entries.
    """
    codes, uniques = pd.factorize(pd.Series(labels.to_numpy(dtype=object)), use_na_sentinel=True)  # (N,), -1: NaN
    parsed: list[set[str]] = []
    has_any = np.zeros(len(uniques) + 1, dtype=bool)  # last row: the NaN sentinel
    for u, cell in enumerate(uniques):
        try:
            entries = _parse_label_list(cell)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"PadChest Labels value cannot be parsed ({e}); expected a Python list string "
                             "like \"['cardiomegaly', 'pleural effusion']\"") from None
        has_any[u] = any(finding_name(x) for x in entries)
        if exact_labels:
            entries = [x for x in entries if x == x.strip()]
        parsed.append({n for n in map(finding_name, entries) if n and n not in NORMAL_NAMES})
    findings = sorted(set().union(*parsed)) if parsed else []
    col = {f: j for j, f in enumerate(findings)}
    table = np.zeros((len(uniques) + 1, len(findings)), dtype=np.uint8)  # (U + 1, F)
    for u, names in enumerate(parsed):
        table[u, [col[n] for n in names]] = 1
    return table[codes], findings, has_any[codes]  # (N, F), F, (N,)


def from_padchest(csv: str | Path, out: str | Path, images_root: str | Path | None = None,
                  projections: Sequence[str] | None = PADCHEST_DEFAULT_PROJECTIONS, check_files: bool = True,
                  exact_labels: bool = False, on_event: OnEvent | None = None) -> Path:
    """PadChest's official table -> manifest CSV at `out`; returns its path.

    Image path ``<images_root>/<ImageDir>/<ImageID>`` (`images_root` defaults to the CSV's folder),
    ``patient_id`` = PatientID, one column per label of `Labels` (see `padchest_labels`) that occurs
    in the kept rows; a label missing from a row's list is 0. Rows are kept when their `Projection` is
    in `projections` (None or empty: all). Rows without labels (empty cell or only empty entries)
    are dropped. With `check_files` rows whose image is not on disk are dropped too (and counted).
    Labels such as ``exclude`` and ``suboptimal study`` stay ordinary columns: filter on them if wanted.
    """
    csv = Path(csv).expanduser().resolve()
    if not csv.is_file():
        raise ValueError(f"PadChest table not found: {csv}")
    images_root = Path(images_root).expanduser().resolve() if images_root else csv.parent
    need = ["ImageID", "ImageDir", "PatientID", "Projection", "Labels"]
    try:
        t = pd.read_csv(csv, usecols=need, dtype={c: str for c in need})  # "nan" cells -> NaN
    except ValueError as e:
        raise ValueError(f"{csv.name} is not the PadChest label table (needs columns {', '.join(need)}): {e}") from None
    n_all = len(t)
    if projections:
        known = set(PADCHEST_PROJECTIONS) | set(t["Projection"].dropna().unique())
        unknown = sorted(set(projections) - known)
        if unknown:
            raise ValueError(f"unknown PadChest projection(s) {unknown}; valid: {', '.join(sorted(known))}")
        t = t[t["Projection"].isin(list(projections))]
        if t.empty:
            raise ValueError(f"no rows of {csv.name} have projection {', '.join(projections)}")
    onehot, findings, labeled = padchest_labels(t["Labels"], exact_labels=exact_labels)  # (N, F)
    if (~labeled).any():
        _report(on_event, f"PadChest: dropped {int((~labeled).sum())} rows without labels", warn=True)
    paths = (str(images_root) + os.sep + t["ImageDir"].fillna("") + os.sep
             + t["ImageID"].fillna("")).to_numpy(dtype=object)  # vectorized join, (N,)
    keep = labeled.copy()
    if check_files:
        present = np.fromiter((os.path.isfile(p) for p in paths[keep]), dtype=bool, count=int(keep.sum()))
        if not present.any():
            raise ValueError(f"none of the {int(keep.sum())} selected PadChest images is under "
                             f"{images_root}/<ImageDir>/; pass the image folder with images_root (--images) "
                             "or check_files=False (--no-check-files)")
        if (~present).any():
            _report(on_event, f"PadChest: dropped {int((~present).sum())} of {int(keep.sum())} rows whose image "
                              f"is not under {images_root} (kept {int(present.sum())})", warn=True)
        keep[np.flatnonzero(keep)[~present]] = False
    onehot = onehot[keep]
    used = onehot.any(axis=0)  # labels that occur in the kept rows
    if not used.any():
        raise ValueError("the selected PadChest rows carry no finding labels; widen the projection filter")
    findings = [f for f, u in zip(findings, used) if u]
    df = pd.DataFrame({"path": paths[keep],
                       "patient_id": t["PatientID"].fillna("").to_numpy(dtype=object)[keep]})
    df = pd.concat([df, pd.DataFrame(onehot[:, used], columns=findings)], axis=1)
    _report(on_event, f"PadChest: {len(df)} of {n_all} rows kept (projections "
                      f"{', '.join(projections) if projections else 'all'}), {len(findings)} findings")
    return write_manifest(df, out)


# ------------------------------------------------------------------------------------------ helpers


def findings_with_min_patients(manifest: Manifest, n: int) -> list[tuple[str, int]]:
    """Findings with at least `n` distinct positive patients, most first: [(finding, n_patients)].

    This is how the PadChest few-shot study picked rare findings with enough patients to sample from.
    """
    if not manifest.findings:
        return []
    pos = manifest.df[manifest.findings].eq(1)  # (N, F) bool
    per_patient = pos.groupby(manifest.df["patient_id"].to_numpy()).any()  # (patients, F)
    counts = per_patient.sum()
    out = [(f, int(counts[f])) for f in manifest.findings if int(counts[f]) >= n]
    return sorted(out, key=lambda fc: (-fc[1], fc[0]))
