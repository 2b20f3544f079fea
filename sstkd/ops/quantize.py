"""Quantization and counting of per-pixel texture intensities (DESIGN.md §3.2): the public ops.

The encoding, its taps and the PyTorch reference are described in
:mod:`sstkd.ops.reference.quantize`; the range and the Lloyd refinement are written once in
:mod:`sstkd.ops.algorithms`; the backends' passes are found through :mod:`sstkd.ops.dispatch`.
"""
from __future__ import annotations

from numbers import Real
from typing import Sequence

import torch
from torch import nn

from sstkd._util import compute_dtype, flat_rows
from sstkd.ops import algorithms, dispatch
from sstkd.ops._checks import check_int, check_same_device, check_tensor
from sstkd.ops.reference.quantize import (  # noqa: F401  (re-exported)
    KERNELS,
    _chunks,
    cooccurrence_ref,
    initial_centers,
    intensity_range,
    lloyd_update,
    normalize_rows,
    quantize_count_ref,
    reproject_ref,
)

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
    if not bool((centers[:, 1:] >= centers[:, :-1]).all()):
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
    check_int(levels, "levels", minimum=2)
    check_int(iters, "iters", minimum=0)
    kernel = _check_kernel(kernel)
    quantiles = _check_quantiles(quantiles)
    B = s.shape[0]
    if centers is not None:
        _check_centers(centers, B, levels, s)
        if iters:
            raise ValueError(f"iters: must be 0 when centers are given (they are used as is), got {iters}")
        if quantiles is not None:
            raise ValueError("quantiles: must be None when centers are given (they are used as is)")
    passes = dispatch.passes("quantize_count", backend, s)
    cen = None if centers is None else centers.detach().to(compute_dtype(s))
    c, h = algorithms.quantize_count(flat_rows(s), levels, iters, kernel, cen, quantiles, passes)
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
    run = dispatch.resolve("reproject", backend, table, s)
    cdt = torch.float64 if torch.float64 in (table.dtype, s.dtype) else torch.float32
    out = run(table, flat_rows(s), centers.detach().to(cdt), kernel).to(table.dtype)
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
    run = dispatch.resolve("cooccurrence", backend, s)
    return run(s, centers.detach().to(compute_dtype(s)), offsets, kernel).to(s.dtype)


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
        self.levels = check_int(levels, "levels", minimum=2)
        self.iters = check_int(iters, "iters", minimum=0)
        self.kernel = _check_kernel(kernel)
        self.quantiles = _check_quantiles(quantiles)
        self.backend = backend

    def forward(self, s: torch.Tensor, centers: torch.Tensor | None = None):
        if centers is not None:
            return quantize_count(s, self.levels, 0, self.kernel, centers=centers, backend=self.backend)
        return quantize_count(s, self.levels, self.iters, self.kernel, quantiles=self.quantiles,
                              backend=self.backend)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, iters={self.iters}, kernel={self.kernel!r}, quantiles={self.quantiles}"
