"""Whole-image and sliding-window inference, with flip and multi-scale aggregation.

A model here is any module mapping ``(B, 3, H, W)`` to logits, either a
tensor or a dict with key ``"out"``; logits at another resolution are
resized (bilinear, ``align_corners=False``) to the input size.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["model_logits", "whole_inference", "slide_inference", "predict"]


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    try:
        a, b = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an int or a pair of ints, got {v!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"{name}: must be positive, got {v!r}")
    return a, b


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"images: expected a non-empty (B, C, H, W) tensor, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images: expected a floating tensor, got {images.dtype}")
    return images


def model_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return float32 logits ``(B, K, H, W)`` at the input size."""
    out = model(images)
    if isinstance(out, dict):
        if "out" not in out:
            raise ValueError(f"model: output dict has no 'out' key (keys: {sorted(out)})")
        out = out["out"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model: expected logits of shape (B, K, h, w) with B={images.shape[0]}, got {shape}")
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out.float()


def whole_inference(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of the whole image in one forward: ``(B, C, H, W)`` -> ``(B, K, H, W)`` float32."""
    return model_logits(model, _check_images(images))


def slide_inference(model: nn.Module, images: torch.Tensor, crop_size, stride) -> torch.Tensor:
    """Sliding-window logits, averaged where windows overlap.

    Windows of ``crop_size`` are placed every ``stride`` pixels, the last one
    flush with the bottom/right border (mmseg's grid). An image smaller than
    the crop is zero-padded bottom/right to the crop size (0 = the mean
    colour after normalization) and the padding is cut off again. Each pixel's
    logits are the sum over the windows covering it divided by their count.

    Args:
        images: ``(B, C, H, W)`` float.
        crop_size, stride: int or ``(h, w)``; ``stride <= crop_size`` so windows cover the image.

    Returns:
        float32 logits ``(B, K, H, W)``.
    """
    images = _check_images(images)
    ch, cw = _pair(crop_size, "crop_size")
    sh, sw = _pair(stride, "stride")
    if sh > ch or sw > cw:
        raise ValueError(f"stride: {(sh, sw)} larger than crop_size {(ch, cw)} would leave gaps")
    b, _, h, w = images.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph), value=0.0)
    H, W = images.shape[-2:]
    rows = max(H - ch + sh - 1, 0) // sh + 1
    cols = max(W - cw + sw - 1, 0) // sw + 1
    logits = None
    count = torch.zeros((1, 1, H, W), device=images.device, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, H), min(c * sw + cw, W)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            crop_logits = model_logits(model, images[:, :, y1:y2, x1:x2])
            if logits is None:
                logits = torch.zeros((b, crop_logits.shape[1], H, W), device=images.device, dtype=torch.float32)
            logits[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    return (logits / count)[:, :, :h, :w]


def predict(model: nn.Module, images: torch.Tensor, mode: str = "whole", crop_size=None, stride=None,
            flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Class probabilities averaged over scales and (optionally) horizontal flips.

    For each scale ``s`` the batch is resized to ``round(s * H) x round(s * W)``
    (bilinear), run by whole or sliding-window inference (the crop size stays
    fixed), and the logits are resized back; each view's softmax is averaged.

    Args:
        mode: ``"whole"`` or ``"slide"`` (then ``crop_size`` and ``stride`` are needed).
        flip: also run the left-right mirrored image and mirror its output back.
        scales: positive scale factors.

    Returns:
        float32 probabilities ``(B, K, H, W)`` (argmax = prediction).
    """
    images = _check_images(images)
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode: must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("crop_size: slide mode needs crop_size and stride")
    scales = tuple(float(s) for s in scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales: expected positive factors, got {scales!r}")
    h, w = images.shape[-2:]

    def run(x: torch.Tensor) -> torch.Tensor:
        if mode == "slide":
            return slide_inference(model, x, crop_size, stride)
        return whole_inference(model, x)

    probs = None
    views = 0
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            logits = run(x.flip(-1) if flipped else x)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.softmax(dim=1)
            probs = p if probs is None else probs + p
            views += 1
    return probs / views
