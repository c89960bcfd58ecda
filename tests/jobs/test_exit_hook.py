"""engine.jobs.exit_hook: the one private standard-library API of the job layer (issue 15 item 6).

If a Python upgrade removes `threading._register_atexit` or runs its hooks after the thread pools
have shut down, these tests fail, and JobRunner.interrupt_on_exit needs another way to stop jobs
before `concurrent.futures` refuses work."""
from __future__ import annotations

import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.python_implementation() != "CPython", reason="the hook is CPython's")
def test_the_private_hook_still_exists():
    from engine.jobs.exit_hook import HAS_EARLY_EXIT_HOOK

    assert callable(getattr(threading, "_register_atexit", None)), "threading._register_atexit is gone"
    assert HAS_EARLY_EXIT_HOOK


def test_the_hook_runs_at_exit_while_thread_pools_still_accept_work():
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from engine.jobs.exit_hook import run_before_thread_shutdown\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(lambda: None).result()\n"
        "def hook():\n"
        "    print('pool works at exit:', pool.submit(lambda: 41 + 1).result(), flush=True)\n"
        "run_before_thread_shutdown(hook)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pool works at exit: 42" in out.stdout, (out.stdout, out.stderr)
