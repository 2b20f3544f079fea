"""Response (pixel-wise KL) and holistic (WGAN-GP) losses."""
import pytest
import torch

from sstkd.distill import (
    ScoreMapDiscriminator,
    critic_loss,
    discriminator_step,
    generator_loss,
    gradient_penalty,
    pixelwise_kd,
)


def _kl_literal(s, t, T=1.0):
    """Per-pixel KL(p_t || p_s), written out with explicit logs."""
    p_t = torch.softmax(t / T, 1)
    p_s = torch.softmax(s / T, 1)
    return (p_t * (p_t.log() - p_s.log())).sum(1)


def test_kl_matches_literal_and_is_zero_for_equal_logits():
    s = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    t = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(pixelwise_kd(s, t).double(), _kl_literal(s, t).mean(), rtol=1e-5, atol=1e-7)
    assert float(pixelwise_kd(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(pixelwise_kd(s, t)) > 0.01


def test_temperature_uses_the_t_squared_convention():
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = _kl_literal(s, t, T=4.0).mean() * 16
    torch.testing.assert_close(pixelwise_kd(s, t, temperature=4.0), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        pixelwise_kd(s, t, temperature=0)


def test_ignore_label_pixels_are_excluded():
    s, t = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 5, 5))
    target[0, :2] = 255
    target[1, :, 3:] = 255
    valid = target != 255
    expected = _kl_literal(s, t)[valid].mean()
    got = pixelwise_kd(s, t, target=target)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # whatever the student predicts on ignored pixels does not matter
    s3 = torch.where(valid[:, None], s, torch.randn_like(s) * 10)
    torch.testing.assert_close(pixelwise_kd(s3, t, target=target), got)
    assert float(pixelwise_kd(s, t, target=target)) != pytest.approx(float(pixelwise_kd(s, t)), rel=1e-4)
    # all pixels ignored: a defined zero that still backpropagates
    s.requires_grad_(True)
    zero = pixelwise_kd(s, t, target=torch.full((2, 5, 5), 255))
    assert float(zero.detach()) == 0.0
    zero.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) == 0.0


def test_other_ignore_index_and_target_of_another_size():
    s, t = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[:, :4] = -1  # top half of the (nearest-resized) label is ignored
    expected = _kl_literal(s, t)[:, 2:].mean()
    torch.testing.assert_close(pixelwise_kd(s, t, target=target, ignore_index=-1), expected)


def test_student_logits_of_another_size_are_resized_to_the_teachers():
    t = torch.randn(1, 3, 8, 8)
    s_small = torch.randn(1, 3, 4, 4, requires_grad=True)
    up = torch.nn.functional.interpolate(s_small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pixelwise_kd(s_small, t), pixelwise_kd(up, t))
    pixelwise_kd(s_small, t).backward()
    assert s_small.grad.shape == s_small.shape


def test_bad_logits_name_the_argument():
    t = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="s_logits"):
        pixelwise_kd(torch.randn(2, 4, 4, 4), t)
    with pytest.raises(ValueError, match="s_logits"):
        pixelwise_kd(torch.randn(3, 3, 4, 4), t)
    with pytest.raises(ValueError, match="t_logits"):
        pixelwise_kd(t, torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="target"):
        pixelwise_kd(t, t, target=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="target"):
        pixelwise_kd(t, t, target=torch.zeros(1, 4, 4, dtype=torch.long))


def test_teacher_gets_no_gradient_from_kl():
    s = torch.randn(1, 3, 4, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, 4, requires_grad=True)
    pixelwise_kd(s, t).backward()
    assert s.grad is not None and t.grad is None


# ----------------------------------------------------------------------------- holistic


def test_discriminator_shapes_and_tiny_inputs():
    d = ScoreMapDiscriminator(5, base_channels=4)
    assert d(torch.rand(3, 5, 32, 24)).shape == (3,)
    assert d(torch.rand(2, 5, 3, 5)).shape == (2,)  # padded internally
    with pytest.raises(ValueError, match="score"):
        d(torch.rand(2, 4, 16, 16))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())


def test_generator_loss_reaches_the_student_only():
    d = ScoreMapDiscriminator(4, base_channels=4)
    s = torch.randn(2, 4, 16, 16, requires_grad=True)
    t = torch.randn(2, 4, 16, 16)
    loss = generator_loss(d, s, t)
    expected = -d(torch.softmax(s, 1)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert all(p.grad is None for p in d.parameters())


def test_gradient_penalty_is_zero_for_a_unit_slope_linear_critic():
    class Linear(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = torch.nn.Parameter(w)

        def forward(self, x):
            return (x * self.w).flatten(1).sum(1)

    w = torch.randn(1, 3, 4, 4)
    real, fake = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert float(gradient_penalty(Linear(w / w.norm()), real, fake).detach()) == pytest.approx(0.0, abs=1e-10)
    # gradient norm 2 everywhere: penalty (2 - 1)² = 1
    torch.testing.assert_close(gradient_penalty(Linear(2 * w / w.norm()), real, fake), torch.tensor(1.0))


def test_critic_loss_terms():
    torch.manual_seed(1)
    d = ScoreMapDiscriminator(3, base_channels=4)
    s, t = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    terms = critic_loss(d, s, t, gp_weight=10.0)
    wdist = d(torch.softmax(t, 1)).mean() - d(torch.softmax(s, 1)).mean()
    torch.testing.assert_close(terms["wdist"], wdist)
    torch.testing.assert_close(terms["d_loss"], -wdist + 10.0 * terms["gp"])
    assert float(terms["gp"].detach()) >= 0


def test_discriminator_step_changes_only_discriminator_params():
    student = torch.nn.Conv2d(3, 4, 3, padding=1)
    d = ScoreMapDiscriminator(4, base_channels=4)
    opt = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.9, 0.99))
    x = torch.randn(2, 3, 16, 16)
    s_logits = student(x)
    t_logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    s_before = [p.detach().clone() for p in student.parameters()]
    d_before = [p.detach().clone() for p in d.parameters()]
    out = discriminator_step(d, s_logits, t_logits, opt, gp_weight=10.0, loss_weight=0.1)
    assert set(out) == {"d_loss", "wdist", "gp"} and not out["d_loss"].requires_grad
    assert all(p.grad is None for p in student.parameters())
    assert t_logits.grad is None
    for p, b in zip(student.parameters(), s_before):
        assert torch.equal(p, b)
    assert any(not torch.equal(p, b) for p, b in zip(d.parameters(), d_before))
    with pytest.raises(TypeError, match="optimizer"):
        discriminator_step(d, s_logits, t_logits, "adam")


def test_critic_learns_to_separate_teacher_from_student():
    torch.manual_seed(0)
    d = ScoreMapDiscriminator(3, base_channels=4)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2, betas=(0.9, 0.99))
    t = torch.zeros(2, 3, 16, 16)
    t[:, 0] = 5.0  # confident teacher
    s = torch.randn(2, 3, 16, 16) * 0.1  # uncertain student
    first = discriminator_step(d, s, t, opt, loss_weight=1.0)["wdist"]
    for _ in range(8):
        last = discriminator_step(d, s, t, opt, loss_weight=1.0)["wdist"]
    assert float(last) > float(first)
    # the student's adversarial loss is then lower for teacher-like maps
    assert float(generator_loss(d, t, t)) < float(generator_loss(d, s, t))
