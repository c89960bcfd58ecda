"""The masked-contrastive hybrid (issue 16 item 2): masking, the MoCo v2 objective, the optional reconstruction."""
from __future__ import annotations

import pytest
import torch

from engine.ssl import MaskedContrastiveConfig, PretrainConfig
from engine.ssl.augment import AugmentConfig
from engine.ssl.common import step_generator
from engine.ssl.masked_contrastive import MaskedContrastive
from engine.ssl.moco_v2 import info_nce, moco_logits, variance_loss
from engine.ssl.spark import spark_loss


def _method(**kw) -> MaskedContrastive:
    from engine.models import build_backbone

    torch.manual_seed(0)
    cfg = MaskedContrastiveConfig(queue=16, proj_hidden=32, proj_dim=16, **kw)
    return MaskedContrastive(build_backbone("resnet18"), cfg, AugmentConfig(), 64)


def test_query_is_patch_masked_key_is_not_and_the_loss_is_moco_v2_on_the_masked_view():
    m = _method(mask_ratio=0.5)
    x01 = torch.rand(4, 1, 64, 64)
    x_q, x_k, perm, mask = m.views(x01, step_generator(torch.device("cpu"), 0, 0, 0))
    assert x_q.shape == x_k.shape == (4, 3, 64, 64) and mask.shape == (4, 2, 2) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == 2).all()  # exactly half of the 4 patches per image
    seen = {}
    real_forward = m.backbone.forward
    m.backbone.forward = lambda x: seen.setdefault("q", x) is not None and real_forward(x)  # the query's input
    m.train()
    loss, metrics = m(x_q, x_k, perm, mask)
    m.backbone.forward = real_forward
    m_pix = mask.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, None].expand(-1, 3, -1, -1)
    assert (seen["q"][m_pix] == 0).all() and torch.equal(seen["q"][~m_pix], x_q[~m_pix])
    assert set(metrics) == {"nce", "var", "pos_sim", "neg_sim", "masked_frac"} and metrics["masked_frac"] == 0.5
    # the same loss by hand (eval-free: recompute with the same BN batch statistics)
    with torch.no_grad():
        z = m.head(real_forward(x_q.masked_fill(m_pix[:, :1], 0.0))).float()
        k = torch.nn.functional.normalize(m.head_k(m.backbone_k(x_k[perm])).float(), dim=1)[torch.argsort(perm)]
        want = info_nce(moco_logits(torch.nn.functional.normalize(z, dim=1), k, m.queue), m.cfg.T) \
            + m.var_weight * variance_loss(z, m.cfg.gamma)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in m.backbone_k.parameters())  # the key encoder takes no gradient
    assert [w for _, w in m.backbone_work([x_q, x_k, perm, mask])] == [True, False]


def test_reconstruction_is_added_with_its_weight_only_when_asked():
    x01 = torch.rand(4, 1, 64, 64)
    plain = _method()
    assert plain.decoder is None
    hybrid = _method(recon_weight=0.5, decoder_width=32)
    views = hybrid.views(x01, step_generator(torch.device("cpu"), 0, 1, 0))
    hybrid.train()
    loss, metrics = hybrid(*views)
    assert "rec" in metrics and metrics["rec"] > 0
    # loss = contrastive part + 0.5 * SparK's masked-patch loss of the decoder's prediction
    x_q, _, _, mask = views
    from engine.models import resnet_stages

    with torch.no_grad():
        feats = resnet_stages(hybrid.backbone, x_q.masked_fill(mask.repeat_interleave(32, 1)
                                                               .repeat_interleave(32, 2)[:, None], 0.0))
        rec = spark_loss(hybrid.decoder(feats, mask), x_q[:, :1], mask, 32)
    torch.testing.assert_close(metrics["rec"], rec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.detach() - 0.5 * metrics["rec"], metrics["nce"] + hybrid.var_weight * metrics["var"],
                               rtol=1e-4, atol=1e-5)


def test_settings_are_checked_with_clear_messages():
    with pytest.raises(ValueError, match="multiple of 32"):
        MaskedContrastiveConfig(patch=16, recon_weight=1.0)
    assert MaskedContrastiveConfig(patch=16).patch == 16  # contrastive-only masking at any patch size
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedContrastiveConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="divisible by its patch 32"):
        PretrainConfig(method="masked_contrastive", image_size=48)
    with pytest.raises(ValueError, match="must be a MaskedContrastiveConfig"):
        PretrainConfig(method="masked_contrastive", method_config=__import__("engine.ssl", fromlist=["x"]).MoCoConfig())
    cfg = PretrainConfig(method="masked_contrastive", image_size=64, collapse_control="erank:8")  # MoCo's knob
    assert cfg.collapse_control.target == 8.0
