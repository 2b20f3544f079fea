"""``build_model(name, num_classes, ...)``: the teacher / student networks by name.

A plain dict maps each name to its constructor; no registry.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from sstkd.models.flavors import Flavor, resolve_flavor, scaled_width
from sstkd.models.heads import DeepLabV3Head, FCNHead, MMSegASPPHead, PSPHead, aspp_rates
from sstkd.models.mobilenetv2 import MobileNetV2
from sstkd.models.resnet import BasicBlock, resnet18, resnet50, resnet101
from sstkd.models.segmentor import Segmentor

__all__ = ["build_model", "MODELS", "resolve_norm_layer"]


def resolve_norm_layer(norm_layer) -> Callable[[int], nn.Module]:
    """``None``/"bn" -> BatchNorm2d, "syncbn" -> SyncBatchNorm, or a ``callable(num_features)`` as is."""
    if norm_layer is None or norm_layer in ("bn", "batchnorm"):
        return nn.BatchNorm2d
    if norm_layer in ("syncbn", "sync_bn"):
        return nn.SyncBatchNorm
    if callable(norm_layer):
        return norm_layer
    raise ValueError(f"norm_layer: expected None, 'bn', 'syncbn' or a callable(num_features), got {norm_layer!r}")


def _resnet_backbone(depth: int, base_width: int, output_stride: int, norm_layer, deep_stem: bool,
                     flavor: Flavor | None) -> nn.Module:
    ctor = {18: resnet18, 50: resnet50, 101: resnet101}[depth]
    if flavor is None:
        return ctor(base_width=base_width, output_stride=output_stride, norm_layer=norm_layer, deep_stem=deep_stem)
    if deep_stem and flavor.stem != "deep":
        raise ValueError(f"deep_stem: flavor {flavor.name!r} has the {flavor.stem!r} stem; leave deep_stem False")
    return ctor(base_width=base_width, output_stride=output_stride, norm_layer=norm_layer, stem=flavor.stem,
                dilation_rule=flavor.dilation_rule, ceil_mode=flavor.ceil_mode)


def _mobilenet_backbone(base_width: int, output_stride: int, norm_layer, deep_stem: bool,
                        flavor: Flavor | None) -> nn.Module:
    if deep_stem:
        raise ValueError("deep_stem: only ResNet backbones have a deep stem")
    if flavor is not None:
        raise ValueError(f"flavor: {flavor.name!r} is for ResNet models; MobileNetV2 models take flavor=None")
    return MobileNetV2(width_mult=base_width / 64, output_stride=output_stride, norm_layer=norm_layer)


def _flavor_widths(kind: str, flavor: Flavor, name: str) -> dict:
    widths = flavor.psp_width if kind == "pspnet" else flavor.aspp_width
    if widths is None:
        raise ValueError(f"flavor: {flavor.name!r} has no {kind} model (name {name!r})")
    return widths


def _flavored_heads(kind: str, backbone: nn.Module, num_classes: int, base_width: int, output_stride: int,
                    aux: bool, norm_layer, flavor: Flavor, name: str):
    c3, c4 = backbone.channels[2], backbone.channels[3]
    family = "basic" if isinstance(backbone.layer1[0], BasicBlock) else "bottleneck"
    width = scaled_width(_flavor_widths(kind, flavor, name)[family], base_width)
    if kind == "pspnet":
        head = PSPHead(c4, num_classes, channels=width, norm_layer=norm_layer, input_first=flavor.psp_input_first,
                       activation=flavor.head_activation, align_corners=flavor.pyramid_align_corners)
    elif flavor.aspp_head == "mmseg":
        head = MMSegASPPHead(c4, num_classes, rates=aspp_rates(output_stride), channels=width, norm_layer=norm_layer)
    else:
        head = DeepLabV3Head(c4, num_classes, rates=aspp_rates(output_stride), channels=width, norm_layer=norm_layer,
                             dropout=flavor.head_dropout)
    aux_head = None
    if aux:
        aux_head = FCNHead(c3, num_classes, channels=max(1, c3 // flavor.aux_divisor), norm_layer=norm_layer,
                           bias=flavor.aux_bias, activation=flavor.head_activation)
    return head, aux_head


def _assemble(kind: str, backbone: nn.Module, num_classes: int, base_width: int, output_stride: int, aux: bool,
              norm_layer, name: str, flavor: Flavor | None = None) -> Segmentor:
    if flavor is not None:
        head, aux_head = _flavored_heads(kind, backbone, num_classes, base_width, output_stride, aux, norm_layer,
                                         flavor, name)
        return Segmentor(backbone, head, aux_head, num_classes, name=name, align_corners=flavor.align_corners,
                         flavor=flavor.name)
    c3, c4 = backbone.channels[2], backbone.channels[3]
    if kind == "pspnet":
        head = PSPHead(c4, num_classes, channels=scaled_width(512, base_width), norm_layer=norm_layer)
    else:
        head = DeepLabV3Head(c4, num_classes, rates=aspp_rates(output_stride), channels=scaled_width(256, base_width),
                             norm_layer=norm_layer)
    aux_head = FCNHead(c3, num_classes, norm_layer=norm_layer) if aux else None
    return Segmentor(backbone, head, aux_head, num_classes, name=name)


def _backbone_device(empty: bool):
    # An empty backbone lives on the meta device: no memory, no random init (a strict load fills it).
    return torch.device("meta") if empty else contextlib.nullcontext()


def _resnet_model(kind: str, depth: int):
    def ctor(num_classes, base_width, output_stride, aux, norm_layer, deep_stem, name, flavor=None,
             empty_backbone=False):
        if flavor is not None:
            _flavor_widths(kind, flavor, name)  # before the backbone is built
        with _backbone_device(empty_backbone):
            backbone = _resnet_backbone(depth, base_width, output_stride, norm_layer, deep_stem, flavor)
        return _assemble(kind, backbone, num_classes, base_width, output_stride, aux, norm_layer, name, flavor)
    return ctor


def _mobilenet_model(kind: str):
    def ctor(num_classes, base_width, output_stride, aux, norm_layer, deep_stem, name, flavor=None,
             empty_backbone=False):
        with _backbone_device(empty_backbone):
            backbone = _mobilenet_backbone(base_width, output_stride, norm_layer, deep_stem, flavor)
        return _assemble(kind, backbone, num_classes, base_width, output_stride, aux, norm_layer, name, flavor)
    return ctor


MODELS: dict[str, Callable[..., Segmentor]] = {
    "pspnet_resnet18": _resnet_model("pspnet", 18),
    "pspnet_resnet50": _resnet_model("pspnet", 50),
    "pspnet_resnet101": _resnet_model("pspnet", 101),
    "deeplabv3_resnet18": _resnet_model("deeplabv3", 18),
    "deeplabv3_resnet50": _resnet_model("deeplabv3", 50),
    "deeplabv3_resnet101": _resnet_model("deeplabv3", 101),
    "deeplabv3_mobilenetv2": _mobilenet_model("deeplabv3"),
}


def build_model(name: str, num_classes: int, *, pretrained_backbone=None, base_width: int = 64,
                output_stride: int = 8, aux: bool = True, norm_layer=None, deep_stem: bool = False,
                strict: bool = True, flavor=None) -> Segmentor:
    """Build a segmentation network.

    Args:
        name: one of ``MODELS`` (``pspnet_resnet18/50/101``,
            ``deeplabv3_resnet18/50/101``, ``deeplabv3_mobilenetv2``).
        num_classes: number of classes (>= 1).
        pretrained_backbone: optional ImageNet weights (torchvision, CIRKD
            deep-stem or mmseg V1c layout) or a full checkpoint of a supported
            source, whose backbone is taken: a local path, an ``http(s)://``
            URL or a state dict (see :func:`sstkd.models.weights.load_backbone_weights`).
        base_width: backbone width (64 = standard; e.g. 16 for tiny CPU
            models; MobileNetV2 uses ``width_mult = base_width / 64``). Head
            widths scale with it (from the flavor's widths when one is given).
        output_stride: 8 (paper protocol) or 16 (or 32).
        aux: add the FCN auxiliary head on stage 3 (output ``aux`` in training).
        norm_layer: ``None``/"bn", "syncbn" or a ``callable(num_features)``.
        deep_stem: ResNet only: three 3x3 convs in the stem (SKD/IFVD teachers).
        strict: strict loading of ``pretrained_backbone``. A strict load fills every
            backbone tensor, so the backbone then skips its random initialization
            (only the heads draw random values).
        flavor: ``None`` (sstkd's own models) or a name of
            :data:`sstkd.models.flavors.FLAVORS` (``ifvd``, ``cirkd_v1``,
            ``cirkd_v2``, ``mmseg``, ``mmseg_b``, ``torchvision``): that
            codebase's stem, dilation rule, head widths and upsampling.

    Returns:
        A :class:`Segmentor`; ``model.backbone.layer1`` is the stride-4 stage.

    Raises:
        ValueError: unknown ``name`` (lists the choices), ``num_classes < 1``,
            bad ``base_width`` / ``output_stride`` / ``norm_layer`` / ``flavor``
            (or a flavor without such a model, e.g. ``ifvd`` DeepLabV3).
    """
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes: expected an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be >= 1, got {num_classes}")
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 1:
        raise ValueError(f"base_width: must be a positive int, got {base_width!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride: must be one of 8, 16, 32, got {output_stride!r}")
    norm = resolve_norm_layer(norm_layer)
    flavor = resolve_flavor(flavor)
    empty = pretrained_backbone is not None and bool(strict)
    model = MODELS[name](num_classes, base_width, output_stride, bool(aux), norm, bool(deep_stem), name, flavor,
                         empty_backbone=empty)
    if pretrained_backbone is not None:
        from sstkd.models.weights import load_backbone_weights

        device = next(model.head.parameters()).device  # where the heads were built (the default device)
        load_backbone_weights(model.backbone, pretrained_backbone, strict=strict, map_location=device)
    return model
