"""Response (pixel-wise) distillation: KL between teacher and student class distributions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sstkd.ops._checks import check_image


def match_logits(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """Validate a student/teacher logit pair; return the student's logits at the teacher's size.

    A different spatial size is allowed (the student is resized bilinearly,
    ``align_corners=False``, to the teacher's); batch and class counts must match.
    """
    check_image(s_logits, "s_logits")
    check_image(t_logits, "t_logits")
    if s_logits.device != t_logits.device:
        raise ValueError(f"s_logits: on device {s_logits.device}, but t_logits is on {t_logits.device}")
    if s_logits.shape[0] != t_logits.shape[0]:
        raise ValueError(
            f"s_logits: batch size {s_logits.shape[0]} differs from t_logits' {t_logits.shape[0]}"
        )
    if s_logits.shape[1] != t_logits.shape[1]:
        raise ValueError(
            f"s_logits: {s_logits.shape[1]} classes, but t_logits has {t_logits.shape[1]}"
        )
    if s_logits.shape[-2:] != t_logits.shape[-2:]:
        s_logits = F.interpolate(s_logits, size=t_logits.shape[-2:], mode="bilinear", align_corners=False)
    return s_logits


def pixelwise_kd(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """``L_pi = T² · mean_pixels KL(softmax(t/T) ‖ softmax(s/T))``.

    Args:
        s_logits: student logits ``(B, K, H_s, W_s)``; resized bilinearly to
            the teacher's size when it differs.
        t_logits: teacher logits ``(B, K, H, W)`` (detached here).
        temperature: ``T > 0``. The ``T²`` factor (Hinton et al.) keeps the
            gradient scale independent of ``T``; at the default ``T = 1`` it is 1.
        target: optional labels ``(B, H_y, W_y)`` (integer); pixels equal to
            ``ignore_index`` are excluded from the mean. A target of another
            size is resized to ``(H, W)`` with nearest-neighbour sampling.
        ignore_index: the ignore label.

    Returns:
        A float32 scalar. If every pixel is ignored the result is 0 (still
        attached to the graph).

    Raises:
        ValueError / TypeError naming ``s_logits``, ``t_logits``, ``target``
        or ``temperature``.
    """
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0
            or not math.isfinite(temperature)):
        raise ValueError(f"temperature: must be a finite positive number, got {temperature!r}")
    s_logits = match_logits(s_logits, t_logits)
    t = t_logits.detach().float() / temperature
    s = s_logits.float() / temperature
    p_t = torch.softmax(t, dim=1)
    # KL per pixel; xlogy gives 0·log 0 = 0 where the teacher is certain.
    kl = (torch.xlogy(p_t, p_t) - p_t * torch.log_softmax(s, dim=1)).sum(dim=1)  # (B, H, W)
    if target is None:
        return kl.mean() * temperature**2
    mask = _valid_mask(target, t_logits, ignore_index)
    count = mask.sum()
    total = (kl * mask).sum()
    return total / count.clamp_min(1) * temperature**2


def _valid_mask(target: torch.Tensor, t_logits: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target: expected an integer label tensor, got {target.dtype}")
    if target.dim() != 3:
        raise ValueError(f"target: expected a (B, H, W) label tensor, got shape {tuple(target.shape)}")
    if target.shape[0] != t_logits.shape[0]:
        raise ValueError(f"target: batch size {target.shape[0]} differs from t_logits' {t_logits.shape[0]}")
    if target.device != t_logits.device:
        raise ValueError(f"target: on device {target.device}, but t_logits is on {t_logits.device}")
    if target.shape[-2:] != t_logits.shape[-2:]:
        target = F.interpolate(target[:, None].float(), size=t_logits.shape[-2:], mode="nearest")[:, 0].long()
    return target != ignore_index
