"""Response (pixel-wise) distillation: KL between teacher and student class distributions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sstkd.ops._checks import check_image

# How the per-pixel KL (or cross-entropy) map is reduced to a scalar; each is a published convention:
#   "pixel":   mean over pixels of the KL summed over classes (CIRKD's CriterionKD, ``batchmean`` over B·H·W rows);
#   "element": mean over every element B·K·H·W (IFVD's ``nn.KLDivLoss()``, reduction "mean"): "pixel" / K;
#   "skd":     cross-entropy −Σ_k p_t log p_s summed over the batch, divided by H·W (SKD's CriterionPixelWise).
PI_NORMALIZATIONS = ("pixel", "element", "skd")


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
    normalization: str = "pixel",
) -> torch.Tensor:
    """``L_pi = T² · mean_pixels KL(softmax(t/T) ‖ softmax(s/T))`` (``normalization="pixel"``).

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
        normalization: ``"pixel"`` (above; CIRKD), ``"element"`` (the same
            sum divided by ``K`` more: the mean over ``B·K·H·W`` elements,
            IFVD's ``KLDivLoss``), or ``"skd"`` (the cross-entropy
            ``−Σ_k p_t,k log p_s,k`` — the KL plus the teacher's entropy —
            summed over the pixels and divided by ``H·W``: the per-image mean
            summed over the batch, SKD's pixel-wise loss). With a target, the
            ignored pixels are left out of the sums and the counts (``"skd"``
            keeps dividing by ``H·W``).

    Returns:
        A float32 scalar. If every pixel is ignored the result is 0 (still
        attached to the graph).

    Raises:
        ValueError / TypeError naming ``s_logits``, ``t_logits``, ``target``,
        ``temperature`` or ``normalization``.
    """
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0
            or not math.isfinite(temperature)):
        raise ValueError(f"temperature: must be a finite positive number, got {temperature!r}")
    if normalization not in PI_NORMALIZATIONS:
        raise ValueError(f"normalization: unknown {normalization!r}; choose from {PI_NORMALIZATIONS}")
    s_logits = match_logits(s_logits, t_logits)
    t = t_logits.detach().float() / temperature
    s = s_logits.float() / temperature
    p_t = torch.softmax(t, dim=1)
    cross = -(p_t * torch.log_softmax(s, dim=1)).sum(dim=1)  # (B, H, W) cross-entropy per pixel
    # KL = cross-entropy − teacher entropy; xlogy gives 0·log 0 = 0 where the teacher is certain.
    per_pixel = cross if normalization == "skd" else cross + torch.xlogy(p_t, p_t).sum(dim=1)
    b, k, h, w = t_logits.shape
    # Counts known on the host stay Python numbers: a tensor made from them would be a
    # host-to-device copy every step.
    if target is None:
        total, count = per_pixel.sum(), float(b * h * w)
    else:
        mask = _valid_mask(target, t_logits, ignore_index)
        total, count = (per_pixel * mask).sum(), mask.sum().float()
    if normalization == "skd":
        denominator = float(h * w)
    elif normalization == "element":
        denominator = count * k
    else:
        denominator = count
    if isinstance(denominator, float):
        return total / max(denominator, 1.0) * temperature**2
    return total / denominator.clamp_min(1) * temperature**2


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
