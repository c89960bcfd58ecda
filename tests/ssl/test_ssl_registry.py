"""The SSL method registry: one entry per method, everything else reads it, unknown names list the known ones."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from engine.ssl.registry import METHODS, MethodSpec, get_method, method_names, register

SSL_DIR = Path(__file__).resolve().parents[2] / "engine" / "ssl"


def _method_classes() -> dict[str, type]:
    """Every concrete SSLMethod subclass defined in engine/ssl/*.py, by its `name`."""
    from engine.ssl.common import SSLMethod

    found = {}
    for path in SSL_DIR.glob("*.py"):
        mod = importlib.import_module(f"engine.ssl.{path.stem}")
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, SSLMethod) and cls.__module__ == mod.__name__ and not inspect.isabstract(cls):
                found[cls.name] = cls
    return found


def test_every_method_class_is_registered_once_and_its_spec_resolves():
    from engine.ssl.common import OptimRecipe

    classes = _method_classes()
    assert set(classes) == set(METHODS)  # no method class is left out of the registry, none is registered twice
    for name, spec in METHODS.items():
        assert spec.name == name and spec.method_cls is classes[name] and spec.method_cls.__module__ == spec.module
        assert dataclasses.is_dataclass(spec.config_cls) and spec.config_cls.__dataclass_params__.frozen
        assert isinstance(spec.recipe, OptimRecipe) and spec.label and spec.summary and spec.opt_example
        cfg = spec.config_cls()
        if spec.collapse_knob is not None:  # the knob is a config field, a module attribute, with a positive ref
            assert hasattr(cfg, spec.collapse_knob.weight) and spec.collapse_knob.ref > 0
        else:
            assert spec.no_collapse_control.startswith(name)
        for preset in spec.presets.values():  # every preset names real fields
            spec.config_cls(**preset.get("method_config", {}))


def test_unknown_names_fail_listing_the_registered_ones():
    from engine.ssl.config import PretrainConfig
    from engine.ssl.presets import build_config

    listing = ", ".join(method_names())
    for call in (lambda: get_method("simclr"), lambda: PretrainConfig(method="simclr"),
                 lambda: build_config("simclr", "paper")):
        with pytest.raises(ValueError, match=f"unknown SSL method 'simclr'; choose one of {listing}"):
            call()
    with pytest.raises(ValueError, match="registered already"):
        register(MethodSpec(name="moco_v2", label="x", summary="x", module="m", config="c", method="m", opt_example="x"))


def test_the_cli_takes_every_registered_method_and_refuses_others_listing_them(capsys):
    """The readers act on the registry: `pretrain --method` accepts each registered name and refuses an unknown
    one listing them all; the app's method labels are the registry's (the Pretrain page's options are checked
    in tests/app/test_app_pages.py). The registry importing no torch: test_ssl_pretrain.py's laziness test."""
    from engine.cli import build_parser
    from ui.widgets import METHOD_LABEL, method_label

    parser = build_parser()
    for name, spec in METHODS.items():
        assert parser.parse_args(["pretrain", "--data", "d.csv", "--out", "x", "--method", name]).method == name
        assert method_label(name) == spec.label
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--data", "d.csv", "--out", "x", "--method", "simclr"])
    err = capsys.readouterr().err
    assert "invalid choice: 'simclr'" in err and all(repr(n) in err for n in method_names())
    assert not {"simclr", "byol", "mae", "vicreg"} & set(METHOD_LABEL)  # no label for a method that does not exist
