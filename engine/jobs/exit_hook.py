"""The one use of a private standard-library API in the job layer, isolated here on purpose.

`run_before_thread_shutdown(fn)` runs `fn()` when the interpreter exits normally (end of main,
Ctrl-C, SIGTERM turned into SystemExit), *before* the standard library shuts down its thread pools.
Plain `atexit` runs too late for the job runner: by then `concurrent.futures` refuses new work, so a
job still loading data would end as `failed` instead of saving its state and becoming `interrupted`.

There is no public API for this moment. CPython's `threading._register_atexit` (3.9+) is what
`concurrent.futures` itself uses: its hooks run first, newest first, from `threading._shutdown`.
tests/jobs/test_exit_hook.py fails loudly if it disappears or stops running before the pools shut
down; on an interpreter without it we fall back to `atexit` (the next start of a JobRunner then
marks such jobs `interrupted` anyway, see `Store.interrupt_orphans`).
"""
from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

__all__ = ["HAS_EARLY_EXIT_HOOK", "run_before_thread_shutdown"]

_register = getattr(threading, "_register_atexit", None)  # private CPython API: see the module docstring
HAS_EARLY_EXIT_HOOK = _register is not None


def run_before_thread_shutdown(fn: Callable[[], object]) -> None:
    """Call `fn()` at normal interpreter exit before thread pools shut down (plain atexit where unsupported).

    Raises RuntimeError when called during interpreter shutdown (threading's own refusal)."""
    if _register is not None:
        _register(fn)
    else:  # pragma: no cover - not CPython
        atexit.register(fn)
