"""Quantization and counting of per-pixel texture intensities (DESIGN.md §3.2).

``quantize_count`` quantizes an intensity map into ``L`` levels and returns a
soft histogram; ``reproject`` maps a per-level table back to the pixels with
the same encoding; ``cooccurrence`` counts level pairs of neighbouring pixels.

The encoding ``E`` of pixel ``i`` at level ``n`` is never materialized as an
``N×L`` tensor: every pixel has at most two *taps*, ``lo`` and ``hi = lo + 1``,
where ``lo`` is the number of centers strictly below ``s_i`` minus one,
clamped to ``[0, L − 2]`` (the adjacent pair of centers bracketing ``s_i``,
or the outermost pair). The weights of the two taps are

* ``"triangular"`` (default): linear interpolation between the two centers,
  ``w_hi = t = clamp((s − c_lo) / (c_hi − c_lo), 0, 1)``, ``w_lo = 1 − t`` —
  exactly ``E_in = max(0, 1 − |s_i − c_n| / w_n)`` with the local spacing
  ``w_n``: each pixel splits a unit weight over its two nearest centers, and a
  pixel outside the outermost centers gives its whole weight to the nearest
  one. Where two centers coincide the lower one takes the weight.
* ``"stlnet"``: STLNet's QCO encoding ``E_in = (1 − |c_n − s_i|)·[|c_n − s_i| < Δ]``
  evaluated at the two taps, with ``Δ`` the mean spacing of the centers,
  ``(c_{L−1} − c_0) / (L − 1)`` per image. For the uniform initial centers
  this is ``(smax − smin) / L`` and no third center lies within ``Δ``, so the
  result is STLNet's exactly; for refined or given (non-uniform) centers only
  the two taps count. The weights are non-negative when ``Δ ≤ 1`` (e.g.
  cosine similarities in ``[−1, 1]`` with ``L ≥ 2``), which STLNet assumes;
  pixels farther than ``Δ`` from every center contribute nothing. A pixel on
  a center always counts for it (so a constant image, Δ = 0, is defined), and
  of two coincident centers only the lower one counts.

Centers are constants for autograd: they are computed under ``no_grad`` (and
given centers are detached), so gradients flow to ``s`` (and ``table``) only
through the weights ``E``.
"""
from __future__ import annotations

import torch

from sstkd._util import normalize_rows
from sstkd.ops import algorithms
from sstkd.ops.algorithms import initial_centers, intensity_range, lloyd_update  # noqa: F401  (re-exported)

KERNELS = ("triangular", "stlnet")

__all__ = [
    "KERNELS",
    "cooccurrence_ref",
    "initial_centers",
    "intensity_range",
    "level_sums_ref",
    "lloyd_update",
    "normalize_rows",
    "quantize_count_ref",
    "reproject_ref",
    "soft_hist_ref",
]


# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------
def _stl_delta(centers: torch.Tensor) -> torch.Tensor:
    """Per-image Δ of the stlnet encoding: mean spacing of the centers, (B, 1)."""
    L = centers.shape[1]
    return ((centers[:, -1] - centers[:, 0]) / (L - 1))[:, None]


# ----------------------------------------------------------------------------
# taps of the encoding (reference)
# ----------------------------------------------------------------------------
def _taps(s2: torch.Tensor, centers: torch.Tensor, kernel: str, slopes: bool = False):
    """Indices, weights (and slopes ``d w / d s``) of the ≤2 active levels per pixel.

    ``s2`` (B, N) and ``centers`` (B, L, sorted) in the compute dtype; nothing
    is recorded for autograd (the Functions below use the slopes). Returns
    ``idx`` (B, 2, N) int64 (``lo``, ``hi = lo + 1``), ``w`` (B, 2, N) and
    ``dw`` (B, 2, N) or None. Both taps are handled by each op at once: on
    the CPU, the number of ops matters as much as their size.
    """
    s2 = s2.detach()
    B, N = s2.shape
    L = centers.shape[1]
    lo = torch.searchsorted(centers, s2, right=False).sub_(1).clamp_(0, L - 2)
    idx = torch.stack((lo, lo + 1), dim=1)
    ct = centers.gather(1, idx.view(B, 2 * N)).view(B, 2, N)
    if kernel == "triangular":
        gap = ct[:, 1] - ct[:, 0]
        # gap == 0 (coincident centers) gives NaN / ±inf here: the lower center takes
        # the weight unless s lies above both (t = 0, 0, 1 for s =, <, > c)
        raw = (s2 - ct[:, 0]).div_(gap)
        t = raw.clamp(0.0, 1.0).nan_to_num_(0.0)
        w = torch.stack((1.0 - t, t), dim=1)
        if not slopes:
            return idx, w, None
        # the slope on the closed interval [c_lo, c_hi], as autograd's clamp has it
        dt = torch.where((raw >= 0) & (raw <= 1), gap.reciprocal(), 0.0)
        return idx, w, torch.stack((-dt, dt), dim=1)
    # stlnet: |c − s| < Δ, or s on the center (keeps a constant image, Δ = 0,
    # defined); of two coincident centers only the lower one counts
    e = s2[:, None] - ct
    d = e.abs()
    m = (d < _stl_delta(centers)[:, :, None]) | (d == 0)
    m[:, 1] &= ct[:, 1] > ct[:, 0]
    w = torch.where(m, 1.0 - d, 0.0)
    return idx, w, (torch.where(m, e.sign().neg_(), 0.0) if slopes else None)


def _pixel_chunks(B: int, N: int, parts: int = 16, least: int = 1 << 14):
    """Column slices of a (B, N) pixel map: about ``1/parts`` of the pixels each (at least
    ``least``), so the taps of one chunk (indices, weights, slopes: ≈ 60 bytes per pixel) stay
    about one input's size at any size, in at most ``parts`` rounds of small ops."""
    step = max(1, max(least, (B * N) // parts) // max(B, 1))
    return [slice(n0, min(N, n0 + step)) for n0 in range(0, N, step)]


def _scatter_taps(out: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out[b, n] += Σ_i w`` over taps ``idx``/``w`` (B, 2, n) of one chunk, in place."""
    B = idx.shape[0]
    return out.scatter_add_(1, idx.reshape(B, -1), w.reshape(B, -1))


def _count(s2: torch.Tensor, centers: torch.Tensor, kernel: str, moment: bool = False):
    """``Σ_i E_in`` (and ``Σ_i E_in·s_i``) per level, (B, L), chunk by chunk over the pixels (the
    order of the sums is the pixel order, as in one pass)."""
    B, N = s2.shape
    mass = torch.zeros(B, centers.shape[1], dtype=centers.dtype, device=centers.device)
    mom = torch.zeros_like(mass) if moment else None
    for sl in _pixel_chunks(B, N):
        sc = s2[:, sl].contiguous()
        idx, w, _ = _taps(sc, centers, kernel)
        _scatter_taps(mass, idx, w)
        if moment:
            _scatter_taps(mom, idx, w.mul_(sc[:, None]))
    return mass, mom


class _SoftCountRef(torch.autograd.Function):
    """``counts[b, n] = Σ_i E_in`` (B, L); backward recomputes the taps chunk by chunk and
    gathers their slopes (only ``s2`` and the centers are saved)."""

    @staticmethod
    def forward(ctx, s2, centers, kernel):
        ctx.save_for_backward(s2, centers)
        ctx.kernel = kernel
        return _count(s2.detach(), centers, kernel)[0]

    @staticmethod
    def backward(ctx, grad):
        s2, centers = ctx.saved_tensors
        B, N = s2.shape
        grad_s = torch.empty_like(s2)
        for sl in _pixel_chunks(B, N):
            idx, _, dw = _taps(s2[:, sl].contiguous(), centers, ctx.kernel, slopes=True)
            torch.sum(grad.gather(1, idx.view(B, -1)).view(dw.shape).mul_(dw), 1, out=grad_s[:, sl])
        return grad_s, None, None


# ----------------------------------------------------------------------------
# reference ops
# ----------------------------------------------------------------------------
def level_sums_ref(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_i E_in, Σ_i E_in·s_i)`` per level, (B, L) in the centers' dtype (the ``level_sums`` pass)."""
    return _count(s2.detach().to(centers.dtype), centers, kernel, moment=True)


def soft_hist_ref(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Normalized soft counts (B, L) at fixed ``centers``, differentiable in ``s2`` (the ``soft_hist`` pass)."""
    return normalize_rows(_SoftCountRef.apply(s2.to(centers.dtype), centers, kernel))


_PASSES = {"level_sums": level_sums_ref, "soft_hist": soft_hist_ref}


def quantize_count_ref(s2: torch.Tensor, levels: int, iters: int, kernel: str,
                       centers: torch.Tensor | None, quantiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`quantize_count` on validated (B, N) input; ``(centers, hist)`` in its compute dtype."""
    return algorithms.quantize_count(s2, levels, iters, kernel, centers, quantiles, _PASSES)


class _ReprojectRef(torch.autograd.Function):
    """``out[b, :, i] = w_lo·table[b, :, lo] + w_hi·table[b, :, hi]``.

    A custom Function so that neither pass keeps more than the output plus a
    chunk (over ``D``) of temporaries; plain autograd would save several
    (B, D, N) intermediates.
    """

    @staticmethod
    def forward(ctx, table, s2, centers, kernel):
        idx, w, dw = _taps(s2, centers, kernel, slopes=True)
        B, D, _ = table.shape
        N = s2.shape[1]
        out = table.gather(2, idx[:, None, 0].expand(B, D, N)).mul_(w[:, None, 0])
        for d0, d1 in _chunks(D, N):
            tap = table[:, d0:d1].gather(2, idx[:, None, 1].expand(B, d1 - d0, N))
            out[:, d0:d1].addcmul_(tap, w[:, None, 1])
        ctx.save_for_backward(table, idx, w, dw)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        table, idx, w, dw = ctx.saved_tensors
        B, D, L = table.shape
        N = idx.shape[2]
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        # Σ_d g·table[lo] and Σ_d g·table[hi] per pixel; times the slopes at the end
        tap_sums = torch.zeros_like(w) if ctx.needs_input_grad[1] else None
        for d0, d1 in _chunks(D, N):
            g = grad_out[:, d0:d1]
            for k in (0, 1):
                ik = idx[:, None, k].expand(B, d1 - d0, N)
                if grad_table is not None:
                    grad_table[:, d0:d1].scatter_add_(2, ik, g * w[:, None, k])
                if tap_sums is not None:
                    tap_sums[:, k] += table[:, d0:d1].gather(2, ik).mul_(g).sum(1)
        grad_s = None if tap_sums is None else tap_sums.mul_(dw).sum(1)
        return grad_table, grad_s, None, None


def _chunks(D: int, N: int, budget: int = 1 << 16):
    """Channel chunks: temporaries of at most half the output and about ``budget`` elements per image
    (small: the peak memory of reproject is then its output plus a few percent)."""
    step = max(1, min((D + 1) // 2, budget // max(N, 1)))
    return [(d0, min(D, d0 + step)) for d0 in range(0, D, step)]


def reproject_ref(table: torch.Tensor, s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Reference of :func:`reproject` on validated input in the compute dtype, (B, D, N)."""
    return _ReprojectRef.apply(table, s2, centers, kernel)


def _pair_index(H: int, W: int, dy: int, dx: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``i`` and ``j = i + (dy, dx)`` of all pairs inside an ``H×W`` image."""
    ys = torch.arange(max(0, -dy), H - max(0, dy), device=device)
    xs = torch.arange(max(0, -dx), W - max(0, dx), device=device)
    i = (ys[:, None] * W + xs[None, :]).reshape(-1)
    return i, i + (dy * W + dx)


class _CooccurrenceRef(torch.autograd.Function):
    """Unnormalized level co-occurrence counts (B, L·L) of pixel pairs (i, i + offset)."""

    @staticmethod
    def forward(ctx, s2, centers, H, W, offsets, kernel):
        B = s2.shape[0]
        L = centers.shape[1]
        idx, w, dw = _taps(s2, centers, kernel, slopes=True)
        counts = torch.zeros(B, L * L, dtype=s2.dtype, device=s2.device)
        for dy, dx in offsets:
            i, j = _pair_index(H, W, dy, dx, s2.device)
            # the 2 × 2 tap pairs of every pixel pair, (B, 2, 2, P)
            pair = idx[:, :, None, i] * L + idx[:, None, :, j]
            counts.scatter_add_(1, pair.reshape(B, -1), (w[:, :, None, i] * w[:, None, :, j]).reshape(B, -1))
        ctx.save_for_backward(idx, w, dw)
        ctx.geometry = (H, W, offsets, L)
        return counts

    @staticmethod
    def backward(ctx, grad):
        idx, w, dw = ctx.saved_tensors
        H, W, offsets, L = ctx.geometry
        B = idx.shape[0]
        grad_s = torch.zeros_like(w[:, 0])
        for dy, dx in offsets:
            i, j = _pair_index(H, W, dy, dx, idx.device)
            pair = idx[:, :, None, i] * L + idx[:, None, :, j]
            g = grad.gather(1, pair.reshape(B, -1)).view(pair.shape)  # (B, 2, 2, P)
            grad_s.index_add_(1, i, (g * w[:, None, :, j]).sum(2).mul_(dw[:, :, i]).sum(1))
            grad_s.index_add_(1, j, (g * w[:, :, None, i]).sum(1).mul_(dw[:, :, j]).sum(1))
        return grad_s, None, None, None, None, None


def cooccurrence_ref(s3: torch.Tensor, centers: torch.Tensor, offsets, kernel: str) -> torch.Tensor:
    """Reference of :func:`cooccurrence` on validated (B, H, W) input, (B, L, L)."""
    B, H, W = s3.shape
    L = centers.shape[1]
    counts = _CooccurrenceRef.apply(s3.reshape(B, -1), centers, H, W, tuple(offsets), kernel)
    return normalize_rows(counts).reshape(B, L, L)
