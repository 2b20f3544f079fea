"""Holistic (adversarial) distillation: a critic tells the teacher's outputs from the student's.

The critic ``D`` sees ``x = prepare(z)``: the softmax score map for
:class:`ScoreMapDiscriminator` (``input_kind = "softmax"``), the raw logits
for :class:`SAGANDiscriminator` (``"logits"``, IFVD/SKD/CIRKD). The teacher's
inputs are "real", the student's "fake"; ``E`` is the mean over everything the
critic outputs (per sample, or per position of its score map):

* generator (student) loss ``L_ho = −E[D(x_s)]`` (both losses below);
* ``adv_loss="wgan-gp"`` (IFVD/SKD): critic loss
  ``L_D = E[D(x_s)] − E[D(x_t)] + λ_gp · E[(‖∇D(x̂)‖₂ − 1)²]``
  with ``x̂ = α x_t + (1 − α) x_s``, ``α ~ U(0, 1)`` per sample;
* ``adv_loss="hinge"`` (CIRKD): ``L_D = E[max(0, 1 − D(x_t))] + E[max(0, 1 + D(x_s))]``,
  no gradient penalty.

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


ADV_LOSSES = ("wgan-gp", "hinge")


def score_maps(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes in float32."""
    return torch.softmax(logits.float(), dim=1)


def critic_input(discriminator: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """What ``discriminator`` scores: float32 raw logits if its ``input_kind`` is ``"logits"``, else softmax maps."""
    kind = getattr(discriminator, "input_kind", "softmax")
    if kind == "logits":
        return logits.float()
    if kind == "softmax":
        return score_maps(logits)
    raise ValueError(f"discriminator: unknown input_kind {kind!r}; expected 'softmax' or 'logits'")


def _check_adv_loss(adv_loss: str) -> None:
    if adv_loss not in ADV_LOSSES:
        raise ValueError(f"adv_loss: unknown adversarial loss {adv_loss!r}; choose from {ADV_LOSSES}")


def generator_loss(discriminator: nn.Module, s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """``L_ho = −D(x_s).mean()`` (``x_s`` = softmax or raw logits, by the critic's ``input_kind``).

    The gradient reaches the student's logits only: the critic is evaluated
    with detached copies of its parameters (``torch.func.functional_call``), so
    the student's backward leaves the critic's ``.grad`` untouched.
    ``t_logits`` only fixes the target size (the student is resized to it).
    """
    s_logits = match_logits(s_logits, t_logits)
    params = {k: v.detach() for k, v in discriminator.named_parameters()}
    params.update(dict(discriminator.named_buffers()))
    with _fp32(s_logits.device):
        return -functional_call(discriminator, params, (critic_input(discriminator, s_logits),)).mean()


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``E[(‖∇_x Σ D(x)‖₂ − 1)²]`` at random interpolates of ``real`` and ``fake`` (both detached).

    The norm is per sample; a critic that outputs a score map has its map summed
    (IFVD's ``grad_outputs = ones``).
    """
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
    adv_loss: str = "wgan-gp",
) -> dict[str, torch.Tensor]:
    """The critic loss on detached inputs (see the module docstring).

    Returns ``dict(d_loss, wdist, gp)`` where ``wdist = E[D(x_t)] − E[D(x_s)]``
    (the critic's Wasserstein estimate, logged for both losses). WGAN-GP:
    ``d_loss = −wdist + gp_weight·gp``. Hinge: ``d_loss = E[max(0, 1 − D(x_t))]
    + E[max(0, 1 + D(x_s))]`` and ``gp`` is 0 (not computed).
    """
    _check_adv_loss(adv_loss)
    s_logits = match_logits(s_logits.detach(), t_logits)
    with _fp32(s_logits.device):
        fake = critic_input(discriminator, s_logits.detach())
        real = critic_input(discriminator, t_logits.detach())
        d_real, d_fake = discriminator(real), discriminator(fake)
        wdist = d_real.mean() - d_fake.mean()
        if adv_loss == "hinge":
            d_loss = torch.relu(1.0 - d_real).mean() + torch.relu(1.0 + d_fake).mean()
            return {"d_loss": d_loss, "wdist": wdist, "gp": wdist.new_zeros(())}
        gp = gradient_penalty(discriminator, real, fake)
        return {"d_loss": -wdist + gp_weight * gp, "wdist": wdist, "gp": gp}


def discriminator_step(
    discriminator: nn.Module,
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    gp_weight: float = 10.0,
    loss_weight: float = 0.1,
    adv_loss: str = "wgan-gp",
) -> dict[str, torch.Tensor]:
    """One critic update: ``optimizer`` minimizes ``loss_weight · L_D`` (``adv_loss``: ``"wgan-gp"`` or ``"hinge"``).

    Only the critic's parameters receive gradients (both logit inputs are
    detached); the optimizer's gradients are zeroed first. Under
    ``torch.distributed`` the critic's gradients are averaged over ranks
    before the step. Returns detached ``dict(d_loss, wdist, gp)`` (d_loss
    unweighted).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    optimizer.zero_grad(set_to_none=True)
    terms = critic_loss(discriminator, s_logits, t_logits, gp_weight, adv_loss)
    (loss_weight * terms["d_loss"]).backward()
    all_reduce_gradients(discriminator.parameters())
    optimizer.step()
    return {k: v.detach() for k, v in terms.items()}
