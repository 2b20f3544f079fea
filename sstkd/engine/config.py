"""One typed experiment config: nested dataclasses, one loader, validated once.

A config file is a YAML mapping. ``_base_`` (a path or a list of paths,
relative to the file that names them) lists files whose contents are merged
first, in order; the file's own keys then override them (mappings merge key
by key, everything else is replaced). ``key.sub=value`` overrides are applied
next (a mapping value, ``train={iterations: 1}``, merges into the section the
same way). The result becomes a :class:`Config`: every key has a type (a
``Literal`` for choices) and a range, and every value is checked when the
config is built, so a bad value fails at load time with its dotted key named,
before a run directory is touched. ``distill.loss`` is a
:class:`~sstkd.distill.SSTKDConfig` (its fields, starting from the method's
preset) and validates itself. Loading uses ``yaml.safe_load`` only.

Sections read by attribute (``cfg.train.lr``) or, for older callers, by key
(``cfg["train"]["lr"]``); :meth:`Config.to_dict` gives plain data.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Literal, Mapping, Optional

import yaml

from sstkd.distill.loss import SSTKDConfig

__all__ = [
    "ConfigError",
    "Config",
    "ModelConfig",
    "TeacherConfig",
    "DataConfig",
    "DistillConfig",
    "TapsConfig",
    "TrainConfig",
    "EvalConfig",
    "DEFAULTS",
    "load_config",
    "read_config_file",
    "resolve_config",
    "apply_overrides",
    "merge_dicts",
    "save_config",
    "config_to_yaml",
    "config_diff",
]


class ConfigError(ValueError):
    """A config file, key or value is invalid (the message names it)."""


def _f(default, *, ge=None, gt=None, le=None, lt=None, length=None):
    """A field with a range (for numbers and each number of a list) and a list length."""
    md = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("length", length)) if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=md)
    return field(default=default, metadata=md)


# ------------------------------------------------------------------ checking


def _is_section(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


def _unwrap_optional(tp):
    """``(inner type, nullable)`` of ``Optional[X]``."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_FLOAT32_MAX = 3.4028234663852886e38  # the values meet float32 tensors (lr, weights)


def _as_float(value):
    # YAML 1.1 reads "5e-4" (no dot) as a string: accept any number spelling.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _convert(key: str, value, tp, md: Mapping) -> Any:
    """Check (and coerce: int/str -> float, tuple -> list) one value of type ``tp``."""
    tp, nullable = _unwrap_optional(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"config key {key!r}: must not be null")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ConfigError(f"config key {key!r}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {type(value).__name__} {value!r}")
        n = md.get("length")
        if n is not None and len(value) != n:
            raise ConfigError(f"config key {key!r}: expected a list of {n} items, got {list(value)!r}")
        return [_convert(f"{key}[{i}]", v, item_tp, md) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__} {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"config key {key!r}: keys must be strings, got {bad[0]!r}")
        return copy.deepcopy(dict(value))
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        value = _as_float(value)
        ok = isinstance(value, float)
        if ok and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
            raise ConfigError(f"config key {key!r}: must be finite (in float32's range), got {value!r}")
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a schema type this function does not know
        raise TypeError(f"config key {key!r}: unsupported schema type {tp!r}")
    if not ok:
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp in (int, float):
        for op, bound, holds in (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
                                 ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)):
            if op in md and not holds(value, md[op]):
                raise ConfigError(f"config key {key!r}: must be {bound} {md[op]}, got {value!r}")
    return value


class _Section:
    """Base of the config sections: checks every field when built; reads by attribute or key."""

    _path: ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{self._path}.{f.name}" if self._path else f.name
            value = getattr(self, f.name)
            tp = hints[f.name]
            if _is_section(tp):
                if isinstance(value, Mapping):
                    value = tp.from_dict(value)
                elif value is None:
                    value = tp()
                elif not isinstance(value, tp):
                    raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__} {value!r}")
            elif tp is SSTKDConfig:
                continue  # built by the owner, which knows the method
            else:
                value = _convert(key, value, tp, f.metadata)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks that involve several fields (override per section)."""

    @classmethod
    def from_dict(cls, d: Mapping | None):
        """Build from a (partial) mapping; unknown keys are errors naming their dotted path."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"config key {cls._path or '<root>'!r}: expected a mapping, got {type(d).__name__} {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in names:
                where = f"{cls._path}.{k}" if cls._path else str(k)
                raise ConfigError(f"unknown config key {where!r}")
        return cls(**dict(d))

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (_Section, SSTKDConfig)):
                v = v.to_dict()
            out[f.name] = copy.deepcopy(v)
        return out

    # Read access by key, for callers written against the plain-dict config.
    def __getitem__(self, key: str):
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and key in {f.name for f in dataclasses.fields(self)}

    def keys(self):
        return [f.name for f in dataclasses.fields(self)]


# ------------------------------------------------------------------ the tree

_PAIR = 2


# The choices of sstkd.models.FLAVORS and sstkd.models.convert.FORMATS (a test keeps them equal).
Flavor = Literal["ifvd", "cirkd_v1", "cirkd_v2", "mmseg", "mmseg_b", "torchvision"]
CheckpointFormat = Literal["auto", "sstkd", "torchvision", "cirkd", "ifvd", "mmseg"]


@dataclass
class ModelConfig(_Section):
    """The student (or the model, for baseline / teacher runs)."""

    _path: ClassVar[str] = "model"
    name: str = "pspnet_resnet18"
    base_width: int = _f(64, ge=1)
    output_stride: Literal[8, 16, 32] = 8
    aux: bool = True
    deep_stem: bool = False
    pretrained_backbone: Optional[str] = None  # path or URL to ImageNet weights (torchvision keys)
    sync_bn: bool = True                       # SyncBN when running on several processes
    flavor: Optional[Flavor] = None            # architecture flavor (sstkd.models.FLAVORS); null = sstkd's


@dataclass
class TeacherConfig(_Section):
    _path: ClassVar[str] = "teacher"
    name: Optional[str] = None
    base_width: int = _f(64, ge=1)
    output_stride: Literal[8, 16, 32] = 8
    aux: bool = True
    deep_stem: bool = False
    checkpoint: Optional[str] = None  # teacher weights (student-only export or training checkpoint)
    flavor: Optional[Flavor] = None   # architecture flavor; null = sstkd's models
    format: CheckpointFormat = "auto"  # checkpoint format (sstkd.models.from_pretrained)


@dataclass
class DataConfig(_Section):
    _path: ClassVar[str] = "data"
    name: Literal["cityscapes", "voc", "pascal_voc", "ade20k", "synthetic"] = "synthetic"
    root: Optional[str] = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = _f([512, 512], ge=1, length=_PAIR)          # training crop (H, W)
    scale_range: Optional[list[float]] = _f([0.5, 2.0], gt=0, length=_PAIR)  # random rescale; null = off
    hflip: bool = True
    jitter: float = _f(0.25, ge=0, le=1)       # photometric jitter strength; 0 = off
    cat_max_ratio: float = _f(1.0, gt=0, le=1)  # mmseg crop rule; 1 = off
    num_workers: int = _f(2, ge=0)
    options: dict = _f({})       # keyword arguments of the dataset class (both splits)
    val_options: dict = _f({})   # ... for the validation split only (override options)

    def _check(self) -> None:
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"config key 'data.scale_range': expected [low, high] with low <= high, "
                              f"got {self.scale_range}")
        for key in ("options", "val_options"):
            _check_dataset_options(self.name, f"data.{key}", getattr(self, key))


def _check_dataset_options(name: str, key: str, options: Mapping) -> None:
    """Reject keyword arguments the dataset class does not take (named), at load time."""
    import inspect

    from sstkd.data import DATASETS

    cls = DATASETS.get(name)
    if cls is None or not options:
        return
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = sorted(n for n in params if n not in ("self", "root", "split", "transforms", "aug_seed"))
    for k in options:
        if k not in valid:
            raise ConfigError(f"config key '{key}.{k}': not an option of dataset {name!r} (options: {valid})")


@dataclass
class TapsConfig(_Section):
    _path: ClassVar[str] = "distill.taps"
    student: str = "backbone.layer1"
    teacher: str = "backbone.layer1"


@dataclass
class DistillConfig(_Section):
    _path: ClassVar[str] = "distill"
    taps: TapsConfig = field(default_factory=TapsConfig)
    loss: SSTKDConfig = field(default_factory=SSTKDConfig)  # on top of the method's preset

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.loss, SSTKDConfig):
            self.loss = build_loss_config(self.loss, "sstkd")


@dataclass
class TrainConfig(_Section):
    _path: ClassVar[str] = "train"
    iterations: int = _f(40000, ge=1)
    batch_size: int = _f(8, ge=1)       # global batch per forward (split over processes)
    accumulate: int = _f(1, ge=1)       # forwards per optimizer step
    lr: float = _f(0.01, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)
    poly_power: float = _f(0.9, ge=0)
    aux_weight: float = _f(0.4, ge=0)
    ignore_index: int = 255
    grad_clip: Optional[float] = _f(None, gt=0)   # max global grad norm, null = off
    amp: Optional[Literal["bf16", "fp16"]] = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_consecutive_skips: int = _f(20, ge=0)  # (skip) more skipped steps in a row stop the run: it diverged
    log_interval: int = _f(50, ge=1)
    checkpoint_interval: int = _f(2000, ge=1)
    eval_interval: int = _f(4000, ge=0)   # 0 = evaluate only at the end
    eval_at_end: bool = True
    tensorboard: bool = False
    progress: bool = True
    find_unused_parameters: bool = False


@dataclass
class EvalConfig(_Section):
    _path: ClassVar[str] = "eval"
    mode: Literal["whole", "slide"] = "whole"
    crop_size: list[int] = _f([512, 512], ge=1, length=_PAIR)
    stride: list[int] = _f([341, 341], ge=1, length=_PAIR)
    batch_size: int = _f(1, ge=1)
    num_workers: int = _f(2, ge=0)
    max_samples: Optional[int] = _f(None, ge=1)   # evaluate on the first N validation samples only
    flip: bool = False                            # add horizontally flipped views
    scales: list[float] = _f([1.0], gt=0)         # multi-scale factors

    def _check(self) -> None:
        if not self.scales:
            raise ConfigError("config key 'eval.scales': expected at least one scale")


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")  # the values of `device`


@dataclass
class Config(_Section):
    """The whole experiment; built by :func:`load_config` / :func:`resolve_config`."""

    name: Optional[str] = None          # run name (defaults to the config file's stem)
    method: Literal["baseline", "kd", "sstkd"] = "baseline"
    seed: int = _f(0, ge=0)
    deterministic: bool = False         # torch.use_deterministic_algorithms + cudnn flags
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    work_dir: Optional[str] = None      # run directory (defaults to runs/<config path>)
    resume: Optional[str] = None        # null | auto | path to a checkpoint
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=dict)  # (a mapping until built: loss needs the method)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        # distill.loss starts from the method's preset: take it out before the section is built.
        loss, from_data = None, self.distill is None or isinstance(self.distill, Mapping)
        if from_data:
            d = dict(self.distill or {})
            loss = d.pop("loss", None)
            self.distill = d
        super().__post_init__()
        if from_data:
            self.distill.loss = build_loss_config(loss, self.method)

    def _check(self) -> None:
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"config key 'device': expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.method != "baseline" and not self.teacher.name:
            raise ConfigError(f"config key 'teacher.name': method {self.method!r} needs a teacher")


def build_loss_config(loss: Mapping | SSTKDConfig | None, method: str) -> SSTKDConfig:
    """``distill.loss``: an :class:`SSTKDConfig` from the method's preset plus the given fields."""
    if isinstance(loss, SSTKDConfig):
        return loss
    if loss is None:
        loss = {}
    if not isinstance(loss, Mapping):
        raise ConfigError(f"config key 'distill.loss': expected a mapping, got {type(loss).__name__} {loss!r}")
    hints = typing.get_type_hints(SSTKDConfig)
    values = {}
    for k, v in loss.items():
        if k not in hints:
            raise ConfigError(f"unknown config key 'distill.loss.{k}' (valid keys: {sorted(hints)})")
        if "float" in str(hints[k]):  # a number spelled "5e-4" (YAML 1.1 string), also inside lists
            v = [_as_float(x) for x in v] if isinstance(v, (list, tuple)) else _as_float(v)
        values[k] = v
    try:
        return SSTKDConfig.preset("sstkd" if method == "baseline" else method, **values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key distill.loss.{e}") from None


def _defaults() -> dict:
    return Config().to_dict()


DEFAULTS: dict[str, Any] = _defaults()  # every key with its default, as plain data


# ------------------------------------------------------------------ loading


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


def read_config_file(path: str | os.PathLike, _stack: tuple[str, ...] = ()) -> dict:
    """One config file with its ``_base_`` chain merged in, as plain data (not yet validated)."""
    path = os.path.abspath(os.fspath(path))
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
        merged = merge_dicts(merged, read_config_file(base_path, _stack + (path,)))
    return merge_dicts(merged, data)


def _check_key(key: str) -> None:
    """Raise ConfigError unless ``key`` (dotted) names a key of the schema (any key below an open mapping)."""
    node: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        dotted = ".".join(parts[:i + 1])
        if _is_section(node):
            hints = typing.get_type_hints(node)
            if part not in hints:
                raise ConfigError(f"unknown config key {dotted!r}")
            node = _unwrap_optional(hints[part])[0]
        elif node is SSTKDConfig:
            if part not in typing.get_type_hints(SSTKDConfig):
                raise ConfigError(f"unknown config key {dotted!r}")
            node = None
        elif node is dict:
            return  # an open mapping (data.options): checked against the dataset when built
        else:
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i])!r} is not a section")


def apply_overrides(raw: Mapping, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` overrides (value parsed with ``yaml.safe_load``) to plain config data.

    A mapping value merges into the section it names. Raises ConfigError for an
    override without ``=``, with an empty or unknown key.
    """
    cfg = copy.deepcopy(dict(raw))
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            _check_key(key)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value: {e}") from None
        set_dotted(cfg, key, value)
    return cfg


def set_dotted(cfg: dict, key: str, value) -> None:
    """Set ``cfg[a][b][c] = value`` for ``key = "a.b.c"`` (a mapping value merges into a mapping)."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(last), Mapping):
        node[last] = merge_dicts(node[last], value)
    else:
        node[last] = value


def resolve_config(cfg: Mapping, overrides: Iterable[str] = ()) -> Config:
    """Build the typed :class:`Config` from plain data plus overrides (validated)."""
    if isinstance(cfg, Config):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(cfg).__name__}")
    if "_base_" in cfg:
        raise ConfigError("_base_ is only valid in a config file")
    return Config.from_dict(apply_overrides(cfg, overrides))


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config with its ``_base_`` chain, apply ``key.sub=value``
    overrides, fill in defaults and validate.

    Args:
        path: the config file.
        overrides: strings ``"train.lr=0.02"``; values are parsed by
            ``yaml.safe_load`` (``[512, 512]``, ``null``, ``true``, ``5e-4`` work).

    Returns:
        The :class:`Config`; ``name`` defaults to the file's stem.

    Raises:
        ConfigError: missing file, invalid YAML, circular ``_base_``, unknown
            key (the message names its dotted path), bad value or override.
    """
    path = os.fspath(path)
    raw = read_config_file(path)
    try:
        cfg = resolve_config(raw, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if cfg.name is None:
        cfg.name = os.path.splitext(os.path.basename(path))[0]
    return cfg


def config_diff(old: Mapping, new: Mapping, _prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs between two plain configs."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        dotted = f"{_prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(config_diff(a, b, dotted + "."))
        elif a != b:
            out[dotted] = (a, b)
    return out


def config_to_yaml(cfg: Config | Mapping) -> str:
    data = cfg.to_dict() if isinstance(cfg, _Section) else dict(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def save_config(cfg: Config | Mapping, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config_to_yaml(cfg))
    os.replace(tmp, path)
