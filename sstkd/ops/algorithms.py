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
  of recomputing the decomposition in the backward); one with ``takes_low = True`` also takes
  ``low=`` (B, C, h, w) and returns (B, C, 1 + 2**levels) with its sum of squares first (the
  coarsest level then adds the lowpass energy in the same pass); one with a ``level`` attribute
  ``level(x, levels, pfilt, dfilt, last=) -> (low or None, energies)`` runs a whole pyramid level
  (LP level and DFB energies; with ``last`` the lowpass energy first and no lowpass returned);
* a ``dfb_dec`` with a ``level`` attribute ``level(x, levels, pfilt, dfilt, out_dtype, low_dtype) ->
  (low, [sub-bands])`` runs a whole pyramid level of ``contourlet_dec`` (LP level and DFB; the
  lowpass in ``low_dtype``, the sub-bands in ``out_dtype``);
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
    "lloyd_converged",
    "no_fused_start",
    "quantile_ranks",
    "quantize_count",
    "refine_centers",
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
    fused = getattr(passes["dfb_dec"], "level", None)
    bands = []
    for n in reversed(nlevs):  # finest level first, from x itself
        if n == 0:
            cur, level = passes["wfb_dec"](cur.to(compute_dtype(cur)), pfilt)
            level = [t.to(out_dtype) for t in level]
        elif fused is not None:  # the LP level and the DFB in one pass; the coarsest lowpass stored as returned
            last = len(bands) == len(nlevs) - 1
            cur, level = fused(cur, n, pfilt, dfilt, out_dtype, out_dtype if last else compute_dtype(cur))
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


class _CatTo(torch.autograd.Function):
    """``torch.cat(parts, -1)`` stored in ``dtype`` (one launch: no separate conversion); the
    backward converts the cotangent once and hands each part its column slice (views)."""

    @staticmethod
    def forward(ctx, dtype, *parts):
        ctx.sizes, ctx.dtype_in = [p.shape[-1] for p in parts], parts[0].dtype
        out = parts[0].new_empty((*parts[0].shape[:-1], sum(ctx.sizes)), dtype=dtype)
        return torch.cat(parts, dim=-1, out=out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return (None, *g.to(ctx.dtype_in).split(ctx.sizes, dim=-1))


def _energies(x: torch.Tensor, nlevs, pfilt: str, dfilt: str, passes) -> torch.Tensor:
    """(B, C, K) in ``x.dtype`` (computed in the compute dtype); the DFB levels through the
    ``dfb_energy`` pass (a whole pyramid level per call where it has a ``level``), the lowpass
    energy folded into the coarsest one's where it ``takes_low``."""
    cur = _finest_input(x, passes)
    energy = passes["dfb_energy"]
    fused = getattr(energy, "level", None)
    parts = []  # finest level first
    for i, n in enumerate(reversed(nlevs)):
        if n == 0:
            cur, level = passes["wfb_dec"](cur.to(compute_dtype(cur)), pfilt)
            parts.append(torch.stack([(t * t).sum(dim=(-2, -1)) for t in level], dim=-1))
        elif fused is not None:  # the LP level and the DFB energies in one pass
            cur, e = fused(cur, n, pfilt, dfilt, last=i == len(nlevs) - 1)
            parts.append(e)
        else:
            cur, band = _lp_level(cur, pfilt, passes)
            if i == len(nlevs) - 1 and getattr(energy, "takes_low", False):
                parts.append(energy(band, n, dfilt, low=cur))  # the lowpass energy first
                cur = None
            else:
                parts.append(energy(band, n, dfilt))
    if cur is not None:
        parts.append((cur * cur).sum(dim=(-2, -1)).unsqueeze(-1))
    parts.reverse()
    return parts[0].to(x.dtype) if len(parts) == 1 else _CatTo.apply(x.dtype, *parts)


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
        return _energies(x, nlevs, pfilt, dfilt, passes)

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
        return _energies(x, tuple(nlevs), pfilt, dfilt, passes)
    return _ContourletEnergy.apply(x, tuple(nlevs), pfilt, dfilt, passes)


# --------------------------------------------------------------------------- quantization
def quantile_ranks(n: int, q: float) -> tuple[int, int, float]:
    """``(i0, i1, frac)``: the quantile ``q`` of ``n`` sorted values is ``x[i0] + (x[i1] − x[i0])·frac``
    (``pos = q·(n − 1)``, ``i0 = ⌊pos⌋``; ``i1 = i0`` where ``pos`` is whole, as torch.quantile's ceil)."""
    pos = q * (n - 1)
    i0 = min(int(math.floor(pos)), n - 1)
    frac = pos - i0
    return i0, (min(i0 + 1, n - 1) if frac != 0 else i0), frac


def _quantile_rows(x: torch.Tensor, qs, budget: int = 1 << 19) -> list[torch.Tensor]:
    """Per-row quantiles ``qs`` of ``x`` (B, N), linear interpolation (torch.quantile's rule:
    ``x[i0] + (x[i1] − x[i0])·frac`` of the sorted row, ``pos = q·(N − 1)``), one (B,) tensor per q.

    Order statistics by ``kthvalue`` on groups of rows of about ``budget`` elements instead of a
    full sort: no sorted copy and no int64 permutation of the whole map (a selection's
    temporaries are ≈ 1.5× one group).
    """
    B, n = x.shape
    ranks = [quantile_ranks(n, q) for q in qs]
    needed = sorted({i for i0, i1, _ in ranks for i in (i0, i1)})
    rows = max(1, budget // max(n, 1))
    stats = {i: torch.empty(B, dtype=x.dtype, device=x.device) for i in needed}
    for b0 in range(0, B, rows):
        group = x[b0:b0 + rows]
        for i in needed:
            stats[i][b0:b0 + rows] = group.kthvalue(i + 1, dim=1).values
    out = []
    for i0, i1, frac in ranks:
        v0, v1 = stats[i0], stats[i1]
        out.append(v0 + (v1 - v0) * frac)
    return out


def _aminmax(s2: torch.Tensor):
    return torch.aminmax(s2, dim=1)


def intensity_range(s2: torch.Tensor, quantiles: tuple[float, float] | None,
                    minmax=_aminmax) -> tuple[torch.Tensor, torch.Tensor]:
    """``(smin, smax)`` per row of ``s2`` (B, N) in its compute dtype: the extremes (the
    ``minmax`` pass), or robust quantiles (row selections, any backend)."""
    cdt = compute_dtype(s2)
    with torch.no_grad():
        if quantiles is None:
            smin, smax = minmax(s2.detach())
            return smin.to(cdt), smax.to(cdt)
        lo, hi = _quantile_rows(s2.detach().to(cdt), quantiles)
        return lo, hi


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


def lloyd_converged(old: torch.Tensor, new: torch.Tensor, iters: int) -> bool:
    """Whether Lloyd steps can stop after ``old -> new``: the centers moved a few ulps at most.
    Long runs only (``iters > 8``): the check reads a value back from the device."""
    if iters <= 8:
        return False
    step = (new - old).abs().max()
    return bool(step <= 4 * torch.finfo(new.dtype).eps * new.abs().max())


def no_fused_start(s2, levels, ranks, kernel, iters):
    """The ``start_centers`` pass of a backend without fused center kernels: None, so
    :func:`refine_centers` composes ``minmax`` / ``level_sums`` and the (B, L) updates."""
    return None


def refine_centers(s2: torch.Tensor, levels: int, iters: int, kernel: str, quantiles, passes) -> torch.Tensor:
    """Centers (B, L) of validated ``s2`` (B, N) in its compute dtype, under no_grad: the range
    (extremes or quantiles), the initial centers and ``iters`` Lloyd steps (no host sync unless
    ``iters > 8``).

    A backend's ``start_centers(s2, levels, ranks, kernel, iters)`` pass may fuse them: it
    returns ``(centers, step)`` with ``step(centers) -> moved`` one Lloyd step, or None; else
    each step is one ``level_sums`` pass over the pixels plus a tiny (B, L) update on the device.
    """
    cdt = compute_dtype(s2)
    with torch.no_grad():
        sd = s2.detach()
        n = sd.shape[1]
        ranks = None if quantiles is None else tuple(quantile_ranks(n, q) for q in quantiles)
        fused = passes.get("start_centers", no_fused_start)(sd, levels, ranks, kernel, iters)
        if fused is not None:
            centers, step = fused
        else:
            smin, smax = intensity_range(sd, quantiles, passes.get("minmax", _aminmax))
            centers = initial_centers(smin, smax, levels)

            def step(c):
                mass, moment = passes["level_sums"](sd, c, kernel)
                return lloyd_update(c, mass.to(cdt), moment.to(cdt))

        for _ in range(iters):
            moved = step(centers)
            stop = lloyd_converged(centers, moved, iters)
            centers = moved
            if stop:
                break  # the centers stopped moving (a few ulps): more steps change nothing
    return centers.to(cdt)


def quantize_count(s2: torch.Tensor, levels: int, iters: int, kernel: str, centers: torch.Tensor | None,
                   quantiles, passes) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centers, hist)`` of validated ``s2`` (B, N), both (B, L) in the compute dtype of ``s2``.

    Without ``centers``: :func:`refine_centers` (range, initial centers, Lloyd steps).
    Centers are constants for autograd; ``hist`` is differentiable in ``s2`` (the ``soft_hist`` pass).
    """
    cdt = compute_dtype(s2)
    if centers is None:
        centers = refine_centers(s2, levels, iters, kernel, quantiles, passes)
    else:
        centers = centers.detach().to(cdt)
    return centers, passes["soft_hist"](s2, centers, kernel)
