"""Algorithms written once, parametrized by a backend's passes.

* the contourlet composition (toolbox ``pdfbdec`` / ``pdfbrec``): per pyramid level, one LP
  level and an ``n``-level DFB on its bandpass (or one wavelet level where ``n == 0``);
* the fused sub-band energies of a contourlet (a backend's ``dfb_energy`` pass never stores the
  last DFB tree level) with a backward that recomputes the decomposition;
* the quantization range (extremes or robust quantiles), STLNet's initial centers and the Lloyd
  refinement of ``quantize_count``.

``passes`` is a plain dict ``{pass name: callable}`` (a backend's table, completed by
:func:`sstkd.ops.dispatch.passes`). Signatures, on validated inputs:

* ``lp_dec(x, filt) -> (low, band)`` and ``lp_rec(low, band, filt) -> x`` in the input dtype; an
  ``lp_dec`` with the attribute ``takes_out_dtype = True`` also takes ``out_dtype=`` (the finest
  level then reads a float16/bfloat16 input as it is, without a conversion copy);
* ``dfb_dec(x, levels, filt, out_dtype) -> [sub-bands]`` and ``dfb_rec(bands, filt, out_dtype) -> x``,
  computing in the compute dtype of their input, stored in ``out_dtype``;
* ``dfb_energy(x, levels, filt) -> (B, C, 2**levels)`` sums of squares in the compute dtype; a
  pass with the attribute ``keeps_for_backward = True`` is differentiable itself at the cost of
  keeping its last tree level (the composition then runs autograd through the passes instead
  of recomputing the decomposition in the backward);
* ``wfb_dec(x, filt) -> (ll, [lh, hl, hh])`` and ``wfb_rec(ll, bands, filt) -> x`` in the compute dtype;
* ``minmax(s2) -> (smin, smax)`` per row; ``level_sums(s2, centers, kernel) -> (mass, moment)``
  (``Σ_i E_in`` and ``Σ_i E_in·s_i``, (B, L)); ``soft_hist(s2, centers, kernel) -> hist``
  (normalized soft counts, differentiable in ``s2``).

Nothing here imports a backend: the dispatch layer hands the passes in.
"""
from __future__ import annotations

import math

import torch

from sstkd._util import compute_dtype

__all__ = [
    "contourlet_dec",
    "contourlet_rec",
    "contourlet_energy",
    "initial_centers",
    "intensity_range",
    "lloyd_update",
    "quantize_count",
]


# --------------------------------------------------------------------------- contourlet
def _finest_input(x: torch.Tensor, passes) -> torch.Tensor:
    """``x`` as the finest level reads it: converted to the compute dtype unless the LP pass
    converts on load (``takes_out_dtype``)."""
    return x if getattr(passes["lp_dec"], "takes_out_dtype", False) else x.to(compute_dtype(x))


def _lp_level(cur: torch.Tensor, pfilt: str, passes):
    """One LP level in the compute dtype (``cur`` is already in it below the finest level)."""
    cd = compute_dtype(cur)
    if cur.dtype != cd:
        return passes["lp_dec"](cur, pfilt, out_dtype=cd)
    return passes["lp_dec"](cur, pfilt)


def contourlet_dec(x: torch.Tensor, nlevs, pfilt: str, dfilt: str, passes, out_dtype: torch.dtype | None = None):
    """``(low, [[sub-bands] per level, coarse -> fine])`` of validated ``x`` (B, C, H, W).

    The chain runs in the compute dtype of ``x`` (float16/bfloat16 input is converted to
    float32 once, so intermediate levels are never rounded); the coefficients are stored in
    ``out_dtype`` (default ``x.dtype``). The backward is the adjoint (autograd of the passes).
    """
    out_dtype = x.dtype if out_dtype is None else out_dtype
    cur = _finest_input(x, passes)
    bands = []
    for n in reversed(nlevs):  # finest level first, from x itself
        if n == 0:
            cur, level = passes["wfb_dec"](cur.to(compute_dtype(cur)), pfilt)
            level = [t.to(out_dtype) for t in level]
        else:
            cur, band = _lp_level(cur, pfilt, passes)
            level = passes["dfb_dec"](band, n, dfilt, out_dtype)
        bands.append(level)
    bands.reverse()
    return cur.to(out_dtype), bands


def contourlet_rec(low: torch.Tensor, bands, pfilt: str, dfilt: str, passes) -> torch.Tensor:
    """Dual-frame synthesis of validated coefficients: ``(B, C, h·2**J, w·2**J)`` in ``low.dtype``."""
    cd = compute_dtype(low)
    cur = low.to(cd)
    for level in bands:  # coarse -> fine
        if len(level) == 3:
            cur = passes["wfb_rec"](cur, list(level), pfilt)
        else:
            cur = passes["lp_rec"](cur, passes["dfb_rec"](list(level), dfilt, cd), pfilt)
    return cur.to(low.dtype)


def _energies(x: torch.Tensor, nlevs, pfilt: str, dfilt: str, passes) -> torch.Tensor:
    """(B, C, K) in the compute dtype; the DFB levels through the ``dfb_energy`` pass."""
    cur = _finest_input(x, passes)
    levels = []
    for n in reversed(nlevs):
        if n == 0:
            cur, level = passes["wfb_dec"](cur.to(compute_dtype(cur)), pfilt)
            levels.append(torch.stack([(t * t).sum(dim=(-2, -1)) for t in level], dim=-1))
        else:
            cur, band = _lp_level(cur, pfilt, passes)
            levels.append(passes["dfb_energy"](band, n, dfilt))
    low = (cur * cur).sum(dim=(-2, -1)).unsqueeze(-1)
    return torch.cat([low] + levels[::-1], dim=-1)


def _cotangents(coeffs, g):
    """``y_k · g[..., k]`` for every coefficient, written band-major: runs of equally shaped
    sub-bands share one ``(m, B, C, h, w)`` buffer, the layout a DFB adjoint reads without a
    stacking copy."""
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
    """Sub-band energies; backward recomputes the coefficients y and applies the adjoint to 2·y·g
    (extra memory: one decomposition, only during the backward)."""

    @staticmethod
    def forward(ctx, x, nlevs, pfilt, dfilt, passes):
        ctx.save_for_backward(x)
        ctx.nlevs, ctx.pfilt, ctx.dfilt, ctx.passes = nlevs, pfilt, dfilt, passes
        return _energies(x, nlevs, pfilt, dfilt, passes).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        cd = compute_dtype(x)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            low, bands = contourlet_dec(xr, ctx.nlevs, ctx.pfilt, ctx.dfilt, ctx.passes, out_dtype=cd)
            coeffs = [low] + [t for level in bands for t in level]
            (gx,) = torch.autograd.grad(coeffs, xr, _cotangents(coeffs, 2.0 * g.to(cd)))
        return gx.to(x.dtype), None, None, None, None


def contourlet_energy(x: torch.Tensor, nlevs, pfilt: str, dfilt: str, passes) -> torch.Tensor:
    """``(B, C, K)`` sums of squares per sub-band (``low`` first, then coarse -> fine) of validated
    ``x``, computed in the compute dtype and returned in ``x.dtype``, without storing the last DFB
    tree level of any pyramid level (the ``dfb_energy`` pass).

    Backward: with a ``dfb_energy`` pass that ``keeps_for_backward``, autograd through the passes
    (the DFB keeps its last level, the LP adjoints need no saved values: nothing is recomputed);
    otherwise the decomposition is recomputed in the backward (:class:`_ContourletEnergy`)."""
    if getattr(passes["dfb_energy"], "keeps_for_backward", False):
        return _energies(x, tuple(nlevs), pfilt, dfilt, passes).to(x.dtype)
    return _ContourletEnergy.apply(x, tuple(nlevs), pfilt, dfilt, passes)


# --------------------------------------------------------------------------- quantization
def _quantile_rows(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of a sorted ``(B, N)`` tensor, linear interpolation (torch.quantile's rule)."""
    n = x.shape[1]
    pos = q * (n - 1)
    i0 = min(int(math.floor(pos)), n - 1)
    i1 = min(i0 + 1, n - 1)
    frac = pos - i0
    return x[:, i0] + (x[:, i1] - x[:, i0]) * frac


def _aminmax(s2: torch.Tensor):
    return torch.aminmax(s2, dim=1)


def intensity_range(s2: torch.Tensor, quantiles: tuple[float, float] | None,
                    minmax=_aminmax) -> tuple[torch.Tensor, torch.Tensor]:
    """``(smin, smax)`` per row of ``s2`` (B, N) in its compute dtype: the extremes (the
    ``minmax`` pass), or robust quantiles (a sort, any backend)."""
    cdt = compute_dtype(s2)
    with torch.no_grad():
        if quantiles is None:
            smin, smax = minmax(s2.detach())
            return smin.to(cdt), smax.to(cdt)
        xs = s2.detach().to(cdt).sort(dim=1).values
        return _quantile_rows(xs, quantiles[0]), _quantile_rows(xs, quantiles[1])


def initial_centers(smin: torch.Tensor, smax: torch.Tensor, levels: int) -> torch.Tensor:
    """STLNet's QCO centers ``c_n = smin + (n + ½)·(smax − smin)/L``, shape (B, L).

    A constant image (``smax == smin``) gives ``L`` centers all equal to ``smin``.
    """
    n = torch.arange(levels, device=smin.device, dtype=smin.dtype)
    delta = (smax - smin) / levels
    return smin[:, None] + (n[None, :] + 0.5) * delta[:, None]


def lloyd_update(centers: torch.Tensor, mass: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """One Lloyd step from the per-level sums ``mass = Σ E`` and ``moment = Σ E·s``.

    Empty levels (mass <= 0) keep their center; the result is sorted so the
    taps stay well defined.
    """
    safe = torch.where(mass > 0, mass, torch.ones_like(mass))
    new = torch.where(mass > 0, moment / safe, centers)
    return new.sort(dim=1).values


def quantize_count(s2: torch.Tensor, levels: int, iters: int, kernel: str, centers: torch.Tensor | None,
                   quantiles, passes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centers, hist)`` of validated ``s2`` (B, N), both (B, L) in the compute dtype of ``s2``.

    Without ``centers``: the range (``minmax`` pass or quantiles), the initial centers and
    ``iters`` Lloyd steps, each one ``level_sums`` pass over the pixels plus a tiny (B, L)
    update on the device (no host sync). Centers are constants for autograd; ``hist`` is
    differentiable in ``s2`` (the ``soft_hist`` pass).
    """
    cdt = compute_dtype(s2)
    if centers is None:
        with torch.no_grad():
            sd = s2.detach()
            smin, smax = intensity_range(sd, quantiles, passes.get("minmax", _aminmax))
            centers = initial_centers(smin, smax, levels)
            for _ in range(iters):
                mass, moment = passes["level_sums"](sd, centers, kernel)
                moved = lloyd_update(centers, mass.to(cdt), moment.to(cdt))
                step = (moved - centers).abs().max()
                centers = moved
                # (long runs only: the check reads a value back from the device)
                if iters > 8 and step <= 4 * torch.finfo(cdt).eps * centers.abs().max():
                    break  # the centers stopped moving (a few ulps): more steps change nothing
    else:
        centers = centers.detach().to(cdt)
    return centers, passes["soft_hist"](s2, centers, kernel)
