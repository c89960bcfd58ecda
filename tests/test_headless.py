"""The engine must never import streamlit (ARCHITECTURE.md): check source and a real import."""
import re
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def test_engine_sources_do_not_import_streamlit():
    bad = [str(p) for p in ENGINE.rglob("*.py") if re.search(r"^\s*(import|from)\s+streamlit", p.read_text(), re.M)]
    assert bad == []


def test_importing_every_engine_module_leaves_streamlit_unloaded():
    mods = sorted(
        ".".join(p.relative_to(ENGINE.parent).with_suffix("").parts)
        for p in ENGINE.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + (
        "print('streamlit' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ENGINE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
