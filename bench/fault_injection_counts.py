"""Issue 14's closing counts, reproducible: faults injected and survived, hostile inputs tried and refused.

Runs the fault-injection tests (pytest, JUnit XML report with captured output) and counts test cases
by category; parametrized cases count one each (every hostile name is one case per kind of name it is
tried as). For `kill -9` the kills that actually landed are read from the tests' own output ("kill -9
during import: 2 of 2 landed"), since a kill can miss when the work finishes first. A case that fails
or errors is counted as not survived / not refused, and the script exits 1.

    .venv/bin/python bench/fault_injection_counts.py            # ~3-4 min on 2 cores (the kill -9 suite)
    .venv/bin/python bench/fault_injection_counts.py --no-slow  # without the kill -9 suite

Categories (file, test-name pattern):
  faults   full disk      store/test_full_disk.py, "full_disk|free_space|commit" in store/test_store_reliability.py
           kill -9        jobs/test_kill9.py (kills landed), jobs/test_orphan_files.py "kill"
           two writers    jobs/test_two_writers.py "two_|stopped|reserves|refuses_a_name", jobs/test_cli_reservations.py,
                          "conflict|rolls_back|never_flips" in store/test_store_reliability.py
           leftovers      jobs/test_orphan_files.py, "temp" in jobs/test_two_writers.py
           store open     store/test_store_open_errors.py (locked, read-only mount, missing, not a database, app)
           deleted db     "deleted_or_replaced" in store/test_store_open_errors.py
           FIFO           "fifo" in data/test_small_faults.py
           kill pretrain  the 300 s case of ssl/test_ssl_first_save.py (a kill before the first periodic save)
  hostile  names          "hostile|escape" in store/test_names.py, store/test_store_reliability.py, jobs/test_two_writers.py
           crafted files  "crafted|nan" in fewshot/test_fewshot_classifier_trust.py
           decompression  "refused" in data/test_data_io_decompression.py and store/test_store_names_and_cost.py
           file names     "identifying|without_its_path" in store/test_store_names_and_cost.py
           archives       store/test_archive_budget.py, app/test_app_archive_upload.py (ZIP bombs, absurd
                          member sizes, many-member and non-image members, cancel)
           ckpt json      "malformed|bad_ones|survive" in models/test_registry_bad_files.py
           weights files  "imagenet|other_objects|run_state" in models/test_registry_bad_files.py
           extreme floats "float32_tiff" in data/test_small_faults.py
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (group, category, test file, test-name regex)
RULES: list[tuple[str, str, str, str]] = [
    ("faults", "full disk", "tests/store/test_full_disk.py", r"."),
    ("faults", "full disk", "tests/store/test_store_reliability.py", r"full_disk|free_space|commit"),
    ("faults", "kill -9", "tests/jobs/test_kill9.py", r"."),
    ("faults", "kill -9", "tests/jobs/test_orphan_files.py", r"kill"),
    ("faults", "two writers", "tests/jobs/test_two_writers.py", r"two_|stopped|reserves|refuses_a_name"),
    ("faults", "two writers", "tests/jobs/test_cli_reservations.py", r"."),
    ("faults", "two writers", "tests/store/test_store_reliability.py", r"conflict|rolls_back|never_flips"),
    ("faults", "leftovers", "tests/jobs/test_orphan_files.py", r"live|adopts|ignores"),
    ("faults", "leftovers", "tests/jobs/test_two_writers.py", r"temp"),
    # issue 22: store open errors, a database deleted under the app, a FIFO, a kill before the first save
    ("faults", "store open", "tests/store/test_store_open_errors.py", r"locked|busy|read_only|missing|not_a_data|app_"),
    ("faults", "deleted db", "tests/store/test_store_open_errors.py", r"deleted_or_replaced"),
    ("faults", "FIFO", "tests/data/test_small_faults.py", r"fifo"),
    ("faults", "kill pretrain", "tests/ssl/test_ssl_first_save.py", r"last_minutes\[300"),
    # issue 22: every Data-page write under a full disk (injected and a real full tmpfs) and a locked database
    ("faults", "page writes", "tests/app/test_data_page_faults.py", r"under_fault|invalid_column"),
    ("faults", "page writes", "tests/app/test_data_page_real_full_disk.py", r"."),
    ("hostile", "names", "tests/store/test_names.py", r"hostile|escape"),
    ("hostile", "names", "tests/store/test_store_reliability.py", r"hostile"),
    ("hostile", "names", "tests/jobs/test_two_writers.py", r"hostile|escape"),
    ("hostile", "crafted files", "tests/fewshot/test_fewshot_classifier_trust.py", r"crafted|nan_classifier"),
    ("hostile", "decompression", "tests/data/test_data_io_decompression.py", r"refused"),
    ("hostile", "decompression", "tests/store/test_store_names_and_cost.py", r"refused"),
    ("hostile", "file names", "tests/store/test_store_names_and_cost.py", r"identifying|without_its_path"),
    # issue 22: archive bombs and many-member archives, malformed checkpoint json, unreadable weights files
    ("hostile", "archives", "tests/store/test_archive_budget.py", r"."),
    ("hostile", "archives", "tests/app/test_app_archive_upload.py", r"."),
    ("hostile", "ckpt json", "tests/models/test_registry_bad_files.py", r"malformed|bad_ones|survive"),
    ("hostile", "weights files", "tests/models/test_registry_bad_files.py", r"imagenet|other_objects|run_state"),
    ("hostile", "extreme floats", "tests/data/test_small_faults.py", r"float32_tiff"),
    # issue 22: user text rendered as Markdown (links, remote images) and formula cells in CSV exports
    ("hostile", "Markdown / CSV", "tests/store/test_escaping.py", r"hostile|formula|escapes"),
    ("hostile", "Markdown / CSV", "tests/e2e/test_e2e_hostile_markdown.py", r"."),
]
KILLS = re.compile(r"kill -9 during ([\w ]+): (\d+) of (\d+) landed")


def _case_file(case: ET.Element) -> str:
    mod = case.get("classname", "")  # "tests.store.test_full_disk"
    return mod.replace(".", "/") + ".py"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-slow", action="store_true", help="leave out the slow kill -9 suite")
    args = ap.parse_args()
    files = sorted({r[2] for r in RULES})
    if args.no_slow:
        files.remove("tests/jobs/test_kill9.py")
    fewshot = "tests/fewshot/test_fewshot_classifier_trust.py"
    targets = [f for f in files if f != fewshot]
    if fewshot in files:  # only its crafted-file cases (the rest trains classifiers)
        targets += [f"{fewshot}::test_crafted_classifier_files_are_refused_with_a_clear_error",
                    f"{fewshot}::test_nan_classifier_case_is_refused_and_predict_never_prints_nan"]
    cases, returncode = _run(targets)
    if cases is None:
        return 2
    ok, bad, skipped, kills = _count(cases)
    f_bad, h_bad = _report(ok, bad, skipped, kills)
    return 0 if returncode == 0 and not f_bad and not h_bad else 1


def _run(targets: list[str]) -> tuple[list[ET.Element] | None, int]:
    """pytest on `targets` with a JUnit report: (its test cases, pytest's exit status); None when no report."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "-o", "junit_logging=system-out", *targets]
        print("$", " ".join(cmd[2:]), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
        print("pytest:", *tail)
        if not xml.exists():
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return None, proc.returncode
        return list(ET.parse(xml).getroot().iter("testcase")), proc.returncode


def _count(cases: list[ET.Element]) -> tuple[dict, dict, dict, list[int]]:
    """(survived/refused, not, skipped) per (group, category), and [kills landed, kills tried]."""
    ok: dict[tuple[str, str], int] = defaultdict(int)
    bad: dict[tuple[str, str], int] = defaultdict(int)
    skipped: dict[tuple[str, str], int] = defaultdict(int)
    kills = [0, 0]
    for case in cases:
        f, name = _case_file(case), case.get("name", "")
        outcome = ("skipped" if case.find("skipped") is not None else
                   "failed" if case.find("failure") is not None or case.find("error") is not None else "passed")
        out = "".join(e.text or "" for e in case.iter("system-out"))
        for group, cat, rf, rx in RULES:
            if rf != f or not re.search(rx, name):
                continue
            key = (group, cat)
            if cat == "kill -9" and f.endswith("test_kill9.py"):
                m = KILLS.search(out)
                landed, tried = (int(m.group(2)), int(m.group(3))) if m else (0, 0)
                kills[0] += landed
                kills[1] += tried
                n = landed if outcome == "passed" else 0
                ok[key] += n
                bad[key] += landed - n if outcome != "skipped" else 0
                skipped[key] += outcome == "skipped"
            else:
                {"passed": ok, "failed": bad, "skipped": skipped}[outcome][key] += 1
            break  # one category per case
    return ok, bad, skipped, kills


def _report(ok: dict, bad: dict, skipped: dict, kills: list[int]) -> tuple[int, int]:
    """Print the table and the two closing lines; returns (faults not survived, hostile inputs not refused)."""
    print()
    print(f"{'group':8} {'category':14} {'survived/refused':>16} {'not':>5} {'skipped':>8}")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in dict.fromkeys((g, c) for g, c, _, _ in RULES):
        t = totals[key[0]]
        t[0] += ok[key]
        t[1] += bad[key]
        t[2] += skipped[key]
        print(f"{key[0]:8} {key[1]:14} {ok[key]:>16} {bad[key]:>5} {skipped[key]:>8}")
    f_ok, f_bad, f_sk = totals["faults"]
    h_ok, h_bad, h_sk = totals["hostile"]
    print()
    print(f"faults injected: {f_ok + f_bad}, survived: {f_ok}, not survived: {f_bad}, skipped cases: {f_sk}"
          + (f" (kill -9: {kills[0]} of {kills[1]} attempted kills landed)" if kills[1] else ""))
    print(f"hostile inputs tried: {h_ok + h_bad}, refused: {h_ok}, not refused: {h_bad}, skipped cases: {h_sk}")
    return f_bad, h_bad

if __name__ == "__main__":
    sys.exit(main())
