"""The field's segmentation checkpoints as sstkd models: recognize, rename, build, load strictly.

Sources (``format``):

* ``torchvision``: ``segmentation.deeplabv3_resnet50/101`` (``backbone.``, ``classifier.``, ``aux_classifier.``);
* ``cirkd``: CIRKD DeepLabV3 on ResNetV1b, v1 (2022) and v2 (2025) (``pretrained.``, ``head.aspp.b0..b4``,
  ``auxlayer.``); v1 / v2 are told apart by the ASPP width;
* ``ifvd``: SKD / IFVD ``Res_pspnet`` (top-level backbone, ``pspmodule.``, ``head``, ``dsn.``). Its
  In-Place ABN weights are converted to BatchNorm weights ``|w| + 1e-5``;
* ``mmseg``: mmsegmentation ``EncoderDecoder`` PSPNet / DeepLabV3 (``backbone.``, ``decode_head.``,
  ``auxiliary_head.``), ResNetV1c (``r*-d8``, flavor ``mmseg``) or ResNet (``r*b-d8``, flavor ``mmseg_b``);
* ``sstkd``: sstkd's own layout (a student export with ``model_args``, or a bare state dict).

Every key of the source must be mapped and every key of the model filled with the right shape; anything
else is a ``ValueError`` that lists the keys. Checkpoints are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import torch
from torch import nn

from sstkd.models.builder import build_model
from sstkd.models.keymaps import ABN_EPS, FORMATS, Conversion, convert_state_dict, detect_format, format_keys
from sstkd.models.segmentor import Segmentor

__all__ = ["FORMATS", "ABN_EPS", "Conversion", "detect_format", "convert_state_dict", "from_pretrained",
           "load_teacher", "convert_checkpoint"]

log = logging.getLogger(__name__)


def _load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load that lists every missing / unexpected / mis-shaped key; a meta-device model takes the tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = [f"{len(v)} {label}: {format_keys(v)}" for label, v in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)) if v]
    if problems:
        raise ValueError(f"checkpoint ({what}) does not match the model: " + "; ".join(problems))
    on_meta = any(t.is_meta for t in own.values())
    if on_meta:  # assign: the model takes the checkpoint's tensors (in the model's dtypes, on the CPU)
        sd = {k: v.detach().to(device="cpu", dtype=own[k].dtype).contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=on_meta)


def _build(conv: Conversion) -> Segmentor:
    """The empty model (on the meta device: no memory, no init; the strict load fills it)."""
    try:
        with torch.device("meta"):
            return build_model(**conv.model_args)
    except TypeError as exc:
        raise ValueError(f"checkpoint ({conv.format}): model_args {conv.model_args} do not build a model: "
                         f"{exc}") from None


def from_pretrained(source, format: str = "auto", num_classes: int | None = None) -> Segmentor:
    """A :class:`Segmentor` holding a checkpoint of torchvision, CIRKD, SKD/IFVD, mmseg or sstkd.

    Args:
        source: a path, an ``http(s)://`` URL or a state dict (``module.`` prefixes are stripped;
            ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped).
        format: ``"auto"`` (recognized from the keys; the choice is logged and kept in
            ``model.source_format``) or one of :data:`FORMATS`.
        num_classes: the classes you expect (None = the checkpoint's); a different number is an error.

    Returns:
        The model in eval mode, loaded strictly, with the source's flavor (``model.flavor``).
        ``model(x)`` gives ``{"out", "aux"}`` at the input's size, upsampled as the source
        evaluates (``align_corners`` True for CIRKD and SKD/IFVD); ``model.backbone.layer1`` is the
        stride-4 stage.

    Raises:
        ValueError: unknown format or layout, keys that do not map, or ``num_classes`` differs.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes: expected None or a positive int, got {num_classes!r}")
    conv = convert_state_dict(source, format)
    if num_classes is not None and num_classes != conv.model_args["num_classes"]:
        raise ValueError(f"num_classes: the checkpoint has {conv.model_args['num_classes']} classes, "
                         f"not {num_classes}")
    model = _build(conv)
    _load_strict(model, conv.state_dict, conv.format)
    model.source_format = conv.format
    model.aux_in_eval = model.aux_head is not None
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"
    log.info("from_pretrained: %s: %s %s layout -> %s (flavor %s, %d classes)", name,
             "recognized" if format == "auto" else "given", conv.format, conv.model_args["name"],
             conv.model_args.get("flavor"), conv.model_args["num_classes"])
    return model.eval()


def load_teacher(source, model_args: Mapping | None = None, format: str = "auto") -> Segmentor:
    """The teacher for distillation: any checkpoint :func:`from_pretrained` reads.

    An sstkd checkpoint is loaded strictly into ``build_model(**model_args)`` (the config's
    teacher; the checkpoint's own ``model_args`` when None). Another source, or an sstkd export
    that records a flavor the config leaves unset, builds its own architecture; ``model_args``
    (if given) must agree with it on ``name`` and ``num_classes`` and, when set, ``flavor`` and
    ``base_width``; its ``output_stride`` is used.

    Returns:
        The teacher in eval mode (its ``aux`` output is not computed in eval).

    Raises:
        ValueError / FileNotFoundError: as :func:`from_pretrained`, or a disagreement with ``model_args``.
    """
    conv = convert_state_dict(source, format)
    if model_args is not None:
        # A bare sstkd state dict (or an export of sstkd's own models) is built as the config says;
        # an export that records a flavor (e.g. from `sstkd convert`) builds its own architecture.
        if conv.format == "sstkd" and conv.model_args.get("flavor") is None:
            conv = Conversion("sstkd", dict(model_args), conv.state_dict)
        else:
            got = dict(conv.model_args)
            for key in ("name", "num_classes", "flavor", "base_width"):
                want = model_args.get(key)
                if want is not None and want != got.get(key):
                    raise ValueError(f"checkpoint: a {conv.format} {got['name']} (flavor {got['flavor']}, "
                                     f"{got['num_classes']} classes, base_width {got['base_width']}), but the "
                                     f"config says {key}={want!r}")
            if model_args.get("output_stride") is not None:  # the weights do not depend on it
                got["output_stride"] = model_args["output_stride"]
            conv = Conversion(conv.format, got, conv.state_dict)
    model = _build(conv)
    _load_strict(model, conv.state_dict, conv.format)
    model.source_format = conv.format
    return model.eval()


def convert_checkpoint(src, dst, format: str = "auto") -> Conversion:
    """Convert ``src`` (any :data:`FORMATS`) into an sstkd student export at ``dst``.

    The file holds ``{"format": "sstkd-student", "model": state_dict, "model_args": {...}}`` and loads with
    ``from_pretrained(dst)`` or as ``teacher.checkpoint``. The conversion is checked by a strict load first.
    """
    conv = convert_state_dict(src, format)
    model = _build(conv)
    _load_strict(model, conv.state_dict, conv.format)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dst = os.fspath(dst)
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = dst + ".tmp"
    try:
        torch.save({"format": "sstkd-student", "model": state, "model_args": dict(conv.model_args),
                    "converted_from": conv.format}, tmp)
        os.replace(tmp, dst)  # atomic: dst is either absent / the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return conv
