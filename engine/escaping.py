"""The two escapes for user-controlled text the product shows or writes (issue 22, item 6):

    escape_markdown(text)   text shown inside Markdown (st.markdown / st.error / captions / labels) stays text:
                            no live link, remote image, emphasis, heading, LaTeX or Streamlit directive
    csv_safe(df)            a table about to be written as CSV: cells that a spreadsheet would run as a
                            formula (leading = + - @ tab CR) are neutralized (OWASP "CSV Injection")

One helper each; every page and every CSV writer of the product goes through them.
"""
from __future__ import annotations

import re
import string

import pandas as pd

__all__ = ["FORMULA_LEADS", "csv_safe", "csv_safe_cell", "csv_safe_path", "escape_markdown"]

_PUNCT = frozenset(string.punctuation)  # ASCII punctuation: what CommonMark lets a backslash escape
_BREAKS = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_WJ = "\u2060"  # WORD JOINER: invisible, not a line-break opportunity, not a word character
_AUTOLINK = re.compile(r"(?i):(?=//)|(?<=ww)w(?=\.)|@")  # a WJ goes before each match (see escape_markdown)
# OWASP CSV Injection: cells starting with these are interpreted as formulas by Excel / LibreOffice / Sheets.
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def escape_markdown(text: object) -> str:
    """`text` as Markdown that renders as exactly that text, on one line.

    Every ASCII punctuation character gets a backslash (CommonMark's backslash escapes: links `[..](..)`,
    images `![..](..)`, autolinks `<..>`, emphasis, code, headings, lists, tables, HTML, `$` LaTeX and
    Streamlit's `:color[..]` / `:material/..:` directives all lose their meaning); line breaks and other
    control characters become one space, so a value cannot start a block of its own. GFM's bare-URL links
    (`http://x`, `www.x`, `a@b.c`) are found in the text after escapes are resolved (remark-gfm, which
    Streamlit uses), so an invisible WORD JOINER (U+2060) is put before the `://`, the last `w` of `www.`
    and the `@`: the browser shows the same characters, with no link (checked in headless Chromium).
    `None` becomes "".
    """
    if text is None:
        return ""
    s = _BREAKS.sub(" ", str(text))
    s = _AUTOLINK.sub(lambda m: _WJ + m.group(0), s)
    return "".join("\\" + ch if ch in _PUNCT else ch for ch in s)


def csv_safe_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a str starting with = + - @ tab or CR gets a leading `'`
    (OWASP's rule; spreadsheets then treat it as text, and the apostrophe shows what was done). Numbers,
    None/NaN and other str pass unchanged (a number such as -1 is data, not a formula)."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def csv_safe_path(value: object) -> object:
    """A file path cell made spreadsheet-safe without changing the file it names: a relative path starting
    with = + - @ (e.g. a class folder `-ve/x.png`) becomes `./-ve/x.png`; absolute paths start with `/` or
    a drive letter and pass unchanged. Tab / CR leads get the `'` of `csv_safe_cell`."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@")):
        return "./" + value
    return csv_safe_cell(value)


def csv_safe(df: pd.DataFrame, path_columns: tuple[str, ...] = ("path", "mask_path")) -> pd.DataFrame:
    """A copy of `df` whose text cells and column names pass `csv_safe_cell` (columns named in
    `path_columns`: `csv_safe_path`), ready for `to_csv`. Numeric columns are left as they are."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            fix = csv_safe_path if col in path_columns else csv_safe_cell
            out[col] = out[col].map(fix)
    out.columns = [csv_safe_cell(c) if isinstance(c, str) else c for c in out.columns]
    return out
