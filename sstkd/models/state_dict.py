"""Reading a state dict from a path, a URL or a mapping (a leaf: imports nothing of sstkd)."""
from __future__ import annotations

import os
import pickle
from typing import Mapping

import torch

__all__ = ["load_file", "read_state_dict"]


def load_file(path, map_location="cpu"):
    """The one reader of checkpoint files: ``torch.load(path, weights_only=True)`` with clear errors.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is truncated, corrupt, or holds objects whose loading could run code
            (refused); the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            raise ValueError(f"cannot load checkpoint {path}: not a file of tensors and plain values "
                             "(corrupt, or holding objects whose loading could run code: refused)") from None
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot load checkpoint {path}: {type(e).__name__}: {first}") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _source_name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"


def read_state_dict(source, *, keys: tuple[str, ...] = ("model", "student", "state_dict"),
                    map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from a path, an ``http(s)://`` URL or a mapping.

    A checkpoint dict that wraps the weights under one of ``keys`` (tried in
    order) is unwrapped; ``module.`` prefixes (DDP) are stripped.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file cannot be read with ``weights_only=True`` or holds no state dict.
        TypeError: ``source`` is neither a path, a URL nor a mapping.
    """
    name = _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.startswith(("http://", "https://")):
            obj = torch.hub.load_state_dict_from_url(path, map_location=map_location, weights_only=True)
        else:
            obj = load_file(path, map_location)
    elif isinstance(source, Mapping):
        obj = source
    else:
        raise TypeError(f"source: expected a path, a URL or a state dict, got {type(source).__name__}")
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        for key in keys:
            if key in obj and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        top = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"checkpoint: {name} holds no state dict (a mapping of name -> tensor, raw or under one "
                         f"of {list(keys)}); found {top}")
    return _strip_prefixes(dict(obj), ("module.",))


def _strip_prefixes(sd: dict, prefixes: tuple[str, ...]) -> dict:
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd
