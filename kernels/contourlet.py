"""Contourlet transform on the Triton kernels, and the fused per-sub-band energy.

``contourlet_dec_triton`` / ``contourlet_rec_triton`` compose the Triton
Laplacian pyramid level (:mod:`sstkd.kernels.laplacian`) and the Triton DFB
(:mod:`sstkd.kernels.dfb`) exactly as the reference :mod:`sstkd.ops.contourlet`
composes its ops (toolbox ``pdfbdec`` / ``pdfbrec``). A pyramid level with 0
DFB levels is one separable wavelet level; it has no Triton kernel yet and runs
the PyTorch reference (:mod:`sstkd.ops.wavelet`), which is differentiable.

float16 / bfloat16 input is converted to float32 once and the whole chain
runs in float32 (the reference does the same), so intermediate levels are
never rounded; only the returned coefficients are stored in the input dtype
(the DFB writes them directly in that dtype).

``contourlet_energy_triton(x, nlevs)`` returns the ``(B, C, K)`` sums of
squares (``low`` first, then the levels coarse -> fine, directions 0..) without
storing the last DFB tree level of any pyramid level (see
:func:`sstkd.kernels.dfb.dfb_energy_triton`). Its backward recomputes the
decomposition (in float32) and runs the adjoints with the cotangent ``2·y·g``:
the extra memory is the coefficients of one decomposition, only during the
backward.
"""
from __future__ import annotations

import torch

from sstkd.kernels.dfb import _compute_dtype, dfb_dec_triton, dfb_energy_triton, dfb_rec_triton
from sstkd.kernels.laplacian import lp_dec_triton, lp_rec_triton
from sstkd.ops.wavelet import _wfb_dec_torch, _wfb_rec_torch

__all__ = ["contourlet_dec_triton", "contourlet_rec_triton", "contourlet_energy_triton"]


def _check_nlevs(nlevs) -> tuple[int, ...]:
    if isinstance(nlevs, (str, bytes, torch.Tensor)) or not isinstance(nlevs, (list, tuple)) or not nlevs:
        raise TypeError(f"nlevs: expected a non-empty list of ints, got {nlevs!r}")
    for i, n in enumerate(nlevs):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"nlevs[{i}]: expected an int >= 0, got {n!r}")
    return tuple(int(n) for n in nlevs)


def _check_x(x: torch.Tensor, nlevs) -> None:
    from sstkd.ops.contourlet import check_contourlet_size

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise TypeError(f"x: expected a floating (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    check_contourlet_size(x.shape[-2], x.shape[-1], list(nlevs))


def _dec(x: torch.Tensor, nlevs, pfilt: str, dfilt: str, out_dtype: torch.dtype):
    """Analysis in the compute dtype of ``x``; coefficients stored in ``out_dtype``."""
    cur = x.to(_compute_dtype(x.dtype))
    bands = []
    for n in reversed(nlevs):  # finest level first, from x itself
        if n == 0:
            cur, level = _wfb_dec_torch(cur, pfilt)
            level = [t.to(out_dtype) for t in level]
        else:
            cur, band = lp_dec_triton(cur, pfilt)
            level = dfb_dec_triton(band, n, dfilt, out_dtype=out_dtype)
        bands.append(level)
    bands.reverse()
    return cur.to(out_dtype), bands


def contourlet_dec_triton(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva"):
    """Triton ``contourlet_dec``: ``(low, [[sub-bands] per level, coarse -> fine])`` in ``x.dtype``.

    Same contract as :func:`sstkd.ops.contourlet_dec` (which validates the
    arguments); the backward is the adjoint of the decomposition.
    """
    nlevs = _check_nlevs(nlevs)
    _check_x(x, nlevs)
    return _dec(x, nlevs, pfilt, dfilt, x.dtype)


def contourlet_rec_triton(low: torch.Tensor, bands, pfilt: str = "9-7", dfilt: str = "pkva") -> torch.Tensor:
    """Triton ``contourlet_rec`` (dual-frame LP synthesis): ``(B, C, h·2**J, w·2**J)`` in ``low.dtype``.

    ``bands`` as :func:`contourlet_dec_triton` returns them (3 sub-bands: a
    wavelet level); validated by :func:`sstkd.ops.contourlet_rec`.
    """
    cd = _compute_dtype(low.dtype)
    cur = low.to(cd)
    for level in bands:  # coarse -> fine
        if len(level) == 3:
            cur = _wfb_rec_torch(cur, level, pfilt)
        else:
            cur = lp_rec_triton(cur, dfb_rec_triton(list(level), dfilt, out_dtype=cd), pfilt)
    return cur.to(low.dtype)


def _energies(x: torch.Tensor, nlevs, pfilt: str, dfilt: str) -> torch.Tensor:
    """(B, C, K) in the compute dtype, the last DFB tree level of each pyramid level never stored."""
    cur = x.to(_compute_dtype(x.dtype))
    levels = []
    for n in reversed(nlevs):
        if n == 0:
            cur, level = _wfb_dec_torch(cur, pfilt)
            levels.append(torch.stack([(t * t).sum(dim=(-2, -1)) for t in level], dim=-1))
        else:
            cur, band = lp_dec_triton(cur, pfilt)
            levels.append(dfb_energy_triton(band, n, dfilt))
    low = (cur * cur).sum(dim=(-2, -1)).unsqueeze(-1)
    return torch.cat([low] + levels[::-1], dim=-1)


def _cotangents(coeffs, g):
    """``y_k · g[..., k]`` for every coefficient, written band-major: runs of equally shaped
    sub-bands share one ``(m, B, C, h, w)`` buffer, the layout the DFB adjoint reads without
    a stacking copy."""
    cots, k = [], 0
    while k < len(coeffs):
        end = k + 1
        while end < len(coeffs) and coeffs[end].shape == coeffs[k].shape:
            end += 1
        run = torch.stack([t.detach() for t in coeffs[k:end]])
        run.mul_(g[..., k:end].permute(2, 0, 1)[..., None, None])
        cots.extend(run.unbind(0))
        k = end
    return cots


class _ContourletEnergy(torch.autograd.Function):
    """Sub-band energies; backward recomputes the coefficients y and applies the adjoint to 2·y·g."""

    @staticmethod
    def forward(ctx, x, nlevs, pfilt, dfilt):
        ctx.save_for_backward(x)
        ctx.nlevs, ctx.pfilt, ctx.dfilt = nlevs, pfilt, dfilt
        return _energies(x, nlevs, pfilt, dfilt).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        cd = _compute_dtype(x.dtype)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            low, bands = _dec(xr, ctx.nlevs, ctx.pfilt, ctx.dfilt, cd)
            coeffs = [low] + [t for level in bands for t in level]
            (gx,) = torch.autograd.grad(coeffs, xr, _cotangents(coeffs, 2.0 * g.to(cd)))
        return gx.to(x.dtype), None, None, None


def contourlet_energy_triton(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva") -> torch.Tensor:
    """Triton ``contourlet_energy``: ``(B, C, K)`` sums of squares per sub-band, ``K = 1 + total sub-bands``.

    Order: ``low`` first, then the levels coarse -> fine, directions 0..;
    computed in float32 (float64 for float64 input), returned in ``x.dtype``.
    Deterministic (fixed-order reduction, no float atomics) when
    ``torch.are_deterministic_algorithms_enabled()``.
    """
    nlevs = _check_nlevs(nlevs)
    _check_x(x, nlevs)
    return _ContourletEnergy.apply(x, nlevs, pfilt, dfilt)
