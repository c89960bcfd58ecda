"""Shared test fixtures: every test runs against throwaway workspace/checkpoint/weights folders."""
from __future__ import annotations

import os
import sys
from collections import Counter
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

    from streamlit import config
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner

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


def pytest_configure(config):
    # Keep torch from oversubscribing a 2-core machine (CI runs several processes: server, browser, tests).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


BROWSER_UNIT = "tests/e2e"  # where the browser-marked tests live


def work_unit(nodeid: str) -> str:
    """The unit of work `make test` hands to one worker: the browser folder as a whole, else the test's file."""
    path = nodeid.split("::", 1)[0]
    return BROWSER_UNIT if path.startswith(BROWSER_UNIT + "/") else path


def pytest_collection_modifyitems(config, items):
    """Order the units of work (work_unit) longest first: the browser folder, then the files, most tests first.

    Under `make test` (pytest-xdist `--dist loadfile --no-loadscope-reorder`, pytest_xdist_make_scheduler) the
    units are handed out in this order to whichever worker is free. xdist's own order (most tests first) put the
    one-test browser modules last, and a 100 s browser module started at the end kept one worker busy while
    the other had nothing left to do (measured: ~60 s of a 10.5-minute run). Longest first is the classic
    fix (LPT scheduling); a file's test count is the cost estimate, except that the browser tests are long."""
    counts = Counter(work_unit(item.nodeid) for item in items)

    def key(item) -> tuple[bool, int, str]:
        unit = work_unit(item.nodeid)
        return (unit != BROWSER_UNIT, -counts[unit], unit)

    items.sort(key=key)  # stable: a unit's tests keep their order


BROWSER_NICE, OTHER_NICE = 0, 10


def _nice(value: int) -> None:
    """Set this thread's nice value (Linux keeps one per thread; threads and processes started later inherit it).
    Raising it back needs CAP_SYS_NICE (root): without it the worker simply stays at OTHER_NICE, like the others."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except (OSError, AttributeError):
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under pytest-xdist, a browser test (its server and Chromium included) runs at normal priority and every
    other test at nice OTHER_NICE: the browser tests wait on page loads and slow down badly when they compete
    for the cores, while the other tests only need the cores busy (see pytest_xdist_auto_num_workers)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _nice(BROWSER_NICE if item.get_closest_marker("browser") else OTHER_NICE)
    yield


@pytest.hookimpl(optionalhook=True)  # xdist's hooks: pytest -p no:xdist still runs
def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores. One worker runs the browser tests (see
    pytest_xdist_make_scheduler), which wait on page loads about half the time; the others, at a lower
    priority (pytest_runtest_protocol), fill the cores meanwhile. $PYTEST_XDIST_AUTO_NUM_WORKERS still wins."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores + 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with work_unit's units: the browser tests are one unit, so one worker runs them one
    after the other, first (pytest_collection_modifyitems puts them first and `--no-loadscope-reorder` keeps
    that order), instead of three browser servers and their Chromiums competing for the cores."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class BrowserAsOneUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return BrowserAsOneUnit(config, log)
