"""Phantom chest radiographs: determinism, anatomy, finding locality, dataset layout, CLI."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data import phantom
from engine.data.phantom import (
    DIFFUSE_FINDINGS,
    FINDINGS,
    FOCAL_FINDINGS,
    anatomy,
    describe_findings,
    generate,
    render,
)
from engine.events import Cancelled

REPO = Path(__file__).resolve().parents[2]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", f"{path} is {im.mode}, expected 8-bit gray"
        return np.asarray(im)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    manifest = generate(out, n=12, size=48, seed=3)
    assert manifest == out / "manifest.csv"
    return out


def test_render_is_deterministic_and_seed_dependent():
    img1, m1 = render(7, 64, FINDINGS)
    img2, m2 = render(7, 64, list(reversed(FINDINGS)))
    assert img1.tobytes() == img2.tobytes()
    assert all(np.array_equal(m1[f], m2[f]) for f in FINDINGS)
    other, _ = render(8, 64, FINDINGS)
    assert np.abs(other - img1).mean() > 0.01


@pytest.mark.parametrize("size", [32, 64])
def test_render_shapes_dtype_range(size):
    img, masks = render(11, size)
    assert img.shape == (size, size) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    assert masks == {}
    img, masks = render(11, size, FINDINGS)
    assert set(masks) == set(FINDINGS)
    for f, m in masks.items():
        assert m.shape == (size, size) and m.dtype == bool and m.any(), f


def test_anatomy_background_darkest_lungs_darker_than_mediastinum():
    for seed in range(4):
        img, _ = render(seed, 64)
        anat = anatomy(seed, 64)
        lungs, heart, body = anat["lungs"], anat["heart"], anat["body"]
        assert lungs.mean() > 0.12 and heart.mean() > 0.04 and body.mean() > 0.5
        assert not (lungs & heart).any() and (lungs & ~body).sum() == 0
        for side in (slice(0, 32), slice(32, 64)):  # two lung fields, one on each side
            assert lungs[:, side].sum() > 0.3 * lungs.sum()
        lung_mean, heart_mean = img[lungs].mean(), img[heart].mean()
        background = img[~body].mean()
        assert heart_mean > lung_mean + 0.2, (seed, lung_mean, heart_mean)
        assert lung_mean > background + 0.05, (seed, lung_mean, background)
        assert background < 0.15
        # pixel window check too: mid lung fields vs the centre of the mediastinum
        assert img[20:30, 12:20].mean() < img[32:40, 28:36].mean() - 0.2


def test_cardiothoracic_ratio():
    for seed in range(4):
        assert 0.35 < float(anatomy(seed, 96)["ctr"]) < 0.5
        enlarged = anatomy(seed, 96, ("cardiomegaly",))
        assert float(enlarged["ctr"]) > 0.52
        _, masks = render(seed, 96, ("cardiomegaly",))
        assert np.array_equal(masks["cardiomegaly"], enlarged["heart"])


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_the_image_inside_its_mask(finding):
    for seed in (1, 2):
        base, _ = render(seed, 64)
        img, masks = render(seed, 64, (finding,))
        mask = masks[finding]
        diff = np.abs(img - base)
        inside, outside = float(diff[mask].mean()), float(diff[~mask].mean())
        assert inside > 0.02, (seed, inside)
        assert inside > 5.0 * outside, (seed, inside, outside)


def test_findings_metadata():
    assert set(describe_findings()) == set(FINDINGS)
    assert all(isinstance(t, str) and len(t) > 10 for t in describe_findings().values())
    assert set(FOCAL_FINDINGS) == {"nodule", "mass", "hiatal_hernia"}
    assert set(FOCAL_FINDINGS) | set(DIFFUSE_FINDINGS) == set(FINDINGS)
    assert not set(FOCAL_FINDINGS) & set(DIFFUSE_FINDINGS)
    assert phantom.is_focal("mass") and not phantom.is_focal("cardiomegaly")


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom finding.*valid findings"):
        render(0, 64, ("fracture",))
    with pytest.raises(ValueError, match="seed"):
        render(-1, 64)
    with pytest.raises(ValueError, match="size"):
        render(0, 16)
    with pytest.raises(ValueError, match="n "):
        generate(tmp_path / "x", n=0)
    with pytest.raises(ValueError, match="prevalence"):
        generate(tmp_path / "x", n=4, prevalence=1.0)
    assert not (tmp_path / "x").exists()


def test_manifest_layout(dataset):
    header, rows = _read_csv(dataset / "manifest.csv")
    assert header == ["path", "patient_id", "split", *FINDINGS]
    assert len(rows) == 12
    assert len({r["patient_id"] for r in rows}) == 12
    assert {r["split"] for r in rows} == {"train", "test"}
    assert sum(r["split"] == "test" for r in rows) == 3  # round(12 * 0.25)
    for r in rows:
        assert not Path(r["path"]).is_absolute() and r["path"].startswith("images/")
        img = _png(dataset / r["path"])
        assert img.shape == (48, 48) and img.dtype == np.uint8
        assert all(r[f] in ("0", "1") for f in FINDINGS)
    for f in FINDINGS:  # both classes in both splits
        for split in ("train", "test"):
            labels = {r[f] for r in rows if r["split"] == split}
            assert labels == {"0", "1"}, (f, split, labels)
    spec = json.loads((dataset / "phantom.json").read_text())
    assert spec["n"] == 12 and spec["size"] == 48 and spec["seed"] == 3 and spec["findings"] == list(FINDINGS)


def test_masks_and_boxes_match_labels(dataset):
    _, rows = _read_csv(dataset / "manifest.csv")
    positives = {(r["path"], f) for r in rows for f in FINDINGS if r[f] == "1"}
    mheader, mrows = _read_csv(dataset / "masks.csv")
    bheader, brows = _read_csv(dataset / "boxes.csv")
    assert mheader == ["path", "finding", "mask_path"]
    assert bheader == ["path", "finding", "x", "y", "w", "h"]
    assert {(r["path"], r["finding"]) for r in mrows} == positives
    assert {(r["path"], r["finding"]) for r in brows} == positives
    assert len(mrows) == len(brows) == len(positives)
    boxes = {(r["path"], r["finding"]): tuple(int(r[k]) for k in "xywh") for r in brows}
    for r in mrows:
        assert r["mask_path"] == f"masks/{Path(r['path']).stem}_{r['finding']}.png"
        mask = _png(dataset / r["mask_path"])
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        ys, xs = np.nonzero(mask)
        x, y, w, h = boxes[(r["path"], r["finding"])]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)


def test_images_are_the_rendered_ones(dataset):
    _, rows = _read_csv(dataset / "manifest.csv")
    for i in (0, 7):
        present = tuple(f for f in FINDINGS if rows[i][f] == "1")
        img, masks = render(phantom.image_seed(3, i), 48, present)
        assert np.array_equal(_png(dataset / rows[i]["path"]), np.round(img * 255).astype(np.uint8))
        for f in present:
            stem = Path(rows[i]["path"]).stem
            assert np.array_equal(_png(dataset / "masks" / f"{stem}_{f}.png") > 0, masks[f])


def test_generate_is_deterministic_and_replaces_only_phantoms(tmp_path, dataset):
    out = tmp_path / "again"
    generate(out, n=12, size=48, seed=3)
    assert _tree_digest(out) == _tree_digest(dataset)
    generate(out, n=5, size=48, seed=4, findings=("mass", "nodule"))  # an earlier phantom is replaced
    header, rows = _read_csv(out / "manifest.csv")
    assert header == ["path", "patient_id", "split", "mass", "nodule"] and len(rows) == 5
    assert len(list((out / "images").iterdir())) == 5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier phantom"):
        generate(foreign, n=2, size=32)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "mine"]  # no temp folders left


def test_generate_cancel_leaves_nothing(tmp_path):
    stop = threading.Event()
    events = []

    def on_event(ev):
        events.append(ev)
        stop.set()

    with pytest.raises(Cancelled):
        generate(tmp_path / "ds", n=30, size=32, on_event=on_event, stop=stop)
    assert events and events[0].step == 10 and events[0].total == 30
    assert list(tmp_path.iterdir()) == []


def test_manifest_loads_with_the_project_loader(dataset):
    manifest_mod = pytest.importorskip("engine.data.manifest")
    m = manifest_mod.load_manifest(dataset / "manifest.csv")
    assert m.findings == list(FINDINGS)
    counts = m.counts()
    assert all(counts[f]["positive"] > 0 and counts[f]["negative"] > 0 for f in FINDINGS)


def test_cli_writes_a_phantom(tmp_path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "engine", "phantom", "--out", str(out), "--n", "12", "--size", "64"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip().splitlines()[-1]) == out / "manifest.csv"
    _, rows = _read_csv(out / "manifest.csv")
    assert len(rows) == 12 and all((out / r["path"]).is_file() for r in rows)
    assert _png(out / rows[0]["path"]).shape == (64, 64)
