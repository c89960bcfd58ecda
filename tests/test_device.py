"""engine.device: CPU thread choice for training (measured, or as asked, or from the environment)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_as_asked_and_from_the_environment(monkeypatch):
    from engine.device import configure_cpu_threads

    assert configure_cpu_threads(2) == (2, "CPU threads: 2 (as asked)") and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n, why = configure_cpu_threads("auto")
    assert n == 1 == torch.get_num_threads() and "$OMP_NUM_THREADS" in why
    monkeypatch.setenv("SCARCE_CXR_THREADS", "3")  # the product's own setting wins
    assert configure_cpu_threads("auto")[0] == 3
    for bad in ("0", "-1", "many", 1.5):
        with pytest.raises(ValueError, match="auto or a whole number"):
            configure_cpu_threads(bad)


def test_auto_times_one_thread_against_all_cores(monkeypatch):
    from engine.device import choose_cpu_threads, configure_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SCARCE_CXR_THREADS", raising=False)
    n, t = choose_cpu_threads("resnet18", 32, 4, apply=False)
    assert 1 in t and all(v > 0 for v in t.values()) and n == min(t, key=t.get)
    n, why = configure_cpu_threads("auto", "resnet18", 32, 4)
    assert torch.get_num_threads() == n and "timed" in why
