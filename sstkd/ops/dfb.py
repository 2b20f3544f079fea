"""Directional filter bank (MATLAB Contourlet Toolbox ``dfbdec_l``/``dfbrec_l``, ladder 'pkva'): the public ops.

The PyTorch reference (conventions, resampling, ladder stages) is :mod:`sstkd.ops.reference.dfb`;
the backends' passes are found through :mod:`sstkd.ops.dispatch`.
"""
from __future__ import annotations

import torch
from torch import nn

from sstkd.geometry import check_dfb_size, dfb_band_shapes, dfb_required_multiple
from sstkd.ops import dispatch
from sstkd.ops._checks import check_image
from sstkd.ops.dispatch import check_backend_name
from sstkd.ops.reference.dfb import check_bands, check_filt, check_levels, dfb_dec_ref, dfb_rec_ref

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
    levels = check_levels(levels)
    check_dfb_size(x.shape[-2], x.shape[-1], levels)
    check_filt(filt)
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
    check_bands(bands)
    check_filt(filt)
    return dispatch.resolve("dfb_rec", backend, *bands)(list(bands), filt)


class DirectionalFilterBank(nn.Module):
    """``levels``-level directional filter bank: ``forward(x) -> list of 2**levels sub-bands``,
    ``inverse(bands) -> x`` (see :func:`dfb_dec` / :func:`dfb_rec`)."""

    def __init__(self, levels: int = 3, filt: str = "pkva", backend: str = "auto"):
        super().__init__()
        self.levels = check_levels(levels)
        self.filt = check_filt(filt)
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
