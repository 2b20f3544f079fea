"""One level of the separable 2-D wavelet filter bank (MATLAB Contourlet Toolbox ``wfb2dec``/``wfb2rec``).

The contourlet transform uses it instead of LP + DFB at a pyramid level whose
DFB level count is 0. With the pyramid pair ``(h, g)`` ('9-7')::

    h0 = h,  h1[i] = −g[i]·(−1)^(i+1−c_g)      analysis (c: 1-based centre tap)
    g0 = g,  g1[i] = −h[i]·(−1)^(i+1−c_h)      synthesis

Every 1-D filtering is periodic, a true convolution after extending by the
toolbox's margins (4/4 for h0, 4/2 for h1, 3/3 for g0, 3/5 for g1 with
'9-7'); analysis keeps the even samples, synthesis inserts zeros at the odd
ones. Sub-bands ``[LH, HL, HH]``: "LH" is lowpass along rows (axis -1) and
highpass along columns (axis -2).

Reference implementation: ``B·C`` images are the channels of one depthwise
``conv2d`` (``(1, N, H, W)`` layout, the fast path on CPU and GPU); the lowpass
and highpass of each axis come out of one strided conv with two output
channels; periodic extension is a modular index gather (any size).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sstkd._util import compute_dtype, pad_periodic as _pad_periodic
from sstkd.filters import check_pyramid_filter, pyramid_filters
from sstkd.ops._checks import check_image, check_same_device

__all__ = ["wfb_dec_ref", "wfb_rec_ref", "check_even", "check_rec_inputs"]


# --------------------------------------------------------------------------- filters
def _toolbox_highpass(lowpass: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``-f[i]·(−1)^(i+1−c)`` with the toolbox's 1-based centre tap ``c``; returns ``(filter, c)``."""
    n = lowpass.numel()
    if n % 2 == 0:  # pragma: no cover - only odd-length pairs ('9-7') exist
        raise ValueError(f"filt: the wavelet level needs odd-length filters, got {n} taps")
    c = (n + 1) // 2
    sign = (-1.0) ** (torch.arange(1, n + 1, dtype=torch.float64) - c)
    return -lowpass * sign, c


def _common_kernel(filters_and_before, before: int, after: int) -> torch.Tensor:
    """Stack correlation kernels of filters with their own left margins on one common support.

    A true convolution of ``x`` extended by ``b`` on the left is a correlation
    of ``x[j - b + t]`` with ``flip(f)[t]``; shifting by ``before - b`` aligns
    all filters to one extension ``(before, after)``.
    """
    size = before + after + 1
    rows = []
    for f, b in filters_and_before:
        k = torch.zeros(size, dtype=torch.float64)
        k[before - b : before - b + f.numel()] = f.flip(0)
        rows.append(k)
    return torch.stack(rows)


@functools.lru_cache(maxsize=None)
def _margins(filt: str):
    """Toolbox extension margins and stacked kernels (float64 CPU) of one filter pair."""
    h, g = pyramid_filters(filt)
    h0, g0 = h, g
    h1, c = _toolbox_highpass(g)
    b_h0, b_h1 = h0.numel() // 2, h1.numel() - c + 1
    a_h0, a_h1 = h0.numel() - b_h0 - 1, h1.numel() - b_h1 - 1
    g1, c1 = _toolbox_highpass(h)
    b_g0, b_g1 = (g0.numel() - 1) // 2, g1.numel() - (c1 + 1)
    a_g0, a_g1 = g0.numel() - b_g0 - 1, g1.numel() - b_g1 - 1
    ana = (max(b_h0, b_h1), max(a_h0, a_h1))
    syn = (max(b_g0, b_g1), max(a_g0, a_g1))
    ana_k = _common_kernel([(h0, b_h0), (h1, b_h1)], *ana)  # (2, K): [low, high]
    syn_k = _common_kernel([(g0, b_g0), (g1, b_g1)], *syn)  # (2, K): [low, high]
    return ana, ana_k, syn, syn_k


@functools.lru_cache(maxsize=64)
def _weights(filt: str, device: torch.device, dtype: torch.dtype):
    ana, ana_k, syn, syn_k = _margins(filt)
    return ana, ana_k.to(device=device, dtype=dtype), syn, syn_k.to(device=device, dtype=dtype)


def _upsample_zeros(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Samples at even positions along ``dim`` (of size 2n), zeros at the odd ones."""
    y = torch.stack([x, torch.zeros_like(x)], dim=dim + 1 if dim >= 0 else dim)
    shape = list(x.shape)
    shape[dim] *= 2
    return y.reshape(shape)


# --------------------------------------------------------------------------- reference
def _wfb_dec_torch(x: torch.Tensor, filt: str):
    """Reference analysis, no validation; returns ``(ll, [lh, hl, hh])`` in the compute dtype."""
    b, c, h, w = x.shape
    n = b * c
    (before, after), k, _, _ = _weights(filt, x.device, compute_dtype(x))
    size = k.shape[1]
    xf = x.to(k.dtype).reshape(1, n, h, w)
    # rows (axis -1): channel 2i = lowpass of image i, 2i+1 = highpass; keep even columns
    y = F.conv2d(_pad_periodic(xf, 3, before, after), k.view(2, 1, 1, size).repeat(n, 1, 1, 1), stride=(1, 2), groups=n)
    # columns (axis -2): 4i+0 = LL, +1 = LH, +2 = HL, +3 = HH; keep even rows
    y = F.conv2d(
        _pad_periodic(y, 2, before, after), k.view(2, 1, size, 1).repeat(2 * n, 1, 1, 1), stride=(2, 1), groups=2 * n
    )
    ll, lh, hl, hh = (t.contiguous() for t in y.view(b, c, 4, h // 2, w // 2).unbind(2))
    return ll, [lh, hl, hh]


def _wfb_rec_torch(ll: torch.Tensor, bands, filt: str) -> torch.Tensor:
    """Reference synthesis, no validation; ``bands = [lh, hl, hh]``; returns the compute dtype."""
    b, c, h, w = ll.shape
    n = b * c
    _, _, (before, after), k = _weights(filt, ll.device, compute_dtype(ll))
    size = k.shape[1]
    coeffs = torch.stack([ll.to(k.dtype)] + [t.to(k.dtype) for t in bands], dim=2).reshape(1, 4 * n, h, w)
    # columns: L_i = g0 * up(LL_i) + g1 * up(LH_i), H_i = g0 * up(HL_i) + g1 * up(HH_i)
    z = _pad_periodic(_upsample_zeros(coeffs, 2), 2, before, after)
    y = F.conv2d(z, k.view(1, 2, size, 1).repeat(2 * n, 1, 1, 1), groups=2 * n)  # (1, 2N, 2h, w)
    # rows: x_i = g0 * up(L_i) + g1 * up(H_i)
    z = _pad_periodic(_upsample_zeros(y, 3), 3, before, after)
    x = F.conv2d(z, k.view(1, 2, 1, size).repeat(n, 1, 1, 1), groups=n)
    return x.view(b, c, 2 * h, 2 * w)


# --------------------------------------------------------------------------- validation
def check_even(x: torch.Tensor, name: str) -> None:
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(
            f"{name}: height {h} and width {w} are not valid for one wavelet level: need multiples of 2"
        )


def check_rec_inputs(ll, bands) -> None:
    check_image(ll, "ll")
    if isinstance(bands, torch.Tensor) or not isinstance(bands, (list, tuple)) or len(bands) != 3:
        got = len(bands) if isinstance(bands, (list, tuple)) else type(bands).__name__
        raise ValueError(f"bands: expected a list [lh, hl, hh] of 3 tensors, got {got}")
    for k, t in enumerate(bands):
        check_image(t, f"bands[{k}]")
        if tuple(t.shape) != tuple(ll.shape):
            raise ValueError(f"bands[{k}]: expected shape {tuple(ll.shape)} (that of ll), got {tuple(t.shape)}")
        if t.dtype != ll.dtype:
            raise TypeError(f"bands[{k}]: dtype {t.dtype} differs from ll dtype {ll.dtype}")
    check_same_device(ll=ll, **{f"bands[{k}]": t for k, t in enumerate(bands)})


# --------------------------------------------------------------------------- reference ops
def wfb_dec_ref(x: torch.Tensor, filt: str = "9-7"):
    """Plain-PyTorch reference of :func:`wfb_dec` (same contract, no dispatch)."""
    check_image(x, "x")
    check_even(x, "x")
    check_pyramid_filter(filt)
    ll, bands = _wfb_dec_torch(x, filt)
    return ll.to(x.dtype), [t.to(x.dtype) for t in bands]


def wfb_rec_ref(ll: torch.Tensor, bands, filt: str = "9-7") -> torch.Tensor:
    """Plain-PyTorch reference of :func:`wfb_rec` (same contract, no dispatch)."""
    check_rec_inputs(ll, bands)
    check_pyramid_filter(filt)
    return _wfb_rec_torch(ll, bands, filt).to(ll.dtype)
