"""Dilated MobileNetV2 whose features are grouped into four stages ``layer1..layer4``.

torchvision keeps one flat ``features`` Sequential; a segmentation backbone
needs stage outputs and a stride-4 ``layer1`` (the SSTKD tap), so the same
modules are regrouped (torchvision indices in brackets)::

    layer1 = features[0:4]    stem + t=1 block + the two 24-ch blocks   stride 4,  24 ch
    layer2 = features[4:7]    32-ch blocks                              stride 8,  32 ch
    layer3 = features[7:14]   64- and 96-ch blocks                      stride 16, 96 ch
    layer4 = features[14:18]  160- and 320-ch blocks                    stride 32, 320 ch

``features.18`` (the 1x1 conv to 1280 channels) and ``classifier`` belong to
the ImageNet classifier and are not part of the backbone. Inside each block
the keys are torchvision's (``conv.0.0.weight``, ``conv.0.1.*``, ...), so
:func:`torchvision_to_stages` turns a torchvision checkpoint into this
layout by renaming ``features.{i}`` to ``layer{k}.{j}``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from sstkd.models.resnet import stage_dilations

NormLayer = Callable[[int], nn.Module]

__all__ = ["MobileNetV2", "InvertedResidual", "torchvision_to_stages", "make_divisible", "STAGE_SLICES"]

# torchvision (t, c, n, s): expansion, channels, repeats, first stride.
_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# [start, stop) indices into torchvision's ``features`` for layer1..layer4.
STAGE_SLICES = ((0, 4), (4, 7), (7, 14), (14, 18))


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never below 90 % of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """torchvision's ``Conv2dNormActivation`` with ReLU6 (keys ``0`` conv, ``1`` norm)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, norm_layer: NormLayer = nn.BatchNorm2d):
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm_layer(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (1x1 expand) -> 3x3 depthwise (dilated) -> 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, dilation: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel_size=1, norm_layer=norm_layer))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation, norm_layer=norm_layer),
            nn.Conv2d(hidden, cout, 1, bias=False),
            norm_layer(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone returning ``[c1, c2, c3, c4]`` (strides 4, 8, 16|8, 32|16|8).

    Args:
        width_mult: channel multiplier (1.0 = standard). ``base_width`` in
            :func:`sstkd.models.build_model` maps to ``width_mult = base_width / 64``.
        output_stride: 8, 16 or 32. A dilated stage trades its stride for
            dilation; its first block keeps the previous dilation.
        norm_layer: ``callable(num_features) -> nn.Module``.
        num_classes: if given, adds torchvision's ``features.18``-equivalent
            ``last_conv`` and ``classifier`` and ``forward`` returns logits
            (used for parameter counts only).

    Attributes:
        channels: output channels of layer1..layer4.
    """

    def __init__(self, width_mult: float = 1.0, *, output_stride: int = 32, norm_layer: NormLayer | None = None,
                 num_classes: int | None = None):
        super().__init__()
        if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
            raise ValueError(f"width_mult: must be a positive number, got {width_mult!r}")
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        self.output_stride = output_stride
        # Stage k (k = 2..4) starts with a stride-2 block; dilate the ones past the output stride.
        dilate = dict(zip((2, 3, 4), stage_dilations(output_stride)))
        cin = make_divisible(32 * width_mult)
        features: list[nn.Module] = [ConvBNReLU(3, cin, stride=2, norm_layer=norm_layer)]
        dilation = 1
        for t, c, n, s in _SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation  # a stage's first block keeps the previous dilation
                if stride == 2 and dilate.get(self._stage_of(len(features)), False):
                    stride = 1
                    dilation *= 2
                features.append(InvertedResidual(cin, cout, stride, t, dilation=block_dilation, norm_layer=norm_layer))
                cin = cout
        for k, (a, b) in enumerate(STAGE_SLICES, start=1):
            setattr(self, f"layer{k}", nn.Sequential(*features[a:b]))
        self.channels = tuple(features[b - 1].out_channels for _, b in STAGE_SLICES)
        self.num_classes = num_classes
        if num_classes is not None:
            last = make_divisible(1280 * max(1.0, width_mult))
            self.last_conv = ConvBNReLU(cin, last, kernel_size=1, norm_layer=norm_layer)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        self._init_weights()

    @staticmethod
    def _stage_of(feature_index: int) -> int:
        for k, (a, b) in enumerate(STAGE_SLICES, start=1):
            if a <= feature_index < b:
                return k
        raise AssertionError(feature_index)

    def _init_weights(self) -> None:
        if any(p.is_meta for p in self.parameters()):  # built on the meta device: no values to draw
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        """``x`` (B, 3, H, W) -> ``[c1, c2, c3, c4]`` (or logits when ``num_classes`` was given)."""
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        if self.num_classes is not None:
            pooled = nn.functional.adaptive_avg_pool2d(self.last_conv(c4), 1)
            return self.classifier(torch.flatten(pooled, 1))
        return [c1, c2, c3, c4]

    @staticmethod
    def convert_torchvision_keys(state_dict: dict) -> dict:
        """Rename a torchvision MobileNetV2 state dict into this layout (see :func:`torchvision_to_stages`)."""
        return torchvision_to_stages(state_dict)


def torchvision_to_stages(state_dict: dict) -> dict:
    """Map torchvision keys ``features.{i}.rest`` to ``layer{k}.{i - start_k}.rest``.

    ``features.18.*`` becomes ``last_conv.*`` and ``classifier.*`` is kept, so a
    classifier-mode :class:`MobileNetV2` loads a torchvision checkpoint strictly;
    keys already in the stage layout pass through unchanged.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            idx_str, _, rest = key[len("features."):].partition(".")
            idx = int(idx_str)
            if idx == STAGE_SLICES[-1][1]:
                out[f"last_conv.{rest}"] = value
                continue
            for k, (a, b) in enumerate(STAGE_SLICES, start=1):
                if a <= idx < b:
                    out[f"layer{k}.{idx - a}.{rest}"] = value
                    break
            else:
                out[key] = value  # unknown index: reported as unexpected by the loader
        else:
            out[key] = value
    return out
