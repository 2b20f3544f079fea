"""Dilated ResNet-18/50/101 in torchvision's module and key layout.

Key layout (so ImageNet checkpoints from torchvision load as they are)::

    conv1.weight, bn1.*                         standard 7x7 stem
    layer{1..4}.{i}.conv{1,2[,3]}.weight, .bn{1,2[,3]}.*, .downsample.{0,1}.*
    fc.weight, fc.bias                          only with ``num_classes`` (classification)

Deep stem (``deep_stem=True``, the "resnet101-imagenet" checkpoints of the
SKD / IFVD / CCNet lineage): three 3x3 convs replace the 7x7 one, with keys
``conv1`` (3 -> w, stride 2), ``bn1``, ``conv2`` (w -> w), ``bn2``,
``conv3`` (w -> 2w), ``bn3``; ``layer1`` then starts from 2w channels, so
``layer1.0`` always has a ``downsample`` branch. ``stem="v1c"`` (mmsegmentation's
ResNetV1c) is the same three convs at half width (w/2, w/2, w), so ``layer1``
starts from w channels.

``base_width`` scales every width (64 is the standard network, 16 a tiny CPU
variant for demos and tests); ``output_stride`` 8 dilates layer3 (2) and
layer4 (4), 16 dilates layer4 (2), 32 dilates nothing. As in torchvision,
the first block of a dilated stage keeps the previous dilation.
``dilation_rule`` selects the other codebases' conventions (see
:data:`DILATION_RULES`); ``ceil_mode=True`` makes the stem max-pool round up
(SKD/IFVD).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50", "resnet101", "stage_dilations",
           "DILATION_RULES", "STEMS"]

STEMS = ("torchvision", "deep", "v1c")

# Dilation of the 3x3 convs in a dilated stage (stage dilation d, previous stage's p), per codebase:
# (first block's dilated conv: "previous" = p or "stage" = d,
#  BasicBlock conv2: "same" as its conv1, "stage" = d always, or "one" = never dilated).
# Bottleneck blocks have one 3x3 conv (conv2), so only the first entry matters for them.
DILATION_RULES = {
    "torchvision": ("previous", "same"),   # torchvision; sstkd's own models
    "cirkd": ("previous", "stage"),        # CIRKD ResNetV1b (BasicBlockV1b conv2 uses previous_dilation = d)
    "mmseg": ("previous", "one"),          # mmseg contract_dilation; its BasicBlock conv2 is never dilated
    "ifvd": ("stage", "same"),             # SKD/IFVD: every block at the full stage dilation
}


def stage_dilations(output_stride: int) -> tuple[bool, bool, bool]:
    """Which of layer2..layer4 trade their stride for dilation to reach ``output_stride``."""
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ValueError(f"output_stride: must be one of 8, 16, 32, got {output_stride!r}")
    return table[output_stride]


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """ResNet-18/34 block; unlike torchvision's it supports dilation (needed for dilated ResNet-18)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, norm_layer: NormLayer = nn.BatchNorm2d, conv2_dilation: int | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation if conv2_dilation is None else conv2_dilation)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50/101 block (stride on the 3x3 conv: torchvision's "v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation=dilation)
        self.bn2 = norm_layer(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone returning the four stage outputs (strides 4, 8, 16|8, 32|16|8).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        base_width: width of the stem and of ``layer1`` (64 = standard).
        output_stride: 8, 16 or 32 (see module docstring).
        deep_stem: three 3x3 convs instead of the 7x7 one (same as ``stem="deep"``).
        stem: ``"torchvision"`` (7x7), ``"deep"`` (3x3 w, w, 2w) or ``"v1c"``
            (3x3 w/2, w/2, w); ``None`` follows ``deep_stem``.
        dilation_rule: a key of :data:`DILATION_RULES` (default torchvision's).
        ceil_mode: the stem max-pool rounds its output size up (SKD/IFVD).
        norm_layer: ``callable(num_features) -> nn.Module`` (default ``nn.BatchNorm2d``).
        num_classes: if given, adds ``avgpool`` + ``fc`` and ``forward`` returns
            ``(B, num_classes)`` logits (ImageNet classifier, used for parameter
            counts); otherwise ``forward`` returns ``[c1, c2, c3, c4]``.

    Attributes:
        channels: output channels of layer1..layer4.
        output_stride: the stride of layer4's output.
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int], *, base_width: int = 64,
                 output_stride: int = 32, deep_stem: bool = False, norm_layer: NormLayer | None = None,
                 num_classes: int | None = None, stem: str | None = None, dilation_rule: str = "torchvision",
                 ceil_mode: bool = False):
        super().__init__()
        if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 1:
            raise ValueError(f"base_width: must be a positive int, got {base_width!r}")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"layers: expected 4 positive block counts, got {layers!r}")
        stem = ("deep" if deep_stem else "torchvision") if stem is None else stem
        if stem not in STEMS:
            raise ValueError(f"stem: expected one of {', '.join(STEMS)}, got {stem!r}")
        if deep_stem and stem != "deep":
            raise ValueError(f"deep_stem: True contradicts stem={stem!r}")
        if dilation_rule not in DILATION_RULES:
            raise ValueError(f"dilation_rule: expected one of {', '.join(DILATION_RULES)}, got {dilation_rule!r}")
        if stem == "v1c" and base_width % 2:
            raise ValueError(f"base_width: the v1c stem halves it, so it must be even, got {base_width}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        self._norm_layer = norm_layer
        self._dilation_rule = DILATION_RULES[dilation_rule]
        self.output_stride = output_stride
        self.stem_type = stem
        self.deep_stem = stem != "torchvision"
        dilate = stage_dilations(output_stride)
        w = base_width
        if stem != "torchvision":
            s1, s3 = (w, 2 * w) if stem == "deep" else (w // 2, w)
            self.conv1 = _conv3x3(3, s1, stride=2)
            self.bn1 = norm_layer(s1)
            self.conv2 = _conv3x3(s1, s1)
            self.bn2 = norm_layer(s1)
            self.conv3 = _conv3x3(s1, s3)
            self.bn3 = norm_layer(s3)
            self.inplanes = s3
        else:
            self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm_layer(w)
            self.inplanes = w
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=bool(ceil_mode))
        self.dilation = 1
        self.layer1 = self._make_layer(block, w, layers[0])
        self.layer2 = self._make_layer(block, 2 * w, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 4 * w, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 8 * w, layers[3], stride=2, dilate=dilate[2])
        self.channels = tuple(m * w * block.expansion for m in (1, 2, 4, 8))
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.channels[-1], num_classes)
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        # The first block of a dilated stage keeps the previous dilation (torchvision), or not (IFVD).
        first_rule, conv2_rule = self._dilation_rule
        first = previous_dilation if first_rule == "previous" else self.dilation
        extra = {}
        if block is BasicBlock and conv2_rule != "same":
            extra["conv2_dilation"] = self.dilation if conv2_rule == "stage" else 1
        mods = [block(self.inplanes, planes, stride, downsample, dilation=first, norm_layer=norm_layer,
                      **extra)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            mods.append(block(self.inplanes, planes, dilation=self.dilation, norm_layer=norm_layer,
                              **extra))
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        if self.conv1.weight.is_meta:  # built on the meta device: no values to draw (weights come from a load)
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward(self, x: torch.Tensor):
        """``x`` (B, 3, H, W) -> ``[c1, c2, c3, c4]`` (or logits when ``num_classes`` was given)."""
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        if self.num_classes is not None:
            return self.fc(torch.flatten(self.avgpool(c4), 1))
        return [c1, c2, c3, c4]


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (11,689,512 parameters with the 1000-class fc, standard stem)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (25,557,032 parameters with the 1000-class fc, standard stem)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (44,549,160 parameters with the 1000-class fc, standard stem)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)
