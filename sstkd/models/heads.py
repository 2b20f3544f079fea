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

__all__ = ["PSPHead", "ASPP", "DeepLabV3Head", "MMSegASPPHead", "FCNHead", "aspp_rates", "ACTIVATIONS"]

# "leaky_relu" is In-Place ABN's default activation (slope 0.01), kept by SKD/IFVD's heads.
ACTIVATIONS = ("relu", "leaky_relu")


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    raise ValueError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {name!r}")


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, norm_layer: NormLayer, dilation: int = 1,
                  activation: str = "relu", bias: bool = False) -> nn.Sequential:
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=padding, dilation=dilation, bias=bias),
                         norm_layer(cout), _activation(activation))


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLabV3 atrous rates: (12, 24, 36) at output stride 8, (6, 12, 18) at 16 and (3, 6, 9) at 32."""
    table = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}
    if output_stride not in table:
        raise ValueError(f"output_stride: must be one of 8, 16, 32, got {output_stride!r}")
    return table[output_stride]


class PSPHead(nn.Module):
    """PSPNet pyramid pooling module + 3x3 bottleneck + classifier.

    Each bin ``b`` average-pools to ``b x b``, reduces to ``in_channels / len(bins)``
    channels (1x1 conv, norm, activation) and is upsampled back (bilinear,
    ``align_corners``); the branches are concatenated with the input.

    Args:
        in_channels: channels of the input feature map.
        num_classes: output classes.
        channels: width of the bottleneck conv (PSPNet: 512).
        bins: pooling grid sizes (PSPNet: 1, 2, 3, 6).
        dropout: dropout before the classifier (PSPNet: 0.1).
        input_first: concat order ``[x, pools...]`` (mmseg, default) or
            ``[pools..., x]`` (SKD/IFVD).
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.01, SKD/IFVD).
        align_corners: of the pyramid upsampling (SKD/IFVD: True).

    Note: in training mode BatchNorm on the 1x1 pooled map needs more than
    one value per channel, i.e. a batch of at least 2 (as in PSPNet).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d, input_first: bool = True,
                 activation: str = "relu", align_corners: bool = False):
        super().__init__()
        if not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"bins: expected positive pooling sizes, got {bins!r}")
        reduced = max(1, in_channels // len(bins))
        self.bins = tuple(int(b) for b in bins)
        self.input_first = bool(input_first)
        self.align_corners = bool(align_corners)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(in_channels, reduced, 1, norm_layer,
                                                                 activation=activation))
            for b in self.bins
        )
        self.bottleneck = _conv_bn_relu(in_channels + reduced * len(self.bins), channels, 3, norm_layer,
                                        activation=activation)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pools = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=self.align_corners)
                 for stage in self.stages]
        pyramid = [x] + pools if self.input_first else pools + [x]
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
    """ASPP -> 3x3 conv -> classifier (torchvision's ``DeepLabHead`` structure).

    ``dropout`` > 0 adds a dropout before the classifier (CIRKD: 0.1; torchvision: none).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36), channels: int = 256,
                 norm_layer: NormLayer = nn.BatchNorm2d, dropout: float = 0.0):
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels, norm_layer=norm_layer)
        self.conv = _conv_bn_relu(channels, channels, 3, norm_layer)
        if dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.aspp(x))
        if hasattr(self, "dropout"):
            x = self.dropout(x)
        return self.classifier(x)


class MMSegASPPHead(nn.Module):
    """mmsegmentation's ``ASPPHead``: ``[image pool, 1x1, three dilated 3x3]`` -> one 3x3 bottleneck -> classifier.

    Unlike :class:`DeepLabV3Head` the image-pooling branch comes first and
    there is neither a 1x1 projection nor a second 3x3 conv. The pooled map is
    broadcast back with ``align_corners=False``.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (12, 24, 36), channels: int = 512,
                 dropout: float = 0.1, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels, 1, norm_layer))
        branches = [_conv_bn_relu(in_channels, channels, 1, norm_layer)]
        branches += [_conv_bn_relu(in_channels, channels, 3, norm_layer, dilation=int(r)) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.bottleneck = _conv_bn_relu(channels * (len(branches) + 1), channels, 3, norm_layer)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        feats = torch.cat([pooled] + [b(x) for b in self.branches], dim=1)
        return self.classifier(self.dropout(self.bottleneck(feats)))


class FCNHead(nn.Module):
    """FCN auxiliary head on stage 3: 3x3 conv to ``in_channels / 4``, norm, ReLU, dropout 0.1, classifier.

    ``bias`` puts a bias on the 3x3 conv and ``activation="leaky_relu"`` uses
    LeakyReLU(0.01) (both SKD/IFVD's ``dsn``).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None, dropout: float = 0.1,
                 norm_layer: NormLayer = nn.BatchNorm2d, bias: bool = False, activation: str = "relu"):
        super().__init__()
        channels = max(1, in_channels // 4) if channels is None else channels
        self.conv = _conv_bn_relu(in_channels, channels, 3, norm_layer, activation=activation, bias=bias)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
