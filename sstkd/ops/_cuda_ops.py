"""Autograd wrappers of the CUDA extension's custom ops (``torch.ops.sstkd.*``).

The public ops (``sstkd.ops.lp_dec`` ...) call these when the backend
resolves to ``"cuda"``; inputs are validated there. Same semantics as the
reference ops: ``(B, C, H, W)`` tensors with ``B·C`` folded into one image
axis, float16/bfloat16/float32 computed in float32 and returned in the input
dtype, float64 in float64; the backward of a decomposition is its adjoint.

The extension is loaded (or JIT-built, once) on the first call. Every op also
has a Meta implementation, so these wrappers trace under ``torch.compile`` and
``FakeTensor``; CPU tensors raise a ``RuntimeError`` that says they must be
CUDA tensors.
"""
from __future__ import annotations

import torch

from sstkd import _ext
from sstkd.ops._checks import compute_dtype

__all__ = ["lp_dec_cuda", "lp_rec_cuda", "quantize_count_cuda", "soft_count_cuda", "sum_squares_cuda"]


def _ops():
    """``torch.ops.sstkd``, loading (or JIT-building) the extension first.

    Skipped while torch.compile traces: the ops are loaded by then (the
    tracer needs their Meta impls), and the loader is plain Python state.
    """
    if not torch.compiler.is_compiling():
        _ext.get()
    return torch.ops.sstkd


def _check_filt(filt: str) -> None:
    if filt != "9-7":
        raise ValueError(f"filt: the CUDA backend implements the '9-7' pyramid filters only, got {filt!r}")


# --------------------------------------------------------------------------------- Laplacian pyramid
class _LpDec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3):
        return tuple(torch.ops.sstkd.lp_dec(x3))

    @staticmethod
    def backward(ctx, g_low, g_band):
        return torch.ops.sstkd.lp_dec_backward(g_low, g_band)


class _LpRec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, low3, band3):
        return torch.ops.sstkd.lp_rec(low3, band3)

    @staticmethod
    def backward(ctx, g_x):
        g_low, g_band = torch.ops.sstkd.lp_rec_backward(g_x)
        return g_low, g_band


def lp_dec_cuda(x: torch.Tensor, filt: str = "9-7") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sstkd.ops.lp_dec` on the CUDA extension: ``x`` (B, C, H, W), even H, W -> (low, band)."""
    _check_filt(filt)
    _ops()
    b, c, h, w = x.shape
    low, band = _LpDec.apply(x.reshape(b * c, h, w))
    return low.reshape(b, c, h // 2, w // 2), band.reshape(b, c, h, w)


def lp_rec_cuda(low: torch.Tensor, band: torch.Tensor, filt: str = "9-7") -> torch.Tensor:
    """:func:`sstkd.ops.lp_rec` (dual-frame synthesis) on the CUDA extension."""
    _check_filt(filt)
    _ops()
    b, c, h, w = band.shape
    x = _LpRec.apply(low.reshape(b * c, h // 2, w // 2), band.reshape(b * c, h, w))
    return x.reshape(b, c, h, w)


# ------------------------------------------------------------------------------------- quantization
class _SoftCount(torch.autograd.Function):
    """``counts[b, n] = Σ_i E_in`` (B, L) in the accumulation dtype; gradient to ``s`` only."""

    @staticmethod
    def forward(ctx, s2, centers, kernel):
        counts, _ = torch.ops.sstkd.quantize_count(s2, centers, kernel)
        ctx.save_for_backward(s2, centers)
        ctx.kernel = kernel
        return counts

    @staticmethod
    def backward(ctx, grad):
        s2, centers = ctx.saved_tensors
        grad_s = torch.ops.sstkd.quantize_count_backward(s2, centers, ctx.kernel, grad, None)
        return grad_s, None, None


def soft_count_cuda(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Unnormalized soft counts ``Σ_i E_in`` (B, L) of ``s2`` (B, N) at fixed ``centers``; differentiable in ``s2``."""
    _ops()
    return _SoftCount.apply(s2, centers.detach(), kernel)


def quantize_count_cuda(s2: torch.Tensor, levels: int, iters: int, kernel: str, centers: torch.Tensor | None,
                        quantiles) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sstkd.ops.quantize_count` on validated ``(B, N)`` input (any float dtype), like ``quantize_count_ref``.

    Returns ``(centers, hist)`` in the compute dtype (float32, or float64 for
    float64 input); the caller casts them to the input dtype. The range and
    the Lloyd updates are tiny ``(B, L)`` PyTorch steps; every pass over the
    pixels (each Lloyd step's sums, the final counts and their backward) is
    one kernel.
    """
    from sstkd.ops.quantize import initial_centers, intensity_range, lloyd_update, normalize_rows

    ops = _ops()
    cdt = compute_dtype(s2)
    if centers is None:
        with torch.no_grad():
            smin, smax = intensity_range(s2.detach().to(cdt), quantiles)
            centers = initial_centers(smin, smax, levels)
            for _ in range(iters):
                mass, moment = ops.quantize_count(s2.detach(), centers, kernel)
                centers = lloyd_update(centers, mass, moment)
    else:
        centers = centers.detach().to(cdt)
    hist = normalize_rows(_SoftCount.apply(s2, centers, kernel))
    return centers, hist


# --------------------------------------------------------------------------------------- reductions
class _SumSquares(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.ops.sstkd.sum_squares(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (2.0 * grad.reshape(shape) * x).to(x.dtype)


def sum_squares_cuda(x: torch.Tensor) -> torch.Tensor:
    """Per-row sum of squares ``out[r] = Σ x[r, ...]²`` of ``x`` (R, ...), deterministic.

    Returns ``(R,)`` in the accumulation dtype (float32, or float64 for float64
    input); differentiable.
    """
    _ops()
    return _SumSquares.apply(x)
