"""Backbone + decode head (+ auxiliary head) -> logits at the input resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Segmentor", "check_input"]

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input(x, name: str = "x", channels: int = 3) -> torch.Tensor:
    """A non-empty floating ``(B, channels, H, W)`` tensor, else TypeError/ValueError naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT:
        raise TypeError(f"{name}: expected a floating tensor, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(x.shape)}")
    return x


class Segmentor(nn.Module):
    """A semantic segmentation network.

    Args:
        backbone: module with stages ``layer1..layer4`` whose ``forward``
            returns ``[c1, c2, c3, c4]`` and with a ``channels`` attribute.
        head: decode head applied to ``c4``.
        aux_head: optional head applied to ``c3`` (the trainer weights it 0.4).
        num_classes: number of output classes.

    ``forward(x)``: ``x`` float ``(B, 3, H, W)`` -> ``dict(out=(B, K, H, W))``
    logits upsampled bilinearly (``align_corners=False``) to ``H x W``, plus
    ``aux=(B, K, H, W)`` in training mode when an auxiliary head exists.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None, num_classes: int,
                 name: str = "segmentor"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.name = name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x)
        size = x.shape[-2:]
        c1, c2, c3, c4 = self.backbone(x)
        out = {"out": F.interpolate(self.head(c4), size=size, mode="bilinear", align_corners=False)}
        if self.training and self.aux_head is not None:
            out["aux"] = F.interpolate(self.aux_head(c3), size=size, mode="bilinear", align_corners=False)
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}"
