"""Directional filter bank (MATLAB Contourlet Toolbox ``dfbdec_l``/``dfbrec_l``, ladder 'pkva'): the public ops.

The PyTorch reference (conventions, resampling, ladder stages) is :mod:`sstkd.ops.reference.dfb`;
the backends' passes are found through :mod:`sstkd.ops.dispatch`.
"""
from __future__ import annotations

import torch
from torch import nn

from sstkd.filters import DFB_FILTERS
from sstkd.geometry import check_dfb_size, dfb_band_shapes, dfb_required_multiple  # noqa: F401  (re-exported)
from sstkd.ops import dispatch
from sstkd.ops._checks import check_image, check_int, check_same_device
from sstkd.ops.dispatch import check_backend_name
from sstkd.ops.reference.dfb import _dfb_dec_torch, _dfb_rec_torch, _levels_of

__all__ = [
    "dfb_dec",
    "dfb_rec",
    "dfb_dec_ref",
    "dfb_rec_ref",
    "dfb_required_multiple",
    "check_dfb_size",
    "dfb_band_shapes",
    "DirectionalFilterBank",
]


# --------------------------------------------------------------------------- validation
def _check_filt(filt, name: str = "filt") -> str:
    if not isinstance(filt, str):
        raise TypeError(f"{name}: expected a DFB filter name (str), got {type(filt).__name__}")
    if filt not in DFB_FILTERS:
        raise ValueError(f"{name}: unknown DFB ladder filter {filt!r}; available: {DFB_FILTERS}")
    return filt


def _check_levels(levels, name: str = "levels") -> int:
    return check_int(levels, name, minimum=0)


def _check_bands(bands, name: str = "bands") -> tuple[int, int, int, int, int]:
    """Validate a DFB sub-band list; returns ``(levels, B, C, H, W)`` of the image it came from."""
    if isinstance(bands, torch.Tensor) or not isinstance(bands, (list, tuple)):
        raise TypeError(f"{name}: expected a list of tensors, got {type(bands).__name__}")
    levels = _levels_of(len(bands), name)
    for k, band in enumerate(bands):
        check_image(band, f"{name}[{k}]")
    first = bands[0]
    check_same_device(**{f"{name}[{k}]": b for k, b in enumerate(bands)})
    for k, band in enumerate(bands):
        if band.dtype != first.dtype:
            raise TypeError(f"{name}[{k}]: dtype {band.dtype} differs from {name}[0] dtype {first.dtype}")
    b, c, h0, w0 = first.shape
    if levels == 0:
        h, w = h0, w0
    elif levels == 1:
        h, w = 2 * h0, w0
    else:
        h, w = h0 * 2 ** (levels - 1), 2 * w0
    try:
        shapes = dfb_band_shapes(h, w, levels)
    except ValueError as e:
        raise ValueError(f"{name}[0]: shape {tuple(first.shape)} does not come from a valid image: {e}") from None
    for k, (band, (hk, wk)) in enumerate(zip(bands, shapes)):
        if tuple(band.shape) != (b, c, hk, wk):
            raise ValueError(
                f"{name}[{k}]: expected shape {(b, c, hk, wk)} for a {levels}-level DFB of a {h}x{w} image, "
                f"got {tuple(band.shape)}"
            )
    return levels, b, c, h, w


# --------------------------------------------------------------------------- reference ops
def dfb_dec_ref(x: torch.Tensor, levels: int, filt: str = "pkva") -> list[torch.Tensor]:
    """Plain-PyTorch reference of :func:`dfb_dec` (same contract, no dispatch)."""
    check_image(x, "x")
    levels = _check_levels(levels)
    check_dfb_size(x.shape[-2], x.shape[-1], levels)
    _check_filt(filt)
    return [y.to(x.dtype) for y in _dfb_dec_torch(x, levels, filt)]


def dfb_rec_ref(bands: list[torch.Tensor], filt: str = "pkva") -> torch.Tensor:
    """Plain-PyTorch reference of :func:`dfb_rec` (same contract, no dispatch)."""
    _check_bands(bands)
    _check_filt(filt)
    return _dfb_rec_torch(list(bands), filt).to(bands[0].dtype)


# --------------------------------------------------------------------------- public ops
def dfb_dec(x: torch.Tensor, levels: int, filt: str = "pkva", backend: str = "auto") -> list[torch.Tensor]:
    """Directional filter bank analysis (toolbox ``dfbdec_l``).

    Args:
        x: ``(B, C, H, W)`` floating tensor. ``levels == 1`` needs an even
            ``H``; ``levels >= 2`` needs ``H`` and ``W`` divisible by
            ``2**(levels-1)``; ``levels >= 1`` needs ``H >= 12``.
        levels: number of tree levels ``n >= 0`` (``2**n`` sub-bands; 0 returns ``[x]``).
        filt: ladder filter name (``"pkva"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``2**levels`` tensors ``(B, C, h_k, w_k)`` in ``x.dtype`` (float16 and
        bfloat16 compute in float32), in toolbox order: ``n == 1``: two
        ``(H/2, W)``; ``n >= 2``: the first half ``(H/2**(n-1), W/2)``, the
        second half ``(H/2, W/2**(n-1))``. As ``k`` grows, the direction
        turns clockwise from about 135°.

    Raises:
        TypeError: ``x`` not a floating tensor, ``levels`` not an int, ``filt`` not a str.
        ValueError: wrong rank, empty, a size ``levels`` cannot take (the
            message names the size needed), ``levels < 0``, unknown ``filt``
            or ``backend``.
        RuntimeError: an explicitly requested backend is unavailable.

    The backward is the adjoint of the decomposition (not :func:`dfb_rec`).
    """
    check_image(x, "x")
    levels = _check_levels(levels)
    check_dfb_size(x.shape[-2], x.shape[-1], levels)
    _check_filt(filt)
    return dispatch.resolve("dfb_dec", backend, x)(x, levels, filt)


def dfb_rec(bands: list[torch.Tensor], filt: str = "pkva", backend: str = "auto") -> torch.Tensor:
    """Directional filter bank synthesis (toolbox ``dfbrec_l``), exact inverse of :func:`dfb_dec`.

    Args:
        bands: list of ``2**levels`` sub-bands ``(B, C, h_k, w_k)`` with the
            shapes :func:`dfb_dec` produces, one dtype and device.
        filt: ladder filter name (``"pkva"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(B, C, H, W)`` in the sub-bands' dtype.

    Raises:
        TypeError / ValueError naming ``bands`` (or ``bands[k]``), ``filt`` or ``backend``.
    """
    _check_bands(bands)
    _check_filt(filt)
    return dispatch.resolve("dfb_rec", backend, *bands)(list(bands), filt)


class DirectionalFilterBank(nn.Module):
    """``levels``-level directional filter bank: ``forward(x) -> list of 2**levels sub-bands``,
    ``inverse(bands) -> x`` (see :func:`dfb_dec` / :func:`dfb_rec`)."""

    def __init__(self, levels: int = 3, filt: str = "pkva", backend: str = "auto"):
        super().__init__()
        self.levels = _check_levels(levels)
        self.filt = _check_filt(filt)
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, filt={self.filt!r}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return dfb_dec(x, self.levels, self.filt, self.backend)

    def inverse(self, bands: list[torch.Tensor]) -> torch.Tensor:
        n = len(bands) if isinstance(bands, (list, tuple)) else None
        if n is not None and n != 2**self.levels:
            raise ValueError(f"bands: expected {2 ** self.levels} sub-bands for levels={self.levels}, got {n}")
        return dfb_rec(bands, self.filt, self.backend)
