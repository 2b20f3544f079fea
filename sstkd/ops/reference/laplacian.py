"""One level of the Laplacian pyramid (MATLAB Contourlet Toolbox ``lpdec``/``lprec``).

Conventions (toolbox, periodic extension, filters centred on their middle tap)::

    c = (x ⊛ h⊗h)[0::2, 0::2]                       # lowpass, (H/2, W/2)
    d = x − (up2(c) ⊛ g⊗g)                          # bandpass, (H, W)
    x = (up2(c − (d ⊛ h⊗h)[0::2, 0::2]) ⊛ g⊗g) + d  # dual-frame synthesis

The reference here is plain PyTorch and is the oracle of every fast backend:
``B·C`` is folded into one axis, filtering is separable (two depthwise
``conv2d`` passes with ``(k, 1)`` and ``(1, k)`` weights), periodic extension is
an index gather modulo the size (so it also works when the extension is
larger than the image), decimation is the conv stride, and ``up2(·) ⊛ g`` is
polyphase (the even and odd taps of ``g`` filter ``c`` directly and the two
phases are interleaved; no zeros are inserted). Autograd of this reference is
the adjoint of the decomposition, which is what the backward of every backend
must compute.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sstkd._util import compute_dtype, pad_periodic as _pad_periodic
from sstkd.filters import check_pyramid_filter, pyramid_filters
from sstkd.ops._checks import check_image, check_same_device

__all__ = ["lp_dec_ref", "lp_rec_ref", "check_even", "check_pair"]


# --------------------------------------------------------------------------- filters
@functools.lru_cache(maxsize=None)
def _conv_weights(filt: str, device: torch.device, dtype: torch.dtype):
    """Conv weights of one filter pair, built once per (filter, device, dtype).

    Returns ``(h_rows, h_cols, g_rows, g_cols)``:
    ``h_*`` is ``h`` as a (1,1,9,1) / (1,1,1,9) kernel (symmetric, so conv2d's
    correlation equals the convolution); ``g_*`` holds the two polyphase
    components of ``g`` as a 2-output-channel kernel of 4 taps each, applied to
    ``c`` extended by 1 before / 2 after:
    ``y[2m] = g1 c[m-1] + g3 c[m] + g5 c[m+1]`` and
    ``y[2m+1] = g0 c[m-1] + g2 c[m] + g4 c[m+1] + g6 c[m+2]``.
    """
    h, g = pyramid_filters(filt)
    if h.numel() != 9 or g.numel() != 7:  # pragma: no cover - only '9-7' exists
        raise ValueError(f"filt: expected 9/7-tap filters, got {h.numel()}/{g.numel()}")
    zero = g.new_zeros(1)
    even = torch.cat([g[1::2], zero])  # output phase 0 (even positions)
    odd = g[0::2]  # output phase 1 (odd positions)
    gp = torch.stack([even, odd])  # (2, 4)
    h = h.to(device=device, dtype=dtype)
    gp = gp.to(device=device, dtype=dtype)
    return (
        h.view(1, 1, 9, 1).contiguous(),
        h.view(1, 1, 1, 9).contiguous(),
        gp.view(2, 1, 4, 1).contiguous(),
        gp.view(2, 1, 1, 4).contiguous(),
    )


# --------------------------------------------------------------------------- building blocks
# Tensors here are (1, N, H, W) with N = B·C: every image is its own channel of
# a depthwise (groups=N) conv. On the CPU this is several times faster than
# (N, 1, H, W) with one input channel (oneDNN's depthwise path), and on CUDA
# it maps to cuDNN's depthwise kernels.
def _analysis(x: torch.Tensor, hr: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    """``(x ⊛ h⊗h)[0::2, 0::2]`` of a (1, N, H, W) tensor, periodic, via strided convs."""
    n = x.shape[1]
    x = F.conv2d(_pad_periodic(x, 2, 4, 4), hr.expand(n, 1, 9, 1), stride=(2, 1), groups=n)
    return F.conv2d(_pad_periodic(x, 3, 4, 4), hc.expand(n, 1, 1, 9), stride=(1, 2), groups=n)


def _synthesis(c: torch.Tensor, gr: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """``up2(c) ⊛ g⊗g`` of a (1, N, h, w) tensor, periodic, polyphase -> (1, N, 2h, 2w)."""
    _, n, h, w = c.shape
    # (1, 2N, h, w): channel 2i is image i's even output rows, 2i+1 its odd rows
    y = F.conv2d(_pad_periodic(c, 2, 1, 2), gr.repeat(n, 1, 1, 1), groups=n)
    y = y.view(1, n, 2, h, w).transpose(2, 3).reshape(1, n, 2 * h, w)  # interleave rows
    y = F.conv2d(_pad_periodic(y, 3, 1, 2), gc.repeat(n, 1, 1, 1), groups=n)
    return y.view(1, n, 2, 2 * h, w).permute(0, 1, 3, 4, 2).reshape(1, n, 2 * h, 2 * w)


def check_even(x: torch.Tensor, name: str) -> None:
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"{name}: height and width must be even for one pyramid level, got size {h}x{w}")


# --------------------------------------------------------------------------- checks
def lp_dec_ref(x: torch.Tensor, filt: str = "9-7") -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference of :func:`lp_dec` (same contract, no dispatch)."""
    check_image(x, "x")
    check_even(x, "x")
    check_pyramid_filter(filt)
    return _lp_dec_torch(x, filt)


def _lp_dec_torch(x: torch.Tensor, filt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lp_dec_ref` on validated input (the torch backend's ``lp_dec`` pass)."""
    b, ch, h, w = x.shape
    dt = compute_dtype(x)
    hr, hc, gr, gc = _conv_weights(filt, x.device, dt)
    xf = x.reshape(1, b * ch, h, w).to(dt)
    low = _analysis(xf, hr, hc)
    band = xf - _synthesis(low, gr, gc)
    return (
        low.reshape(b, ch, h // 2, w // 2).to(x.dtype),
        band.reshape(b, ch, h, w).to(x.dtype),
    )


def check_pair(low: torch.Tensor, band: torch.Tensor) -> None:
    check_image(low, "low")
    check_image(band, "band")
    check_same_device(low=low, band=band)
    check_even(band, "band")
    b, ch, h, w = band.shape
    if tuple(low.shape) != (b, ch, h // 2, w // 2):
        raise ValueError(
            f"low: expected shape {(b, ch, h // 2, w // 2)} (half of band {tuple(band.shape)}), got {tuple(low.shape)}"
        )
    if low.dtype != band.dtype:
        raise TypeError(f"low: dtype {low.dtype} differs from band dtype {band.dtype}")


def lp_rec_ref(low: torch.Tensor, band: torch.Tensor, filt: str = "9-7") -> torch.Tensor:
    """Plain-PyTorch reference of :func:`lp_rec` (same contract, no dispatch)."""
    check_pair(low, band)
    check_pyramid_filter(filt)
    return _lp_rec_torch(low, band, filt)


def _lp_rec_torch(low: torch.Tensor, band: torch.Tensor, filt: str) -> torch.Tensor:
    """:func:`lp_rec_ref` on validated input (the torch backend's ``lp_rec`` pass)."""
    b, ch, h, w = band.shape
    dt = compute_dtype(band)
    hr, hc, gr, gc = _conv_weights(filt, band.device, dt)
    df = band.reshape(1, b * ch, h, w).to(dt)
    cf = low.reshape(1, b * ch, h // 2, w // 2).to(dt)
    x = _synthesis(cf - _analysis(df, hr, hc), gr, gc) + df
    return x.reshape(b, ch, h, w).to(band.dtype)
