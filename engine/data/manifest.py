"""Manifest CSVs: the one labeled-data format every engine function consumes.

A manifest is a CSV with

* ``path``: the image file, relative to the CSV's folder or absolute;
* ``patient_id`` (optional): splits and few-shot draws are patient-level when present;
* ``split`` (optional): e.g. ``train`` / ``test``; ``test`` rows form the fixed test set;
* one column per finding: ``1`` present, ``0`` absent, blank unknown.

Beside it, optionally, ``boxes.csv`` (``path, finding, x, y, w, h`` in pixels of the original image)
and ``masks.csv`` (``path, finding, mask_path``), with paths relative to the same folder.

`load_manifest` validates everything and raises one `ManifestError` listing *all* problems, so a
user fixes a file in one pass instead of one error at a time.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from engine.atomic import atomic_write_text

RESERVED = ("path", "patient_id", "split")
BOX_COLUMNS = ("path", "finding", "x", "y", "w", "h")
MASK_COLUMNS = ("path", "finding", "mask_path")
MAX_LISTED = 10  # how many offending paths / lines one problem names before summarizing


class ManifestError(ValueError):
    """A manifest (or its boxes/masks) cannot be used; `.problems` lists every problem found."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = list(problems)
        head = f"{source} has" if source else "manifest has"
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{head} {n} problem{'s' if n != 1 else ''}:\n{lines}")


@dataclass
class Manifest:
    """A validated manifest. `df`: `path` (absolute str), `patient_id` (str; the path when the CSV
    has none), `split` (str, '' when absent), one float column per finding (1.0 / 0.0 / NaN)."""

    csv_path: Path
    root: Path
    df: pd.DataFrame
    findings: list[str]
    boxes: pd.DataFrame | None = None  # path (absolute), finding, x, y, w, h
    masks: pd.DataFrame | None = None  # path, finding, mask_path (both absolute)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def paths(self) -> list[str]:
        return self.df["path"].tolist()

    def _check_finding(self, finding: str) -> None:
        if finding not in self.findings:
            raise ManifestError([f"unknown finding {finding!r}; this manifest has: {', '.join(self.findings)}"],
                                self.csv_path)

    def labels(self, finding: str) -> np.ndarray:
        """(N,) float labels of one finding: 1.0 present, 0.0 absent, NaN unknown."""
        self._check_finding(finding)
        return self.df[finding].to_numpy(dtype=np.float64)

    def counts(self) -> dict[str, dict]:
        """{finding: {positive, negative, unknown}} (+ `warning` when a finding has only one class)."""
        block = self.df[self.findings]
        pos, neg = (block == 1).sum(), (block == 0).sum()
        unk = block.isna().sum()
        out: dict[str, dict] = {}
        for f in self.findings:
            c: dict = {"positive": int(pos[f]), "negative": int(neg[f]), "unknown": int(unk[f])}
            if c["positive"] == 0 or c["negative"] == 0:
                c["warning"] = _one_class_text(f, c["positive"], c["negative"])
            out[f] = c
        return out

    def validate_finding(self, finding: str, min_per_class: int = 1) -> None:
        """Raise `ManifestError` unless `finding` has at least `min_per_class` positives and negatives."""
        self._check_finding(finding)
        y = self.labels(finding)
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        if pos < min_per_class or neg < min_per_class:
            if pos == 0 or neg == 0:
                msg = _one_class_text(finding, pos, neg)
            else:
                msg = (f"finding {finding!r} has {pos} positive and {neg} negative images; at least "
                       f"{min_per_class} of each are needed")
            raise ManifestError([msg], self.csv_path)


def _one_class_text(finding: str, pos: int, neg: int) -> str:
    return (f"finding {finding!r} has only one class ({pos} positive, {neg} negative); a classifier needs "
            "both positive and negative images")


# --------------------------------------------------------------------------------------------- reading


def _lines(mask: np.ndarray) -> list[int]:
    """CSV line numbers (header = line 1) of the rows where `mask` is true."""
    return (np.flatnonzero(mask) + 2).tolist()


def _listed(items: list, what: str = "") -> str:
    shown = ", ".join(str(i) for i in items[:MAX_LISTED])
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{what}{shown}{more}"


DELIMITERS = (",", ";", "\t")  # what spreadsheet programs write: comma, semicolon (decimal-comma locales), tab


def decode_table(raw: bytes) -> tuple[str, str]:
    """Bytes of a CSV -> (text, encoding name), for the encodings spreadsheet programs save.

    UTF-16 with a byte-order mark (Excel's "Unicode Text"), else UTF-8 with or without BOM (Excel's
    "CSV UTF-8", LibreOffice, Google Sheets), else Windows-1252 (Excel's plain "CSV" on Western
    Windows; a superset of Latin-1's printable range), else Latin-1 (decodes any byte). Only the
    first that decodes the whole file strictly is used, so a valid UTF-8 file is never misread.
    """
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16"), "UTF-16"
        except UnicodeDecodeError:
            pass
    for codec, label in (("utf-8-sig", "UTF-8"), ("cp1252", "Windows-1252"), ("latin-1", "Latin-1")):
        try:
            return raw.decode(codec), label
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def sniff_delimiter(header: str) -> str:
    """The column separator of a CSV header line: whichever of `DELIMITERS` splits it into the most
    columns (quotes respected); a comma when none splits it (a one-column file)."""
    best, best_n = ",", 1
    for d in DELIMITERS:
        n = len(next(csv.reader([header], delimiter=d), []))
        if n > best_n:
            best, best_n = d, n
    return best


def _read_csv(path: Path, problems: list[str]) -> pd.DataFrame | None:
    """Read a CSV as spreadsheet programs save it, every cell as the text the user wrote (blank ->
    NaN); report duplicate headers. Encoding by `decode_table`, separator by `sniff_delimiter`;
    `df.attrs` records both (``encoding``, ``sep``)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        problems.append(f"cannot read {path.name}: {e.strerror or e}; check the path and its permissions")
        return None
    text, encoding = decode_table(raw)
    first = text.splitlines()[0] if text.strip() else ""
    if not first.strip():
        problems.append(f"{path.name} is empty: it needs a header row (path, ..., one column per finding)")
        return None
    sep = sniff_delimiter(first)
    header = next(csv.reader([first], delimiter=sep))
    names = [h.strip() for h in header]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"{path.name}: duplicate column names {dup}; every column needs a unique name")
    sep_name = {",": "commas", ";": "semicolons", "\t": "tabs"}[sep]
    second = text.splitlines()[1:2]
    first_row = next(csv.reader(second, delimiter=sep), [])
    if any(c.strip() for c in first_row[len(header):]):  # pandas would silently shift such columns
        problems.append(f"{path.name}: line 2 has {len(first_row)} cells but the header has {len(header)} (columns "
                        f"separated by {sep_name}); every row needs as many cells as the header")
        return None
    try:
        with warnings.catch_warnings():  # trailing empty cells (a separator at each line's end) are dropped
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                             skipinitialspace=True, index_col=False)
    except (pd.errors.ParserError, ValueError) as e:
        problems.append(f"{path.name} is not a readable CSV (columns separated by {sep_name}): {e}; every row needs "
                        "as many cells as the header")
        return None
    df.columns = [str(c).strip() for c in df.columns]
    df.attrs.update(encoding=encoding, sep=sep)
    return df


def _label_numbers(col: pd.Series) -> np.ndarray:
    """A finding column's cells (text as written, NaN blank) -> float64; text that is no number -> NaN."""
    if col.dtype.kind in "iuf":
        return col.to_numpy(dtype=np.float64)
    return pd.to_numeric(col.astype("string").str.strip(), errors="coerce").to_numpy(dtype=np.float64)


def _binary_problems(col: pd.Series, name: str) -> str | None:
    """Describe the values of a finding column other than 1, 0 or blank (None when all are fine).

    Offending cells are quoted as the text the user wrote (e.g. 'True', 'yes', '-1')."""
    num = _label_numbers(col)
    bad = col.notna().to_numpy() & ~((num == 0) | (num == 1))
    if not bad.any():
        return None
    lines = _lines(bad)
    examples = [f"line {ln}: '{col.iloc[ln - 2]}'" for ln in lines[:5]]
    return (f"column {name!r} has values other than 1, 0 or blank on {len(lines)} row(s) ({'; '.join(examples)}"
            f"{'; ...' if len(lines) > 5 else ''}); use 1 = present, 0 = absent, blank = unknown")


def _resolve(root: Path, rel: Iterable[str]) -> list[str]:
    r = str(root)
    return [p if os.path.isabs(p) else os.path.normpath(os.path.join(r, p)) for p in rel]


def _missing_problem(paths: list[str], root: Path, what: str) -> str | None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return None
    return (f"{len(missing)} {what} not found (relative paths are read from {root}): "
            + _listed(missing))


def load_manifest(csv_path: str | Path, check_files: bool = True) -> Manifest:
    """Read and validate a manifest CSV (and boxes.csv / masks.csv beside it).

    Raises `ManifestError` listing all problems: missing columns or files, label values other than
    1/0/blank, no finding columns, duplicate paths, boxes/masks naming unknown images or findings.
    A finding with only one class is *not* an error here (it is flagged in `counts()`); tasks call
    `validate_finding` before training on it.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    if not csv_path.is_file():
        raise ManifestError([f"manifest file not found: {csv_path}"], csv_path)
    root = csv_path.parent
    problems: list[str] = []
    raw = _read_csv(csv_path, problems)
    if raw is None:
        raise ManifestError(problems, csv_path)
    empty_unnamed = [c for c in raw.columns if c.startswith("Unnamed:") and raw[c].isna().all()]
    raw = raw.drop(columns=empty_unnamed)  # a separator at the end of every line (spreadsheet exports)
    if "path" not in raw.columns:
        problems.append(f"no 'path' column (columns are: {', '.join(map(str, raw.columns))}); the first "
                        "column must be `path`, the image file relative to the CSV's folder (columns may be "
                        "separated by commas, semicolons or tabs)")
        raise ManifestError(problems, csv_path)
    if len(raw) == 0:
        problems.append("the manifest has a header but no rows")

    findings = [c for c in raw.columns if c not in RESERVED and not c.startswith("Unnamed:")]
    unnamed = [c for c in raw.columns if c.startswith("Unnamed:")]
    if unnamed:
        problems.append(f"{len(unnamed)} column(s) without a name in the header; give every finding column a name")
    if not findings:
        problems.append("no finding columns: after path/patient_id/split add one column per finding "
                        "(1 = present, 0 = absent, blank = unknown)")
    for f in findings:
        msg = _binary_problems(raw[f], f)
        if msg:
            problems.append(msg)

    rel = raw["path"].fillna("").astype(str).str.strip()
    blank = (rel == "").to_numpy()
    if blank.any():
        problems.append(f"{int(blank.sum())} row(s) have an empty path: " + _listed(_lines(blank), "lines "))
    paths = _resolve(root, rel.tolist())
    abs_paths = pd.Series(paths, index=raw.index)
    dup = abs_paths.duplicated(keep=False).to_numpy() & ~blank
    if dup.any():
        names = sorted(set(rel[dup]))
        problems.append(f"{len(names)} image path(s) appear on more than one row (merge their labels into one "
                        "row): " + _listed(names))
    if check_files:
        msg = _missing_problem([p for p, b in zip(paths, blank) if not b], root, "image file(s)")
        if msg:
            problems.append(msg)

    df = pd.DataFrame({"path": abs_paths})
    if "patient_id" in raw.columns:
        pid = raw["patient_id"].fillna("").astype(str).str.strip()
        df["patient_id"] = pid.where(pid != "", abs_paths)
    else:
        df["patient_id"] = abs_paths
    df["split"] = raw["split"].fillna("").astype(str).str.strip() if "split" in raw.columns else ""
    labels = {f: _label_numbers(raw[f]).astype(np.float32) for f in findings}
    df = pd.concat([df, pd.DataFrame(labels, index=df.index, columns=findings)], axis=1)

    known = set(paths)
    boxes = _load_boxes(root / "boxes.csv", root, known, set(findings), problems)
    masks = _load_masks(root / "masks.csv", root, known, set(findings), problems, check_files)
    if problems:
        raise ManifestError(problems, csv_path)
    return Manifest(csv_path=csv_path, root=root, df=df.reset_index(drop=True), findings=findings,
                    boxes=boxes, masks=masks)


def _region_problems(df: pd.DataFrame, name: str, root: Path, known: set[str], findings: set[str],
                     problems: list[str]) -> pd.Series:
    """Shared checks of boxes.csv / masks.csv rows; returns the resolved absolute image paths."""
    rel = df["path"].fillna("").astype(str).str.strip()
    paths = pd.Series(_resolve(root, rel.tolist()), index=df.index)
    unknown = ~paths.isin(known).to_numpy()
    if unknown.any():
        problems.append(f"{name}: {int(unknown.sum())} row(s) name images that are not in the manifest: "
                        + _listed(sorted(set(rel[unknown]))))
    fin = df["finding"].fillna("").astype(str).str.strip()
    bad_f = ~fin.isin(findings).to_numpy()
    if bad_f.any():
        problems.append(f"{name}: {int(bad_f.sum())} row(s) name findings that are not manifest columns: "
                        + _listed(sorted(set(fin[bad_f]))) + f" (manifest findings: {', '.join(sorted(findings))})")
    df["finding"] = fin
    return paths


def _load_boxes(path: Path, root: Path, known: set[str], findings: set[str],
                problems: list[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_csv(path, problems)
    if df is None:
        return None
    missing = [c for c in BOX_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"boxes.csv: missing column(s) {missing}; it needs {', '.join(BOX_COLUMNS)}")
        return None
    abs_paths = _region_problems(df, "boxes.csv", root, known, findings, problems)
    cells = df[["x", "y", "w", "h"]].astype("string")
    if df.attrs.get("sep") == ";":  # semicolon CSVs come from decimal-comma locales: "12,5" is 12.5
        cells = cells.apply(lambda c: c.str.replace(",", ".", regex=False))
    xywh = cells.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(xywh).any(1) | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    if bad.any():
        problems.append("boxes.csv: x, y, w, h must be numbers with w > 0 and h > 0 (pixels of the original "
                        "image); not so on " + _listed(_lines(bad), "lines "))
    out = pd.DataFrame({"path": abs_paths, "finding": df["finding"]})
    out[["x", "y", "w", "h"]] = xywh
    return out.reset_index(drop=True)


def _load_masks(path: Path, root: Path, known: set[str], findings: set[str], problems: list[str],
                check_files: bool) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    df = _read_csv(path, problems)
    if df is None:
        return None
    missing = [c for c in MASK_COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"masks.csv: missing column(s) {missing}; it needs {', '.join(MASK_COLUMNS)}")
        return None
    abs_paths = _region_problems(df, "masks.csv", root, known, findings, problems)
    mask_paths = _resolve(root, df["mask_path"].fillna("").astype(str).str.strip().tolist())
    if check_files:
        msg = _missing_problem(mask_paths, root, "mask file(s) named in masks.csv")
        if msg:
            problems.append(msg)
    return pd.DataFrame({"path": abs_paths, "finding": df["finding"], "mask_path": mask_paths}).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- writing


def relative_paths(paths: Iterable[str], folder: Path) -> list[str]:
    """Paths inside `folder` become relative to it (POSIX separators); others stay absolute."""
    base = str(folder.resolve())
    prefix = base.rstrip(os.sep) + os.sep
    out = []
    for p in paths:
        p = str(p)
        a = p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
        out.append(a[len(prefix):].replace(os.sep, "/") if a.startswith(prefix) else a)
    return out


def manifest_csv_text(df: pd.DataFrame, folder: Path) -> str:
    """The CSV text `write_manifest` writes (exposed for tests and previews).

    Label cells are rendered with numpy as one fixed-width byte block (``'1,'`` / ``'0,'`` / NUL for
    blank, stripped afterwards) instead of pandas' per-cell formatting, which took ~15 s for
    PadChest's 160k rows x 192 findings.
    """
    if "path" not in df.columns:
        raise ValueError("manifest DataFrame needs a 'path' column")
    findings = [c for c in df.columns if c not in RESERVED]
    if not findings:
        raise ValueError("manifest DataFrame has no finding columns")
    try:
        values = df[findings].to_numpy(dtype=np.float32)  # (N, F)
    except (TypeError, ValueError) as e:
        raise ValueError(f"finding columns must hold 1, 0 or NaN: {e}") from None
    bad = ~(np.isnan(values) | (values == 0) | (values == 1))
    if bad.any():
        raise ValueError(f"finding columns must hold 1, 0 or NaN; found {values[bad][:5].tolist()}")
    n, f = values.shape
    block = np.full((n, 2 * f), ord(","), dtype=np.uint8)  # (N, 2F): value, separator, value, ...
    block[:, 0::2] = np.where(values == 1, ord("1"), np.where(values == 0, ord("0"), 0))
    block[:, -1] = ord("\n")
    cells = block.tobytes().decode("ascii")
    width = 2 * f
    prefix = [c for c in RESERVED if c in df.columns]  # path first, then patient_id / split
    cols = [relative_paths(df["path"].astype(str), folder)]
    cols += [df[c].fillna("").astype(str).tolist() for c in prefix[1:]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(prefix + findings)
    w = csv.writer(buf, lineterminator=",")  # a prefix row ends with the separator before the labels
    for i, row in enumerate(zip(*cols)):
        w.writerow(row)
        buf.write(cells[i * width:(i + 1) * width])
    return buf.getvalue().replace("\x00", "")


def write_manifest(df: pd.DataFrame, csv_path: str | Path, boxes: pd.DataFrame | None = None,
                   masks: pd.DataFrame | None = None) -> Path:
    """Write a manifest (and boxes.csv / masks.csv beside it) atomically; returns the CSV path.

    `df` holds `path` (absolute, or relative to the CSV's folder), optional `patient_id` / `split`,
    and finding columns with 1 / 0 / NaN. Image paths inside the CSV's folder are written relative to
    it, others absolute. boxes/masks are written first, the manifest last, each atomically (engine.atomic).
    When `boxes` / `masks` are None an existing boxes.csv / masks.csv is left as it is.
    """
    csv_path = Path(csv_path).expanduser().resolve()
    folder = csv_path.parent
    text = manifest_csv_text(df, folder)  # validate before touching anything
    if boxes is not None:
        missing = [c for c in BOX_COLUMNS if c not in boxes.columns]
        if missing:
            raise ValueError(f"boxes DataFrame misses column(s) {missing}")
        b = boxes[list(BOX_COLUMNS)].copy()
        b["path"] = relative_paths(b["path"].astype(str), folder)
        atomic_write_text(folder / "boxes.csv", b.to_csv(index=False, lineterminator="\n"))
    if masks is not None:
        missing = [c for c in MASK_COLUMNS if c not in masks.columns]
        if missing:
            raise ValueError(f"masks DataFrame misses column(s) {missing}")
        m = masks[list(MASK_COLUMNS)].copy()
        m["path"] = relative_paths(m["path"].astype(str), folder)
        m["mask_path"] = relative_paths(m["mask_path"].astype(str), folder)
        atomic_write_text(folder / "masks.csv", m.to_csv(index=False, lineterminator="\n"))
    atomic_write_text(csv_path, text)
    return csv_path


def load_regions(csv_path: str | Path, manifest: "Manifest", kind: str) -> pd.DataFrame:
    """Read an explicit boxes.csv (`kind="box"`) or masks.csv (`kind="mask"`) for `manifest`.

    Paths in it are relative to its own folder. Validated like the ones beside a manifest;
    any problem raises ManifestError listing all of them.
    """
    p = Path(csv_path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"{kind} file not found: {p}")
    known, findings = set(manifest.df["path"]), set(manifest.findings)
    problems: list[str] = []
    if kind == "box":
        df = _load_boxes(p, p.parent, known, findings, problems)
    elif kind == "mask":
        df = _load_masks(p, p.parent, known, findings, problems, True)
    else:
        raise ValueError(f"kind must be 'box' or 'mask', not {kind!r}")
    if problems or df is None:
        raise ManifestError(problems or [f"{p} could not be read"], p)
    return df
