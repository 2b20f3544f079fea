"""Feature taps: capture intermediate activations by module path with forward hooks.

No model surgery: any student or teacher whose low-level stage has a module
path (``"backbone.layer1"``) can be distilled, including a model wrapped in
``DistributedDataParallel`` (the path is resolved through ``.module``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """The sub-module at ``path``; looks through wrappers (DDP, DataParallel) via ``.module``."""
    candidates = [model]
    inner = model
    while isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner.module
        candidates.append(inner)
    for root in candidates:
        for p in (path, path[len("module."):] if path.startswith("module.") else None):
            if p is None:
                continue
            try:
                return root.get_submodule(p) if p else root
            except AttributeError:
                continue
    top = [name for name, _ in candidates[-1].named_children()]
    raise ValueError(
        f"taps: unknown module path {path!r} in {type(model).__name__} "
        f"(top-level children: {top})"
    )


class FeatureTap:
    """Record the outputs of named sub-modules on every forward.

    Args:
        model: the network to tap (may be wrapped in DDP / DataParallel).
        taps: ``{name: module_path}``, e.g. ``{"low": "backbone.layer1"}``.
        detach: store ``output.detach()`` (use for a frozen teacher).

    After ``model(x)``, ``tap.features[name]`` (or ``tap[name]``) holds the
    output of that module from the latest forward (a tuple output keeps its
    first element). Use ``tap.remove()`` or ``with FeatureTap(...) as tap:``
    to remove the hooks.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``taps`` not a mapping of str.
        ValueError: a module path does not exist (the message names it).
        KeyError: reading a feature that was not captured yet.
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, str], detach: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(taps, Mapping) or not taps:
            raise TypeError("taps: expected a non-empty mapping {name: module_path}")
        for name, path in taps.items():
            if not isinstance(name, str) or not isinstance(path, str):
                raise TypeError(f"taps: names and paths must be str, got {name!r}: {path!r}")
        self.paths = dict(taps)
        self.detach = bool(detach)
        self.features: dict[str, torch.Tensor] = {}
        # Resolve every path before registering anything, so a bad path leaves no hooks behind.
        modules = {name: _resolve(model, path) for name, path in self.paths.items()}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = output.detach() if self.detach else output

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.features:
            if name not in self.paths:
                raise KeyError(f"FeatureTap: no tap named {name!r} (taps: {list(self.paths)})")
            raise KeyError(
                f"FeatureTap: feature {name!r} ({self.paths[name]}) was not captured; "
                "run a forward pass through the tapped model first"
            )
        return self.features[name]

    def clear(self) -> None:
        """Drop the stored features (frees their memory between steps)."""
        self.features.clear()

    def remove(self) -> None:
        """Remove every hook; idempotent. Stored features are cleared too."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTap({self.paths}, active={self.active})"
