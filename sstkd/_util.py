"""Small tensor helpers shared by every layer (ops, kernels, distill): a leaf, it imports only torch.

Dtypes, the cache folder, the Triton-interpreter switch, the device guard of a kernel launch, padding indices
and per-row helpers of ``(B, L)`` tensors.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else computes in float32 (``x`` a tensor or a dtype)."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def cache_dir() -> str:
    """sstkd's cache folder (CUDA builds, self-check verdicts, compile facts): ``$SSTKD_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/sstkd``, else ``~/.cache/sstkd``."""
    if os.environ.get("SSTKD_CACHE_DIR"):
        return os.environ["SSTKD_CACHE_DIR"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sstkd")


def triton_interpreted() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_guard(t: torch.Tensor):
    """Context making ``t``'s GPU the current device for a launch (a no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def check_int(v, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``v`` if it is an int (not a bool) within the bounds; TypeError / ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {v}")
    return v


# --------------------------------------------------------------------------- padding
@functools.lru_cache(maxsize=256)
def wrap_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices ``-before .. n+after-1`` modulo ``n`` (built once per size and device)."""
    return torch.remainder(torch.arange(-before, n + after, device=device), n)


def pad_periodic(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Periodic extension of ``x`` along ``dim`` by ``before`` / ``after`` samples.

    Cat of slices when the extension fits inside the size (cheapest), a modular index gather
    otherwise (any extension).
    """
    n = x.shape[dim]
    if before <= n and after <= n:
        parts = []
        if before:
            parts.append(x.narrow(dim, n - before, before))
        parts.append(x)
        if after:
            parts.append(x.narrow(dim, 0, after))
        return torch.cat(parts, dim)
    return x.index_select(dim, wrap_index(n, before, after, x.device))


def pad_index(n: int, total: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index for each of ``total`` output positions along an axis of length ``n`` (padding after).

    ``mode``: ``"symmetric"`` (mirror including the edge sample), ``"reflect"`` (excluding it),
    ``"replicate"`` or ``"circular"``; larger pads keep mirroring periodically.
    """
    i = torch.arange(total, device=device)
    if mode == "symmetric":  # ... x[n-1] | x[n-1] x[n-2] ...
        j = i % (2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    if mode == "reflect":  # ... x[n-1] | x[n-2] ...
        if n == 1:
            return torch.zeros_like(i)
        j = i % (2 * n - 2)
        return torch.where(j < n, j, 2 * n - 2 - j)
    if mode == "replicate":
        return i.clamp_max(n - 1)
    return i % n  # circular


# --------------------------------------------------------------------------- (B, L) rows
def normalize_rows(counts: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum; an all-zero row stays zero."""
    total = counts.sum(dim=1, keepdim=True)
    return counts / torch.where(total != 0, total, torch.ones_like(total))


def flat_rows(s: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` as ``(B, N)`` rows."""
    return s.reshape(s.shape[0], -1)


def tensor_leaves(x) -> list[torch.Tensor]:
    """The tensors of ``x``: a tensor, or lists / tuples / dict values of them, nested; in order."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensor_leaves(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensor_leaves(v)]
    return []
