"""Embedding cache: correct features, computed once, only missing rows, invalidated by new weights."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.events import Cancelled
from engine.fewshot import features as F
from engine.fewshot.features import ArrayImages, embed
from engine.models import build_backbone, load_backbone, prepare_batch, save_backbone


S = 32


def _images(n: int, seed: int = 0) -> ArrayImages:
    return ArrayImages.from_uint8(np.random.default_rng(seed).integers(0, 256, (n, S, S), dtype=np.uint8))


def _computed(events) -> list[int]:
    return [e.total for e in events if e.step == 0]


def test_embed_equals_direct_forward_and_is_cached(tmp_path):
    imgs = _images(10)
    events = []
    feats = embed("random", imgs, "cpu", batch_size=4, feature_dir=tmp_path, on_event=events.append)
    assert feats.shape == (10, 512) and feats.dtype == np.float32
    model, meta = load_backbone("random")
    with torch.inference_mode():
        ref = model(prepare_batch(torch.from_numpy(imgs.array), torch.device("cpu"), meta.mean, meta.std)).numpy()
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)
    again = []
    np.testing.assert_array_equal(embed("random", imgs, "cpu", feature_dir=tmp_path, on_event=again.append), feats)
    assert _computed(events) == [10] and _computed(again) == [0]


def test_only_missing_rows_are_computed_and_duplicates_once(tmp_path):
    imgs = _images(12)
    first = embed("random", ArrayImages(imgs.array[:5], imgs.keys[:5]), "cpu", feature_dir=tmp_path)
    events = []
    mixed = ArrayImages(np.concatenate([imgs.array, imgs.array[:2]]), imgs.keys + imgs.keys[:2])
    feats = embed("random", mixed, "cpu", batch_size=3, feature_dir=tmp_path, on_event=events.append)
    assert _computed(events) == [7]
    np.testing.assert_array_equal(feats[:5], first)
    np.testing.assert_array_equal(feats[12:], feats[:2])


def test_new_checkpoint_weights_invalidate_the_cache(tmp_path):
    imgs = _images(6)
    torch.manual_seed(1)
    save_backbone(build_backbone("resnet18"), "toy-ssl", {"method": "toy", "arch": "resnet18"})
    a = embed("toy-ssl", imgs, "cpu", feature_dir=tmp_path)
    torch.manual_seed(2)
    save_backbone(build_backbone("resnet18"), "toy-ssl", {"method": "toy", "arch": "resnet18"})
    events = []
    b = embed("toy-ssl", imgs, "cpu", feature_dir=tmp_path, on_event=events.append)
    assert _computed(events) == [6] and not np.allclose(a, b)
    model, meta = load_backbone("toy-ssl")
    with torch.inference_mode():
        ref = model(prepare_batch(torch.from_numpy(imgs.array), torch.device("cpu"), meta.mean, meta.std)).numpy()
    np.testing.assert_allclose(b, ref, rtol=1e-4, atol=1e-5)


def test_stop_saves_progress_and_resume_finishes(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "FLUSH_ROWS", 2)
    imgs = _images(8)
    stop = threading.Event()

    def stop_after_first_batch(ev):
        if ev.step and ev.step >= 4:
            stop.set()

    with pytest.raises(Cancelled):
        embed("random", imgs, "cpu", batch_size=4, feature_dir=tmp_path, on_event=stop_after_first_batch, stop=stop)
    events = []
    feats = embed("random", imgs, "cpu", batch_size=4, feature_dir=tmp_path, on_event=events.append)
    assert _computed(events) == [4]
    np.testing.assert_allclose(feats, embed("random", imgs, "cpu", feature_dir=tmp_path / "fresh"), rtol=1e-4,
                               atol=1e-5)


def test_shards_are_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(F, "MAX_SHARDS", 2)
    imgs = _images(8)
    for i in range(4):
        embed("random", ArrayImages(imgs.array[2 * i : 2 * i + 2], imgs.keys[2 * i : 2 * i + 2]), "cpu",
              feature_dir=tmp_path)
    full = embed("random", imgs, "cpu", feature_dir=tmp_path)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(list(folder.glob("part-*.npz"))) <= 2  # four embeds wrote four shards; they were merged
    np.testing.assert_allclose(full, embed("random", imgs, "cpu", feature_dir=tmp_path / "ref"), rtol=1e-4, atol=1e-5)


def test_weights_fingerprint_sees_in_place_changes():
    model, _ = load_backbone("random")
    fp = F.weights_fingerprint(model)
    assert F.weights_fingerprint(model) == fp
    with torch.no_grad():
        model.layer4[1].conv2.weight[0, 0, 0, 0] += 1.0
    assert F.weights_fingerprint(model) != fp
    model.load_state_dict(load_backbone("random")[0].state_dict())
    assert F.weights_fingerprint(model) == fp


def test_feature_cache_key_follows_the_pixel_decoder_version(monkeypatch):
    """Features computed from pixels decoded by an older reader are never reused (CACHE_VERSION in the key)."""
    from engine.data import cache
    from engine.fewshot.features import model_key
    from engine.models import load_backbone

    _, meta = load_backbone("random")
    k = model_key(meta, "fp", 64, "pad")
    assert model_key(meta, "fp", 64, "pad") == k
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    assert model_key(meta, "fp", 64, "pad") != k
