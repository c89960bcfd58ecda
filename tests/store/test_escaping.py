"""engine.escaping (issue 22, item 6): user text shown as Markdown stays text, and every CSV the product writes
neutralizes cells a spreadsheet would run as formulas (OWASP CSV injection)."""
from __future__ import annotations

import io
import re
import string

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.escaping import csv_safe, csv_safe_cell, csv_safe_path, escape_markdown
from engine.store import Store

HOSTILE_MD = [
    "[click](http://evil.example/x)", "![x](http://evil.example/pixel.png)", "<http://evil.example>",
    "http://evil.example/a", "www.evil.example", "**bold** _it_ `code`", "# heading", "- item", "1. item",
    "> quote", "<img src=x onerror=alert(1)>", "$x^2$", ":red[alarm] :material/home:", "a | b\n|---|---|",
    "line1\n\n[ref]: http://evil.example", "~~strike~~", "\\[x](y)", "mail bob@evil.example", "WWW.EVIL.EXAMPLE",
    "ftp://x https://y",
]


# remark-gfm's literal autolinks (mdast-util-gfm-autolink-literal): a protocol URL, www., an e-mail address
GFM_AUTOLINK = re.compile(r"(?i)(https?://|mailto:|xmpp:)|www(?=\.)|[-.\w+]+@[-\w]+\.")


def _unescaped_punctuation(md: str) -> list[str]:
    """ASCII punctuation in `md` that is not backslash-escaped (CommonMark: an escaped punctuation character is a
    literal, so with none left no link, image, autolink, emphasis, code, heading, list, table, HTML, LaTeX `$` or
    Streamlit `:directive[...]` can start)."""
    out, k = [], 0
    while k < len(md):
        if md[k] == "\\" and k + 1 < len(md) and md[k + 1] in string.punctuation:
            k += 2
            continue
        if md[k] in string.punctuation:
            out.append(md[k])
        k += 1
    return out


@pytest.mark.parametrize("text", HOSTILE_MD)
def test_hostile_markdown_renders_as_its_own_text(text):
    out = escape_markdown(text)
    assert _unescaped_punctuation(out) == []
    assert "\n" not in out and "\r" not in out  # one line: no block (heading, list, quote, table) can start
    # what the browser shows once the escapes are resolved: the text itself (line breaks folded to spaces, and an
    # invisible word joiner where GFM would otherwise turn it into a link: remark-gfm finds bare http://, www.
    # and e-mail addresses in the resolved text, so escapes alone do not stop them)
    shown = re.sub(r"\\(.)", r"\1", out)
    assert shown.replace("\u2060", "") == re.sub(r"[\r\n]+", " ", text)
    assert not GFM_AUTOLINK.search(shown), shown


def test_escape_markdown_leaves_plain_text_readable():
    assert escape_markdown("image-000042") == "image\\-000042"
    assert escape_markdown("nodule") == "nodule" and escape_markdown(None) == ""
    assert escape_markdown(12) == "12"
    every = string.punctuation
    assert escape_markdown(every) == "".join(("\u2060" if c == "@" else "") + "\\" + c for c in every)


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://x")'])
def test_formula_cells_are_escaped(cell):
    assert csv_safe_cell(cell) == "'" + cell


def test_other_cells_pass_and_paths_keep_their_file():
    assert csv_safe_cell("train") == "train" and csv_safe_cell(-1) == -1 and csv_safe_cell(None) is None
    assert csv_safe_cell("a=b") == "a=b"
    assert csv_safe_path("-ve/x.png") == "./-ve/x.png" and csv_safe_path("/abs/=x.png") == "/abs/=x.png"
    assert csv_safe_path("C:/data/x.png") == "C:/data/x.png"
    df = pd.DataFrame({"path": ["+ve/a.png", "/x/b.png"], "split": ["=cmd|' /C calc'!A0", "test"],
                       "-neg": [1.0, np.nan], "n": [-1, 2]})
    out = csv_safe(df)
    assert out["path"].tolist() == ["./+ve/a.png", "/x/b.png"]
    assert out["split"].tolist() == ["'=cmd|' /C calc'!A0", "test"]
    assert list(out.columns) == ["path", "split", "'-neg", "n"] and out["n"].tolist() == [-1, 2]
    assert df["split"][0].startswith("=")  # the input is not changed


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_manifest_export_escapes_a_hostile_split_cell(tmp_path):
    """Issue 22 item 9: a manifest's `split` cell was exported unescaped for spreadsheets."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"a{i}.png").write_bytes(_png(i))
    (src / "manifest.csv").write_text("path,patient_id,split,mass\n" + "".join(
        f"a{i}.png,p{i},{'=1+2' if i == 0 else 'train'},{i % 2}\n" for i in range(4)))
    with Store(tmp_path / "ws") as store:
        store.import_manifest(src / "manifest.csv")
        out = store.export_manifest(tmp_path / "out" / "m.csv")
    rows = out.read_text().splitlines()
    assert not any(c.startswith(("=", "+", "-", "@")) for r in rows for c in r.split(","))
    assert any(",'=1+2," in r for r in rows)


def test_write_manifest_escapes_text_cells_but_keeps_relative_paths_valid(tmp_path):
    from engine.data.manifest import load_manifest, write_manifest

    (tmp_path / "-ve").mkdir()
    for i in range(4):
        (tmp_path / "-ve" / f"{i}.png").write_bytes(_png(10 + i))
    df = pd.DataFrame({"path": [str(tmp_path / "-ve" / f"{i}.png") for i in range(4)],
                       "patient_id": ["@p0", "p1", "p2", "p3"], "split": ["", "", "", ""],
                       "mass": [1.0, 0.0, 1.0, 0.0]})
    csv = write_manifest(df, tmp_path / "manifest.csv")
    text = csv.read_text()
    assert "./-ve/0.png" in text and "'@p0" in text
    m = load_manifest(csv)  # the escaped relative paths still name the files
    assert [p for p in m.df["path"]] == [str((tmp_path / "-ve" / f"{i}.png").resolve()) for i in range(4)]
