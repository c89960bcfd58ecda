"""Shared test fixtures: every test runs against throwaway workspace/checkpoint/weights folders."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "shipped"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("SCARCE_CXR_WORKSPACE", str(base / "workspace"))
    monkeypatch.setenv("SCARCE_CXR_CHECKPOINTS", str(base / "checkpoints"))
    monkeypatch.setenv("SCARCE_CXR_IMAGENET_DIR", str(base / "imagenet"))
    monkeypatch.setenv("SCARCE_CXR_SHIPPED", "")  # shipped backbones off; tests/models/test_shipped.py turns them on
    if "streamlit.testing.v1.app_test" in sys.modules:
        _cheaper_apptest()
    main = sys.modules.get("__main__")
    yield
    # Streamlit's AppTest leaves its script as __main__; a later test's multiprocessing "spawn" child would
    # re-run that script (AppTest.from_function's calls fail there) before its target: put pytest's back.
    if main is not None:
        sys.modules["__main__"] = main


def _cheaper_apptest() -> None:
    """Two costs Streamlit's AppTest pays on every run though nothing they depend on changes within a
    test process, paid once here (what the app's scripts do is untouched):
    - it scans every installed distribution's metadata for v2 components
      (streamlit.components.v2.manifest_scanner.scan_component_manifests: ~600 packages, ~0.3 s of CPU);
      nothing is installed during a test session, so the first scan's list is reused;
    - it makes a new ScriptCache per run, so app.py and the page scripts are read, rewritten for "magic"
      and compiled again each run; here the compiled code is kept per (path, mtime, size, magic on?)."""
    from streamlit.components.v2 import manifest_scanner

    scan = manifest_scanner.scan_component_manifests
    if getattr(scan, "_once", False):
        return
    found: list = []

    def once(max_workers=None):
        if not found:
            found.append(scan(max_workers))
        return list(found[0])

    once._once = True
    manifest_scanner.scan_component_manifests = once  # looked up at each call (a function-level import)

    import threading

    import streamlit.testing.v1.app_test as app_test
    import streamlit.testing.v1.local_script_runner as local_script_runner
    from streamlit import config
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache

    compiled: dict[tuple, object] = {}
    lock = threading.Lock()

    class KeptScriptCache(ScriptCache):
        def get_bytecode(self, script_path: str):
            path = os.path.abspath(script_path)
            st = os.stat(path)
            key = (path, st.st_mtime_ns, st.st_size, config.get_option("runner.magicEnabled"))
            with lock:
                code = compiled.get(key)
            if code is None:
                code = super().get_bytecode(path)
                with lock:
                    compiled[key] = code
            return code

    app_test.ScriptCache = KeptScriptCache
    local_script_runner.ScriptCache = KeptScriptCache


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory):
    """`phantom_set(n, size, seed, **generate_kw)` -> the manifest CSV of a phantom dataset
    (engine.data.phantom.generate), made once per test session for the same arguments and shared by every
    test and module asking for it. READ-ONLY: a test that changes the images, masks or manifest generates
    its own. It lies outside each test's tmp folder and its env folders (`_isolated_dirs`), so nothing of a
    test's workspace or checkpoints is shared through it."""
    made: dict[tuple, Path] = {}

    def make(n: int, size: int, seed: int, **kw) -> Path:
        key = (n, size, seed, *sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items()))
        if key not in made:
            from engine.data.phantom import generate

            made[key] = generate(tmp_path_factory.mktemp("phantom-set") / "ph", n=n, size=size, seed=seed, **kw)
        return made[key]

    return make


# Properties of a fresh interpreter, checked in ONE subprocess per test session (each check alone would pay an
# interpreter start and the torch import): (name, code) in the order they run; a check's `result` (default "ok")
# or its traceback is reported under its name. Order matters: the lazy-import check must run before anything
# imports torch.
REPO_ROOT = Path(__file__).resolve().parents[1]
_SSL_IMPORT_ORDERS = "".join(
    "for m in [m for m in sys.modules if m == 'engine.ssl' or m.startswith('engine.ssl.')]:\n"
    "    del sys.modules[m]\n"
    "import engine; engine.__dict__.pop('ssl', None); pretrain = pretrain_images = None\n"
    f"{first}\n{then}\n"
    "from engine.ssl import pretrain_images\n"
    "assert isinstance(pretrain, types.ModuleType) and pretrain.pretrain_images is pretrain_images\n"
    "assert callable(pretrain_images) and pretrain_images.__name__ == 'pretrain_images'\n"
    for first, then in (("import engine.ssl.pretrain", "from engine.ssl import pretrain, pretrain_images"),
                        ("from engine.ssl import pretrain_images", "from engine.ssl import pretrain")))
FRESH_INTERPRETER_CHECKS: tuple[tuple[str, str], ...] = (
    # tests/ssl/test_ssl_pretrain.py: the registry, presets, the CLI parser and the package import no torch;
    # then both import orders (submodule first / package name first) give the module and the function. Between
    # the orders every engine.ssl module is dropped from sys.modules, so each order starts from an unimported
    # package (torch itself stays loaded).
    ("ssl_stays_lazy",
     ("import sys, types, engine.ssl.registry, engine.ssl.presets, engine.ssl.commands, engine.ssl\n"
      "from engine.ssl import METHODS\n"
      "assert 'torch' not in sys.modules and 'masked_contrastive' in METHODS\n") + _SSL_IMPORT_ORDERS),
    # tests/test_headless.py: importing every engine module leaves streamlit unloaded (result: whether it is loaded)
    ("streamlit_loaded_by_engine",
     ("import importlib, sys\n"
      "for p in sorted((ROOT / 'engine').rglob('*.py')):\n"
      "    if p.name != '__main__.py':\n"
      "        importlib.import_module('.'.join(p.relative_to(ROOT).with_suffix('').parts))\n"
      "result = 'streamlit' in sys.modules\n")),
)


@pytest.fixture(scope="session")
def fresh_interpreter() -> dict:
    """Runs FRESH_INTERPRETER_CHECKS in one new interpreter; returns {name: result or "FAILED\\n<traceback>"}."""
    import json
    import subprocess

    runner = (
        "import json, sys, traceback\nfrom pathlib import Path\n"
        f"ROOT = Path({str(REPO_ROOT)!r})\nresults = {{}}\n"
        f"for name, code in {FRESH_INTERPRETER_CHECKS!r}:\n"
        "    ns = {'ROOT': ROOT}\n"
        "    try:\n"
        "        exec(code, ns)\n"
        "        results[name] = ns.get('result', 'ok')\n"
        "    except BaseException:\n"
        "        results[name] = 'FAILED\\n' + traceback.format_exc()\n"
        "print(json.dumps(results))\n"
    )
    out = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def pytest_configure(config):
    # Keep torch from oversubscribing a 2-core machine (CI runs several processes: server, browser, tests).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

