"""The field's conventions: KD normalizations, the SAGAN critic, WGAN-GP / hinge, and the protocol presets.

Expected values are derived by hand from the published formulas (IFVD: ``nn.KLDivLoss()`` = mean over
B·K·H·W, weight 10; CIRKD: KL ``batchmean`` over the B·H·W pixel rows, weight 1; SKD: Σ −p_t log p_s / (H·W);
WGAN-GP and hinge critic losses), not from any peer's code.
"""
import math

import pytest
import torch
from torch import nn

from sstkd.distill import (
    PROTOCOLS,
    SAGANDiscriminator,
    ScoreMapDiscriminator,
    SSTKDConfig,
    SSTKDLoss,
    critic_loss,
    generator_loss,
    pixelwise_kd,
    protocol_settings,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _two_pixel_logits():
    """B=1, K=2, H=1, W=2. Pixel 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2). Pixel 2: p_t = (1/2, 1/2), p_s = (1/4, 3/4)."""
    t = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    s = torch.tensor([[[[0.0, 0.0]], [[0.0, LN3]]]], dtype=torch.float64)
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl2 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    ce1 = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))          # = ln 2
    ce2 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))          # = ln 2 + ½ ln(4/3)
    return s, t, (kl1, kl2), (ce1, ce2)


def test_kd_normalizations_match_the_hand_derived_values():
    s, t, (kl1, kl2), (ce1, ce2) = _two_pixel_logits()
    assert ce1 == pytest.approx(LN2) and ce2 == pytest.approx(LN2 + 0.5 * math.log(4 / 3))
    got = {n: float(pixelwise_kd(s, t, normalization=n)) for n in ("pixel", "element", "skd")}
    assert got["pixel"] == pytest.approx((kl1 + kl2) / 2, rel=1e-6)        # mean over B·H·W = 2 pixels
    assert got["element"] == pytest.approx((kl1 + kl2) / 4, rel=1e-6)      # mean over B·K·H·W = 4 elements
    assert got["skd"] == pytest.approx((ce1 + ce2) / 2, rel=1e-6)          # Σ over the batch / (H·W = 2)
    # Doubling the batch: the means stay, SKD's batch sum doubles.
    s2, t2 = torch.cat([s, s]), torch.cat([t, t])
    assert float(pixelwise_kd(s2, t2, normalization="pixel")) == pytest.approx(got["pixel"], rel=1e-6)
    assert float(pixelwise_kd(s2, t2, normalization="element")) == pytest.approx(got["element"], rel=1e-6)
    assert float(pixelwise_kd(s2, t2, normalization="skd")) == pytest.approx(2 * got["skd"], rel=1e-6)
    # "element" is "pixel" / K for any K.
    a, b = torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 4)
    torch.testing.assert_close(pixelwise_kd(a, b, normalization="element"), pixelwise_kd(a, b) / 7)
    with pytest.raises(ValueError, match="normalization"):
        pixelwise_kd(s, t, normalization="batch")


def test_kd_normalizations_with_ignored_pixels():
    s, t, (kl1, kl2), (ce1, ce2) = _two_pixel_logits()
    target = torch.tensor([[[0, 255]]])  # pixel 2 ignored
    assert float(pixelwise_kd(s, t, target=target)) == pytest.approx(kl1, rel=1e-6)
    assert float(pixelwise_kd(s, t, target=target, normalization="element")) == pytest.approx(kl1 / 2, rel=1e-6)
    assert float(pixelwise_kd(s, t, target=target, normalization="skd")) == pytest.approx(ce1 / 2, rel=1e-6)


@pytest.mark.parametrize("protocol,weight,per_pixel_divisor", [("ifvd", 10.0, 4), ("cirkd", 1.0, 2)])
def test_protocol_kd_term_equals_the_published_weighted_loss(protocol, weight, per_pixel_divisor):
    s, t, (kl1, kl2), _ = _two_pixel_logits()
    cfg = SSTKDConfig.from_dict({"preset": "kd", "protocol": protocol, "use_ho": False})
    crit = SSTKDLoss(4, 4, 2, cfg)
    # Neither codebase leaves ignore-label pixels out of its KD term.
    out = crit(s.float(), t.float(), target=torch.tensor([[[0, 255]]]))
    expected = weight * (kl1 + kl2) / per_pixel_divisor
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(cfg.lambda_pi * out["pi"]) == pytest.approx(expected, rel=1e-5)


class MeanCritic(nn.Module):
    """A linear critic ``D(x) = mean(x)`` per sample, on logits or softmax maps: its values and its
    gradient (1/N everywhere, so ‖∇‖ = 1/√N) are known by hand."""

    def __init__(self, input_kind):
        super().__init__()
        self.input_kind = input_kind
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x.flatten(1).mean(1)


def test_wgan_gp_and_hinge_losses_match_their_formulas_on_known_critic_outputs():
    t = torch.full((2, 3, 4, 4), 2.0)        # D(x_t) = 2 on logits
    s = torch.full((2, 3, 4, 4), -0.5)       # D(x_s) = −0.5
    n = 3 * 4 * 4
    d = MeanCritic("logits")
    wgan = {k: v.detach() for k, v in critic_loss(d, s, t, gp_weight=10.0, adv_loss="wgan-gp").items()}
    gp = (1 / math.sqrt(n) - 1) ** 2
    assert float(wgan["wdist"]) == pytest.approx(2.5)
    assert float(wgan["gp"]) == pytest.approx(gp, rel=1e-5)
    assert float(wgan["d_loss"]) == pytest.approx(-0.5 - 2.0 + 10 * gp, rel=1e-5)
    hinge = {k: v.detach() for k, v in critic_loss(d, s, t, adv_loss="hinge").items()}
    assert float(hinge["d_loss"]) == pytest.approx(max(0, 1 - 2.0) + max(0, 1 - 0.5))   # = 0.5
    assert float(hinge["gp"]) == 0.0
    assert float(generator_loss(d, s, t).detach()) == pytest.approx(0.5)                          # −D(x_s), both losses
    # A softmax critic sees probabilities: D = mean of a distribution over K = 3 classes = 1/3, whatever the logits.
    soft = MeanCritic("softmax")
    assert float(generator_loss(soft, s, t).detach()) == pytest.approx(-1 / 3)
    assert float(critic_loss(soft, s, t, adv_loss="hinge")["d_loss"].detach()) == pytest.approx((1 - 1 / 3) + (1 + 1 / 3))
    with pytest.raises(ValueError, match="adv_loss"):
        critic_loss(d, s, t, adv_loss="lsgan")


def test_sagan_critic_architecture():
    d = SAGANDiscriminator(19, 64)
    assert isinstance(d.norm, nn.BatchNorm2d) and d.input_kind == "logits"
    for layer in (d.l1, d.l2, d.l3, d.l4):
        conv, act = layer
        assert hasattr(conv, "parametrizations") and "weight" in conv.parametrizations   # spectral norm
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.1
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2)
    assert [l[0].out_channels for l in (d.l1, d.l2, d.l3, d.l4)] == [64, 128, 256, 512]
    assert d.attn1.value.in_channels == 256 and d.attn2.value.in_channels == 512
    assert d.attn1.query.out_channels == 32 and float(d.attn1.gamma.detach()) == 0.0
    assert not hasattr(d.last, "parametrizations") and d.last.kernel_size == (4, 4)
    # Parameter count derived from that layout: BN 2·19; convs Σ(c_in·c_out·16 + c_out); attention
    # q, k (C·C/8 + C/8 each), v (C² + C), γ; last conv 512·16 + 1.
    convs = sum(ci * co * 16 + co for ci, co in ((19, 64), (64, 128), (128, 256), (256, 512)))
    attn = sum(2 * (c * (c // 8) + c // 8) + c * c + c + 1 for c in (256, 512))
    assert sum(p.numel() for p in d.parameters()) == 2 * 19 + convs + attn + 512 * 16 + 1
    # 64×64 logits (a 512×512 crop at stride 8) give a 1×1 score map; smaller maps are padded to work.
    assert d(torch.randn(2, 19, 64, 64)).shape == (2, 1, 1, 1)
    assert SAGANDiscriminator(5, 4)(torch.randn(2, 5, 8, 8)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="logits"):
        SAGANDiscriminator(5, 4)(torch.randn(2, 4, 8, 8))


def test_self_attention_is_the_sagan_formula():
    torch.manual_seed(0)
    d = SAGANDiscriminator(3, 8)
    attn = d.attn1
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    x = torch.randn(2, attn.value.in_channels, 3, 2)
    q, k, v = attn.query(x).flatten(2), attn.key(x).flatten(2), attn.value(x).flatten(2)
    n = x.shape[-2] * x.shape[-1]
    expected = torch.empty_like(v)
    for i in range(n):  # position i: Σ_j softmax_j(q_i · k_j) v_j
        w = torch.softmax(torch.einsum("bc,bcj->bj", q[:, :, i], k), dim=1)
        expected[:, :, i] = torch.einsum("bj,bcj->bc", w, v)
    torch.testing.assert_close(attn(x), x + 0.7 * expected.view_as(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("protocol", ["ifvd", "cirkd"])
def test_protocol_presets_reproduce_the_critic_losses_on_the_same_logits(protocol):
    torch.manual_seed(0)
    cfg = SSTKDConfig.from_dict({"preset": "kd", "protocol": protocol, "d_channels": 8})
    crit = SSTKDLoss(4, 4, 5, cfg)
    d = crit.discriminator
    assert isinstance(d, SAGANDiscriminator)
    d.eval()  # fixed BN statistics and spectral-norm vectors, so that separate calls agree
    s, t = torch.randn(2, 5, 16, 16), torch.randn(2, 5, 16, 16) * 3
    with torch.no_grad():
        d_t, d_s = d(t).mean(), d(s).mean()           # raw logits, no softmax
    out = crit(s, t)
    assert float(out["ho"]) == pytest.approx(float(-d_s), rel=1e-5, abs=1e-7)
    torch.manual_seed(1)
    terms = {k: v.detach() for k, v in critic_loss(d, s, t, cfg.gp_weight, cfg.adv_loss).items()}
    if protocol == "cirkd":   # hinge, no penalty
        with torch.no_grad():
            expected = torch.relu(1 - d(t)).mean() + torch.relu(1 + d(s)).mean()
        assert float(terms["gp"]) == 0.0
    else:                     # WGAN-GP, λ_gp = 10, same α stream
        torch.manual_seed(1)
        alpha = torch.rand(2, 1, 1, 1)
        mix = (alpha * t + (1 - alpha) * s).requires_grad_(True)
        (grad,) = torch.autograd.grad(d(mix).sum(), mix)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        expected = d_s - d_t + 10.0 * gp
        assert float(terms["gp"]) == pytest.approx(float(gp), rel=1e-4)
    assert float(terms["d_loss"]) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)


def test_discriminator_step_with_hinge_trains_the_sagan_critic_only():
    torch.manual_seed(0)
    crit = SSTKDLoss(4, 4, 3, SSTKDConfig.from_dict({"preset": "kd", "protocol": "cirkd", "d_channels": 4}))
    opt = crit.make_discriminator_optimizer()
    assert opt.defaults["lr"] == 4e-4 and opt.defaults["betas"] == (0.9, 0.99)
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 3, 8, 8)
    before = [p.detach().clone() for p in crit.discriminator_parameters()]
    terms = crit.discriminator_step(s, t, opt)
    assert float(terms["gp"]) == 0.0 and s.grad is None
    assert any(not torch.equal(a, b) for a, b in zip(before, crit.discriminator_parameters()))
    # The generator's loss sends gradient to the logits and leaves the critic's .grad alone.
    opt.zero_grad(set_to_none=True)
    crit(s, t)["loss"].backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert all(p.grad is None for p in crit.discriminator_parameters())


def test_protocol_settings_and_validation_name_the_field():
    assert set(PROTOCOLS) == {"ifvd", "cirkd", "mmseg"}
    ifvd = SSTKDConfig.from_dict({"protocol": "ifvd"})
    assert (ifvd.pi_normalization, ifvd.lambda_pi, ifvd.critic, ifvd.adv_loss) == ("element", 10.0, "sagan", "wgan-gp")
    assert (ifvd.lambda_adv, ifvd.lambda_d, ifvd.gp_weight, ifvd.d_lr, ifvd.d_betas) == (0.001, 0.1, 10.0, 4e-4,
                                                                                         (0.9, 0.99))
    assert ifvd.use_str and ifvd.use_sta  # the protocol leaves the method's terms alone
    cirkd = SSTKDConfig.from_dict({"preset": "kd", "protocol": "cirkd", "lambda_pi": 2.0})
    assert (cirkd.pi_normalization, cirkd.lambda_pi, cirkd.adv_loss) == ("pixel", 2.0, "hinge")  # keys override
    assert not cirkd.use_str
    assert SSTKDConfig.from_dict({"protocol": "mmseg"}) == SSTKDConfig()
    assert SSTKDConfig.from_dict(ifvd.to_dict()) == ifvd
    protocol_settings("ifvd")["lambda_pi"] = 0.0          # a copy: the table is unchanged
    assert PROTOCOLS["ifvd"]["lambda_pi"] == 10.0
    assert SSTKDConfig().critic == "sstkd" and isinstance(SSTKDLoss(4, 4, 3).discriminator, ScoreMapDiscriminator)
    with pytest.raises(ValueError, match="protocol"):
        SSTKDConfig.from_dict({"protocol": "skd"})
    for key, value, exc in (("pi_normalization", "mean", ValueError), ("critic", "patchgan", ValueError),
                            ("adv_loss", "lsgan", ValueError), ("adv_loss", 1, ValueError),
                            ("pi_mask_ignored", "no", TypeError)):
        with pytest.raises(exc, match=key):
            SSTKDConfig(**{key: value})
