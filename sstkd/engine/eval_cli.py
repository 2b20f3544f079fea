"""``sstkd eval``: evaluate a checkpoint (mIoU, per-class IoU).

Two ways to say what to evaluate:

* ``sstkd eval --config CONFIG --checkpoint PATH [--mode slide] [key=value ...]``:
  model from ``model.*``, data from ``data.*``, inference from ``eval.*``;
* without a config: ``--model NAME --num-classes K --dataset NAME --data-root ROOT``
  (a student export that records ``model_args`` supplies the model itself).

Flags given on the command line win over the config; everything is checked
once, by the same typed config as ``sstkd train`` (:mod:`sstkd.engine.config`).
Errors are one line on stderr with exit status 2, naming the argument.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["add_arguments", "main", "resolve_settings"]


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _device(text: str) -> str:
    from sstkd.engine.config import DEVICE_PATTERN

    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pos, nonneg = _int_at_least(1), _int_at_least(0)
    parser.add_argument("--config", help="YAML experiment config")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: a student export, a training checkpoint or a raw state dict")
    parser.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: config or whole)")
    parser.add_argument("--crop-size", type=pos, nargs="+", metavar="N", help="sliding-window crop (h [w])")
    parser.add_argument("--stride", type=pos, nargs="+", metavar="N", help="sliding-window stride (h [w])")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    parser.add_argument("--scales", type=_positive_float, nargs="+", metavar="S",
                        help="multi-scale factors (default 1.0)")
    parser.add_argument("--split", help="dataset split (default: config data.val_split or val)")
    parser.add_argument("--device", type=_device, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=pos, help="evaluation batch size (default 1)")
    parser.add_argument("--workers", type=nonneg, help="DataLoader workers (default 2)")
    parser.add_argument("--max-samples", type=pos, help="evaluate the first N samples only")
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    group = parser.add_argument_group("config-free model and data")
    group.add_argument("--model", help="model name, e.g. pspnet_resnet18")
    group.add_argument("--num-classes", type=pos, help="number of classes")
    group.add_argument("--base-width", type=pos, help="backbone width (default 64)")
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
        return [values[0], values[0]]
    if len(values) == 2:
        return list(values)
    raise ValueError(f"{name}: expected 1 or 2 integers, got {values}")


def _parse_options(items) -> dict:
    import yaml

    out = {}
    for item in items:
        if "=" not in item or not item.partition("=")[0].strip():
            raise ValueError(f"--data-option: expected KEY=VALUE, got {item!r}")
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"--data-option {item!r}: cannot parse the value: {e}") from None
    return out


def resolve_settings(args: argparse.Namespace):
    """The evaluation's typed config (config file, then the checkpoint's ``model_args`` when there is
    no config, then the flags; validated once) and the loaded checkpoint.

    Returns:
        ``(cfg, ckpt, num_classes)``: a :class:`~sstkd.engine.config.Config`, the checkpoint dict
        (read by the project's checked loader) and the number of classes asked for (None: the dataset's).
    """
    from sstkd.engine.checkpoint import load_checkpoint
    from sstkd.engine.config import ConfigError, Config, apply_overrides, read_config_file, set_dotted

    if args.overrides and not args.config:
        raise ValueError(f"overrides {args.overrides}: config overrides need --config")
    ckpt = load_checkpoint(args.checkpoint)  # CheckpointError names the file
    raw = read_config_file(args.config) if args.config else {}
    raw = apply_overrides(raw, args.overrides)
    ckpt_args = ckpt.get("model_args") if isinstance(ckpt.get("model_args"), dict) else {}
    if not args.config:  # a student export knows how to rebuild its model; flags still win
        for key in ("name", "base_width", "output_stride", "deep_stem"):
            if key in ckpt_args:
                set_dotted(raw, f"model.{key}", ckpt_args[key])
        if args.model is None and "name" not in ckpt_args:
            raise ValueError("--model: no model name (give --config, --model, or a checkpoint with model_args)")
        if args.dataset is None:
            raise ValueError("--dataset: no dataset (give --config or --dataset)")
    flags = {"model.name": args.model, "model.base_width": args.base_width,
             "model.output_stride": args.output_stride, "model.deep_stem": args.deep_stem,
             "data.name": args.dataset, "data.root": args.data_root, "data.val_split": args.split,
             "data.num_workers": args.workers, "eval.num_workers": args.workers,
             "eval.mode": args.mode, "eval.crop_size": _pair(args.crop_size, "--crop-size"),
             "eval.stride": _pair(args.stride, "--stride"), "eval.batch_size": args.batch_size,
             "eval.max_samples": args.max_samples, "eval.flip": True if args.flip else None,
             "eval.scales": list(args.scales) if args.scales else None, "device": args.device}
    for key, value in flags.items():
        if value is not None:
            set_dotted(raw, key, value)
    for key, value in _parse_options(args.data_option).items():
        set_dotted(raw, f"data.val_options.{key}", value)
    try:
        cfg = Config.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None
    num_classes = args.num_classes if args.num_classes is not None else ckpt_args.get("num_classes")
    return cfg, ckpt, num_classes


def main(args: argparse.Namespace) -> int:
    from sstkd.engine.checkpoint import CheckpointError
    from sstkd.engine.config import ConfigError

    try:
        return _evaluate(args)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"sstkd eval: error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset

    from sstkd.data import build_dataset
    from sstkd.engine.checkpoint import extract_state_dict
    from sstkd.engine.distributed import resolve_device
    from sstkd.engine.evaluator import evaluate, format_metrics_table
    from sstkd.models import build_model, load_checkpoint

    cfg, ckpt, num_classes = resolve_settings(args)
    device = resolve_device(cfg.device)
    d, ev = cfg.data, cfg.eval
    dataset = build_dataset(d.name, d.root, d.val_split, **{**d.options, **d.val_options})
    if num_classes is None:
        num_classes = dataset.num_classes
    if num_classes != dataset.num_classes:
        source = "--num-classes" if args.num_classes is not None else f"--checkpoint ({args.checkpoint})"
        raise ValueError(f"{source}: the model has {num_classes} classes, dataset {d.name!r} has "
                         f"{dataset.num_classes}")
    m = cfg.model
    model = build_model(m.name, num_classes, base_width=m.base_width, output_stride=m.output_stride, aux=True,
                        deep_stem=m.deep_stem)
    report = load_checkpoint(model, extract_state_dict(ckpt), strict=False)
    # The auxiliary head is optional in a checkpoint (it is unused at inference).
    missing = [k for k in report.missing if not k.startswith("aux_head.")]
    if missing or report.unexpected or report.mismatched:
        raise ValueError(f"--checkpoint: {args.checkpoint} does not match model {m.name!r} "
                         f"({report.summary()})")
    model.to(device)
    dataset_eval = dataset
    if ev.max_samples is not None and ev.max_samples < len(dataset):
        dataset_eval = Subset(dataset, range(ev.max_samples))
    loader = DataLoader(dataset_eval, batch_size=ev.batch_size, shuffle=False, num_workers=ev.num_workers,
                        pin_memory=device.type == "cuda")
    metrics = evaluate(model, loader, dataset.num_classes, mode=ev.mode, crop_size=tuple(ev.crop_size),
                       stride=tuple(ev.stride), flip=ev.flip, scales=tuple(ev.scales), device=device,
                       ignore_index=dataset.ignore_index, progress=sys.stderr.isatty())
    print(f"{m.name} on {d.name}/{d.val_split} ({len(dataset_eval)} images, mode={ev.mode}, "
          f"flip={ev.flip}, scales={list(ev.scales)})")
    print(format_metrics_table(metrics, dataset.class_names))
    if args.json:
        out = dict(metrics, class_names=list(dataset.class_names), checkpoint=os.path.abspath(args.checkpoint))
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2, allow_nan=True)
    return 0
