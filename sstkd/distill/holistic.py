"""Holistic (adversarial) distillation: WGAN-GP on score maps (the IFVD/SKD recipe).

The critic ``D`` scores softmax score maps. The teacher's maps are "real",
the student's "fake":

* generator (student) loss ``L_ho = −E[D(p_s)]``;
* critic loss ``L_D = E[D(p_s)] − E[D(p_t)] + λ_gp · E[(‖∇D(p̂)‖₂ − 1)²]``
  with ``p̂ = α p_t + (1 − α) p_s``, ``α ~ U(0, 1)`` per sample.

The critic always runs in float32 with autocast disabled (its double
backward is fragile in low precision), so no GradScaler is needed for it.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call

from sstkd.distill.response import match_logits
from sstkd.models.sync import all_reduce_gradients


def _fp32(device: torch.device):
    """Disable autocast for ``device`` (a no-op context where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # pragma: no cover - device type without autocast
        return contextlib.nullcontext()


def score_maps(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes in float32."""
    return torch.softmax(logits.float(), dim=1)


def generator_loss(discriminator: nn.Module, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """``L_ho = −D(softmax(s)).mean()``.

    The gradient reaches the student's logits only: the critic is evaluated
    with detached copies of its parameters (``torch.func.functional_call``), so
    the student's backward leaves the critic's ``.grad`` untouched.
    ``t_logits`` only fixes the target size (the student is resized to it).
    """
    s_logits = match_logits(s_logits, t_logits)
    params = {k: v.detach() for k, v in discriminator.named_parameters()}
    params.update(dict(discriminator.named_buffers()))
    with _fp32(s_logits.device):
        return -functional_call(discriminator, params, (score_maps(s_logits),)).mean()


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[(‖∇_x D(x)‖₂ − 1)²]`` at random interpolates of ``real`` and ``fake`` (both detached)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mix = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(mix)
    (grad,) = torch.autograd.grad(out.sum(), mix, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(
    discriminator: nn.Module,
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    gp_weight: float = 10.0,
) -> dict[str, torch.Tensor]:
    """The WGAN-GP critic loss on detached score maps.

    Returns ``dict(d_loss, wdist, gp)`` where ``wdist = E[D(p_t)] − E[D(p_s)]``
    (the critic's Wasserstein estimate) and ``d_loss = −wdist + gp_weight·gp``.
    """
    s_logits = match_logits(s_logits.detach(), t_logits)
    with _fp32(s_logits.device):
        fake = score_maps(s_logits.detach())
        real = score_maps(t_logits.detach())
        wdist = discriminator(real).mean() - discriminator(fake).mean()
        gp = gradient_penalty(discriminator, real, fake)
        return {"d_loss": -wdist + gp_weight * gp, "wdist": wdist, "gp": gp}


def discriminator_step(
    discriminator: nn.Module,
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    gp_weight: float = 10.0,
    loss_weight: float = 0.1,
) -> dict[str, torch.Tensor]:
    """One critic update: ``optimizer`` minimizes ``loss_weight · L_D``.

    Only the critic's parameters receive gradients (both logit inputs are
    detached); the optimizer's gradients are zeroed first. Under
    ``torch.distributed`` the critic's gradients are averaged over ranks
    before the step. Returns detached ``dict(d_loss, wdist, gp)`` (d_loss
    unweighted).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    optimizer.zero_grad(set_to_none=True)
    terms = critic_loss(discriminator, s_logits, t_logits, gp_weight)
    (loss_weight * terms["d_loss"]).backward()
    all_reduce_gradients(discriminator.parameters())
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}
