"""Alignment head: map student features to the teacher's channel count."""
from __future__ import annotations

import torch
from torch import nn

from sstkd.ops._checks import check_image, check_int

ALIGN_MODES = ("auto", "conv", "identity")


class AlignHead(nn.Module):
    """A learnable 1×1 conv + BatchNorm from ``in_channels`` to ``out_channels``.

    Args:
        in_channels: student channels ``C_s``.
        out_channels: teacher channels ``C_t``.
        mode: ``"auto"`` (identity when the counts are equal, conv + BN
            otherwise), ``"conv"`` (always conv + BN) or ``"identity"``
            (requires equal counts).

    Shape: ``(B, C_s, H, W) -> (B, C_t, H, W)``, same dtype.

    Raises:
        ValueError: unknown ``mode``, ``mode="identity"`` with different
            counts, or an input whose channel count is not ``in_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "auto"):
        super().__init__()
        self.in_channels = check_int(in_channels, "student_channels", minimum=1)
        self.out_channels = check_int(out_channels, "teacher_channels", minimum=1)
        if mode not in ALIGN_MODES:
            raise ValueError(f"align: unknown mode {mode!r}; choose from {ALIGN_MODES}")
        if mode == "identity" and in_channels != out_channels:
            raise ValueError(
                f"align: 'identity' needs equal channel counts, got student {in_channels} "
                f"and teacher {out_channels}"
            )
        self.mode = mode
        self.is_identity = mode == "identity" or (mode == "auto" and in_channels == out_channels)
        if self.is_identity:
            self.proj = nn.Identity()
        else:
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor, name: str = "s_low") -> torch.Tensor:
        check_image(x, name)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name}: expected {self.in_channels} channels (student_channels), got {x.shape[1]}"
            )
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, mode={self.mode!r}, identity={self.is_identity}"
