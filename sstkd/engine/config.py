"""YAML experiment configs: ``_base_`` inheritance, ``key.sub=value`` overrides,
validation against a schema of defaults, and saving the resolved config.

A config file is a YAML mapping. ``_base_`` (a path or a list of paths,
relative to the file that names them) lists files whose contents are merged
first, in order; the file's own keys then override them (mappings merge key
by key, everything else is replaced). The result is merged onto
:data:`DEFAULTS`, so every key has a value, and checked: a key that is not in
the schema is an error naming its dotted path, and so is a value of the wrong
type. Loading uses ``yaml.safe_load`` only.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable, Mapping

import yaml

__all__ = [
    "ConfigError",
    "DEFAULTS",
    "load_config",
    "resolve_config",
    "apply_overrides",
    "validate_config",
    "merge_dicts",
    "save_config",
    "config_to_yaml",
]


class ConfigError(ValueError):
    """A config file, key or value is invalid (the message names it)."""


# The schema: every valid key with its default. Values of ``None`` take the
# type given in _NULLABLE_TYPES; open mappings (_OPEN_KEYS) accept any key and
# are validated by their consumer (e.g. SSTKDConfig.from_dict for distill.loss).
DEFAULTS: dict[str, Any] = {
    "name": None,               # run name (defaults to the config file's stem)
    "method": "baseline",       # baseline | kd | sstkd
    "seed": 0,
    "deterministic": False,     # torch.use_deterministic_algorithms + cudnn flags
    "device": "auto",           # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    "work_dir": None,           # run directory (defaults to runs/<name>)
    "resume": None,             # null | auto | path to a checkpoint
    "model": {                  # the student (or the model, for baseline/teacher runs)
        "name": "pspnet_resnet18",
        "base_width": 64,
        "output_stride": 8,
        "aux": True,
        "deep_stem": False,
        "pretrained_backbone": None,   # path or URL to ImageNet weights (torchvision keys)
        "sync_bn": True,               # SyncBN when running on several processes
        "flavor": None,                # architecture flavor of a published model (build_model(..., flavor=...))
    },
    "teacher": {
        "name": None,
        "base_width": 64,
        "output_stride": 8,
        "aux": True,
        "deep_stem": False,
        "checkpoint": None,     # teacher weights (student-only export or training checkpoint)
        "flavor": None,         # architecture flavor, as model.flavor
    },
    "data": {
        "name": "synthetic",    # cityscapes | voc | ade20k | synthetic
        "root": None,
        "train_split": "train",
        "val_split": "val",
        "crop_size": [512, 512],        # training crop (H, W)
        "scale_range": [0.5, 2.0],      # random rescale; null = off
        "hflip": True,
        "jitter": 0.25,                 # photometric jitter strength; 0 = off
        "cat_max_ratio": 1.0,           # mmseg crop rule; 1 = off
        "num_workers": 2,
        "options": {},          # extra keyword arguments of the dataset class (both splits)
        "val_options": {},      # ... for the validation split only (override options)
    },
    "distill": {
        "taps": {"student": "backbone.layer1", "teacher": "backbone.layer1"},
        "loss": {},             # SSTKDConfig fields, applied on top of the method's preset
    },
    "train": {
        "iterations": 40000,
        "batch_size": 8,        # global batch per forward (split over processes)
        "accumulate": 1,        # forwards per optimizer step
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "poly_power": 0.9,
        "aux_weight": 0.4,
        "ignore_index": 255,
        "grad_clip": None,      # max global grad norm, null = off
        "amp": None,            # null | bf16 | fp16
        "on_nonfinite": "stop", # stop | skip
        "log_interval": 50,
        "checkpoint_interval": 2000,
        "eval_interval": 4000,  # 0 = evaluate only at the end
        "eval_at_end": True,
        "tensorboard": False,
        "progress": True,
        "find_unused_parameters": False,
    },
    "eval": {
        "mode": "whole",        # whole | slide
        "crop_size": [512, 512],
        "stride": [341, 341],
        "batch_size": 1,
        "num_workers": 2,
        "max_samples": None,    # evaluate on the first N validation samples only
    },
}

_NULLABLE_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "work_dir": (str,),
    "resume": (str,),
    "model.pretrained_backbone": (str,),
    "teacher.name": (str,),
    "teacher.checkpoint": (str,),
    "model.flavor": (str,),
    "teacher.flavor": (str,),
    "data.root": (str,),
    "data.scale_range": (list,),
    "train.grad_clip": (float,),
    "train.amp": (str,),
    "eval.max_samples": (int,),
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "method": ("baseline", "kd", "sstkd"),
    "train.amp": (None, "bf16", "fp16"),
    "train.on_nonfinite": ("stop", "skip"),
    "eval.mode": ("whole", "slide"),
}

_OPEN_KEYS = {"data.options", "data.val_options", "distill.loss"}

_POSITIVE_INTS = {
    "train.iterations", "train.batch_size", "train.accumulate", "train.log_interval",
    "train.checkpoint_interval", "eval.batch_size",
}


def merge_dicts(base: Mapping, override: Mapping) -> dict:
    """Recursively merge ``override`` onto a copy of ``base`` (mappings merge,
    other values are replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: str, _stack: tuple[str, ...] = ()) -> dict:
    """Read one config file and its ``_base_`` chain (relative paths)."""
    path = os.path.abspath(path)
    if path in _stack:
        chain = " -> ".join(_stack + (path,))
        raise ConfigError(f"_base_: circular inheritance: {chain}")
    if not os.path.isfile(path):
        where = f" (named in {_stack[-1]})" if _stack else ""
        raise ConfigError(f"config file not found: {path}{where}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = merge_dicts(merged, _read_yaml(base_path, _stack + (path,)))
    return merge_dicts(merged, data)


def _lookup_default(dotted: str) -> tuple[bool, Any]:
    node: Any = DEFAULTS
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if prefix in _OPEN_KEYS:
            return True, None
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` overrides (value parsed with ``yaml.safe_load``).

    Raises:
        ConfigError: an override without ``=``, with an empty or unknown key,
            or that descends into a value that is not a mapping.
    """
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        known, _ = _lookup_default(key)
        if not known:
            raise ConfigError(f"override {item!r}: unknown config key {key!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value: {e}") from None
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return cfg


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _check_value(dotted: str, value: Any, default: Any) -> Any:
    """Check one leaf against its default's type; returns the (coerced) value."""
    if value is None:
        if default is None or dotted in _NULLABLE_TYPES:
            return None
        raise ConfigError(f"config key {dotted!r}: must not be null")
    if default is None:
        types = _NULLABLE_TYPES.get(dotted)
        if types is None:
            return value
    elif isinstance(default, bool):
        types = (bool,)
    elif isinstance(default, int):
        types = (int,)
    elif isinstance(default, float):
        types = (float,)
    elif isinstance(default, list):
        types = (list,)
    else:
        types = (type(default),)
    if float in types:
        # YAML 1.1 reads "5e-4" as a string; accept any number spelling.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(
            f"config key {dotted!r}: expected {_type_name(types)}, got {type(value).__name__} {value!r}")
    if isinstance(default, list) and default and len(value) != len(default):
        raise ConfigError(f"config key {dotted!r}: expected a list of {len(default)} items, got {value!r}")
    return value


def validate_config(cfg: Mapping, _defaults: Mapping = DEFAULTS, _prefix: str = "") -> dict:
    """Check every key of ``cfg`` against the schema and return a validated copy.

    Raises:
        ConfigError: unknown key (named by its dotted path), wrong type, a
            value outside its choices.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config {_prefix or '<root>'}: expected a mapping, got {type(cfg).__name__}")
    out: dict = {}
    for key, value in cfg.items():
        dotted = f"{_prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {dotted!r}: keys must be strings")
        if key not in _defaults:
            raise ConfigError(f"unknown config key {dotted!r}")
        default = _defaults[key]
        if dotted in _OPEN_KEYS:
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {dotted!r}: expected a mapping, got {type(value).__name__}")
            out[key] = copy.deepcopy(dict(value))
        elif isinstance(default, dict):
            out[key] = validate_config(value if value is not None else {}, default, dotted + ".")
        else:
            out[key] = _check_value(dotted, value, default)
        if dotted in _CHOICES and out[key] not in _CHOICES[dotted]:
            raise ConfigError(f"config key {dotted!r}: must be one of {list(_CHOICES[dotted])}, got {out[key]!r}")
        if dotted in _POSITIVE_INTS and out[key] < 1:
            raise ConfigError(f"config key {dotted!r}: must be >= 1, got {out[key]}")
    return out


def _check_semantics(cfg: dict) -> None:
    if cfg["method"] != "baseline" and not cfg["teacher"]["name"]:
        raise ConfigError(f"config key 'teacher.name': method {cfg['method']!r} needs a teacher")
    for key in ("eval_interval",):
        if cfg["train"][key] < 0:
            raise ConfigError(f"config key 'train.{key}': must be >= 0")
    if cfg["train"]["grad_clip"] is not None and cfg["train"]["grad_clip"] <= 0:
        raise ConfigError("config key 'train.grad_clip': must be > 0 or null")
    for key in ("crop_size",):
        if any((not isinstance(v, int)) or v < 1 for v in cfg["data"][key]):
            raise ConfigError(f"config key 'data.{key}': expected two positive ints, got {cfg['data'][key]}")
    for key in ("crop_size", "stride"):
        if any((not isinstance(v, int)) or v < 1 for v in cfg["eval"][key]):
            raise ConfigError(f"config key 'eval.{key}': expected two positive ints, got {cfg['eval'][key]}")
    if cfg["method"] != "baseline" and cfg["distill"]["loss"]:
        _validate_distill_loss(cfg)


def _validate_distill_loss(cfg: dict) -> None:
    """Let SSTKDConfig reject unknown distillation keys at load time."""
    try:
        from sstkd.distill import SSTKDConfig
    except ImportError:  # distill not importable: checked when the trainer builds the loss
        return
    try:
        SSTKDConfig.from_dict({"preset": cfg["method"], **cfg["distill"]["loss"]})
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f"config key 'distill.loss': {e}") from None


def resolve_config(cfg: Mapping, overrides: Iterable[str] = ()) -> dict:
    """Merge a config mapping onto the defaults, apply overrides and validate."""
    for key in cfg:
        if key == "_base_":
            raise ConfigError("_base_ is only valid in a config file")
    merged = merge_dicts(DEFAULTS, validate_config(cfg))
    merged = apply_overrides(merged, overrides)
    resolved = validate_config(merged)
    _check_semantics(resolved)
    return resolved


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Load a YAML config with its ``_base_`` chain, apply ``key.sub=value``
    overrides, fill in defaults and validate.

    Args:
        path: the config file.
        overrides: strings ``"train.lr=0.02"``; values are parsed by
            ``yaml.safe_load`` (``[512, 512]``, ``null``, ``true`` work).

    Returns:
        The resolved config, a nested ``dict`` with every key of
        :data:`DEFAULTS`. ``name`` defaults to the file's stem.

    Raises:
        ConfigError: missing file, invalid YAML, circular ``_base_``, unknown
            key (the message names its dotted path), bad value or override.
    """
    path = os.fspath(path)
    raw = _read_yaml(path)
    try:
        cfg = resolve_config(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if cfg["name"] is None:
        cfg["name"] = os.path.splitext(os.path.basename(path))[0]
    return cfg


def config_to_yaml(cfg: Mapping) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def save_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config_to_yaml(cfg))
    os.replace(tmp, path)
