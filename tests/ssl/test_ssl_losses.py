"""Each SSL objective against an independent, well-kept implementation on the same small inputs.

The reference is lightly (lightly-ai/lightly, a test dependency pinned in requirements.txt): its NTXentLoss
with a memory bank (MoCo's InfoNCE), BarlowTwinsLoss, the VICReg variance and covariance terms, DINOLoss and
its centre update, update_momentum (EMA) and cosine_schedule. lightly has no SparK loss; SparK's masked
MSE is checked against lightly's patchify + normalize_mean_var (MAE's norm_pix target) averaged over the
masked patches as the official SparK code does (transcribed in the test, source cited). Behaviour checks
(what the loss ignores, what lowers it) stay alongside.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from engine.models import build_backbone
from engine.ssl.augment import AugmentConfig
from engine.ssl.barlow_twins import barlow_twins_loss, cross_correlation
from engine.ssl.dino import DINO, DINOConfig, dino_loss, teacher_momentum
from engine.ssl.moco_v2 import (
    MoCoConfig, MoCoV2, SplitBatchNorm, enqueue_, info_nce, moco_logits, n_splits, variance_loss,
)
from engine.ssl.spark import patchify, random_patch_mask, spark_loss



def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------- MoCo v2


def test_moco_logits_put_the_positive_at_index_0_and_infonce_matches_lightly_ntxent_with_a_memory_bank():
    from lightly.loss import NTXentLoss

    q, k, queue = _unit(4, 8, seed=1), _unit(4, 8, seed=2), _unit(6, 8, seed=3)
    logits = moco_logits(q, k, queue)
    assert logits.shape == (4, 7)
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1))  # the positive first, then one column per queued key
    torch.testing.assert_close(logits[:, 1:], q @ queue.t())
    for T in (0.07, 0.2):
        ref = NTXentLoss(temperature=T, memory_bank_size=(6, 8)).double()
        ref.memory_bank.bank = queue.clone()  # lightly's bank (K, d): the same negatives as our queue
        expected = ref(q, k)  # q has no grad: lightly leaves its bank as it is
        torch.testing.assert_close(ref.memory_bank.bank, queue)
        torch.testing.assert_close(info_nce(logits, T), expected, rtol=1e-9, atol=0)
    # a perfect positive against orthogonal negatives gives a much lower loss than a swapped one
    assert info_nce(moco_logits(q, q, queue), 0.07) < info_nce(moco_logits(q, -q, queue), 0.07)


@pytest.mark.parametrize("K,batches", [(10, [4, 4, 4]), (10, [3, 7, 5]), (5, [7]), (6, [6, 6])])
def test_queue_wraps_around_like_a_ring_buffer(K, batches):
    queue, ptr = torch.zeros(K, 2), 0
    ref, rptr = [None] * K, 0  # independent ring buffer in plain python
    counter = 0
    for n in batches:
        keys = torch.arange(counter, counter + n, dtype=torch.float32)[:, None].repeat(1, 2)
        for v in range(counter, counter + n):
            ref[rptr] = float(v)
            rptr = (rptr + 1) % K
        counter += n
        ptr = enqueue_(queue, ptr, keys)
        assert ptr == rptr
    filled = [i for i, v in enumerate(ref) if v is not None]
    np.testing.assert_array_equal(queue[filled, 0].numpy(), [ref[i] for i in filled])


def test_variance_term_matches_lightly_vicreg_and_is_zero_above_gamma():
    from lightly.loss.vicreg_loss import variance_loss as vicreg_variance

    g = torch.Generator().manual_seed(0)
    wide = torch.randn(256, 16, generator=g) * 3.0  # per-dimension std ~3 >= gamma = 1
    narrow = torch.randn(256, 16, generator=g) * 0.2
    mixed = torch.cat([wide[:, :8], narrow[:, 8:]], dim=1)
    const = torch.ones(8, 4)  # fully collapsed
    for z in (wide, narrow, mixed, const):
        torch.testing.assert_close(variance_loss(z, gamma=1.0), vicreg_variance(z, eps=1e-4))
    assert variance_loss(wide, gamma=1.0).item() == 0.0 and variance_loss(narrow).item() > 0.5
    assert variance_loss(const).item() == pytest.approx(1 - math.sqrt(1e-4))


def test_decorrelation_is_vicregs_covariance_term_on_standardized_features():
    """L_dec(z) = lightly's VICReg covariance_loss of z standardized per dimension (Hua et al. 2021)."""
    from lightly.loss.vicreg_loss import covariance_loss

    from engine.ssl.moco_v2 import decorrelation_loss

    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, generator=g, dtype=torch.float64)
    z = torch.cat([base, base[:, :1] * 5 + 0.1 * torch.randn(64, 1, generator=g, dtype=torch.float64)], 1) * 7 + 3
    zs = (z - z.mean(0)) / torch.sqrt(z.var(0) + 1e-4)  # per-dimension standardization (unbiased, as VICReg)
    torch.testing.assert_close(decorrelation_loss(z), covariance_loss(zs), rtol=1e-9, atol=0)
    corr = np.corrcoef(z.numpy(), rowvar=False)  # numpy's correlation: the same up to eps
    expected = (corr[~np.eye(4, dtype=bool)] ** 2).sum() / 4
    assert decorrelation_loss(z).item() == pytest.approx(expected, rel=1e-4)
    assert decorrelation_loss(z * 100).item() == pytest.approx(decorrelation_loss(z).item(), rel=1e-4)  # scale-free
    assert decorrelation_loss(base).item() < 0.05 < decorrelation_loss(z).item()  # independent dims: near 0


def test_split_bn_group_count():
    assert n_splits(256, 8) == 8 and n_splits(64, 8) == 4 and n_splits(96, 8) == 6 and n_splits(32, 8) == 2
    assert n_splits(31, 8) == 1 and n_splits(16, 8) == 1 and n_splits(512, 1) == 1
    assert n_splits(16, 8, min_group=2) == 8 and n_splits(14, 8, min_group=2) == 7


def test_split_batchnorm_normalizes_each_sub_batch_and_keeps_bn_state_keys():
    torch.manual_seed(0)
    bn = SplitBatchNorm(3, max_splits=2)
    x = torch.randn(32, 3, 4, 4) + torch.arange(32.0).view(32, 1, 1, 1) % 2 * 5  # odd samples shifted by 5
    y = bn(x)
    for i in (0, 1):  # sub-batches: samples i, i+2, i+4, ... (the channel blocks of the reshape)
        ref = torch.nn.functional.batch_norm(x[i::2], None, None, training=True, eps=bn.eps)
        torch.testing.assert_close(y[i::2], ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(y, torch.nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps), atol=1e-2)
    per_group_mean = torch.stack([x[0::2].mean((0, 2, 3)), x[1::2].mean((0, 2, 3))]).mean(0)
    torch.testing.assert_close(bn.running_mean, 0.1 * per_group_mean, rtol=1e-4, atol=1e-5)
    assert set(bn.state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())
    bn.eval()
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, eps=bn.eps))


def test_moco_module_key_encoder_gets_no_gradient_and_follows_the_query_by_momentum():
    torch.manual_seed(0)
    m = MoCoV2(build_backbone("resnet18"), MoCoConfig(queue=12, m=0.9), AugmentConfig(), 32)
    x = torch.rand(8, 1, 40, 40)
    views = m.views(x, torch.Generator().manual_seed(1))
    assert views[0].shape == (8, 3, 32, 32) and sorted(views[2].tolist()) == list(range(8))
    loss, metrics = m(*views)
    loss.backward()
    assert all(p.grad is None for p in m.backbone_k.parameters()) and all(p.grad is None for p in m.head_k.parameters())
    assert m.head[0].weight.grad is not None
    from lightly.models.utils import update_momentum

    with torch.no_grad():
        m.head[0].weight.add_(1.0)
    ref_k = copy.deepcopy(m.head_k)
    update_momentum(m.head, ref_k, m=0.9)  # lightly's EMA: theta_k <- m theta_k + (1 - m) theta_q
    m.after_step(0, 10)
    for ours, ref in zip(m.head_k.parameters(), ref_k.parameters()):
        torch.testing.assert_close(ours, ref)
    assert int(m.queue_ptr) == 8  # 8 keys enqueued
    m(*views)
    m.after_step(1, 10)
    assert int(m.queue_ptr) == (16 % 12)


# ---------------------------------------------------------------- Barlow Twins


def _hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def test_barlow_loss_is_zero_for_perfectly_correlated_decorrelated_features():
    z = torch.tensor(_hadamard(8)[:, 1:])  # (N=8, D=7): zero-mean, unit-variance, orthogonal columns
    c = cross_correlation(z, z)
    torch.testing.assert_close(c, torch.eye(7, dtype=c.dtype), atol=1e-4, rtol=0)
    loss, on, off = barlow_twins_loss(z, z, lambd=0.005)
    assert loss.item() < 1e-8
    # an affine change of the embeddings changes nothing (per-dimension standardization)
    assert barlow_twins_loss(z, 3 * z + 1)[0].item() < 1e-8


def test_barlow_loss_matches_lightly_and_is_positive_otherwise():
    from lightly.loss import BarlowTwinsLoss

    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    for lambd in (0.005, 0.5):
        loss, on, off = barlow_twins_loss(za, zb, lambd=lambd)
        torch.testing.assert_close(loss, BarlowTwinsLoss(lambda_param=lambd)(za, zb), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loss, on + lambd * off)
    assert barlow_twins_loss(za, zb)[0].item() > 1.0
    redundant = torch.tensor(_hadamard(8)[:, [1, 1, 2]])  # two identical dimensions: off-diagonal 1
    assert barlow_twins_loss(redundant, redundant, lambd=0.005)[0].item() == pytest.approx(2 * 0.005, rel=1e-3)


# ---------------------------------------------------------------- SparK


def _spark_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """SparK's loss as its official code computes it (keyu-tian/SparK, pretrain/spark.py, SparK.forward):

        inp, rec = self.patchify(inp_bchw), self.patchify(rec_bchw)   # (B, L, C*p*p)
        mean = inp.mean(dim=-1, keepdim=True)
        var = (inp.var(dim=-1, keepdim=True) + 1e-6) ** .5
        inp = (inp - mean) / var
        l2_loss = ((rec - inp) ** 2).mean(dim=2, keepdim=False)     # (B, L)
        non_active = active_b1ff.logical_not().int().view(active_b1ff.shape[0], -1)
        recon_loss = l2_loss.mul_(non_active).sum() / (non_active.sum() + 1e-8)

    with lightly's patchify and normalize_mean_var (MAE's norm_pix target) in place of SparK's own.
    """
    from lightly.models.utils import normalize_mean_var
    from lightly.models.utils import patchify as lightly_patchify

    inp = normalize_mean_var(lightly_patchify(target, p), dim=-1, eps=1e-6)  # (B, L, p*p)
    l2 = ((lightly_patchify(pred, p) - inp) ** 2).mean(dim=2)  # (B, L)
    masked = mask.reshape(mask.shape[0], -1).int()  # (B, L) 1 = masked (SparK's non_active)
    return (l2 * masked).sum() / (masked.sum() + 1e-8)


def test_spark_loss_matches_sparks_code_and_ignores_visible_patches():
    g = torch.Generator().manual_seed(0)
    p = 4
    target, pred = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])  # (B, 2, 2)
    loss = spark_loss(pred, target, mask, p)
    torch.testing.assert_close(loss, _spark_reference(pred, target, mask, p), rtol=1e-5, atol=1e-7)
    big = torch.rand(3, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 32, generator=g)
    m = random_patch_mask(3, 4, 0.6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(spark_loss(*big, m, 8), _spark_reference(*big, m, 8), rtol=1e-5, atol=1e-7)
    visible = (~mask).repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]
    changed = pred + visible * 100.0 * torch.randn(pred.shape, generator=g)
    assert spark_loss(changed, target, mask, p).item() == pytest.approx(loss.item(), rel=1e-6)
    masked_changed = pred + (~visible) * 1.0
    assert spark_loss(masked_changed, target, mask, p).item() != pytest.approx(loss.item(), rel=1e-3)


def test_patch_mask_has_exact_ratio_and_patchify_order():
    m = random_patch_mask(5, 4, 0.6, torch.Generator().manual_seed(0))
    assert m.shape == (5, 4, 4) and (m.flatten(1).sum(1) == round(0.6 * 16)).all()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert patchify(x, 2)[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]  # second patch = top-right 2x2


# ---------------------------------------------------------------- DINO


def test_dino_loss_matches_lightly_and_the_momentum_follows_its_cosine_schedule():
    from lightly.loss import DINOLoss
    from lightly.utils.scheduler import cosine_schedule

    g = torch.Generator().manual_seed(0)
    s = [torch.randn(3, 6, generator=g) for _ in range(4)]  # 2 global + 2 local crops
    t = [torch.randn(3, 6, generator=g) for _ in range(2)]
    c = torch.randn(1, 6, generator=g)
    for ts, tt in ((0.1, 0.04), (0.2, 0.07)):
        ref = DINOLoss(output_dim=6, teacher_temp=tt, student_temp=ts)
        ref.center = c.view(1, 1, 6).clone()
        torch.testing.assert_close(dino_loss(s, t, c, ts, tt), ref(teacher_out=t, student_out=s), rtol=1e-5, atol=1e-6)
    # lightly's schedule reaches its end value at max_steps - 1; ours at `total`
    for step in (0, 1, 37, 99, 100):
        assert teacher_momentum(step, 100, 0.996) == pytest.approx(cosine_schedule(step, 101, 0.996, 1.0), abs=1e-12)
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996) and teacher_momentum(100, 100, 0.996) == 1.0


def test_dino_teacher_gets_no_gradient_is_an_ema_and_the_center_moves():
    torch.manual_seed(0)
    cfg = DINOConfig(out_dim=32, hidden_dim=64, bottleneck_dim=16, n_local_crops=2)
    m = DINO(build_backbone("resnet18"), cfg, AugmentConfig(), 32)
    crops = m.views(torch.rand(4, 1, 48, 48), torch.Generator().manual_seed(0))
    assert [tuple(c.shape[-2:]) for c in crops] == [(32, 32)] * 4
    loss, metrics = m(*crops)
    loss.backward()
    teacher = list(m.teacher_backbone.parameters()) + list(m.teacher_head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher)
    assert m.head.v.grad is not None and m.backbone.conv1.weight.grad is not None
    assert 0 < metrics["teacher_entropy"].item() <= math.log(32) + 1e-6
    from lightly.loss import DINOLoss
    from lightly.models.utils import update_momentum

    with torch.no_grad():
        m.head.v.add_(1.0)
        t_out = m.teacher_head(m.teacher_backbone(torch.cat(crops[:2])))  # (2B, K) the teacher's global crops
    ref_teacher = copy.deepcopy(m.teacher_head)
    update_momentum(m.head, ref_teacher, m=teacher_momentum(0, 10, cfg.momentum_teacher))
    ref_loss = DINOLoss(output_dim=32, center_momentum=cfg.center_momentum)  # its centre starts at 0, as ours
    ref_loss.update_center(t_out.view(2, 4, 32))  # (views, B, K): lightly's EMA of the batch centre
    m.after_step(0, 10)
    torch.testing.assert_close(m.teacher_head.v, ref_teacher.v)
    torch.testing.assert_close(m.center, ref_loss.center.view(1, 32), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- BN heads, DINO schedules


def test_split_batchnorm_on_head_features_without_affine_standardizes_each_sub_batch():
    torch.manual_seed(0)
    bn = SplitBatchNorm(5, max_splits=2, affine=False)
    x = torch.randn(32, 5) * 3 + 7
    y = bn(x)
    assert y.shape == (32, 5) and bn.weight is None
    for i in (0, 1):
        ref = (x[i::2] - x[i::2].mean(0)) / torch.sqrt(x[i::2].var(0, unbiased=False) + bn.eps)
        torch.testing.assert_close(y[i::2], ref, rtol=1e-4, atol=1e-4)
    bn.eval()
    torch.testing.assert_close(bn(x), (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))
    with pytest.raises(ValueError, match="2D or 4D"):
        bn(torch.randn(4, 5, 3))


def test_mlp_last_bn_centres_the_outputs_over_the_batch():
    from engine.ssl.common import mlp

    head = mlp([16, 32, 8], bn=True, last_bn=True)
    assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine
    assert all(layer.bias is None for layer in head if isinstance(layer, torch.nn.Linear))
    z = head(torch.randn(64, 16) + 5.0)  # inputs sharing a large common component
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    plain = mlp([16, 32, 8])
    assert len(plain) == 3 and plain[-1].bias is not None


def test_moco_bn_head_uses_split_bn_for_query_and_key_heads():
    torch.manual_seed(0)
    cfg = MoCoConfig(queue=64, head_bn=True, head_out_bn=True, bn_splits=2)
    m = MoCoV2(build_backbone("resnet18"), cfg, AugmentConfig(), 32)
    kinds = [type(x).__name__ for x in m.head.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert kinds == ["SplitBatchNorm", "SplitBatchNorm"]
    assert [type(x).__name__ for x in m.head_k.modules() if "Norm" in type(x).__name__] == kinds
    views = m.views(torch.rand(32, 1, 40, 40), torch.Generator().manual_seed(0))
    loss, metrics = m(*views)
    loss.backward()
    assert torch.isfinite(loss) and m.head[0].weight.grad is not None

    def mean_cos(method):
        with torch.no_grad():
            z = torch.nn.functional.normalize(method.head(method.backbone(views[0])), dim=1)  # (32, d)
        return float((z @ z.t()).sum() - 32) / (32 * 31)

    torch.manual_seed(0)
    plain = MoCoV2(build_backbone("resnet18"), MoCoConfig(queue=64, bn_splits=2), AugmentConfig(), 32)
    assert mean_cos(plain) > 0.4 and abs(mean_cos(m)) < 0.1  # centred outputs are no longer near-parallel


def test_dino_teacher_temperature_warms_up_linearly_and_the_last_layer_is_frozen_early():
    from engine.ssl.dino import teacher_temperature

    cfg = DINOConfig(out_dim=32, hidden_dim=64, bottleneck_dim=16, n_local_crops=0, warmup_teacher_temp=0.02,
                     teacher_temp=0.06, warmup_teacher_temp_frac=0.5, freeze_last_layer_frac=0.1, head_bn=True)
    assert teacher_temperature(0, 100, cfg) == pytest.approx(0.02)
    assert teacher_temperature(25, 100, cfg) == pytest.approx(0.04)
    assert teacher_temperature(50, 100, cfg) == teacher_temperature(99, 100, cfg) == pytest.approx(0.06)
    torch.manual_seed(0)
    m = DINO(build_backbone("resnet18"), cfg, AugmentConfig(), 32)
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.head.mlp)
    crops = m.views(torch.rand(4, 1, 48, 48), torch.Generator().manual_seed(0))
    m.before_step(25, 100)
    assert m.tau_t == pytest.approx(0.04)
    loss, _ = m(*crops)
    loss.backward()
    m.before_update(9, 100)  # inside the first 10% of the run: the prototypes get no update
    assert m.head.v.grad is None and m.backbone.conv1.weight.grad is not None
    loss, _ = m(*crops)
    loss.backward()
    m.before_update(10, 100)
    assert m.head.v.grad is not None


def test_gradient_checkpointing_matches_plain_backward_and_updates_bn_statistics_once():
    """Checkpointed stages give the same loss and gradients, and BN running stats move one momentum step."""

    from engine.ssl.common import resnet_features

    torch.manual_seed(0)
    plain = build_backbone("resnet18").train()
    ckpt = copy.deepcopy(plain)
    x = torch.randn(4, 3, 32, 32)
    outs = {}
    for name, model, gc in (("plain", plain, False), ("ckpt", ckpt, True)):
        f = resnet_features(model, x, grad_checkpointing=gc)  # (4, 512)
        f.pow(2).mean().backward()
        outs[name] = f.detach()
    torch.testing.assert_close(outs["ckpt"], outs["plain"])
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=n)
    for (n, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(b, a, msg=n)  # running_mean/var and num_batches_tracked: updated once
    assert int(ckpt.layer4[1].bn2.num_batches_tracked) == 1
    assert ckpt.layer4[1].bn2.momentum == plain.layer4[1].bn2.momentum  # restored after the recompute
