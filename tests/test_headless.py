"""The engine must never import streamlit (ARCHITECTURE.md): check source and a real import."""
import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def test_engine_sources_do_not_import_streamlit():
    bad = [str(p) for p in ENGINE.rglob("*.py") if re.search(r"^\s*(import|from)\s+streamlit", p.read_text(), re.M)]
    assert bad == []


def test_importing_every_engine_module_leaves_streamlit_unloaded(fresh_interpreter):
    """Every engine module (but __main__) imported in a fresh interpreter (the session's shared subprocess,
    tests/conftest.py FRESH_INTERPRETER_CHECKS "streamlit_loaded_by_engine"): streamlit is not loaded."""
    assert fresh_interpreter["streamlit_loaded_by_engine"] is False, fresh_interpreter["streamlit_loaded_by_engine"]
