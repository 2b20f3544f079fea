"""``sstkd eval``: evaluate a checkpoint (mIoU, per-class IoU).

Two ways to say what to evaluate:

* ``sstkd eval --config CONFIG --checkpoint PATH [--mode slide] [key=value ...]``:
  model from ``model.*``, data from ``data.*``, inference from ``eval.*``;
* without a config: ``--model NAME --num-classes K --dataset NAME --data-root ROOT``
  (a student export that records ``model_args`` supplies the model itself).

Flags given on the command line win over the config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_arguments", "main", "resolve_settings"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML experiment config")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: a student export, a training checkpoint or a raw state dict")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: config or whole)")
    parser.add_argument("--crop-size", type=int, nargs="+", metavar="N", help="sliding-window crop (h [w])")
    parser.add_argument("--stride", type=int, nargs="+", metavar="N", help="sliding-window stride (h [w])")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    parser.add_argument("--scales", type=float, nargs="+", metavar="S", help="multi-scale factors (default 1.0)")
    parser.add_argument("--split", help="dataset split (default: config data.val_split or val)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default 1)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default 2)")
    parser.add_argument("--max-samples", type=int, help="evaluate the first N samples only")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    group = parser.add_argument_group("config-free model and data")
    group.add_argument("--model", help="model name, e.g. pspnet_resnet18")
    group.add_argument("--num-classes", type=int, help="number of classes")
    group.add_argument("--base-width", type=int, help="backbone width (default 64)")
    group.add_argument("--output-stride", type=int, choices=(8, 16, 32), help="default 8")
    group.add_argument("--deep-stem", action="store_true", default=None, help="ResNet deep stem")
    group.add_argument("--dataset", help="cityscapes | voc | ade20k | synthetic")
    group.add_argument("--data-root", help="dataset root directory")
    group.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra dataset keyword argument (repeatable), e.g. num_images=64")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. eval.mode=slide")


def _pair(values, name):
    if values is None:
        return None
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) == 2:
        return tuple(values)
    raise ValueError(f"{name}: expected 1 or 2 integers, got {values}")


def _parse_options(items) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--data-option: expected KEY=VALUE, got {item!r}")
        key, _, raw = item.partition("=")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _checkpoint_model_args(path: str) -> dict:
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint: no such file {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    return dict(args) if isinstance(args, dict) else {}


def resolve_settings(args: argparse.Namespace) -> dict:
    """Merge config, checkpoint ``model_args`` and command-line flags into one settings dict."""
    s = {"model": {}, "data": {"options": {}}, "eval": {}}
    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides}: config overrides need --config")
    if args.config:
        try:
            from sstkd.engine.config import load_config
        except ImportError as exc:  # the config module is a separate part of the package
            raise RuntimeError(f"--config needs sstkd.engine.config, which cannot be imported: {exc}") from exc
        cfg = load_config(args.config, args.overrides)
        m, d, e = cfg["model"], cfg["data"], cfg["eval"]
        s["model"] = {k: m[k] for k in ("name", "base_width", "output_stride") if k in m}
        if "deep_stem" in m:
            s["model"]["deep_stem"] = m["deep_stem"]
        if d.get("num_classes") is not None:
            s["model"]["num_classes"] = d["num_classes"]
        s["data"] = {"name": d["name"], "root": d.get("root"), "split": d.get("val_split", "val"),
                     "options": {**(d.get("options") or {}), **(d.get("val_options") or {})},
                     "num_workers": e.get("num_workers", 2)}
        s["eval"] = {"mode": e.get("mode", "whole"), "crop_size": e.get("crop_size"), "stride": e.get("stride"),
                     "batch_size": e.get("batch_size", 1), "max_samples": e.get("max_samples")}
        s["device"] = cfg.get("device", "auto")
    # A student export knows how to rebuild its model; config and flags still win.
    ckpt_args = _checkpoint_model_args(args.checkpoint)
    for key in ("name", "num_classes", "base_width", "output_stride", "deep_stem"):
        if key in ckpt_args and key not in s["model"]:
            s["model"][key] = ckpt_args[key]
    flags = {"name": args.model, "num_classes": args.num_classes, "base_width": args.base_width,
             "output_stride": args.output_stride, "deep_stem": args.deep_stem}
    s["model"].update({k: v for k, v in flags.items() if v is not None})
    if args.dataset is not None:
        s["data"]["name"] = args.dataset
    if args.data_root is not None:
        s["data"]["root"] = args.data_root
    if args.split is not None:
        s["data"]["split"] = args.split
    s["data"]["options"].update(_parse_options(args.data_option))
    if args.workers is not None:
        s["data"]["num_workers"] = args.workers
    ev = s["eval"]
    for key, val in (("mode", args.mode), ("crop_size", _pair(args.crop_size, "--crop-size")),
                     ("stride", _pair(args.stride, "--stride")), ("batch_size", args.batch_size),
                     ("max_samples", args.max_samples)):
        if val is not None:
            ev[key] = val
    ev.setdefault("mode", "whole")
    ev.setdefault("batch_size", 1)
    ev["flip"] = bool(args.flip)
    ev["scales"] = tuple(args.scales) if args.scales else (1.0,)
    if args.device is not None:
        s["device"] = args.device
    s.setdefault("device", "auto")
    s["data"].setdefault("split", "val")
    s["data"].setdefault("num_workers", 2)
    if not s["model"].get("name"):
        raise ValueError("--model: no model name (give --config, --model, or a checkpoint with model_args)")
    if not s["data"].get("name"):
        raise ValueError("--dataset: no dataset (give --config or --dataset)")
    if ev["mode"] == "slide" and (ev.get("crop_size") is None or ev.get("stride") is None):
        raise ValueError("--mode slide needs --crop-size and --stride (or eval.crop_size / eval.stride)")
    return s


def main(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader, Subset

    from sstkd.data import build_dataset
    from sstkd.engine.evaluator import evaluate, format_metrics_table
    from sstkd.models import build_model, load_checkpoint

    s = resolve_settings(args)
    dev = s["device"]
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
    d = s["data"]
    dataset = build_dataset(d["name"], d.get("root"), d["split"], **d["options"])
    m = dict(s["model"])
    m.setdefault("num_classes", dataset.num_classes)
    if m["num_classes"] != dataset.num_classes:
        raise ValueError(f"--num-classes: the model has {m['num_classes']} classes, dataset {d['name']!r} has "
                         f"{dataset.num_classes}")
    model = build_model(m.pop("name"), m.pop("num_classes"), aux=True, **m)
    report = load_checkpoint(model, args.checkpoint, strict=False)
    # The auxiliary head is optional in a checkpoint (it is unused at inference).
    missing = [k for k in report.missing if not k.startswith("aux_head.")]
    if missing or report.unexpected or report.mismatched:
        raise ValueError(f"--checkpoint: does not match model {s['model']['name']!r} "
                         f"({report.summary()})")
    model.to(device)
    ev = s["eval"]
    if ev.get("max_samples"):
        dataset_eval = Subset(dataset, range(min(ev["max_samples"], len(dataset))))
    else:
        dataset_eval = dataset
    loader = DataLoader(dataset_eval, batch_size=ev["batch_size"], shuffle=False, num_workers=d["num_workers"],
                        pin_memory=device.type == "cuda")
    metrics = evaluate(model, loader, dataset.num_classes, mode=ev["mode"], crop_size=ev.get("crop_size"),
                       stride=ev.get("stride"), flip=ev["flip"], scales=ev["scales"], device=device,
                       ignore_index=dataset.ignore_index, progress=sys.stderr.isatty())
    print(f"{s['model']['name']} on {d['name']}/{d['split']} ({len(dataset_eval)} images, mode={ev['mode']}, "
          f"flip={ev['flip']}, scales={list(ev['scales'])})")
    print(format_metrics_table(metrics, dataset.class_names))
    if args.json:
        out = dict(metrics, class_names=list(dataset.class_names), checkpoint=os.path.abspath(args.checkpoint))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2, allow_nan=True)
    return 0
