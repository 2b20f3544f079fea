"""One level of the separable 2-D wavelet filter bank (toolbox ``wfb2dec``/``wfb2rec``): the public ops.

The PyTorch reference is :mod:`sstkd.ops.reference.wavelet`; the backends' passes are found
through :mod:`sstkd.ops.dispatch` (only the reference implements it so far).
"""
from __future__ import annotations

import torch

from sstkd.filters import check_pyramid_filter
from sstkd.ops import dispatch
from sstkd.ops._checks import check_image
from sstkd.ops.reference.wavelet import check_even, check_rec_inputs, wfb_dec_ref, wfb_rec_ref  # noqa: F401  (re-exported)

__all__ = ["wfb_dec", "wfb_rec", "wfb_dec_ref", "wfb_rec_ref"]


def wfb_dec(x: torch.Tensor, filt: str = "9-7", backend: str = "auto"):
    """One level of the critically sampled separable 2-D wavelet filter bank (toolbox ``wfb2dec``).

    Args:
        x: ``(B, C, H, W)`` floating tensor, even ``H`` and ``W``.
        filt: pyramid filter name (``"9-7"``), the same pair as the Laplacian pyramid.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(ll, [lh, hl, hh])``, each ``(B, C, H/2, W/2)`` in ``x.dtype``
        (float16/bfloat16 compute in float32). ``lh`` is lowpass along rows
        and highpass along columns.

    Raises:
        TypeError / ValueError naming ``x``, ``filt`` or ``backend``.
    """
    check_image(x, "x")
    check_even(x, "x")
    check_pyramid_filter(filt)
    ll, bands = dispatch.resolve("wfb_dec", backend, x)(x, filt)  # in the compute dtype
    return ll.to(x.dtype), [t.to(x.dtype) for t in bands]


def wfb_rec(ll: torch.Tensor, bands, filt: str = "9-7", backend: str = "auto") -> torch.Tensor:
    """Inverse of :func:`wfb_dec` (toolbox ``wfb2rec``).

    Args:
        ll: ``(B, C, h, w)`` lowpass.
        bands: ``[lh, hl, hh]``, each the shape, dtype and device of ``ll``.
        filt: pyramid filter name (``"9-7"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(B, C, 2h, 2w)`` in the input dtype.

    Raises:
        TypeError / ValueError naming ``ll``, ``bands[k]``, ``filt`` or ``backend``.
    """
    check_rec_inputs(ll, bands)
    check_pyramid_filter(filt)
    return dispatch.resolve("wfb_rec", backend, ll, *bands)(ll, bands, filt).to(ll.dtype)
