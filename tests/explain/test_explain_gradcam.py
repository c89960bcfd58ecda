"""CAMExplainer: hooks released, model state restored, heatmap shape/range, every method, layer errors."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.explain.gradcam import (
    METHODS, CAMExplainer, ExplainModel, PositiveLogitTarget, PositiveProbabilityTarget, conv_layer_names,
    explain_image, explain_images,
)
from engine.models import build_backbone

S = 64


@pytest.fixture(scope="module")
def model() -> ExplainModel:
    torch.manual_seed(0)
    bb = build_backbone("resnet18")
    head = nn.Linear(512, 1)
    # A head fit for a few steps to separate bright-centre images from plain ones (a stand-in for a probe).
    x, y = _toy_batch(8)
    with torch.no_grad():
        z = bb.eval()(x)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(head(z)[:, 0], y).backward()
        opt.step()
    return ExplainModel(bb, head)


def _toy_batch(n: int, size: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, size, size, generator=g) * 0.2
    y = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
    a, b = size * 5 // 16, size * 10 // 16
    x[y == 1, :, a:b, a + size // 8 : b + size // 8] += 2.0
    return x, y


def _hook_count(m: nn.Module) -> int:
    return sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) + len(mod._backward_hooks)
               + len(mod._backward_pre_hooks) for mod in m.modules())


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_hooks_released_and_memory_bounded_over_50_calls(model):
    x, _ = _toy_batch(1, 32)  # the smallest input a ResNet takes: this test is about state, not maps
    before_grad = [p.requires_grad for p in model.parameters()]
    model.train()  # the explainer must switch to eval and restore this afterwards

    def one_call():
        with CAMExplainer(model, "layer4", "gradcam") as ex:
            return ex(x)

    for _ in range(10):  # warm up allocator and caches
        one_call()
    n_tensors = _live_tensors()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(50):
        one_call()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert _hook_count(model) == 0
    assert model.backbone.layer4._forward_hooks == {} and model.backbone.layer4._backward_hooks == {}
    assert _live_tensors() <= n_tensors + 2
    # measured: ~500 bytes over 50 calls (and the same over 200); a leak of 2 KB a call (a kept hook handle,
    # closure or list entry) breaks it
    assert grown < 100_000, f"traced memory grew by {grown} bytes over 50 calls"
    assert [p.requires_grad for p in model.parameters()] == before_grad
    assert model.training  # restored
    model.eval()


def test_hooks_released_on_exception_and_state_restored(model):
    for p in model.head.parameters():
        p.requires_grad_(False)  # a frozen head stays frozen, the rest stays trainable
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ZeroDivisionError):
        with CAMExplainer(model, "layer4", "gradcam") as ex:
            ex(_toy_batch(1)[0])
            raise ZeroDivisionError
    with pytest.raises(IndexError):  # pytorch-grad-cam's own __exit__ would swallow IndexError
        with CAMExplainer(model, "layer4", "gradcam"):
            [][1]
    assert _hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == flags
    for p in model.head.parameters():
        p.requires_grad_(True)


def test_no_batchnorm_updates_and_no_grads_left(model):
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    model.train()
    with CAMExplainer(model, "layer4", "gradcam++") as ex:
        ex(_toy_batch(2)[0])
    model.eval()
    assert torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_unit_range_maps(model, method):
    gradient_free = method in ("scorecam", "ablationcam")  # one forward per channel: keep them small
    x, _ = _toy_batch(1, 32) if gradient_free else _toy_batch(2)
    with CAMExplainer(model, "layer4", method, batch_size=128) as ex:
        h = ex(x)
        logits = ex.last_logits
    assert h.shape == (x.shape[0], *x.shape[-2:]) and h.dtype == np.float32
    assert h.min() >= 0.0 and h.max() <= 1.0
    assert h.max() == pytest.approx(1.0, abs=1e-5) or h.max() == 0.0
    with torch.no_grad():
        ref = model(x)[:, 0].numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
    assert _hook_count(model) == 0


def test_batched_equals_one_at_a_time(model):
    x, _ = _toy_batch(4)
    with CAMExplainer(model, "layer4", "gradcam", batch_size=3) as ex:
        batched = ex(x)
        single = np.concatenate([ex(x[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_gradcam_matches_pytorch_grad_cam_on_an_unfrozen_model(model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, _ = _toy_batch(2)
    model.eval()
    with GradCAM(model, [model.backbone.layer4]) as cam:  # the library on the whole graph
        ref = cam(x, [ClassifierOutputTarget(0)] * 2)
    with CAMExplainer(model, "layer4", "gradcam") as ex:  # ours stops the backward at layer4
        ours = ex(x)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_gradcam_finds_the_bright_square_the_head_learned(model):
    x, y = _toy_batch(4)
    with CAMExplainer(model, "layer3", "gradcam") as ex:
        h = ex(x[y == 1])
    inside = h[:, 20:40, 28:48].mean()
    outside = (h.sum(axis=(1, 2)) - h[:, 20:40, 28:48].sum(axis=(1, 2))).sum() / (h.shape[0] * (S * S - 400))
    assert inside > outside


def test_targets_handle_a_single_logit():
    out = torch.tensor([[2.0], [-1.0]])
    assert torch.equal(PositiveLogitTarget()(out), torch.tensor([2.0, -1.0]))
    assert PositiveLogitTarget()(out[0]).ndim == 0  # per-sample output, as BaseCAM passes it
    assert torch.allclose(PositiveProbabilityTarget()(out), torch.sigmoid(torch.tensor([2.0, -1.0])))


def test_wrong_layer_lists_valid_names(model):
    with pytest.raises(ValueError) as e:
        CAMExplainer(model, "layer5")
    msg = str(e.value)
    for name in ("conv1", "layer1", "layer3", "layer4", "layer4.1"):
        assert name in msg
    with pytest.raises(ValueError, match="valid names"):
        CAMExplainer(model, "avgpool")  # exists, but holds no convolution
    assert CAMExplainer(model, "backbone.layer4.1").layer is model.backbone.layer4[1]
    assert "layer2.0" in conv_layer_names(model)
    with pytest.raises(ValueError, match="gradcam"):
        CAMExplainer(model, "layer4", "eigencam")


def test_call_outside_context_and_bad_shapes(model):
    ex = CAMExplainer(model)
    with pytest.raises(RuntimeError, match="with"):
        ex(_toy_batch(1)[0])
    with ex, pytest.raises(ValueError, match="B, 3, S, S"):
        ex(torch.zeros(1, 1, S, S))
    bad = ExplainModel(model.backbone, nn.Linear(512, 2))
    with CAMExplainer(bad) as ex2, pytest.raises(ValueError, match="one logit"):
        ex2(_toy_batch(1)[0])
    assert _hook_count(model) == 0


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_explain_image_returns_the_original_size(model, mode):
    rng = np.random.default_rng(0)
    imgs = [rng.random((50, 80), dtype=np.float32), rng.random((90, 40), dtype=np.float32)]
    with CAMExplainer(model, "layer4", "gradcam", batch_size=2) as ex:
        maps = explain_images(ex, imgs, S, mode)
        assert ex.last_logits.shape == (2,)
        one = explain_image(ex, imgs[1], S, mode)
    for img, m in zip(imgs, maps):
        assert m.shape == img.shape and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(one, maps[1], atol=1e-5)


def test_any_backbone_plus_head_module_works(model):
    class Wrapped(nn.Module):  # e.g. the few-shot Classifier's explain module: .backbone + .head
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = model.backbone, model.head

        def forward(self, x):
            return self.head(self.backbone(x))

    w = Wrapped()
    x, _ = _toy_batch(2)
    with CAMExplainer(w, "layer4") as ex:
        a = ex(x)
    with CAMExplainer(model, "layer4") as ex:
        b = ex(x)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_nan_model_is_an_error_not_an_empty_map(model):
    """Issue 13 item 7: NaN weights used to give a NaN map shown as "empty"; now a clear ValueError."""
    head = nn.Linear(512, 1)
    with torch.no_grad():
        head.weight.fill_(float("nan"))
    x, _ = _toy_batch(2)
    with CAMExplainer(ExplainModel(model.backbone, head), "layer4", "gradcam") as ex:
        with pytest.raises(ValueError, match="non-finite scores or heatmaps"):
            ex(x)


def test_gradcam_library_still_has_what_camlib_relies_on():
    """engine.explain.camlib isolates pytorch-grad-cam's undocumented attributes; this fails loudly when a new
    release drops or changes them (BaseCAM.outputs, activations_and_grads.clear/release)."""
    from pytorch_grad_cam import GradCAM

    from engine.explain import camlib

    camlib.check_library()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 1)).eval()
    x = torch.rand(2, 3, 8, 8)
    cam = GradCAM(net, [net[0]])
    try:
        maps = cam(x, [PositiveLogitTarget()] * 2)
        assert maps.shape == (2, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(camlib.last_outputs(cam), net(x))
        assert cam.activations_and_grads.activations  # the hooks recorded the pass
        camlib.forget_pass(cam)
        assert cam.outputs is None and not cam.activations_and_grads.activations
        with pytest.raises(camlib.GradCamLibraryChanged, match="outputs"):
            camlib.last_outputs(cam)
    finally:
        camlib.release(cam)
    assert not cam.activations_and_grads.handles  # hooks removed from the model
