"""One bad file never takes down a listing (issue 22, Build 5): malformed checkpoint jsons are listed as
unavailable with the reason (the file and what to do), `python -m engine inits` and the Pretrain and
Benchmark pages keep working, and unreadable ImageNet or run-state files say "not a valid weights
file: re-fetch / delete it", never torch's advice to unpickle them."""
from __future__ import annotations

import datetime
import json
import pickle
from pathlib import Path

import pytest
import torch

from engine.models import list_inits, load_backbone
from engine.models.files import NotAWeightsFileError, weights_file_problem
from engine.models.registry import InitUnavailableError, imagenet_weights_path
from engine.paths import checkpoints_dir

ROOT = Path(__file__).resolve().parents[2]

# name -> json text: each is not the expected shape of a checkpoint description
MALFORMED = {
    "top-level-list": json.dumps([{"arch": "resnet18"}]),
    "arch-a-number": json.dumps({"arch": 18, "method": "moco_v2"}),
    "method-a-number": json.dumps({"arch": "resnet18", "method": 7}),
    "no-arch": json.dumps({"method": "moco_v2", "created": "2026-01-01T00:00:00"}),
    "unknown-arch": json.dumps({"arch": "vit_giant", "method": "moco_v2"}),
    "epochs-a-string": json.dumps({"arch": "resnet18", "method": "moco_v2", "epochs": "many"}),
    "collapse-a-list": json.dumps({"arch": "resnet18", "method": "moco_v2", "collapse": [1, 2]}),
    "std-a-string": json.dumps({"arch": "resnet18", "method": "moco_v2", "std": "0.2"}),
    "not-json": "{ this is not json",
    "not-utf8": b"\xff\xfe\x00garbage".decode("latin-1"),
}


def _plant_malformed(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in MALFORMED.items():
        (d / f"{name}.json").write_text(text, encoding="latin-1" if name == "not-utf8" else "utf-8")
        (d / f"{name}.safetensors").write_bytes(b"")  # never read by the listing


@pytest.fixture
def bad_checkpoints() -> Path:
    d = checkpoints_dir()
    _plant_malformed(d)
    return d


def test_malformed_checkpoint_jsons_are_listed_unavailable_with_the_file_and_the_fix(bad_checkpoints):
    inits = {i.name: i for i in list_inits()}
    assert inits["random"].available  # the listing still works
    for name in MALFORMED:
        i = inits[name]
        assert not i.available and i.info == {}, name
        assert str(bad_checkpoints / f"{name}.json") in i.reason and "delete" in i.reason, i.reason
    assert "holds a list, not an object" in inits["top-level-list"].reason
    assert "`arch` is a number (18), not a string" in inits["arch-a-number"].reason
    assert "has no `arch`" in inits["no-arch"].reason
    assert "`epochs` is a string ('many'), not a number" in inits["epochs-a-string"].reason
    assert "JSONDecodeError" in inits["not-json"].reason


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_each_malformed_checkpoint_is_unavailable_and_loading_it_names_the_file_and_what_to_do(bad_checkpoints, name):
    (info,) = [i for i in list_inits() if i.name == name]
    assert not info.available
    with pytest.raises(InitUnavailableError) as e:
        load_backbone(name)
    assert str(bad_checkpoints / f"{name}.json") in str(e.value) and "delete" in str(e.value)
    assert "Traceback" not in str(e.value)


def test_a_good_checkpoint_beside_bad_ones_stays_usable(bad_checkpoints):
    from engine.models import save_backbone
    from engine.models.backbones import build_backbone

    save_backbone(build_backbone("resnet18"), "good-one", {"method": "moco_v2", "arch": "resnet18"})
    good = next(i for i in list_inits() if i.name == "good-one")
    assert good.available and good.method == "moco_v2"
    model, meta = load_backbone("good-one")
    assert meta.arch == "resnet18"


def test_engine_inits_prints_every_init_with_bad_ones_unavailable(bad_checkpoints, capsys):
    from engine.cli import main  # `python -m engine inits` is main(["inits"]) (tests/test_cli.py runs the entry)

    rc = main(["inits"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rows = {r["name"]: r for r in map(json.loads, out.out.splitlines())}
    assert rows["random"]["available"] and not rows["no-arch"]["available"]
    assert "no-arch.json" in rows["no-arch"]["reason"]


@pytest.mark.parametrize("page", ["app_pages/pretrain.py", "app_pages/benchmark.py"])
def test_pretrain_and_benchmark_pages_survive_a_malformed_checkpoint(bad_checkpoints, page, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import io

    import numpy as np
    from PIL import Image

    from ui.services import services

    monkeypatch.setenv("SCARCE_CXR_NO_AUTOPRETRAIN", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    store = services().store  # four labeled images, so the Benchmark page shows its form
    ids = []
    for k in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (16, 16), dtype=np.uint8)).save(buf, "PNG")
        ids.append(store.import_bytes(f"{k}.png", buf.getvalue())[0].image_id)
    store.add_finding("nodule")
    store.set_labels("nodule", {i: k % 2 for k, i in enumerate(ids)})
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = "\n".join(c.value for c in at.caption)
    assert "no-arch.json is not a valid checkpoint description" in captions


def _torch_zip_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# name -> bytes at the ImageNet weights path: none of them is a weights file
GARBAGE = {
    "a pickle": pickle.dumps({"conv1.weight": [1.0, 2.0]}),
    "an interrupted download": _torch_zip_bytes({"conv1.weight": torch.zeros(64, 3, 7, 7)})[:5000],
    "garbage": b"<html>404 Not Found</html>" * 40,
    "an empty file": b"",
}


@pytest.mark.parametrize("what", sorted(GARBAGE))
def test_a_garbage_imagenet_file_is_listed_unavailable_and_says_re_fetch_or_delete(what):
    p = imagenet_weights_path("resnet18")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(GARBAGE[what])
    imagenet = next(i for i in list_inits() if i.name == "imagenet")
    assert not imagenet.available
    assert f"{p} is not a valid weights file" in imagenet.reason and "re-fetch" in imagenet.reason
    with pytest.raises(InitUnavailableError) as e:
        load_backbone("imagenet")
    msg = str(e.value)
    assert "not a valid weights file" in msg and "re-fetch" in msg and "delete it" in msg
    assert "weights_only" not in msg


def test_a_torch_file_holding_other_objects_is_never_unpickled_and_says_re_fetch():
    p = imagenet_weights_path("resnet18")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(_torch_zip_bytes({"when": datetime.datetime(2026, 1, 1)}))  # a complete zip container
    assert weights_file_problem(p) is None  # the cheap check passes: only loading can tell
    with pytest.raises(InitUnavailableError) as e:
        load_backbone("imagenet")
    msg = str(e.value)
    assert "not a valid weights file (it holds Python objects other than tensors" in msg
    assert "weights_only" not in msg and "re-fetch" in msg


@pytest.mark.parametrize("what", sorted(GARBAGE) + ["not a state"])
def test_an_unreadable_run_state_says_not_a_valid_weights_file_delete_it(tmp_path, what):
    from engine.ssl.checkpointing import load_state

    state = tmp_path / "run" / "state.pt"
    state.parent.mkdir()
    state.write_bytes(GARBAGE[what] if what in GARBAGE else _torch_zip_bytes({"weights": torch.zeros(2)}))
    with pytest.raises(NotAWeightsFileError) as e:
        load_state(state, torch.device("cpu"))
    msg = str(e.value)
    assert f"{state} is not a valid weights file" in msg and "delete it" in msg and "weights_only" not in msg
