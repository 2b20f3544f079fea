"""Filter coefficients of the MATLAB Contourlet Toolbox ('9-7' pyramid, 'pkva' DFB ladder).

All returned as float64 CPU tensors; callers cast/move them once per use.
"""
from __future__ import annotations

import functools

import torch

# '9-7' biorthogonal pair (toolbox `pfilters('9-7')`), symmetric, origin at the centre tap.
_H97 = [0.037828455506995, -0.023849465019380, -0.11062440441842, 0.37740285561265, 0.85269867900940]
_G97 = [-0.064538882628938, -0.040689417609558, 0.41809227322221, 0.78848561640566]
# 'pkva' ladder filter half (toolbox `ldfilter('pkva')`): f = [v[::-1], v].
_PKVA_V = [0.63, -0.193, 0.0972, -0.0526, 0.0272, -0.0144]

PYRAMID_FILTERS = ("9-7",)
DFB_FILTERS = ("pkva",)


def _mirror(half):
    return half + half[-2::-1]


@functools.lru_cache(maxsize=None)
def _pyramid(name: str):
    if name != "9-7":
        raise ValueError(f"filt: unknown pyramid filter {name!r}; available: {PYRAMID_FILTERS}")
    h = torch.tensor(_mirror(_H97), dtype=torch.float64)
    g = torch.tensor(_mirror(_G97), dtype=torch.float64)
    return h, g


def check_pyramid_filter(filt, arg: str = "filt") -> str:
    """``filt`` if it is a known pyramid filter; TypeError / ValueError naming ``arg`` otherwise."""
    if not isinstance(filt, str):
        raise TypeError(f"{arg}: expected a pyramid filter name (str), got {type(filt).__name__}")
    if filt not in PYRAMID_FILTERS:
        raise ValueError(f"{arg}: unknown pyramid filter {filt!r}; available: {PYRAMID_FILTERS}")
    return filt


def pyramid_filters(name: str = "9-7") -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, g)``: analysis lowpass (9 taps) and synthesis lowpass (7 taps), float64."""
    h, g = _pyramid(check_pyramid_filter(name))
    return h.clone(), g.clone()


@functools.lru_cache(maxsize=None)
def _ladder(name: str):
    if name != "pkva":
        raise ValueError(f"filt: unknown DFB ladder filter {name!r}; available: {DFB_FILTERS}")
    return torch.tensor(_PKVA_V[::-1] + _PKVA_V, dtype=torch.float64)


def dfb_filter(name: str = "pkva") -> torch.Tensor:
    """The 12-tap ladder filter ``f = [v[::-1], v]`` (unmodulated), float64."""
    if not isinstance(name, str):
        raise TypeError(f"filt: expected a filter name (str), got {type(name).__name__}")
    return _ladder(name).clone()


def modulated_dfb_filter(name: str = "pkva") -> torch.Tensor:
    """``fm = f; fm[0::2] *= -1`` as used inside every two-channel ladder stage."""
    fm = dfb_filter(name)
    fm[0::2] *= -1
    return fm
