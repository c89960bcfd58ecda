"""CSV files as spreadsheet programs save them: encoding (`decode_table`), separator
(`sniff_delimiter`) and a reader that keeps every cell as the text the user wrote."""
from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import pandas as pd



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
