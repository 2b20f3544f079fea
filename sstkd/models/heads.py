"""Segmentation heads: PSPNet pyramid pooling, DeepLabV3 ASPP, FCN auxiliary head.

Every head maps a feature map ``(B, C_in, h, w)`` to class logits
``(B, num_classes, h, w)`` at the feature resolution; the segmentor upsamples.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]

__all__ = ["PSPHead", "ASPP", "DeepLabV3Head", "FCNHead", "aspp_rates"]


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, norm_layer: NormLayer, dilation: int = 1) -> nn.Sequential:
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=False),
                         norm_layer(cout), nn.ReLU(inplace=True))


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabV3 atrous rates: (12, 24, 36) at output stride 8, (6, 12, 18) at 16 and (3, 6, 9) at 32."""
    table = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
    if output_stride not in table:
        raise ValueError(f"output_stride: must be one of 8, 16, 32, got {output_stride!r}")
    return table[output_stride]


class PSPHead(nn.Module):
    """PSPNet pyramid pooling module + 3x3 bottleneck + classifier.

    Each bin ``b`` average-pools to ``b x b``, reduces to ``in_channels / len(bins)``
    channels (1x1 conv, norm, ReLU) and is upsampled back (bilinear,
    ``align_corners=False``); the branches are concatenated with the input.

    Args:
        in_channels: channels of the input feature map.
        num_classes: output classes.
        channels: width of the bottleneck conv (PSPNet: 512).
        bins: pooling grid sizes (PSPNet: 1, 2, 3, 6).
        dropout: dropout before the classifier (PSPNet: 0.1).

    Note: in training mode BatchNorm on the 1x1 pooled map needs more than
    one value per channel, i.e. a batch of at least 2 (as in PSPNet).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"bins: expected positive pooling sizes, got {bins!r}")
        reduced = max(1, in_channels // len(bins))
        self.bins = tuple(int(b) for b in bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(in_channels, reduced, 1, norm_layer))
            for b in self.bins
        )
        self.bottleneck = _conv_bn_relu(in_channels + reduced * len(self.bins), channels, 3, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [x] + [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                         for stage in self.stages]
        return self.classifier(self.dropout(self.bottleneck(torch.cat(pyramid, dim=1))))


class _ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv, norm, ReLU, broadcast back."""

    def __init__(self, cin: int, cout: int, norm_layer: NormLayer):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = _conv_bn_relu(cin, cout, 1, norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1x1, three dilated 3x3, image pooling, 1x1 projection.

    Note: as in DeepLabV3, BatchNorm in the image-pooling branch needs a
    training batch of at least 2.
    """

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.5,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        branches = [_conv_bn_relu(in_channels, channels, 1, norm_layer)]
        branches += [_conv_bn_relu(in_channels, channels, 3, norm_layer, dilation=int(r)) for r in rates]
        branches.append(_ASPPPooling(in_channels, channels, norm_layer))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(_conv_bn_relu(channels * len(branches), channels, 1, norm_layer),
                                     nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv -> classifier (torchvision's ``DeepLabHead`` structure)."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36), channels: int = 256,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels, norm_layer=norm_layer)
        self.conv = _conv_bn_relu(channels, channels, 3, norm_layer)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(self.aspp(x)))


class FCNHead(nn.Module):
    """FCN auxiliary head on stage 3: 3x3 conv to ``in_channels / 4``, norm, ReLU, dropout 0.1, classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None, dropout: float = 0.1,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        channels = max(1, in_channels // 4) if channels is None else channels
        self.conv = _conv_bn_relu(in_channels, channels, 3, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
