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

import math
from numbers import Real
from typing import Sequence

import torch
from torch import nn

from sstkd.ops._checks import check_int, check_same_device, check_tensor, compute_dtype, debug_checks_enabled
from sstkd.ops.dispatch import check_backend_name, resolve_backend

MAX_LEVELS = 1 << 16  # levels beyond this are no histogram (and would exhaust memory)
MAX_ITERS = 1000      # Lloyd steps; the centers stop moving long before

KERNELS = ("triangular", "stlnet")

__all__ = [
    "KERNELS",
    "QuantizeCount",
    "cooccurrence",
    "cooccurrence_ref",
    "initial_centers",
    "intensity_range",
    "lloyd_update",
    "quantize_count",
    "quantize_count_ref",
    "reproject",
    "reproject_ref",
]


# ----------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------
def _check_kernel(kernel) -> str:
    if not isinstance(kernel, str):
        raise TypeError(f"kernel: expected a str, got {type(kernel).__name__}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel: unknown encoding {kernel!r}; choose from {KERNELS}")
    return kernel


def _check_s(s, ndim=(2, 3)) -> torch.Tensor:
    return check_tensor(s, "s", ndim=ndim, finite=True)


def _check_centers(centers, batch: int, levels: int | None, s: torch.Tensor) -> torch.Tensor:
    check_tensor(centers, "centers", ndim=2, finite=True)
    check_same_device(s=s, centers=centers)
    if centers.shape[0] != batch:
        raise ValueError(f"centers: batch size {centers.shape[0]} does not match s ({batch})")
    if levels is not None and centers.shape[1] != levels:
        raise ValueError(f"centers: expected {levels} levels (shape ({batch}, {levels})), got {tuple(centers.shape)}")
    if centers.shape[1] < 2:
        raise ValueError(f"centers: need at least 2 levels, got shape {tuple(centers.shape)}")
    if debug_checks_enabled() and not bool((centers[:, 1:] >= centers[:, :-1]).all()):
        raise ValueError("centers: must be sorted ascending along the level axis")
    return centers


def _check_quantiles(quantiles) -> tuple[float, float] | None:
    if quantiles is None:
        return None
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence) or len(quantiles) != 2:
        raise TypeError(f"quantiles: expected a pair (q_lo, q_hi), got {quantiles!r}")
    lo, hi = quantiles
    if isinstance(lo, bool) or isinstance(hi, bool) or not isinstance(lo, Real) or not isinstance(hi, Real):
        raise TypeError(f"quantiles: expected two real numbers, got {quantiles!r}")
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"quantiles: need 0 <= q_lo < q_hi <= 1, got {quantiles!r}")
    return lo, hi


def _check_offsets(offsets, H: int, W: int) -> tuple[tuple[int, int], ...]:
    if isinstance(offsets, (str, bytes)) or not isinstance(offsets, Sequence) or len(offsets) == 0:
        raise TypeError(f"offsets: expected a non-empty sequence of (dy, dx) pairs, got {offsets!r}")
    out = []
    for off in offsets:
        if isinstance(off, (str, bytes)) or not isinstance(off, Sequence) or len(off) != 2:
            raise TypeError(f"offsets: each offset must be a (dy, dx) pair of ints, got {off!r}")
        dy, dx = off
        for v in (dy, dx):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"offsets: each offset must be a (dy, dx) pair of ints, got {off!r}")
        if abs(dy) >= H or abs(dx) >= W:
            raise ValueError(f"offsets: offset {off!r} leaves no pixel pair inside a {H}x{W} image")
        out.append((int(dy), int(dx)))
    return tuple(out)


def _flat(s: torch.Tensor) -> torch.Tensor:
    return s.reshape(s.shape[0], -1)


# ----------------------------------------------------------------------------
# shared building blocks (also used by the Triton launchers for the tiny
# (B, L) steps between passes)
# ----------------------------------------------------------------------------
def _quantile_rows(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of a sorted ``(B, N)`` tensor, linear interpolation (torch.quantile's rule)."""
    n = x.shape[1]
    pos = q * (n - 1)
    i0 = min(int(math.floor(pos)), n - 1)
    i1 = min(i0 + 1, n - 1)
    frac = pos - i0
    return x[:, i0] + (x[:, i1] - x[:, i0]) * frac


def intensity_range(s2: torch.Tensor, quantiles: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(smin, smax)`` per row of ``s2`` (B, N): extremes, or robust quantiles."""
    with torch.no_grad():
        if quantiles is None:
            return torch.aminmax(s2, dim=1)
        xs = s2.sort(dim=1).values
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


def _stl_delta(centers: torch.Tensor) -> torch.Tensor:
    """Per-image Δ of the stlnet encoding: mean spacing of the centers, (B, 1)."""
    L = centers.shape[1]
    return ((centers[:, -1] - centers[:, 0]) / (L - 1))[:, None]


def normalize_rows(counts: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum; an all-zero row (stlnet, no pixel near a center) stays zero."""
    total = counts.sum(dim=1, keepdim=True)
    return counts / torch.where(total != 0, total, torch.ones_like(total))


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


def _level_sums(idx: torch.Tensor, w: torch.Tensor, L: int) -> torch.Tensor:
    """``Σ_i w`` per level, (B, L), from taps ``idx``/``w`` (B, 2, N)."""
    B = idx.shape[0]
    out = torch.zeros(B, L, dtype=w.dtype, device=w.device)
    return out.scatter_add_(1, idx.view(B, -1), w.reshape(B, -1))


class _SoftCountRef(torch.autograd.Function):
    """``counts[b, n] = Σ_i E_in`` (B, L); backward gathers the two taps' slopes."""

    @staticmethod
    def forward(ctx, s2, centers, kernel):
        idx, w, dw = _taps(s2, centers, kernel, slopes=True)
        ctx.save_for_backward(idx, dw)
        return _level_sums(idx, w, centers.shape[1])

    @staticmethod
    def backward(ctx, grad):
        idx, dw = ctx.saved_tensors
        B = idx.shape[0]
        return grad.gather(1, idx.view(B, -1)).view(dw.shape).mul_(dw).sum(1), None, None


# ----------------------------------------------------------------------------
# reference ops
# ----------------------------------------------------------------------------
def quantize_count_ref(s2: torch.Tensor, levels: int, iters: int, kernel: str,
                       centers: torch.Tensor | None, quantiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`quantize_count` on validated (B, N) input in the compute dtype."""
    if centers is None:
        smin, smax = intensity_range(s2.detach(), quantiles)
        centers = initial_centers(smin, smax, levels)
        with torch.no_grad():
            sd = s2.detach()
            for _ in range(iters):
                idx, w, _ = _taps(sd, centers, kernel)
                mass = _level_sums(idx, w, levels)
                moment = _level_sums(idx, w.mul_(sd[:, None]), levels)
                moved = lloyd_update(centers, mass, moment)
                step = (moved - centers).abs().max()
                centers = moved
                # (long runs only: the check reads a value back from the device)
                if iters > 8 and step <= 4 * torch.finfo(sd.dtype).eps * centers.abs().max():
                    break  # the centers stopped moving (a few ulps): more steps change nothing
    hist = normalize_rows(_SoftCountRef.apply(s2, centers, kernel))
    return centers, hist


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


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
def _backend(op: str, backend: str, *tensors: torch.Tensor) -> str:
    """resolve_backend, plus the Triton kernels' dtype limit: float64 runs on the
    reference ("auto") or is refused (an explicit "triton")."""
    b = resolve_backend(op, backend, *tensors)
    if b == "triton" and any(t.dtype == torch.float64 for t in tensors):
        if backend == "auto":
            return "torch"
        raise RuntimeError(f"backend='triton' is unavailable for {op}: the kernels take "
                           "float32/float16/bfloat16, got float64 (use backend='torch')")
    return b


def quantize_count(s: torch.Tensor, levels: int, iters: int = 0, kernel: str = "triangular",
                   centers: torch.Tensor | None = None, quantiles=None,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize per-pixel intensities into ``levels`` levels and count them (soft histogram).

    Args:
        s: ``(B, N)`` or ``(B, H, W)`` (flattened) floating intensities, finite.
        levels: number of levels ``L >= 2``.
        iters: Lloyd refinement steps ``c_n ← Σ_i E_in s_i / Σ_i E_in`` before the
            final count (empty levels keep their center; centers are re-sorted,
            which for either encoding with non-negative weights only guards
            against rounding). Each step minimizes the weighted quantization
            error ``Q(c; E) = Σ_i Σ_n E_in (s_i − c_n)²`` over ``c`` for the
            encoding ``E`` of the current centers, so it never increases
            ``Q``; the error re-evaluated with the new encoding (and the hard
            nearest-center error) need not decrease — the soft encoding moves
            under the centers. Must be 0 when ``centers`` is given.
        kernel: ``"triangular"`` or ``"stlnet"`` (see the module docstring).
        centers: optional ``(B, L)`` ascending centers to quantize with as given
            (no range, no refinement), e.g. a teacher's refined centers.
        quantiles: optional ``(q_lo, q_hi)``, ``0 <= q_lo < q_hi <= 1``: the initial
            range is the per-image quantiles of ``s`` (linear interpolation)
            instead of its extremes. Must be None when ``centers`` is given.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(centers, hist)``, both ``(B, L)`` in the dtype of ``s`` (float16 /
        bfloat16 compute in float32). ``hist`` is non-negative and sums to 1 per
        image (for ``"stlnet"``, an image with no pixel within ``Δ`` of any
        center gets an all-zero row). Initial centers are
        ``c_n = smin + (n + ½)(smax − smin)/L``; a constant image gives all
        centers equal to its value and all weight in bin 0. ``centers`` carries
        no gradient; ``hist`` is differentiable w.r.t. ``s`` through ``E``
        only (centers are constants).

    Raises:
        TypeError / ValueError naming the argument for bad input (rank, dtype,
        empty, NaN/Inf, levels < 2, unsorted or mis-shaped centers, ...).
    """
    _check_s(s)
    check_int(levels, "levels", minimum=2, maximum=MAX_LEVELS)
    check_int(iters, "iters", minimum=0, maximum=MAX_ITERS)
    kernel = _check_kernel(kernel)
    quantiles = _check_quantiles(quantiles)
    B = s.shape[0]
    if centers is not None:
        _check_centers(centers, B, levels, s)
        if iters:
            raise ValueError(f"iters: must be 0 when centers are given (they are used as is), got {iters}")
        if quantiles is not None:
            raise ValueError("quantiles: must be None when centers are given (they are used as is)")
    b = _backend("quantize_count", backend, s)
    cdt = compute_dtype(s)
    s2 = _flat(s)
    cen = None if centers is None else centers.detach().to(cdt)
    if b == "triton":
        from sstkd.kernels.quantize import quantize_count_triton

        c, h = quantize_count_triton(s2, levels, iters, kernel, cen, quantiles)
    elif b == "cuda":
        from sstkd.ops._cuda_ops import quantize_count_cuda

        c, h = quantize_count_cuda(s2, levels, iters, kernel, cen, quantiles)
    else:
        c, h = quantize_count_ref(s2.to(cdt), levels, iters, kernel, cen, quantiles)
    return c.to(s.dtype), h.to(s.dtype)


def reproject(table: torch.Tensor, s: torch.Tensor, centers: torch.Tensor, kernel: str = "triangular",
              backend: str = "auto") -> torch.Tensor:
    """Map a per-level table back to the pixels: ``out[b, :, i] = Σ_n E_in · table[b, :, n]``.

    ``E`` is the unnormalized encoding (≤ 2 taps per pixel), so this is a
    two-tap gather; with ``table = cdf[:, None]`` it is histogram equalization.

    Args:
        table: ``(B, D, L)`` floating.
        s: ``(B, N)`` or ``(B, H, W)`` floating intensities, finite.
        centers: ``(B, L)`` ascending centers, ``L >= 2`` (no gradient).
        kernel: ``"triangular"`` or ``"stlnet"``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(B, D, N)`` (or ``(B, D, H, W)`` for 3-D ``s``) in the dtype of
        ``table``; differentiable w.r.t. ``table`` and ``s``.
    """
    check_tensor(table, "table", ndim=3, finite=True)
    _check_s(s)
    kernel = _check_kernel(kernel)
    check_same_device(table=table, s=s)
    B = s.shape[0]
    if table.shape[0] != B:
        raise ValueError(f"table: batch size {table.shape[0]} does not match s ({B})")
    _check_centers(centers, B, table.shape[2], s)
    b = _backend("reproject", backend, table, s)
    cdt = torch.float64 if torch.float64 in (table.dtype, s.dtype) else torch.float32
    s2 = _flat(s)
    cen = centers.detach().to(cdt)
    if b == "triton":
        from sstkd.kernels.quantize import reproject_triton

        out = reproject_triton(table, s2, cen, kernel)
    else:
        out = reproject_ref(table.to(cdt), s2.to(cdt), cen, kernel)
    out = out.to(table.dtype)
    return out.reshape(B, table.shape[1], *s.shape[1:])


def cooccurrence(s: torch.Tensor, centers: torch.Tensor, offsets=((0, 1), (1, 0)), kernel: str = "triangular",
                 backend: str = "auto") -> torch.Tensor:
    """Normalized co-occurrence of the levels of neighbouring pixels.

    For every offset ``(dy, dx)`` and every pixel pair ``i = (y, x)``,
    ``j = (y + dy, x + dx)`` inside the image (no wrap), accumulates
    ``E_ia · E_jb`` into ``M[a, b]`` (≤ 4 entries per pair); ``M`` is
    normalized to sum 1 per image (an all-zero ``M`` stays zero).

    Args:
        s: ``(B, H, W)`` floating intensities, finite.
        centers: ``(B, L)`` ascending centers, ``L >= 2`` (no gradient).
        offsets: non-empty sequence of ``(dy, dx)`` int pairs with
            ``|dy| < H`` and ``|dx| < W``.
        kernel: ``"triangular"`` or ``"stlnet"``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(B, L, L)`` in the dtype of ``s``, differentiable w.r.t. ``s``.
    """
    _check_s(s, ndim=3)
    kernel = _check_kernel(kernel)
    B, H, W = s.shape
    _check_centers(centers, B, None, s)
    offsets = _check_offsets(offsets, H, W)
    b = _backend("cooccurrence", backend, s)
    cdt = compute_dtype(s)
    cen = centers.detach().to(cdt)
    if b == "triton":
        from sstkd.kernels.quantize import cooccurrence_triton

        out = cooccurrence_triton(s, cen, offsets, kernel)
    else:
        out = cooccurrence_ref(s.to(cdt), cen, offsets, kernel)
    return out.to(s.dtype)


class QuantizeCount(nn.Module):
    """Module form of :func:`quantize_count`.

    Args:
        levels: number of levels ``L >= 2``.
        iters: Lloyd refinement steps (ignored when ``forward`` gets ``centers``).
        kernel: ``"triangular"`` or ``"stlnet"``.
        quantiles: optional robust range ``(q_lo, q_hi)`` (ignored with ``centers``).
        backend: backend name.

    ``forward(s, centers=None) -> (centers (B, L), hist (B, L))``.
    """

    def __init__(self, levels: int, iters: int = 0, kernel: str = "triangular", quantiles=None,
                 backend: str = "auto"):
        super().__init__()
        self.levels = check_int(levels, "levels", minimum=2, maximum=MAX_LEVELS)
        self.iters = check_int(iters, "iters", minimum=0, maximum=MAX_ITERS)
        self.kernel = _check_kernel(kernel)
        self.quantiles = _check_quantiles(quantiles)
        self.backend = check_backend_name(backend)

    def forward(self, s: torch.Tensor, centers: torch.Tensor | None = None):
        if centers is not None:
            return quantize_count(s, self.levels, 0, self.kernel, centers=centers, backend=self.backend)
        return quantize_count(s, self.levels, self.iters, self.kernel, quantiles=self.quantiles,
                              backend=self.backend)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, iters={self.iters}, kernel={self.kernel!r}, quantiles={self.quantiles}"
