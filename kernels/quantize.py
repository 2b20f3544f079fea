"""Fused Triton kernels of ``quantize_count``, ``reproject`` and ``cooccurrence`` with autograd.

Same encoding as the reference (``sstkd.ops.quantize``): every pixel has two
taps ``lo``, ``hi = lo + 1`` (``lo`` = number of centers strictly below ``s``
minus one, clamped to ``[0, L − 2]``, found by a branchless binary search over
the image's sorted centers) with triangular or stlnet weights. Nothing of
size pixels × levels ever touches memory:

* ``_count_kernel`` — one pass over the pixels: each program reduces its
  chunk of pixels into a private per-level histogram held in registers (a
  one-hot tile ``BLOCK_N × BLOCK_L`` reduced over the pixels, no atomics
  inside the program), optionally with the Lloyd moment ``Σ w·s`` beside the
  mass ``Σ w``; the private histograms are merged with one float atomic per
  level and program, or stored as per-program partials.
* the ``(B, L)`` bookkeeping, one program per image and one launch each:
  ``_init_centers_kernel`` (range from the min/max partials or the sorted
  rows' quantiles, initial centers, zeroed Lloyd sums), ``_lloyd_kernel``
  (one Lloyd update, sorted in registers), ``_normalize_kernel`` /
  ``_normalize_backward_kernel`` (the histogram's row normalization and its
  Jacobian, reading the partials directly). ``start_centers_triton`` is the fused
  ``start_centers`` pass (the Lloyd loop itself stays in ``sstkd.ops.algorithms``): ``quantize_count(iters=3)`` is 10 launches forward, 1 backward.
* ``_count_backward_kernel`` — one pass: ``grad_s = g[lo]·w'_lo + g[hi]·w'_hi``,
  with ``g`` the gradient w.r.t. the unnormalized counts (each program applies
  the normalization's Jacobian to the ``(B, L)`` gradient itself).
* ``_reproject_kernel`` (two-tap gather), ``_reproject_grad_s_kernel`` (gather)
  and ``_reproject_grad_table_kernel`` (per program, the ``(D × pixels) ·
  (pixels × L)`` tile product ``G · E`` — the scatter of ``g·w`` into
  ``(D, L)`` for a chunk of pixels, as an exact fp32 broadcast product reduced
  over the pixels (an IEEE fp32 ``tl.dot`` spilled; TF32 would cost ~1e-3
  relative) — merged with one atomic per entry and program).
* ``_cooc_atomic_kernel`` (≤ 4 float atomics per pixel pair into the ``L²``
  counts: the targets are spread, so contention is low) and
  ``_cooc_backward_kernel`` (gathers only).

Determinism: when ``torch.are_deterministic_algorithms_enabled()``, every
merge that would use float atomics instead stores the per-program partials
(``(B, P, M)`` float32 for ``P`` pixel chunks and ``M = L``, ``D·L`` or
``L·L``) and ``_sum_partials_kernel`` adds them in a fixed order; the
co-occurrence then counts with ``_cooc_partial_kernel``, which reduces
one-hot tiles over all ``L²`` level pairs in registers. Cost: the partial
buffers (e.g. B·P·L² floats for the co-occurrence), one more launch per
reduction reading them back, and for the co-occurrence O(L²) instead of O(1)
work per pixel pair (grid over L²/128 pair tiles); results are bitwise
reproducible run to run. The backward passes are gathers and always
deterministic except ``grad_table``, which follows the same rule.

Inputs are float32 / float16 / bfloat16 (loaded in their dtype, computed and
accumulated in float32); the launchers never sync with the host and run on
the current stream. No autotuning (launch parameters are fixed functions of
the shapes), so importing this module never needs a GPU.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sstkd._util import device_guard as _guard
from sstkd._util import triton_interpreted as _interpreted

__all__ = [
    "KERNEL_IDS",
    "SUPPORTED_DTYPES",
    "cooccurrence_triton",
    "level_sums_triton",
    "minmax_triton",
    "reproject_triton",
    "soft_hist_triton",
    "start_centers_triton",
]

KERNEL_IDS = {"triangular": 0, "stlnet": 1}
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- device functions
@triton.jit
def _taps(s, valid, cen_row, L, LOG_L: tl.constexpr, KERNEL: tl.constexpr):
    """Taps of the pixels ``s`` (fp32, BLOCK) of one image: lo, hi, w_lo, w_hi, dw_lo, dw_hi.

    ``cen_row`` points at the image's ``L`` sorted fp32 centers. Invalid lanes
    get zero weights and slopes (their indices are in range).
    """
    # count of centers strictly below s (torch.searchsorted(..., right=False))
    pos = tl.zeros(s.shape, dtype=tl.int32)
    for k in tl.static_range(LOG_L):
        cand = pos + (1 << (LOG_L - 1 - k))
        inside = cand <= L
        c = tl.load(cen_row + (cand - 1), mask=inside, other=0.0)
        pos = tl.where(inside & (c < s), cand, pos)
    lo = tl.minimum(tl.maximum(pos - 1, 0), L - 2)
    hi = lo + 1
    c_lo = tl.load(cen_row + lo)
    c_hi = tl.load(cen_row + hi)
    if KERNEL == 0:  # triangular: linear interpolation between the two centers
        gap = c_hi - c_lo
        spaced = gap > 0
        safe = tl.where(spaced, gap, 1.0)
        raw = tl.math.div_rn(s - c_lo, safe)  # IEEE-rounded, as torch divides
        t = tl.where(spaced, tl.minimum(tl.maximum(raw, 0.0), 1.0), tl.where(s > c_lo, 1.0, 0.0))
        dt = tl.where(spaced & (raw >= 0.0) & (raw <= 1.0), tl.math.div_rn(1.0, safe), 0.0)
        w_lo = 1.0 - t
        w_hi = t
        dw_lo = -dt
        dw_hi = dt
    else:  # stlnet: (1 - |c - s|)·[|c - s| < Δ], Δ the mean spacing
        delta = tl.math.div_rn(tl.load(cen_row + L - 1) - tl.load(cen_row), (L - 1).to(tl.float32))
        e_lo = s - c_lo
        e_hi = s - c_hi
        d_lo = tl.abs(e_lo)
        d_hi = tl.abs(e_hi)
        m_lo = (d_lo < delta) | (d_lo == 0.0)
        m_hi = ((d_hi < delta) | (d_hi == 0.0)) & (c_hi > c_lo)
        w_lo = tl.where(m_lo, 1.0 - d_lo, 0.0)
        w_hi = tl.where(m_hi, 1.0 - d_hi, 0.0)
        dw_lo = tl.where(m_lo & (e_lo != 0.0), tl.where(e_lo > 0.0, -1.0, 1.0), 0.0)
        dw_hi = tl.where(m_hi & (e_hi != 0.0), tl.where(e_hi > 0.0, -1.0, 1.0), 0.0)
    w_lo = tl.where(valid, w_lo, 0.0)
    w_hi = tl.where(valid, w_hi, 0.0)
    dw_lo = tl.where(valid, dw_lo, 0.0)
    dw_hi = tl.where(valid, dw_hi, 0.0)
    return lo, hi, w_lo, w_hi, dw_lo, dw_hi


# --------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=("N", "P", "CHUNK"))
def _minmax_kernel(S, PMIN, PMAX, N, P, CHUNK, BLOCK_N: tl.constexpr):
    """Per-program min / max of a chunk of one image -> PMIN/PMAX[b, p]."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    lo = tl.full((BLOCK_N,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    for n0 in range(0, CHUNK, BLOCK_N):
        offs = p * CHUNK + n0 + tl.arange(0, BLOCK_N)
        ok = offs < N
        s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
        lo = tl.minimum(lo, tl.where(ok, s, float("inf")))
        hi = tl.maximum(hi, tl.where(ok, s, float("-inf")))
    tl.store(PMIN + b * P + p, tl.min(lo, axis=0))
    tl.store(PMAX + b * P + p, tl.max(hi, axis=0))


@triton.jit(do_not_specialize=("N", "L", "P", "CHUNK"))
def _count_kernel(S, CEN, MASS, MOMENT, N, L, P,
                  LOG_L: tl.constexpr, KERNEL: tl.constexpr, WITH_MOMENT: tl.constexpr,
                  DETERMINISTIC: tl.constexpr, CHUNK, BLOCK_N: tl.constexpr,
                  BLOCK_L: tl.constexpr):
    """Σ_i w (and Σ_i w·s) per level over one chunk of one image's pixels.

    Atomic mode: adds into MASS/MOMENT (B, L). Deterministic mode: stores the
    program's partial into MASS/MOMENT (B, P, L).
    """
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cen_row = CEN + b * L
    for l0 in range(0, L, BLOCK_L):
        bins = l0 + tl.arange(0, BLOCK_L)
        acc_m = tl.zeros((BLOCK_L,), dtype=tl.float32)
        acc_s = tl.zeros((BLOCK_L,), dtype=tl.float32)
        for n0 in range(0, CHUNK, BLOCK_N):
            offs = p * CHUNK + n0 + tl.arange(0, BLOCK_N)
            ok = offs < N
            s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
            lo, hi, w_lo, w_hi, dw_lo, dw_hi = _taps(s, ok, cen_row, L, LOG_L, KERNEL)
            onehot = (tl.where(lo[:, None] == bins[None, :], w_lo[:, None], 0.0)
                      + tl.where(hi[:, None] == bins[None, :], w_hi[:, None], 0.0))
            acc_m += tl.sum(onehot, axis=0)
            if WITH_MOMENT:
                acc_s += tl.sum(onehot * s[:, None], axis=0)
        keep = bins < L
        if DETERMINISTIC:
            dst = (b * P + p) * L + bins
            tl.store(MASS + dst, acc_m, mask=keep)
            if WITH_MOMENT:
                tl.store(MOMENT + dst, acc_s, mask=keep)
        else:
            tl.atomic_add(MASS + b * L + bins, acc_m, mask=keep)
            if WITH_MOMENT:
                tl.atomic_add(MOMENT + b * L + bins, acc_s, mask=keep)


@triton.jit(do_not_specialize=("P", "M"))
def _sum_partials_kernel(PART, OUT, P, M, BLOCK: tl.constexpr):
    """OUT[b, m] = Σ_p PART[b, p, m], p in increasing order (deterministic merge)."""
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = m < M
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for p in range(0, P):
        acc += tl.load(PART + (b * P + p) * M + m, mask=keep, other=0.0)
    tl.store(OUT + b * M + m, acc, mask=keep)


@triton.jit(do_not_specialize=("N", "L"))
def _count_backward_kernel(S, CEN, G, HIST, TOTAL, GS, N, L, G_SB, G_SM,
                           LOG_L: tl.constexpr, KERNEL: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_L: tl.constexpr):
    """grad_s[b, i] = gc[lo]·w'_lo + gc[hi]·w'_hi, with gc = (g − Σ g·h) / total the gradient of
    the raw counts of ``h = counts / total`` (rows of zeros: gc = g). Each program forms the
    (B, L) Jacobian's dot product itself (L values), so the normalization needs no launch;
    G (the histogram's gradient, any float dtype) is read through its strides."""
    b = tl.program_id(1).to(tl.int64)
    gh = tl.zeros((BLOCK_L,), dtype=tl.float32)
    hs = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        m = l0 + tl.arange(0, BLOCK_L)
        keep = m < L
        h = tl.load(HIST + b * L + m, mask=keep, other=0.0)
        gh += tl.load(G + b * G_SB + m * G_SM, mask=keep, other=0.0).to(tl.float32) * h
        hs += h
    dot = tl.sum(gh, axis=0)
    live = tl.sum(hs, axis=0) != 0
    total = tl.load(TOTAL + b)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < N
    s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    lo, hi, w_lo, w_hi, dw_lo, dw_hi = _taps(s, ok, CEN + b * L, L, LOG_L, KERNEL)
    g_lo = tl.load(G + b * G_SB + lo * G_SM).to(tl.float32)
    g_hi = tl.load(G + b * G_SB + hi * G_SM).to(tl.float32)
    gc_lo = tl.where(live, (g_lo - dot) / total, g_lo)
    gc_hi = tl.where(live, (g_hi - dot) / total, g_hi)
    tl.store(GS + b * N + offs, (gc_lo * dw_lo + gc_hi * dw_hi).to(GS.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=("N", "D", "L"))
def _reproject_kernel(T, S, CEN, OUT, N, D, L,
                      LOG_L: tl.constexpr, KERNEL: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[b, d, i] = w_lo·T[b, d, lo] + w_hi·T[b, d, hi]."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < N
    s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    lo, hi, w_lo, w_hi, dw_lo, dw_hi = _taps(s, ok, CEN + b * L, L, LOG_L, KERNEL)
    t_row = T + b * D * L
    o_row = OUT + b * D * N
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = (d[:, None] < D) & ok[None, :]
        t_lo = tl.load(t_row + d[:, None] * L + lo[None, :], mask=m, other=0.0).to(tl.float32)
        t_hi = tl.load(t_row + d[:, None] * L + hi[None, :], mask=m, other=0.0).to(tl.float32)
        out = t_lo * w_lo[None, :] + t_hi * w_hi[None, :]
        tl.store(o_row + d[:, None] * N + offs[None, :], out.to(OUT.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=("N", "D", "L", "sgb", "sgd", "sgn"))
def _reproject_grad_s_kernel(T, S, CEN, G, GS, N, D, L, sgb, sgd, sgn,
                             LOG_L: tl.constexpr, KERNEL: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_s[b, i] = Σ_d G[b, d, i]·(T[b, d, lo]·w'_lo + T[b, d, hi]·w'_hi) (G strided)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < N
    s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    lo, hi, w_lo, w_hi, dw_lo, dw_hi = _taps(s, ok, CEN + b * L, L, LOG_L, KERNEL)
    t_row = T + b * D * L
    acc_lo = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_hi = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        m = (d[:, None] < D) & ok[None, :]
        g = tl.load(G + b * sgb + d[:, None] * sgd + offs[None, :] * sgn, mask=m, other=0.0).to(tl.float32)
        t_lo = tl.load(t_row + d[:, None] * L + lo[None, :], mask=m, other=0.0).to(tl.float32)
        t_hi = tl.load(t_row + d[:, None] * L + hi[None, :], mask=m, other=0.0).to(tl.float32)
        acc_lo += tl.sum(g * t_lo, axis=0)
        acc_hi += tl.sum(g * t_hi, axis=0)
    tl.store(GS + b * N + offs, (acc_lo * dw_lo + acc_hi * dw_hi).to(GS.dtype.element_ty), mask=ok)


@triton.jit
def _grad_table_tile(S, CEN, G, GT, N, D, L, P, sgb, sgd, sgn, p, b, d, l0, CHUNK,
                     LOG_L: tl.constexpr, KERNEL: tl.constexpr, DETERMINISTIC: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """grad_table[b, d, l0:l0 + BLOCK_L] of the program's pixel chunk, merged into GT."""
    bins = l0 + tl.arange(0, BLOCK_L)
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for n0 in range(0, CHUNK, BLOCK_N):
        offs = p * CHUNK + n0 + tl.arange(0, BLOCK_N)
        ok = offs < N
        s = tl.load(S + b * N + offs, mask=ok, other=0.0).to(tl.float32)
        lo, hi, w_lo, w_hi, dw_lo, dw_hi = _taps(s, ok, CEN + b * L, L, LOG_L, KERNEL)
        enc = (tl.where(lo[:, None] == bins[None, :], w_lo[:, None], 0.0)
               + tl.where(hi[:, None] == bins[None, :], w_hi[:, None], 0.0))
        m = (d[:, None] < D) & ok[None, :]
        g = tl.load(G + b * sgb + d[:, None] * sgd + offs[None, :] * sgn, mask=m, other=0.0).to(tl.float32)
        # a broadcast product reduced over the pixels: exact fp32 like an IEEE dot, but small
        # tiles stay in registers (the FMA-unrolled fp32 tl.dot spilled kilobytes per thread)
        acc += tl.sum(g[:, :, None] * enc[None, :, :], axis=1)
    keep = (d[:, None] < D) & (bins[None, :] < L)
    if DETERMINISTIC:
        tl.store(GT + ((b * P + p) * D + d[:, None]) * L + bins[None, :], acc, mask=keep)
    else:
        tl.atomic_add(GT + (b * D + d[:, None]) * L + bins[None, :], acc, mask=keep)


@triton.jit(do_not_specialize=("N", "D", "L", "P", "sgb", "sgd", "sgn", "CHUNK"))
def _reproject_grad_table_kernel(S, CEN, G, GT, N, D, L, P, sgb, sgd, sgn,
                                 LOG_L: tl.constexpr, KERNEL: tl.constexpr,
                                 DETERMINISTIC: tl.constexpr, CHUNK,
                                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                 BLOCK_L: tl.constexpr, ONE_L_TILE: tl.constexpr):
    """grad_table[b, d, n] += Σ_{i in chunk} G[b, d, i]·E_in as a (D × pixels)·(pixels × L) tile product.

    Atomic mode: adds into GT (B, D, L); deterministic: stores GT[b, p] (B, P, D, L).
    ``ONE_L_TILE`` (the launcher's promise that L ≤ BLOCK_L): one pass over the pixels, so the
    taps are searched once per pixel instead of once per level tile.
    """
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    if ONE_L_TILE:
        _grad_table_tile(S, CEN, G, GT, N, D, L, P, sgb, sgd, sgn, p, b, d, 0, CHUNK,
                         LOG_L, KERNEL, DETERMINISTIC, BLOCK_N, BLOCK_D, BLOCK_L)
    else:
        for l0 in range(0, L, BLOCK_L):
            _grad_table_tile(S, CEN, G, GT, N, D, L, P, sgb, sgd, sgn, p, b, d, l0, CHUNK,
                             LOG_L, KERNEL, DETERMINISTIC, BLOCK_N, BLOCK_D, BLOCK_L)


@triton.jit
def _pair_taps(s_img, cen_row, i, W, H, HW, dy, dx, L, LOG_L: tl.constexpr, KERNEL: tl.constexpr):
    """Taps of the pixels ``i`` and of their partners ``i + (dy, dx)`` (invalid pairs: zero weights)."""
    y = i // W + dy
    x = i % W + dx
    pair = (i < HW) & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    s_i = tl.load(s_img + i, mask=pair, other=0.0).to(tl.float32)
    s_j = tl.load(s_img + y * W + x, mask=pair, other=0.0).to(tl.float32)
    lo_i, hi_i, wl_i, wh_i, _a, _b = _taps(s_i, pair, cen_row, L, LOG_L, KERNEL)
    lo_j, hi_j, wl_j, wh_j, _c, _d = _taps(s_j, pair, cen_row, L, LOG_L, KERNEL)
    return lo_i, hi_i, wl_i, wh_i, lo_j, hi_j, wl_j, wh_j


@triton.jit(do_not_specialize=("H", "W", "L", "NUM_OFF"))
def _cooc_atomic_kernel(S, CEN, OFF, CNT, H, W, L, NUM_OFF,
                        LOG_L: tl.constexpr, KERNEL: tl.constexpr, BLOCK_N: tl.constexpr):
    """CNT[b, a, c] += E_ia·E_jc for the ≤ 4 level pairs of every pixel pair (float atomics;
    the L² targets spread the contention)."""
    b = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    HW = H * W
    s_img = S + b * HW
    cen_row = CEN + b * L
    cnt = CNT + b * L * L
    for o in range(0, NUM_OFF):
        dy = tl.load(OFF + 2 * o)
        dx = tl.load(OFF + 2 * o + 1)
        lo_i, hi_i, wl_i, wh_i, lo_j, hi_j, wl_j, wh_j = _pair_taps(
            s_img, cen_row, i, W, H, HW, dy, dx, L, LOG_L, KERNEL)
        tl.atomic_add(cnt + lo_i * L + lo_j, wl_i * wl_j, mask=(wl_i * wl_j) != 0.0)
        tl.atomic_add(cnt + lo_i * L + hi_j, wl_i * wh_j, mask=(wl_i * wh_j) != 0.0)
        tl.atomic_add(cnt + hi_i * L + lo_j, wh_i * wl_j, mask=(wh_i * wl_j) != 0.0)
        tl.atomic_add(cnt + hi_i * L + hi_j, wh_i * wh_j, mask=(wh_i * wh_j) != 0.0)


@triton.jit(do_not_specialize=("H", "W", "L", "P", "NUM_OFF", "CHUNK"))
def _cooc_partial_kernel(S, CEN, OFF, PART, H, W, L, P, NUM_OFF,
                         LOG_L: tl.constexpr, KERNEL: tl.constexpr, CHUNK,
                         BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """Deterministic mode: PART[b, p, m] = this chunk's counts of the flat level pairs
    ``m = a·L + c`` in one ``BLOCK_M`` tile, reduced in registers (one-hot tiles, no atomics)."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    HW = H * W
    s_img = S + b * HW
    cen_row = CEN + b * L
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for o in range(0, NUM_OFF):
        dy = tl.load(OFF + 2 * o)
        dx = tl.load(OFF + 2 * o + 1)
        for n0 in range(0, CHUNK, BLOCK_N):
            i = p * CHUNK + n0 + tl.arange(0, BLOCK_N)
            lo_i, hi_i, wl_i, wh_i, lo_j, hi_j, wl_j, wh_j = _pair_taps(
                s_img, cen_row, i, W, H, HW, dy, dx, L, LOG_L, KERNEL)
            mm = m[None, :]
            onehot = (tl.where((lo_i * L + lo_j)[:, None] == mm, (wl_i * wl_j)[:, None], 0.0)
                      + tl.where((lo_i * L + hi_j)[:, None] == mm, (wl_i * wh_j)[:, None], 0.0)
                      + tl.where((hi_i * L + lo_j)[:, None] == mm, (wh_i * wl_j)[:, None], 0.0)
                      + tl.where((hi_i * L + hi_j)[:, None] == mm, (wh_i * wh_j)[:, None], 0.0))
            acc += tl.sum(onehot, axis=0)
    tl.store(PART + (b * P + p) * L * L + m, acc, mask=m < L * L)


@triton.jit(do_not_specialize=("H", "W", "L", "NUM_OFF"))
def _cooc_backward_kernel(S, CEN, OFF, GC, GS, H, W, L, NUM_OFF,
                          LOG_L: tl.constexpr, KERNEL: tl.constexpr, BLOCK_N: tl.constexpr):
    """grad_s of the raw co-occurrence counts: each pixel as the first and as the second of a pair."""
    b = tl.program_id(1).to(tl.int64)
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    HW = H * W
    ok = i < HW
    s_img = S + b * HW
    cen_row = CEN + b * L
    g_img = GC + b * L * L
    s_i = tl.load(s_img + i, mask=ok, other=0.0).to(tl.float32)
    lo_i, hi_i, wl_i, wh_i, dl_i, dh_i = _taps(s_i, ok, cen_row, L, LOG_L, KERNEL)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    yi = i // W
    xi = i % W
    for o in range(0, NUM_OFF):
        dy = tl.load(OFF + 2 * o)
        dx = tl.load(OFF + 2 * o + 1)
        # i first, partner j = i + offset: d/ds_i of E_ia(i)·E_jb(j)
        y = yi + dy
        x = xi + dx
        pair = ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        s_j = tl.load(s_img + y * W + x, mask=pair, other=0.0).to(tl.float32)
        lo_j, hi_j, wl_j, wh_j, _a, _b = _taps(s_j, pair, cen_row, L, LOG_L, KERNEL)
        r_lo = (tl.load(g_img + lo_i * L + lo_j) * wl_j + tl.load(g_img + lo_i * L + hi_j) * wh_j)
        r_hi = (tl.load(g_img + hi_i * L + lo_j) * wl_j + tl.load(g_img + hi_i * L + hi_j) * wh_j)
        acc += r_lo * dl_i + r_hi * dh_i
        # i second, partner k = i - offset: d/ds_i of E_ka(k)·E_ib(i)
        y = yi - dy
        x = xi - dx
        pair = ok & (y >= 0) & (y < H) & (x >= 0) & (x < W)
        s_k = tl.load(s_img + y * W + x, mask=pair, other=0.0).to(tl.float32)
        lo_k, hi_k, wl_k, wh_k, _c, _d = _taps(s_k, pair, cen_row, L, LOG_L, KERNEL)
        c_lo = (tl.load(g_img + lo_k * L + lo_i) * wl_k + tl.load(g_img + hi_k * L + lo_i) * wh_k)
        c_hi = (tl.load(g_img + lo_k * L + hi_i) * wl_k + tl.load(g_img + hi_k * L + hi_i) * wh_k)
        acc += c_lo * dl_i + c_hi * dh_i
    tl.store(GS + b * HW + i, acc.to(GS.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------- (B, L) bookkeeping
# One program per image: the range, the initial centers, a Lloyd update and the row normalization
# each take one small launch instead of a dozen aten ops. They read the per-program partials of a
# counting pass directly (summed in a fixed order), so the counting passes need no zeroed buffer.
@triton.jit(do_not_specialize=("P", "L", "I0", "I1", "J0", "J1"))
def _init_centers_kernel(A, A2, CEN, ZM, ZS, P, L, I0, I1, F0, J0, J1, F1,
                         FROM_SORTED: tl.constexpr, ZERO: tl.constexpr, BLOCK: tl.constexpr):
    """CEN[b, n] = smin + (n + ½)·(smax − smin)/L; with ZERO, rows b of the (B, L) Lloyd
    accumulators ZM/ZS are zeroed too (the first step's atomics need no zeroing launch).

    FROM_SORTED: A holds sorted rows (B, P); smin/smax are the quantiles
    ``A[i0] + (A[i1] − A[i0])·f`` at (I0, I1, F0) and (J0, J1, F1). Else A/A2 are the
    per-program minima/maxima (B, P) of ``_minmax_kernel``.
    """
    b = tl.program_id(0).to(tl.int64)
    if FROM_SORTED:
        x0 = tl.load(A + b * P + I0).to(tl.float32)
        x1 = tl.load(A + b * P + I1).to(tl.float32)
        y0 = tl.load(A + b * P + J0).to(tl.float32)
        y1 = tl.load(A + b * P + J1).to(tl.float32)
        smin = x0 + (x1 - x0) * F0
        smax = y0 + (y1 - y0) * F1
    else:
        lo = tl.full((BLOCK,), float("inf"), tl.float32)
        hi = tl.full((BLOCK,), float("-inf"), tl.float32)
        for p0 in range(0, P, BLOCK):
            offs = p0 + tl.arange(0, BLOCK)
            ok = offs < P
            lo = tl.minimum(lo, tl.load(A + b * P + offs, mask=ok, other=float("inf")))
            hi = tl.maximum(hi, tl.load(A2 + b * P + offs, mask=ok, other=float("-inf")))
        smin = tl.min(lo, axis=0)
        smax = tl.max(hi, axis=0)
    delta = (smax - smin) / L
    for l0 in range(0, L, BLOCK):
        n = l0 + tl.arange(0, BLOCK)
        tl.store(CEN + b * L + n, smin + (n.to(tl.float32) + 0.5) * delta, mask=n < L)
        if ZERO:
            tl.store(ZM + b * L + n, tl.zeros((BLOCK,), dtype=tl.float32), mask=n < L)
            tl.store(ZS + b * L + n, tl.zeros((BLOCK,), dtype=tl.float32), mask=n < L)


@triton.jit(do_not_specialize=("P", "L"))
def _lloyd_kernel(MASS, MOMENT, CEN, OUT, P, L, ZERO: tl.constexpr, BLOCK_L: tl.constexpr):
    """OUT[b] = sorted(where(mass > 0, moment / mass, CEN[b])), mass/moment summed over the
    (B, P, L) partials of ``_count_kernel`` in increasing p (the update of one Lloyd step).
    ZERO (atomic sums, P = 1): the row is zeroed after reading, ready for the next step."""
    b = tl.program_id(0).to(tl.int64)
    bins = tl.arange(0, BLOCK_L)
    keep = bins < L
    m = tl.zeros((BLOCK_L,), dtype=tl.float32)
    s = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for p in range(0, P):
        m += tl.load(MASS + (b * P + p) * L + bins, mask=keep, other=0.0)
        s += tl.load(MOMENT + (b * P + p) * L + bins, mask=keep, other=0.0)
    if ZERO:
        tl.store(MASS + b * L + bins, tl.zeros((BLOCK_L,), dtype=tl.float32), mask=keep)
        tl.store(MOMENT + b * L + bins, tl.zeros((BLOCK_L,), dtype=tl.float32), mask=keep)
    c = tl.load(CEN + b * L + bins, mask=keep, other=0.0)
    new = tl.where(m > 0, s / tl.where(m > 0, m, 1.0), c)
    new = tl.sort(tl.where(keep, new, float("inf")))
    tl.store(OUT + b * L + bins, new, mask=keep)


@triton.jit(do_not_specialize=("P", "M"))
def _normalize_kernel(PART, HIST, OUT, TOTAL, P, M, WITH_OUT: tl.constexpr, BLOCK: tl.constexpr):
    """HIST[b] = counts / Σ counts (an all-zero row stays zero, TOTAL[b] = 1 then), counts[m] =
    Σ_p PART[b, p, m] in increasing p; TOTAL[b] keeps the divisor for the backward. WITH_OUT:
    the same rounded to OUT's dtype (the op's output, no cast launch)."""
    b = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        keep = m < M
        v = tl.zeros((BLOCK,), dtype=tl.float32)
        for p in range(0, P):
            v += tl.load(PART + (b * P + p) * M + m, mask=keep, other=0.0)
        acc += v
    total = tl.sum(acc, axis=0)
    total = tl.where(total != 0, total, 1.0)
    for m0 in range(0, M, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        keep = m < M
        v = tl.zeros((BLOCK,), dtype=tl.float32)
        for p in range(0, P):
            v += tl.load(PART + (b * P + p) * M + m, mask=keep, other=0.0)
        tl.store(HIST + b * M + m, v / total, mask=keep)
        if WITH_OUT:
            tl.store(OUT + b * M + m, (v / total).to(OUT.dtype.element_ty), mask=keep)
    tl.store(TOTAL + b, total)


@triton.jit(do_not_specialize=("M", "G_SB", "G_SM"))
def _normalize_backward_kernel(G, HIST, TOTAL, GC, M, G_SB, G_SM, BLOCK: tl.constexpr):
    """GC[b] = (g − Σ g·h) / total: the gradient of the raw counts of ``h = counts / Σ counts``
    (rows of zeros: GC = g). G is read through its strides (an expanded gradient needs no copy)."""
    b = tl.program_id(0).to(tl.int64)
    gh = tl.zeros((BLOCK,), dtype=tl.float32)
    hs = tl.zeros((BLOCK,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        keep = m < M
        g = tl.load(G + b * G_SB + m * G_SM, mask=keep, other=0.0).to(tl.float32)
        h = tl.load(HIST + b * M + m, mask=keep, other=0.0)
        gh += g * h
        hs += h
    dot = tl.sum(gh, axis=0)
    live = tl.sum(hs, axis=0) != 0
    total = tl.load(TOTAL + b)
    for m0 in range(0, M, BLOCK):
        m = m0 + tl.arange(0, BLOCK)
        keep = m < M
        g = tl.load(G + b * G_SB + m * G_SM, mask=keep, other=0.0).to(tl.float32)
        tl.store(GC + b * M + m, tl.where(live, (g - dot) / total, g), mask=keep)


# --------------------------------------------------------------------------- launch parameters
class Config(NamedTuple):
    BLOCK_N: int  # pixels per tile
    BLOCK_L: int  # levels per tile (one-hot / product tiles)
    CHUNK: int  # pixels per program of the reducing kernels (a multiple of BLOCK_N)
    P: int  # programs (chunks) per image of the reducing kernels
    LOG_L: int  # binary-search steps: 2**LOG_L > L
    num_warps: int


def launch_config(batch: int, n: int, levels: int, interpreted: bool | None = None) -> Config:
    """Fixed launch parameters (no autotuning).

    Level tiles hold up to 128 levels (at least 16, the tensor-core minimum);
    a one-hot tile has about 2K elements on the GPU (no spills on sm_90). A reducing program owns
    ``CHUNK`` pixels: enough chunks for about a thousand programs over the
    batch, but at most 8192 pixels each. The interpreter runs programs one
    after another, so there a program takes a whole image in large tiles.
    """
    if interpreted is None:
        interpreted = _interpreted()
    block_l = min(128, max(16, triton.next_power_of_2(levels)))
    n_pow = max(16, triton.next_power_of_2(n))
    if interpreted:
        block_n = min(n_pow, max(16, 65536 // block_l))
        chunk = triton.cdiv(n, block_n) * block_n
    else:
        block_n = max(16, 2048 // block_l)  # 2K-element one-hot tiles: no spills on sm_90
        want = triton.next_power_of_2(max(1, triton.cdiv(batch * n, 1024)))
        chunk = min(8192, max(block_n, want))
    log_l = max(1, int(levels).bit_length())  # 2**log_l > levels
    return Config(block_n, block_l, chunk, triton.cdiv(n, chunk), log_l, 4)


def _pixel_block(n: int, interpreted: bool | None = None) -> int:
    """Tile of the pixel-parallel (non-reducing) kernels."""
    if interpreted if interpreted is not None else _interpreted():
        return min(4096, max(16, triton.next_power_of_2(n)))
    return 256


def _channel_block(d: int) -> int:
    """Channels per step of the reprojection's gather loops."""
    return min(16, triton.next_power_of_2(d))


def grad_table_config(cfg: Config, d: int, n: int, interpreted: bool | None = None) -> tuple[Config, int]:
    """(config with CHUNK/P/BLOCK_N adjusted, BLOCK_D) of ``_reproject_grad_table_kernel``:
    a ``BLOCK_D × BLOCK_N`` gradient tile times a ``BLOCK_N × BLOCK_L`` encoding tile."""
    interpreted = _interpreted() if interpreted is None else interpreted
    if interpreted:
        block_d, block_l = min(64, max(16, triton.next_power_of_2(d))), cfg.BLOCK_L
        block_n = min(cfg.BLOCK_N, max(16, (1 << 19) // (block_d * block_l)))
    else:
        # A whole level tile (up to 128 levels, so usually one pass over the pixels and one tap
        # search per pixel) × 2 pixels × 8 channels: 2K products in 56 registers on sm_90, no
        # spills, and the fewest predicted warp-instructions of the ≤ 2K tiles that fit.
        block_d, block_n, block_l = 8, 2, cfg.BLOCK_L
    chunk = triton.cdiv(cfg.CHUNK, block_n) * block_n
    return cfg._replace(BLOCK_N=block_n, BLOCK_L=block_l, CHUNK=chunk, P=triton.cdiv(n, chunk)), block_d


def cooc_config(cfg: Config, n: int, levels: int, interpreted: bool | None = None) -> tuple[Config, int]:
    """(config with CHUNK/P/BLOCK_N adjusted, BLOCK_M) of ``_cooc_partial_kernel``: one-hot tiles
    of ``BLOCK_N`` pairs × ``BLOCK_M`` flat level pairs."""
    interpreted = _interpreted() if interpreted is None else interpreted
    m_pow = triton.next_power_of_2(levels * levels)
    block_m = min(m_pow, 1024) if interpreted else min(m_pow, 128)
    # GPU: 16 pairs × 128 level pairs per one-hot tile keeps it in registers (sm_90, no spills)
    block_n = min(cfg.BLOCK_N, max(16, 65536 // block_m)) if interpreted else 16
    chunk = triton.cdiv(cfg.CHUNK, block_n) * block_n
    return cfg._replace(BLOCK_N=block_n, CHUNK=chunk, P=triton.cdiv(n, chunk)), block_m


def _check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: the Triton quantize kernels take float32/float16/bfloat16, got {t.dtype}")


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _merge(batch: int, cfg: Config, m: int, device) -> tuple[torch.Tensor, bool]:
    """Target buffer of a reducing kernel: (B, M) zeros (atomics) or (B, P, M) partials."""
    if _deterministic():
        return torch.empty(batch, cfg.P, m, device=device, dtype=torch.float32), True
    return torch.zeros(batch, m, device=device, dtype=torch.float32), False


def _finish(buf: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """(B, M) result of a reducing kernel; partials are summed in a fixed order."""
    if not deterministic:
        return buf
    b, p, m = buf.shape
    out = torch.empty(b, m, device=buf.device, dtype=torch.float32)
    block = min(1024, triton.next_power_of_2(m))
    with _guard(buf):
        _sum_partials_kernel[(triton.cdiv(m, block), b)](buf, out, p, m, BLOCK=block)
    return out


def _row_block(m: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(m)))


def _normalize(part: torch.Tensor, out_dtype: torch.dtype = torch.float32):
    """(hist (B, M) float32, totals (B,), hist in ``out_dtype``) of per-program partial counts
    (B, P, M): one small launch."""
    B, P, M = part.shape
    hist = torch.empty(B, M, device=part.device, dtype=torch.float32)
    total = torch.empty(B, device=part.device, dtype=torch.float32)
    out = hist if out_dtype == torch.float32 else torch.empty(B, M, device=part.device, dtype=out_dtype)
    _normalize_kernel[(B,)](part, hist, out, total, P, M, WITH_OUT=out is not hist, BLOCK=_row_block(M))
    return hist, total, out


def _normalize_backward(g: torch.Tensor, h: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Gradient (B, M) float32 w.r.t. the raw counts of ``h = counts / Σ counts``: one small launch."""
    B, M = h.shape
    gc = torch.empty(B, M, device=h.device, dtype=torch.float32)
    _normalize_backward_kernel[(B,)](g, h, total, gc, M, g.stride(0), g.stride(1), BLOCK=_row_block(M))
    return gc


# --------------------------------------------------------------------------- launchers
def _minmax(s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, N = s2.shape
    cfg = launch_config(B, N, 2)
    block = cfg.BLOCK_N if _interpreted() else min(1024, cfg.CHUNK)
    pmin = torch.empty(B, cfg.P, device=s2.device, dtype=torch.float32)
    pmax = torch.empty_like(pmin)
    with _guard(s2):
        _minmax_kernel[(cfg.P, B)](s2, pmin, pmax, N, cfg.P, CHUNK=cfg.CHUNK, BLOCK_N=block)
    return pmin.amin(dim=1), pmax.amax(dim=1)


def _level_sums(s2: torch.Tensor, centers: torch.Tensor, kernel: str, with_moment: bool):
    """(mass, moment or None), each (B, L) float32."""
    B, N = s2.shape
    L = centers.shape[1]
    cfg = launch_config(B, N, L)
    mass, det = _merge(B, cfg, L, s2.device)
    moment = torch.empty_like(mass) if det else torch.zeros_like(mass)
    with _guard(s2):
        _count_kernel[(cfg.P, B)](
            s2, centers, mass, moment if with_moment else mass, N, L, cfg.P,
            LOG_L=cfg.LOG_L, KERNEL=KERNEL_IDS[kernel], WITH_MOMENT=with_moment, DETERMINISTIC=det,
            CHUNK=cfg.CHUNK, BLOCK_N=cfg.BLOCK_N, BLOCK_L=cfg.BLOCK_L, num_warps=cfg.num_warps,
        )
    return _finish(mass, det), (_finish(moment, det) if with_moment else None)


MAX_FUSED_LEVELS = 1024  # the Lloyd kernel sorts a row of centers in registers


def start_centers_triton(s2: torch.Tensor, levels: int, ranks, kernel: str, iters: int):
    """The fused ``start_centers`` pass: ``(centers (B, L) float32, step)`` of ``s2`` (B, N), or None
    beyond ``MAX_FUSED_LEVELS`` levels. The range and the initial centers take one small launch
    after a min/max pass (or one sort, for quantile ``ranks`` ``((i0, i1, frac), (j0, j1, frac))``);
    ``step(centers)`` is one Lloyd step: a counting pass and one small update launch, which
    also zeroes the atomic sums for the next step (no zeroing launches). No autograd."""
    if levels > MAX_FUSED_LEVELS:
        return None
    _check_dtype(s2, "s")
    s2 = s2.detach().contiguous()
    B, N = s2.shape
    L = levels
    cen = torch.empty(B, L, device=s2.device, dtype=torch.float32)
    cfg = launch_config(B, N, L)
    # the Lloyd sums: (B, P, L) partials in the deterministic mode, else (B, L) atomic sums
    # zeroed by the init kernel and again by each update after reading them
    det = _deterministic()
    acc = torch.empty(2, B, cfg.P if det else 1, L, device=s2.device, dtype=torch.float32)
    zero = bool(iters) and not det
    with _guard(s2):
        if ranks is None:
            cfg2 = launch_config(B, N, 2)
            block = cfg2.BLOCK_N if _interpreted() else min(1024, cfg2.CHUNK)
            pmin = torch.empty(B, cfg2.P, device=s2.device, dtype=torch.float32)
            pmax = torch.empty_like(pmin)
            _minmax_kernel[(cfg2.P, B)](s2, pmin, pmax, N, cfg2.P, CHUNK=cfg2.CHUNK, BLOCK_N=block)
            _init_centers_kernel[(B,)](pmin, pmax, cen, acc[0], acc[1], cfg2.P, L, 0, 0, 0.0, 0, 0, 0.0,
                                       FROM_SORTED=False, ZERO=zero, BLOCK=_row_block(max(L, cfg2.P)))
        else:
            xs = s2.sort(dim=1).values  # rows of any float dtype sort exactly as in float32
            (i0, i1, f0), (j0, j1, f1) = ranks
            _init_centers_kernel[(B,)](xs, xs, cen, acc[0], acc[1], N, L, i0, i1, f0, j0, j1, f1,
                                       FROM_SORTED=True, ZERO=zero, BLOCK=_row_block(L))
    kid = KERNEL_IDS[kernel]

    def step(c: torch.Tensor) -> torch.Tensor:
        moved = torch.empty_like(c)
        with _guard(s2):
            _count_kernel[(cfg.P, B)](
                s2, c, acc[0], acc[1], N, L, cfg.P,
                LOG_L=cfg.LOG_L, KERNEL=kid, WITH_MOMENT=True, DETERMINISTIC=det,
                CHUNK=cfg.CHUNK, BLOCK_N=cfg.BLOCK_N, BLOCK_L=cfg.BLOCK_L, num_warps=cfg.num_warps,
            )
            _lloyd_kernel[(B,)](acc[0], acc[1], c, moved, acc.shape[2], L, ZERO=zero,
                                BLOCK_L=max(16, triton.next_power_of_2(L)))
        return moved

    return cen, step


class _QuantizeCountFn(torch.autograd.Function):
    """hist = counts / Σ counts from one counting pass; backward: one pass over the pixels."""

    @staticmethod
    def forward(ctx, s2, centers, kernel):
        B, N = s2.shape
        L = centers.shape[1]
        cfg = launch_config(B, N, L)
        part = torch.empty(B, cfg.P, L, device=s2.device, dtype=torch.float32)
        with _guard(s2):
            _count_kernel[(cfg.P, B)](
                s2, centers, part, part, N, L, cfg.P,
                LOG_L=cfg.LOG_L, KERNEL=KERNEL_IDS[kernel], WITH_MOMENT=False, DETERMINISTIC=True,
                CHUNK=cfg.CHUNK, BLOCK_N=cfg.BLOCK_N, BLOCK_L=cfg.BLOCK_L, num_warps=cfg.num_warps,
            )
            hist, total, out = _normalize(part, s2.dtype)
        ctx.save_for_backward(s2, centers, hist, total)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, g):
        s2, centers, hist, total = ctx.saved_tensors
        B, N = s2.shape
        L = centers.shape[1]
        gs = torch.empty_like(s2)
        block = _pixel_block(N)
        with _guard(s2):
            _count_backward_kernel[(triton.cdiv(N, block), B)](
                s2, centers, g, hist, total, gs, N, L, g.stride(0), g.stride(1),
                LOG_L=launch_config(B, N, L).LOG_L, KERNEL=KERNEL_IDS[ctx.kernel], BLOCK_N=block,
                BLOCK_L=_row_block(min(L, 128)),
            )
        return gs, None, None


def minmax_triton(s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(smin, smax)`` float32 per row of ``s2`` (B, N): one pass, then a tiny per-program reduction."""
    _check_dtype(s2, "s")
    return _minmax(s2.contiguous())


def level_sums_triton(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_i E_in, Σ_i E_in·s_i)`` (B, L) float32 of ``s2`` (B, N) at ``centers``: one pass (a Lloyd step's sums)."""
    _check_dtype(s2, "s")
    return _level_sums(s2.contiguous(), centers.float().contiguous(), kernel, with_moment=True)


def soft_hist_triton(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Normalized soft counts (B, L) of ``s2`` (B, N) at fixed ``centers``, computed in float32 and
    stored in ``s2``'s dtype; differentiable in ``s2`` (one pass and one small launch forward, one
    pass backward)."""
    _check_dtype(s2, "s")
    return _QuantizeCountFn.apply(s2.contiguous(), centers.float().contiguous(), kernel)


class _ReprojectFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, s2, centers, kernel):
        B, D, L = table.shape
        N = s2.shape[1]
        out = torch.empty(B, D, N, device=table.device, dtype=table.dtype)
        block_n = _pixel_block(N)
        block_d = _channel_block(D)
        with _guard(s2):
            _reproject_kernel[(triton.cdiv(N, block_n), B)](
                table, s2, centers, out, N, D, L,
                LOG_L=launch_config(B, N, L).LOG_L, KERNEL=KERNEL_IDS[kernel],
                BLOCK_N=block_n, BLOCK_D=block_d,
            )
        ctx.save_for_backward(table, s2, centers)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, g):
        table, s2, centers = ctx.saved_tensors
        B, D, L = table.shape
        N = s2.shape[1]
        kid = KERNEL_IDS[ctx.kernel]
        cfg = launch_config(B, N, L)
        strides = g.stride()
        grad_table = grad_s = None
        with _guard(s2):
            if ctx.needs_input_grad[1]:
                grad_s = torch.empty_like(s2)
                block_n = _pixel_block(N)
                _reproject_grad_s_kernel[(triton.cdiv(N, block_n), B)](
                    table, s2, centers, g, grad_s, N, D, L, *strides,
                    LOG_L=cfg.LOG_L, KERNEL=kid, BLOCK_N=block_n, BLOCK_D=_channel_block(D),
                )
            if ctx.needs_input_grad[0]:
                cfg_t, block_d = grad_table_config(cfg, D, N)
                buf, det = _merge(B, cfg_t, D * L, s2.device)
                _reproject_grad_table_kernel[(cfg_t.P, B, triton.cdiv(D, block_d))](
                    s2, centers, g, buf, N, D, L, cfg_t.P, *strides,
                    LOG_L=cfg.LOG_L, KERNEL=kid, DETERMINISTIC=det, CHUNK=cfg_t.CHUNK,
                    BLOCK_N=cfg_t.BLOCK_N, BLOCK_D=block_d, BLOCK_L=cfg_t.BLOCK_L, ONE_L_TILE=L <= cfg_t.BLOCK_L,
                    num_warps=cfg.num_warps,
                )
                grad_table = _finish(buf, det).view(B, D, L).to(table.dtype)
        return grad_table, grad_s, None, None


def reproject_triton(table: torch.Tensor, s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Triton ``reproject``: table (B, D, L), s2 (B, N), centers (B, L) -> (B, D, N) in table's dtype."""
    _check_dtype(table, "table")
    _check_dtype(s2, "s")
    return _ReprojectFn.apply(table.contiguous(), s2.contiguous(), centers.float().contiguous(), kernel)


@functools.lru_cache(maxsize=64)
def _offsets_pair(offsets: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(host, device) int32 copies of the offsets; the pinned host copy stays alive with the
    cached device copy, so the asynchronous upload needs no host sync."""
    host = torch.tensor(offsets, dtype=torch.int32).reshape(-1)
    if device.type != "cuda":
        return host, host.to(device)
    host = host.pin_memory()
    return host, host.to(device, non_blocking=True)


def _offsets_tensor(offsets: tuple, device: torch.device) -> torch.Tensor:
    return _offsets_pair(offsets, device)[1]


class _CooccurrenceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s2, centers, H, W, offsets, kernel):
        B = s2.shape[0]
        L = centers.shape[1]
        N = H * W
        off = _offsets_tensor(tuple(offsets), s2.device)
        kid = KERNEL_IDS[kernel]
        cfg = launch_config(B, N, L)
        with _guard(s2):
            if _deterministic():
                cfg, block_m = cooc_config(cfg, N, L)
                buf = torch.empty(B, cfg.P, L * L, device=s2.device, dtype=torch.float32)
                _cooc_partial_kernel[(cfg.P, B, triton.cdiv(L * L, block_m))](
                    s2, centers, off, buf, H, W, L, cfg.P, len(offsets),
                    LOG_L=cfg.LOG_L, KERNEL=kid, CHUNK=cfg.CHUNK, BLOCK_N=cfg.BLOCK_N, BLOCK_M=block_m,
                    num_warps=cfg.num_warps,
                )
            else:
                buf = torch.zeros(B, L * L, device=s2.device, dtype=torch.float32)
                block = _pixel_block(N)
                _cooc_atomic_kernel[(triton.cdiv(N, block), B)](
                    s2, centers, off, buf, H, W, L, len(offsets), LOG_L=cfg.LOG_L, KERNEL=kid, BLOCK_N=block,
                )
                buf = buf[:, None]
            hist, total, _ = _normalize(buf)
        ctx.save_for_backward(s2, centers, off, hist, total)
        ctx.geometry = (H, W, len(offsets), kernel)
        return hist

    @staticmethod
    def backward(ctx, g):
        s2, centers, off, hist, total = ctx.saved_tensors
        H, W, num_off, kernel = ctx.geometry
        B, N = s2.shape
        L = centers.shape[1]
        gs = torch.empty_like(s2)
        block = _pixel_block(N)
        with _guard(s2):
            gc = _normalize_backward(g, hist, total)
            _cooc_backward_kernel[(triton.cdiv(N, block), B)](
                s2, centers, off, gc, gs, H, W, L, num_off,
                LOG_L=launch_config(B, N, L).LOG_L, KERNEL=KERNEL_IDS[kernel], BLOCK_N=block,
            )
        return gs, None, None, None, None, None


def cooccurrence_triton(s3: torch.Tensor, centers: torch.Tensor, offsets, kernel: str) -> torch.Tensor:
    """Triton ``cooccurrence``: s3 (B, H, W), centers (B, L) -> float32 (B, L, L) summing to 1."""
    _check_dtype(s3, "s")
    B, H, W = s3.shape
    L = centers.shape[1]
    s2 = s3.contiguous().reshape(B, H * W)
    out = _CooccurrenceFn.apply(s2, centers.float().contiguous(), H, W, tuple(offsets), kernel)
    return out.view(B, L, L)
