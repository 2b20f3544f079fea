"""SSTKDLoss end to end: gradients, zero-at-equality, autocast, bad input, a toy training loop."""
import pytest
import torch
from torch import nn

from sstkd.distill import FeatureTap, SSTKDConfig, SSTKDLoss

K = 5


class TinySeg(nn.Module):
    """A stride-4 'layer1' tap and a logits head, like the real segmentation models."""

    def __init__(self, low_channels, width, norm=True):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.backbone = nn.Module()
        self.backbone.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), bn(width), nn.ReLU())
        self.backbone.layer1 = nn.Sequential(nn.Conv2d(width, low_channels, 3, 2, 1), bn(low_channels), nn.ReLU())
        self.head = nn.Conv2d(low_channels, K, 1)

    def forward(self, x):
        low = self.backbone.layer1(self.backbone.stem(x))
        out = nn.functional.interpolate(self.head(low), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out}


def _setup(config=None, s_ch=8, t_ch=16, seed=0):
    torch.manual_seed(seed)
    student, teacher = TinySeg(s_ch, 8), TinySeg(t_ch, 16, norm=False).eval()
    crit = SSTKDLoss(s_ch, t_ch, K, config if config is not None else SSTKDConfig(sta_levels=16))
    return student, teacher, crit


def _run(student, teacher, crit, x, target=None, teacher_no_grad=True):
    with FeatureTap(student, {"low": "backbone.layer1"}) as ts, FeatureTap(teacher, {"low": "backbone.layer1"}) as tt:
        s_out = student(x)["out"]
        if teacher_no_grad:
            with torch.no_grad():
                t_out = teacher(x)["out"]
        else:
            t_out = teacher(x)["out"]
        return crit(s_out, t_out, ts["low"], tt["low"], target=target), s_out, t_out


def test_every_term_is_returned_and_the_total_is_their_weighted_sum():
    student, teacher, crit = _setup()
    x = torch.randn(2, 3, 64, 64)
    out, _, _ = _run(student, teacher, crit, x)
    assert set(out) == {"pi", "ho", "str", "sta", "sta_hist", "sta_cdf", "sta_map", "sta_range", "loss"}
    c = crit.config
    expected = (c.lambda_pi * out["pi"] + c.lambda_adv * out["ho"]
                + c.lambda_str * out["str"] + c.lambda_sta * out["sta"])
    torch.testing.assert_close(out["loss"], expected)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.values())
    assert crit.last_str_bands.shape == (17,)


def test_gradients_reach_student_and_heads_only_and_the_teacher_is_unchanged():
    student, teacher, crit = _setup()
    x = torch.randn(2, 3, 64, 64)
    # the teacher runs WITH autograd here: SSTKDLoss must detach its inputs itself
    out, _, _ = _run(student, teacher, crit, x, teacher_no_grad=False)
    out["loss"].backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert crit.student_side_parameters()
    for p in crit.student_side_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in crit.discriminator_parameters())
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(list(student.parameters()) + crit.student_side_parameters(), lr=0.1)
    s_before = [p.detach().clone() for p in student.parameters()]
    opt.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k
    assert any(not torch.equal(p, b) for p, b in zip(student.parameters(), s_before))


def test_parameter_groups_partition_the_module():
    _, _, crit = _setup()
    s_ids = {id(p) for p in crit.student_side_parameters()}
    d_ids = {id(p) for p in crit.discriminator_parameters()}
    assert s_ids and d_ids and not s_ids & d_ids
    assert s_ids | d_ids == {id(p) for p in crit.parameters()}
    opt = crit.make_discriminator_optimizer()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 4e-4 and opt.defaults["betas"] == (0.9, 0.99)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == d_ids


def test_texture_losses_vanish_for_equal_features_and_not_otherwise():
    crit = SSTKDLoss(6, 6, K, SSTKDConfig(sta_levels=16))
    assert crit.align.is_identity
    low = torch.relu(torch.randn(2, 6, 20, 20))
    logits = torch.randn(2, K, 40, 40)
    out = crit(logits, logits.clone(), low, low.clone())
    for k in ("pi", "str", "sta", "sta_hist", "sta_cdf", "sta_map", "sta_range"):
        assert float(out[k]) == pytest.approx(0.0, abs=1e-7), k
    other = crit(logits + torch.randn_like(logits), logits, low + 0.3 * torch.randn_like(low), low)
    for k in ("pi", "str", "sta"):
        assert float(other[k]) > 1e-4, k


def test_discriminator_step_updates_only_the_critic():
    student, teacher, crit = _setup()
    x = torch.randn(2, 3, 64, 64)
    _, s_out, t_out = _run(student, teacher, crit, x)
    opt = crit.make_discriminator_optimizer()
    d_before = [p.detach().clone() for p in crit.discriminator_parameters()]
    a_before = [p.detach().clone() for p in crit.student_side_parameters()]
    res = crit.discriminator_step(s_out, t_out, opt)
    assert set(res) == {"d_loss", "wdist", "gp"}
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in crit.student_side_parameters())
    assert all(torch.equal(p, b) for p, b in zip(crit.student_side_parameters(), a_before))
    assert any(not torch.equal(p, b) for p, b in zip(crit.discriminator_parameters(), d_before))


def test_autocast_bf16_on_cpu_matches_float32():
    student, teacher, crit = _setup()
    x = torch.randn(2, 3, 64, 64)
    ref, _, _ = _run(student, teacher, crit, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, s_out, _ = _run(student, teacher, crit, x)
    assert s_out.dtype == torch.bfloat16
    for k, v in got.items():
        assert v.dtype == torch.float32 and bool(torch.isfinite(v)), k
    for k in ("pi", "str"):
        torch.testing.assert_close(got[k], ref[k], rtol=0.05, atol=1e-3, msg=k)
    got["loss"].backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in student.parameters())


def test_ignore_label_reaches_the_response_term():
    student, teacher, crit = _setup(SSTKDConfig.preset("kd"))
    x = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, K, (2, 32, 32))
    target[:, :16] = 255
    with_t, s_out, t_out = _run(student, teacher, crit, x, target=target)
    without, _, _ = _run(student, teacher, crit, x)
    assert float(with_t["pi"].detach()) != pytest.approx(float(without["pi"].detach()), rel=1e-4)
    from sstkd.distill import pixelwise_kd

    torch.testing.assert_close(with_t["pi"], pixelwise_kd(s_out, t_out, target=target))


def test_kd_preset_needs_no_features():
    crit = SSTKDLoss(8, 16, K, SSTKDConfig.preset("kd"))
    assert crit.align is None and crit.cdm is None and crit.dtiem is None
    assert crit.student_side_parameters() == []
    out = crit(torch.randn(1, K, 16, 16), torch.randn(1, K, 16, 16))
    assert set(out) == {"pi", "ho", "loss"}
    assert SSTKDLoss(8, 16, K, SSTKDConfig(use_ho=False)).make_discriminator_optimizer() is None


def test_bad_input_names_the_offending_argument():
    crit = SSTKDLoss(8, 16, K, SSTKDConfig(sta_levels=16))
    s_log, t_log = torch.randn(2, K, 16, 16), torch.randn(2, K, 16, 16)
    s_low, t_low = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 8, 8)
    cases = [
        ((s_log, t_log, s_low, torch.randn(2, 16, 8, 10)), "s_low"),  # spatial size mismatch
        ((s_log, t_log, torch.randn(3, 8, 8, 8), t_low), "s_low"),  # batch size mismatch
        ((s_log, torch.randn(3, K, 16, 16), s_low, t_low), "s_logits"),  # logit batch mismatch
        ((s_log, t_log, None, t_low), "s_low"),  # missing tap
        ((s_log, t_log, s_low, None), "t_low"),
        ((s_log, t_log, torch.randn(2, 4, 8, 8), t_low), "s_low"),  # wrong channel counts
        ((s_log, t_log, s_low, torch.randn(2, 8, 8, 8)), "t_low"),
        ((torch.randn(2, K + 1, 16, 16), t_log, s_low, t_low), "s_logits"),  # wrong class count
        ((s_log, t_log, s_low.long(), t_low), "s_low"),
    ]
    for args, name in cases:
        with pytest.raises((ValueError, TypeError), match=name):
            crit(*args)
    with pytest.raises(RuntimeError, match="use_ho"):
        SSTKDLoss(8, 16, K, SSTKDConfig(use_ho=False)).discriminator_step(s_log, t_log, None)
    with pytest.raises(ValueError, match="student_channels"):
        SSTKDLoss(0, 16, K)
    with pytest.raises(TypeError, match="config"):
        SSTKDLoss(8, 16, K, config=3)


def test_a_toy_training_loop_lowers_the_texture_losses():
    student, teacher, crit = _setup(SSTKDConfig(sta_levels=32, d_channels=8), seed=1)
    x = torch.randn(2, 3, 64, 64)
    params = list(student.parameters()) + crit.student_side_parameters()
    opt = torch.optim.Adam(params, lr=1e-2)
    d_opt = crit.make_discriminator_optimizer()
    history = {"str": [], "sta": []}
    for _ in range(30):
        out, s_out, t_out = _run(student, teacher, crit, x)
        for k in history:
            history[k].append(float(out[k].detach()))
        opt.zero_grad()
        out["loss"].backward()  # distillation losses only, no cross-entropy
        opt.step()
        crit.discriminator_step(s_out, t_out, d_opt)
    for k, h in history.items():
        first, last = h[0], sum(h[-5:]) / 5
        assert last < 0.8 * first, (k, h)


@pytest.mark.parametrize("preset", ["sstkd", "kd", "stlnet_sta"])
def test_every_preset_runs_forward_and_backward(preset):
    student, teacher, crit = _setup(SSTKDConfig.preset(preset, sta_levels=16, d_channels=8))
    out, _, _ = _run(student, teacher, crit, torch.randn(2, 3, 32, 32))
    assert all(bool(torch.isfinite(v)) for v in out.values())
    out["loss"].backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in student.parameters())


def test_backend_is_passed_to_the_texture_ops():
    x = torch.randn(1, 3, 32, 32)
    student, teacher, crit = _setup(SSTKDConfig(sta_levels=16, backend="torch"))
    assert crit.cdm.backend == "torch" and crit.dtiem.backend == "torch"
    _run(student, teacher, crit, x)
    # an explicitly requested backend that cannot run here is an error, never a silent fallback
    if not torch.cuda.is_available():
        for cfg in (SSTKDConfig(use_sta=False, backend="cuda"), SSTKDConfig(use_str=False, backend="cuda")):
            student, teacher, crit = _setup(cfg)
            with pytest.raises(RuntimeError, match="cuda"):
                _run(student, teacher, crit, x)
