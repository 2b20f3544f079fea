"""The field's checkpoint layouts in sstkd's key layout: recognize a source and rename its keys.

Pure state-dict work (no model is built here): :func:`convert_state_dict` returns the renamed
weights and the ``build_model`` arguments; :mod:`sstkd.models.convert` builds and loads them.
The sources and their quirks are listed in :mod:`sstkd.models.convert`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from sstkd.models.flavors import FLAVORS, scaled_width
from sstkd.models.state_dict import load_file, read_state_dict

__all__ = ["FORMATS", "ABN_EPS", "Conversion", "detect_format", "convert_state_dict", "format_keys"]


FORMATS = ("torchvision", "cirkd", "ifvd", "mmseg", "sstkd")
ABN_EPS = 1e-5  # In-Place ABN scales by |weight| + eps
_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101}
_LIST_LIMIT = 30


@dataclass
class Conversion:
    """A checkpoint in sstkd's layout: ``build_model(**model_args)`` loads ``state_dict`` strictly."""

    format: str
    model_args: dict
    state_dict: dict


def format_keys(keys) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


# ------------------------------------------------------------------ detection


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The source layout of a (``module.``-stripped) state dict, from its keys.

    Raises:
        ValueError: an ImageNet backbone (use it as ``pretrained_backbone``) or an unknown layout.
    """
    keys = set(state_dict)
    if "head.classifier.weight" in keys and any(k.startswith("backbone.") for k in keys):
        return "sstkd"
    if "decode_head.conv_seg.weight" in keys:
        return "mmseg"
    if "classifier.0.convs.0.0.weight" in keys:
        return "torchvision"
    if "pretrained.conv1.weight" in keys and any(k.startswith(("head.", "auxlayer.")) for k in keys):
        return "cirkd"
    if "pspmodule.bottleneck.0.weight" in keys and "head.weight" in keys:
        return "ifvd"
    if "layer1.0.conv1.weight" in keys or "features.0.0.weight" in keys:
        raise ValueError("checkpoint: this is an ImageNet backbone (torchvision / CIRKD key layout), not a "
                         "segmentation model; use it as the student's pretrained_backbone")
    raise ValueError(f"checkpoint: unknown layout (formats: {', '.join(FORMATS)}); first keys: "
                     f"{format_keys(sorted(keys)[:10])}")


# ------------------------------------------------------------------ renaming


def _rename(sd: Mapping[str, torch.Tensor], rules, fmt: str) -> dict:
    """Apply the first matching ``(regex, replacement)`` to every key; unmatched keys are an error."""
    out, unmapped = {}, []
    compiled = [(re.compile(p), r) for p, r in rules]
    for key, value in sd.items():
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"checkpoint ({fmt}): {len(unmapped)} keys have no place in the model: "
                         f"{format_keys(unmapped)}")
    return out


_TORCHVISION = [
    (r"backbone\.(.*)", r"backbone.\1"),
    (r"classifier\.0\.convs\.([0-3])\.([01])\.(.*)", r"head.aspp.branches.\1.\2.\3"),
    (r"classifier\.0\.convs\.4\.1\.(.*)", r"head.aspp.branches.4.conv.0.\1"),
    (r"classifier\.0\.convs\.4\.2\.(.*)", r"head.aspp.branches.4.conv.1.\1"),
    (r"classifier\.0\.project\.([01])\.(.*)", r"head.aspp.project.0.\1.\2"),
    (r"classifier\.1\.(.*)", r"head.conv.0.\1"),
    (r"classifier\.2\.(.*)", r"head.conv.1.\1"),
    (r"classifier\.4\.(.*)", r"head.classifier.\1"),
    (r"aux_classifier\.([01])\.(.*)", r"aux_head.conv.\1.\2"),
    (r"aux_classifier\.4\.(.*)", r"aux_head.classifier.\1"),
]

_CIRKD = [
    (r"pretrained\.(.*)", r"backbone.\1"),
    (r"head\.aspp\.b0\.([01])\.(.*)", r"head.aspp.branches.0.\1.\2"),
    (r"head\.aspp\.b([123])\.block\.([01])\.(.*)", r"head.aspp.branches.\1.\2.\3"),
    (r"head\.aspp\.b4\.gap\.1\.(.*)", r"head.aspp.branches.4.conv.0.\1"),
    (r"head\.aspp\.b4\.gap\.2\.(.*)", r"head.aspp.branches.4.conv.1.\1"),
    (r"head\.aspp\.project\.([01])\.(.*)", r"head.aspp.project.0.\1.\2"),
    (r"head\.block\.([01])\.(.*)", r"head.conv.\1.\2"),
    (r"head\.block\.4\.(.*)", r"head.classifier.\1"),
    (r"auxlayer\.block\.([01])\.(.*)", r"aux_head.conv.\1.\2"),
    (r"auxlayer\.block\.4\.(.*)", r"aux_head.classifier.\1"),
]

_IFVD = [
    (r"((?:conv|bn)[123]|layer[1-4])\.(.*)", r"backbone.\1.\2"),
    (r"pspmodule\.stages\.(\d+)\.1\.(.*)", r"head.stages.\1.1.0.\2"),
    (r"pspmodule\.stages\.(\d+)\.2\.(.*)", r"head.stages.\1.1.1.\2"),
    (r"pspmodule\.bottleneck\.([01])\.(.*)", r"head.bottleneck.\1.\2"),
    (r"head\.(weight|bias)", r"head.classifier.\1"),
    (r"dsn\.([01])\.(.*)", r"aux_head.conv.\1.\2"),
    (r"dsn\.3\.(.*)", r"aux_head.classifier.\1"),
]

_MMSEG = [
    (r"backbone\.stem\.0\.(.*)", r"backbone.conv1.\1"),
    (r"backbone\.stem\.1\.(.*)", r"backbone.bn1.\1"),
    (r"backbone\.stem\.3\.(.*)", r"backbone.conv2.\1"),
    (r"backbone\.stem\.4\.(.*)", r"backbone.bn2.\1"),
    (r"backbone\.stem\.6\.(.*)", r"backbone.conv3.\1"),
    (r"backbone\.stem\.7\.(.*)", r"backbone.bn3.\1"),
    (r"backbone\.((?:conv1|bn1|layer[1-4])\..*)", r"backbone.\1"),
    (r"decode_head\.conv_seg\.(.*)", r"head.classifier.\1"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(.*)", r"head.stages.\1.1.0.\2"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(.*)", r"head.stages.\1.1.1.\2"),
    (r"decode_head\.image_pool\.1\.conv\.(.*)", r"head.image_pool.1.0.\1"),
    (r"decode_head\.image_pool\.1\.bn\.(.*)", r"head.image_pool.1.1.\1"),
    (r"decode_head\.aspp_modules\.(\d+)\.conv\.(.*)", r"head.branches.\1.0.\2"),
    (r"decode_head\.aspp_modules\.(\d+)\.bn\.(.*)", r"head.branches.\1.1.\2"),
    (r"decode_head\.bottleneck\.conv\.(.*)", r"head.bottleneck.0.\1"),
    (r"decode_head\.bottleneck\.bn\.(.*)", r"head.bottleneck.1.\1"),
    (r"auxiliary_head\.conv_seg\.(.*)", r"aux_head.classifier.\1"),
    (r"auxiliary_head\.convs\.0\.conv\.(.*)", r"aux_head.conv.0.\1"),
    (r"auxiliary_head\.convs\.0\.bn\.(.*)", r"aux_head.conv.1.\1"),
]


def _norm_prefixes(sd: Mapping[str, torch.Tensor]) -> list[str]:
    """The ``"<module>."`` key prefix of every norm layer (a module with a ``running_var``), in key order."""
    return [key[: -len("running_var")] for key in sd if key.endswith(".running_var")]


def _convert_abn(sd: dict) -> dict:
    """In-Place ABN -> BatchNorm: every norm weight (a ``weight`` beside a ``running_var``) becomes ``|w| + eps``."""
    out = dict(sd)
    for w in (prefix + "weight" for prefix in _norm_prefixes(sd)):
        if w in out:
            out[w] = out[w].abs() + ABN_EPS
    return out


def _fill_num_batches_tracked(sd: dict) -> dict:
    # BatchNorm has this buffer; IFVD's ABN and some exports lack it. 0 changes nothing in eval.
    out = dict(sd)
    for prefix in _norm_prefixes(sd):
        out.setdefault(prefix + "num_batches_tracked", torch.zeros((), dtype=torch.long))
    return out


# ------------------------------------------------------------------ architecture from the keys


def _backbone_args(sd: Mapping[str, torch.Tensor], fmt: str) -> tuple[int, int, str]:
    """(depth, base_width, stem) of the ResNet under ``backbone.`` in sstkd's layout."""
    def blocks(stage: int) -> int:
        idx = {int(m.group(1)) for k in sd for m in [re.match(rf"backbone\.layer{stage}\.(\d+)\.", k)] if m}
        return len(idx)

    if "backbone.layer1.0.conv1.weight" not in sd:
        raise ValueError(f"checkpoint ({fmt}): no ResNet backbone (backbone.layer1.0.conv1.weight) found")
    family = "bottleneck" if "backbone.layer1.0.conv3.weight" in sd else "basic"
    counts = tuple(blocks(s) for s in (1, 2, 3, 4))
    depth = _DEPTHS.get((family, counts))
    if depth is None:
        raise ValueError(f"checkpoint ({fmt}): a {family}-block ResNet with {counts} blocks per stage; "
                         "supported: ResNet-18, -50, -101")
    width = int(sd["backbone.layer1.0.conv1.weight"].shape[0])
    if "backbone.conv2.weight" not in sd:
        stem = "torchvision"
    else:
        stem = "deep" if int(sd["backbone.conv3.weight"].shape[0]) == 2 * width else "v1c"
    return depth, width, stem


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    return int(sd["head.classifier.weight"].shape[0])


def _args(name: str, sd: dict, width: int, flavor: str | None, deep_stem: bool = False) -> dict:
    return {"name": name, "num_classes": _num_classes(sd), "base_width": width, "output_stride": 8,
            "aux": any(k.startswith("aux_head.") for k in sd), "deep_stem": deep_stem, "flavor": flavor}


def _from_torchvision(sd: dict) -> Conversion:
    out = _rename(sd, _TORCHVISION, "torchvision")
    depth, width, stem = _backbone_args(out, "torchvision")
    if depth == 18:
        raise ValueError("checkpoint (torchvision): torchvision has no DeepLabV3-ResNet-18")
    return Conversion("torchvision", _args(f"deeplabv3_resnet{depth}", out, width, "torchvision"), out)


def _from_cirkd(sd: dict) -> Conversion:
    if "head.aspp.b0.0.weight" not in sd:
        heads = sorted({k.split(".")[1] for k in sd if k.startswith("head.")})
        raise ValueError(f"checkpoint (cirkd): only CIRKD's DeepLabV3 is supported; this head has {heads}")
    out = _rename(sd, _CIRKD, "cirkd")
    depth, width, _ = _backbone_args(out, "cirkd")
    family = "basic" if depth == 18 else "bottleneck"
    aspp = int(out["head.aspp.branches.0.0.weight"].shape[0])
    for flavor in ("cirkd_v1", "cirkd_v2"):
        if aspp == scaled_width(FLAVORS[flavor].aspp_width[family], width):
            return Conversion("cirkd", _args(f"deeplabv3_resnet{depth}", out, width, flavor), out)
    raise ValueError(f"checkpoint (cirkd): ASPP width {aspp} is neither CIRKD v1's nor v2's for ResNet-{depth}")


def _from_ifvd(sd: dict) -> Conversion:
    out = _fill_num_batches_tracked(_convert_abn(_rename(sd, _IFVD, "ifvd")))
    depth, width, _ = _backbone_args(out, "ifvd")
    return Conversion("ifvd", _args(f"pspnet_resnet{depth}", out, width, "ifvd"), out)


def _from_mmseg(sd: dict) -> Conversion:
    out = _rename(sd, _MMSEG, "mmseg")
    depth, width, stem = _backbone_args(out, "mmseg")
    kind = "pspnet" if "head.stages.0.1.0.weight" in out else "deeplabv3"
    flavor = {"v1c": "mmseg", "torchvision": "mmseg_b"}.get(stem)
    if flavor is None:
        raise ValueError("checkpoint (mmseg): a 64-64-128 deep stem is not an mmseg ResNet layout")
    return Conversion("mmseg", _args(f"{kind}_resnet{depth}", out, width, flavor), out)


def _from_sstkd(sd: dict, model_args: Mapping | None) -> Conversion:
    if model_args is not None:
        return Conversion("sstkd", dict(model_args), sd)
    depth, width, stem = _backbone_args(sd, "sstkd")
    if stem == "v1c":
        raise ValueError("checkpoint (sstkd): a v1c stem without model_args; save it with its model_args "
                         "(a student export) to record its flavor")
    kind = "pspnet" if "head.stages.0.1.0.weight" in sd else "deeplabv3"
    return Conversion("sstkd", _args(f"{kind}_resnet{depth}", sd, width, None, deep_stem=stem == "deep"), sd)


# ------------------------------------------------------------------ public API


def _read(source) -> tuple[dict, Mapping | None]:
    """(state dict with ``module.`` stripped, the sstkd export's ``model_args`` or None)."""
    obj = source
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(os.fspath(source)):
        obj = load_file(source)
    model_args = obj.get("model_args") if isinstance(obj, Mapping) else None
    sd = read_state_dict(obj if isinstance(obj, Mapping) else source)  # (strips ``module.``)
    return sd, model_args if isinstance(model_args, Mapping) else None


def convert_state_dict(source, format: str = "auto") -> Conversion:
    """Turn a checkpoint (path, URL or state dict) into sstkd's layout and the ``build_model`` arguments.

    Raises:
        ValueError: unknown ``format``, an unrecognized layout, or keys that have no place in the model.
    """
    if format not in ("auto",) + FORMATS:
        raise ValueError(f"format: expected 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    sd, model_args = _read(source)
    fmt = detect_format(sd) if format == "auto" else format
    if fmt == "sstkd":
        return _from_sstkd(sd, model_args)
    return {"torchvision": _from_torchvision, "cirkd": _from_cirkd, "ifvd": _from_ifvd,
            "mmseg": _from_mmseg}[fmt](sd)
