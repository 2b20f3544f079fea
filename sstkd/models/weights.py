"""Loading weights (ImageNet backbones, segmentation checkpoints), params/FLOPs.

Every load uses ``torch.load(..., weights_only=True)``: checkpoints are data,
never code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from sstkd.models.keymaps import convert_state_dict, detect_format
from sstkd.models.state_dict import _source_name, _strip_prefixes, read_state_dict

__all__ = ["LoadReport", "load_backbone_weights", "load_checkpoint", "read_state_dict",
           "model_report"]

# Classifier parts of ImageNet checkpoints that a segmentation backbone does not have.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "last_conv.")
_BACKBONE_LAYOUT = ("torchvision's key layout: conv1.weight, bn1.*, layer1.0.conv1.weight, ... "
                    "(deep stem: conv1/bn1/conv2/bn2/conv3/bn3; mmseg V1c: stem.*; MobileNetV2: features.{i}.*), "
                    "or a full torchvision / CIRKD / SKD-IFVD / mmseg / sstkd segmentation checkpoint")


@dataclass
class LoadReport:
    """What a load did: keys loaded, missing, unexpected, with shape mismatches, and deliberately ignored."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: checkpoint (a, b) vs model (c, d)"
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        def fmt(label, keys):
            more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return f"{len(keys)} {label}" + (f": {', '.join(keys[:limit])}{more}" if keys else "")

        parts = [f"{len(self.loaded)} loaded", fmt("missing", self.missing), fmt("unexpected", self.unexpected),
                 fmt("shape mismatches", self.mismatched)]
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored (classifier / non-backbone)")
        return f"{self.source}: " + "; ".join(parts)


def _match(module: nn.Module, sd: dict, source: str, ignore_prefixes: tuple[str, ...]) -> tuple[LoadReport, dict]:
    own = module.state_dict()
    report = LoadReport(source=source)
    usable = {}
    for key, value in sd.items():
        if key not in own:
            if key.startswith(ignore_prefixes):
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    # BatchNorm fills in a missing num_batches_tracked itself (old checkpoints lack it).
    report.missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    report.loaded = sorted(usable)
    return report, usable


def _sstkd_layout(sd: dict) -> dict:
    """A full checkpoint of a known source (CIRKD, SKD/IFVD, mmseg, torchvision) in sstkd's layout
    (``backbone.*``, In-Place ABN converted); mmseg's ImageNet ``stem.*`` keys as ``conv1``..``bn3``;
    anything else unchanged."""
    try:
        fmt = detect_format(sd)
    except ValueError:  # an ImageNet backbone or an unknown layout: the key checks below report it
        fmt = None
    if fmt is not None and fmt != "sstkd":
        return convert_state_dict(sd, fmt).state_dict
    if any(k.startswith("stem.") for k in sd):
        stem = {f"stem.{i}.": f"{dst}." for i, dst in
                zip((0, 1, 3, 4, 6, 7), ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"))}
        sd = {next((stem[p] + k[len(p):] for p in stem if k.startswith(p)), k): v for k, v in sd.items()}
    return sd


def load_backbone_weights(backbone: nn.Module, source, strict: bool = True, map_location="cpu") -> LoadReport:
    """Load ImageNet weights in torchvision's key layout into a backbone.

    Args:
        backbone: a :class:`~sstkd.models.resnet.ResNet` or
            :class:`~sstkd.models.mobilenetv2.MobileNetV2` (any module works;
            one with ``convert_torchvision_keys`` gets its keys renamed first).
        source: local path, ``http(s)://`` URL (``torch.hub`` cache) or state dict:
            torchvision ResNet / MobileNetV2, CIRKD deep-stem ResNetV1s or mmseg ResNetV1c
            ImageNet weights; a full segmentation checkpoint (sstkd, torchvision, CIRKD,
            SKD/IFVD, mmseg: see :mod:`sstkd.models.convert`) gives its backbone.
        strict: raise unless every backbone key is loaded with the right shape
            and nothing but the classifier (``fc.*``, ``classifier.*``,
            MobileNetV2's last 1x1 conv) is left over. With ``strict=False``,
            whatever matches is loaded and the rest is reported.
        map_location: where a file's tensors are read to; a backbone built on the meta
            device (no memory, no random init) receives copies of the checkpoint's
            tensors there, in its own dtypes.

    Returns:
        :class:`LoadReport`.

    Raises:
        ValueError: (strict) missing / unexpected / mis-shaped keys, listed by name;
            nothing is loaded in that case. A meta-device backbone that the checkpoint
            does not fill completely (``strict=False``) is an error too.
    """
    name = _source_name(source)
    sd = _strip_prefixes(read_state_dict(source, keys=("state_dict", "model")), ("module.",))
    sd = _sstkd_layout(sd)
    others: list[str] = []
    if any(k.startswith("backbone.") for k in sd):
        # A full segmentation checkpoint: take its backbone, the heads are not ours to load.
        others = sorted(k for k in sd if not k.startswith("backbone."))
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    convert = getattr(backbone, "convert_torchvision_keys", None)
    if callable(convert):
        sd = convert(sd)
    report, usable = _match(backbone, sd, name, _CLASSIFIER_PREFIXES)
    report.ignored += others
    if strict and not report.ok:
        raise ValueError(f"pretrained_backbone: weights do not match the backbone ({report.summary()}). Expected "
                         f"{_BACKBONE_LAYOUT}; a deep-stem backbone needs a deep-stem checkpoint. "
                         "Use strict=False to load only the matching keys.")
    if any(t.is_meta for t in backbone.state_dict().values()):
        _load_into_empty(backbone, usable, report, map_location)
    else:
        backbone.load_state_dict(usable, strict=False)
    return report


def _load_into_empty(module: nn.Module, usable: dict, report: LoadReport, map_location) -> None:
    """Fill a meta-device module: copies of the checkpoint's tensors (never aliases of the caller's),
    zeros for the BatchNorm counters old checkpoints lack; anything left unfilled is an error."""
    own = module.state_dict()
    unfilled = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if unfilled:
        raise ValueError(f"pretrained_backbone: the backbone is on the meta device (no values), so every key must "
                         f"be loaded; {report.source} lacks {len(unfilled)}: {', '.join(unfilled[:8])}"
                         + (" ..." if len(unfilled) > 8 else ""))
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    sd = {k: usable[k].detach().to(device=device, dtype=t.dtype, copy=True) if k in usable
          else torch.zeros((), dtype=t.dtype, device=device) for k, t in own.items()}
    module.load_state_dict(sd, strict=True, assign=True)


def load_checkpoint(model: nn.Module, path, strict: bool = True, key: str | None = None,
                    map_location="cpu") -> LoadReport:
    """Load a full segmentation checkpoint into ``model``.

    Accepts a raw state dict or a dict holding it under ``key`` (default:
    the first of ``"model"``, ``"student"``, ``"state_dict"``); ``module.``
    prefixes are stripped. Read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_state_dict`; ValueError
            (strict) listing missing / unexpected / mis-shaped keys.
    """
    keys = (key,) if key is not None else ("model", "student", "state_dict")
    name = _source_name(path)
    sd = _strip_prefixes(read_state_dict(path, keys=keys, map_location=map_location), ("module.",))
    report, usable = _match(model, sd, name, ())
    if strict and not report.ok:
        raise ValueError(f"checkpoint: does not match the model ({report.summary()})")
    model.load_state_dict(usable, strict=False)
    return report


@torch.no_grad()
def model_report(model: nn.Module, input_shape=(1, 3, 512, 512), device=None) -> dict:
    """Parameters and multiply-accumulates of one forward pass.

    MACs of ``nn.Conv2d`` (``out.numel() * C_in / groups * kH * kW``) and
    ``nn.Linear`` (``out.numel() * in_features``) are counted with forward
    hooks, in eval mode (so an auxiliary head that only runs in training is
    not counted; its parameters are). Norms, activations, pooling and
    interpolation are not counted (the usual convention).

    Args:
        input_shape: ``(B, C, H, W)`` or ``(C, H, W)`` (batch 1).

    Returns:
        ``dict(params, trainable_params, macs, flops=2 * macs, input_shape)``.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected (B, C, H, W) or (C, H, W) with positive sizes, got {input_shape!r}")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    macs = [0]

    def conv_hook(mod, inputs, output):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        macs[0] += output.numel() * (mod.in_channels // mod.groups) * k

    def linear_hook(mod, inputs, output):
        macs[0] += output.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": params, "trainable_params": trainable, "macs": macs[0], "flops": 2 * macs[0],
            "input_shape": shape}
