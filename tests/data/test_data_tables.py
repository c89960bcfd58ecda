"""Tables as spreadsheets and public datasets write them (issue 13, item 6): manifest CSVs in every
encoding and separator Excel / LibreOffice / Google Sheets save, cells quoted as written, and the NIH
Kaggle sample's sample_labels.csv."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.cli import main as cli
from engine.data.adapters import from_nih
from engine.data.manifest import ManifestError, decode_table, load_manifest, sniff_delimiter

CASES = Path(__file__).resolve().parents[2].parent / "shared" / "cases"


@pytest.fixture(scope="module")
def cases() -> Path:
    if not CASES.is_dir():
        pytest.skip(f"shared cases not found at {CASES}")
    return CASES


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _check(csv: Path, capsys) -> tuple[int, dict]:
    rc = cli(["manifest", "check", str(csv)])
    return rc, _strict_json(capsys.readouterr().out)


@pytest.mark.parametrize("name, finding", [("comma_cp1252.csv", "neumonía"), ("semicolon_utf8.csv", "pneumonia")])
def test_case_spreadsheet_csvs_read_like_a_plain_utf8_comma_csv(cases, tmp_path, capsys, name, finding):
    src = cases / "spreadsheet-csv" / name
    rc, out = _check(src, capsys)
    assert rc == 0 and out["ok"] and out["rows"] == 3
    assert out["findings"] == {finding: {"positive": 1, "negative": 2, "unknown": 0}}
    # the same rows written as a plain UTF-8 comma CSV (absolute paths) load to the same table
    rows = [line.split(sniff_delimiter(line)) for line in decode_table(src.read_bytes())[0].splitlines()]
    plain = tmp_path / "plain.csv"
    body = [",".join([str((src.parent / r[0]).resolve()), *r[1:]]) for r in rows[1:]]  # resolved like the loader
    plain.write_text("\n".join([",".join(rows[0]), *body]) + "\n", encoding="utf-8")
    a, b = load_manifest(src), load_manifest(plain)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert a.findings == b.findings == [finding]


def _images(folder: Path, n: int = 4) -> list[str]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(folder / "img" / f"{i}.png")
    return [f"img/{i}.png" for i in range(n)]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16"])
@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_every_encoding_and_separator_spreadsheets_write(tmp_path, encoding, sep):
    paths = _images(tmp_path)
    rows = [["path", "patient_id", "neumonía", "derrame pleural"]]
    rows += [[p, f"José {i // 2}", str(i % 2), "" if i == 3 else "0"] for i, p in enumerate(paths)]
    text = "\r\n".join(sep.join(r) for r in rows) + "\r\n"
    (tmp_path / "m.csv").write_bytes(text.encode(encoding))
    m = load_manifest(tmp_path / "m.csv")
    assert m.findings == ["neumonía", "derrame pleural"]
    assert m.df["patient_id"].tolist() == ["José 0", "José 0", "José 1", "José 1"]
    np.testing.assert_array_equal(m.labels("neumonía"), [0, 1, 0, 1])
    np.testing.assert_array_equal(m.labels("derrame pleural"), [0, 0, 0, np.nan])


def test_decode_table_prefers_utf8_and_detects_windows_1252():
    assert decode_table("a,é\n".encode("utf-8")) == ("a,é\n", "UTF-8")
    assert decode_table(b"\xef\xbb\xbfa,b\n") == ("a,b\n", "UTF-8")              # BOM stripped
    assert decode_table("a,é,€\n".encode("cp1252")) == ("a,é,€\n", "Windows-1252")
    assert decode_table(b"a,\x81\n")[1] == "Latin-1"                              # undefined in cp1252
    assert decode_table("a\tb\n".encode("utf-16")) == ("a\tb\n", "UTF-16")
    assert sniff_delimiter('path;"a;b";c') == ";" and sniff_delimiter("path,x") == ","
    assert sniff_delimiter("path\tx;y") == "\t" or sniff_delimiter("path\tx;y") == ";"
    assert sniff_delimiter("path") == ","


def test_semicolon_boxes_with_decimal_commas(tmp_path):
    paths = _images(tmp_path, 2)
    (tmp_path / "m.csv").write_text("path;nodule\n" + "".join(f"{p};{i}\n" for i, p in enumerate(paths)))
    (tmp_path / "boxes.csv").write_text(f"path;finding;x;y;w;h\n{paths[1]};nodule;1,5;2;3,25;4\n")
    b = load_manifest(tmp_path / "m.csv").boxes
    assert b[["x", "y", "w", "h"]].iloc[0].tolist() == [1.5, 2.0, 3.25, 4.0]


def test_bad_cells_are_quoted_as_written(tmp_path, capsys):
    paths = _images(tmp_path)
    values = ["True", "yes", "-1", "1.0"]   # 1.0 is a number equal to 1: accepted
    (tmp_path / "m.csv").write_text("path,nodule\n" + "".join(f"{p},{v}\n" for p, v in zip(paths, values)))
    with pytest.raises(ManifestError) as e:
        load_manifest(tmp_path / "m.csv")
    (msg,) = e.value.problems
    assert "on 3 row(s) (line 2: 'True'; line 3: 'yes'; line 4: '-1')" in msg
    assert "np." not in msg and "True_" not in msg
    rc, out = _check(tmp_path / "m.csv", capsys)
    assert rc == 1 and out["ok"] is False and "line 2: 'True'" in out["problems"][0]


@pytest.mark.parametrize("text, needle", [
    ("path;nodule\na.png;1;extra;cells\nb.png;0\n", "line 2 has 4 cells but the header has 2"),
    ("path;nodule\na.png;1\nb.png;0;x\n", "Expected 2 fields in line 3"),
])
def test_ragged_rows_are_refused_naming_the_separator(tmp_path, text, needle):
    """Extra cells are never shifted into other columns (pandas' index inference) nor dropped."""
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match="separated by semicolons") as e:
        load_manifest(tmp_path / "m.csv")
    assert needle in str(e.value)


def test_trailing_separators_are_harmless(tmp_path):
    paths = _images(tmp_path, 2)
    (tmp_path / "m.csv").write_text("path;nodule;\n" + "".join(f"{p};{i};\n" for i, p in enumerate(paths)))
    np.testing.assert_array_equal(load_manifest(tmp_path / "m.csv").labels("nodule"), [0, 1])


# ------------------------------------------------------------------------------------- NIH tables


def test_case_nih_kaggle_sample_labels(cases, tmp_path, capsys):
    root = cases / "nih-kaggle-sample" / "kaggle_sample"
    out = tmp_path / "m.csv"
    assert cli(["manifest", "from-nih", str(root), "--out", str(out)]) == 0
    m = load_manifest(out)
    assert len(m) == 4
    assert m.findings == ["cardiomegaly", "emphysema", "hernia", "infiltration"]
    by_name = {Path(p).name: row for p, row in zip(m.paths, m.df[m.findings].to_numpy())}
    assert by_name["00000001_001.png"].tolist() == [1, 1, 0, 0]
    assert by_name["00000002_000.png"].tolist() == [0, 0, 0, 0]                 # No Finding
    assert by_name["00000003_000.png"].tolist() == [0, 0, 1, 1]
    assert m.df["patient_id"].tolist() == ["1", "1", "2", "3"]


def test_nih_prefers_data_entry_and_names_both_tables_when_missing(cases, tmp_path):
    root = tmp_path / "nih"
    shutil.copytree(cases / "nih-kaggle-sample" / "kaggle_sample", root)
    table = pd.read_csv(root / "sample_labels.csv", dtype=str, index_col=False)
    table.iloc[:2].to_csv(root / "Data_Entry_2017.csv", index=False)             # the full release's name
    assert len(load_manifest(from_nih(root, tmp_path / "a.csv"))) == 2
    (root / "Data_Entry_2017.csv").unlink()
    (root / "sample_labels.csv").unlink()
    with pytest.raises(ValueError, match=r"no NIH label table .*Data_Entry_2017\*\.csv.*sample_labels\*\.csv"):
        from_nih(root, tmp_path / "b.csv")
    (root / "sample_labels.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(ValueError, match="is not an NIH label table: it needs the columns Image Index"):
        from_nih(root, tmp_path / "c.csv")
