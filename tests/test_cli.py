"""The CLI parser builds without importing torch, so `python -m engine info` stays fast."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_parser_builds_without_heavy_imports():
    code = (
        "import sys; from engine.cli import build_parser; p = build_parser();"
        "print(sorted(m for m in ('torch', 'torchvision', 'pydicom', 'sklearn', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_documented_command_is_registered():
    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    expected = {"info", "manifest", "phantom", "cache", "inits", "fetch-imagenet", "pretrain", "sweep", "classify",
                "predict", "gradcam"}
    assert expected <= set(sub.choices), expected - set(sub.choices)


def test_user_error_exits_2_with_message(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "engine", "info", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
