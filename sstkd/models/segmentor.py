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
        align_corners: of the upsampling to the input size (False: sstkd,
            torchvision, mmseg; True: how CIRKD and SKD/IFVD evaluate).
        flavor: name of the architecture flavor it was built with (None = sstkd's own).

    ``forward(x)``: ``x`` float ``(B, 3, H, W)`` -> ``dict(out=(B, K, H, W))``
    logits upsampled bilinearly to ``H x W``, plus ``aux=(B, K, H, W)`` when an
    auxiliary head exists, in training mode or when ``aux_in_eval`` is set
    (models from :func:`sstkd.models.from_pretrained` set it).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None, num_classes: int,
                 name: str = "segmentor", align_corners: bool = False, flavor: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.name = name
        self.align_corners = bool(align_corners)
        self.flavor = flavor
        self.aux_in_eval = False
        self.source_format: str | None = None  # set by from_pretrained: the checkpoint's layout

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x)
        size = x.shape[-2:]
        c1, c2, c3, c4 = self.backbone(x)
        ac = self.align_corners
        out = {"out": F.interpolate(self.head(c4), size=size, mode="bilinear", align_corners=ac)}
        if self.aux_head is not None and (self.training or self.aux_in_eval):
            out["aux"] = F.interpolate(self.aux_head(c3), size=size, mode="bilinear", align_corners=ac)
        return out

    def extra_repr(self) -> str:
        flavor = "" if self.flavor is None else f", flavor={self.flavor!r}, align_corners={self.align_corners}"
        return f"name={self.name!r}, num_classes={self.num_classes}{flavor}"
