"""engine.resume: one rule for "resume only with the same settings", used by SSL pretraining, sweeps and the
study, each naming every differing field `field: old -> new`."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.resume import SettingsChangedError, check_same_settings, settings_changes


def test_changes_name_each_differing_field_with_old_and_new_values():
    old = {"lr": 0.01, "steps": 10, "aug": {"blur": 0.5}, "gone": 1}
    new = {"lr": 0.02, "steps": 10, "aug": {"blur": 0.1}, "added": "x"}
    assert settings_changes(old, new) == ["lr: 0.01 -> 0.02", "aug: {'blur': 0.5} -> {'blur': 0.1}",
                                          "added: None -> 'x'", "gone: 1 -> None"]
    assert settings_changes(old, new, only=("steps", "lr")) == ["lr: 0.01 -> 0.02"]
    assert settings_changes(old, new, ignore=("aug", "gone", "added")) == ["lr: 0.01 -> 0.02"]
    assert settings_changes(old, dict(old)) == []


def test_check_refuses_with_the_fix_and_the_callers_error_type():
    check_same_settings({"a": 1}, {"a": 1}, what="x", fix="y")  # same settings: nothing raised
    with pytest.raises(SettingsChangedError, match=r"cannot resume run 7: .*\(a: 1 -> 2\)\. Use the same") as e:
        check_same_settings({"a": 1}, {"a": 2}, what="run 7", fix="Use the same settings.")
    assert e.value.changes == ["a: 1 -> 2"] and isinstance(e.value, ValueError)

    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match="b: 'p' -> 'q'"):
        check_same_settings({"b": "p"}, {"b": "q"}, what="it", fix="", error=MyError)


def test_a_sweep_resumed_with_another_protocol_names_the_fields(tmp_path: Path):
    from engine.fewshot.sweep import SweepConfig, _check_config

    cfg = SweepConfig(findings=("mass",), image_size=64, seed=0)
    _check_config(tmp_path, cfg, resume=False)
    (tmp_path / "trials.csv").write_text("finding\n")  # trials were written
    _check_config(tmp_path, SweepConfig(findings=("mass", "nodule"), image_size=64, seed=0), resume=True)  # may grow
    with pytest.raises(SettingsChangedError, match=r"image_size: 64 -> 96; seed: 0 -> 3"):
        _check_config(tmp_path, SweepConfig(findings=("mass",), image_size=96, seed=3), resume=True)


def test_the_study_and_pretraining_use_the_one_rule():
    """No caller keeps its own comparison: each module calls engine.resume.check_same_settings."""
    import inspect

    from engine.fewshot import sweep
    from engine.ssl import checkpointing
    from engine.study import runner

    for mod in (sweep, checkpointing, runner):
        src = inspect.getsource(mod)
        assert "check_same_settings(" in src and "} -> {" not in src, mod.__name__
