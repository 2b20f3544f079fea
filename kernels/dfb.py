"""Triton kernels of the directional filter bank (``dfb_dec`` / ``dfb_rec``) with autograd.

Every two-channel ladder stage of the toolbox DFB (``tests/data/contourlet/README.md``)
and its adjoint is two passes of one generic kernel::

    out = ALPHA·centre + BETA·S(window)       [+ OUT2 = GAMMA·window at the centre]

where ``S`` is the toolbox ``sefilter2`` with the modulated 'pkva' ladder filter
``fm⊗fm`` (12×12, extension ``before = 5 + shift`` rows/columns), and every
operand is addressed through an index map computed in the kernel:

* a parent component ``p0`` / ``p1`` read (or written) straight from the parent
  band through the polyphase split ('1r', '2c', P1/P2, P3/P4 as integer shear
  and decimation formulas, periodic wrap by modulo);
* a child sub-band (``y0`` / ``y1``), in the plain band-major layout of an
  intermediate tree level or in the *final* layout of the last level (the
  toolbox backsampling shears and the list reversal fused into the address);
* a float32 scratch plane.

The 8 passes (A/B per direction)::

    dec   A   y0 = (p0 − S1 p1)/√2                       B   y1 = −√2 p1 − S0 y0
    rec   R1  p1 = −(y1 + S0 y0)/√2                      R2  p0 = √2 y0 + S1 p1
    decᵀ  Bᵀ  t  = g_y0 − S0ᵀ g_y1                       Aᵀ  g_p1 = −√2 g_y1 − S1ᵀ t/√2, g_p0 = t/√2
    recᵀ  T1  g_y1 = −(g_p1 + S1ᵀ g_p0)/√2               T2  g_y0 = √2 g_p0 + S0ᵀ g_y1

``S0 = S(before 5)``, ``S1 = S(before 6)``. fm is antisymmetric, so fm⊗fm is
centro-symmetric and the adjoint of ``S(before b)`` is ``S(before 11−b)``
with the same taps (``S0ᵀ = S1``, ``S1ᵀ = S0`` for 'per'). For the
'qper_col' extension of the first stage (rows outside the component are
taken circularly shifted by ``(w+1)//2`` columns) the adjoint is the same
extension with shift ``−(w+1)//2 ≡ w//2 (mod w)``. Writes through a
polyphase map are permutations (each parent pixel is one ``(q, i, j)``), so
the adjoint scatter is conflict-free: no atomics.

Filtering inside a tile (why ``tl.dot``): a program owns a ``TR × TC`` output
tile of one (band, image) plane and gathers its ``(TR+16) × (TC+16)`` input
window once (as 4 power-of-two sub-tiles, loads of the unused 5 halo rows /
columns masked off), ~2.3 loads per output pixel. Triton cannot shift
register tensors, so the separable 12-tap row pass and 12-tap column pass are
products with banded Toeplitz matrices, ``S = Kv · (X · Kh)``, in exact
(``"ieee"``) float32 — float64 for float64 input. That is ~120 FMAs per
output pixel against ~144 gathers (or 12 gathers + modulo address math per
row) of a direct or sliding-window loop, and it keeps the interpreter fast (a
few dozen vector ops per program, independent of the tile size).

Energy mode (``dfb_energy_triton``): the last tree level writes ``y0`` to a
float32 scratch only (the halo source of pass B), ``y1`` never; each program
adds its tile's sum of squares to the ``(N, 2**levels)`` table (final sub-band
order) with one atomic, or, when ``torch.are_deterministic_algorithms_enabled()``,
stores a per-tile partial that a fixed-order ``sum`` reduces. Where autograd
records, the last level is kept instead (plain band-major, compute dtype) and
the backward is the adjoint applied to ``2·g·y``: its first two passes scale
each child operand by ``2·g[n, band]`` (constant over a plane, so after the
filter) — no cotangent tensor, nothing recomputed.

Layout: an ``nb``-band group of ``N = B·C`` images is stored band-major
``(nb, N, h, w)``, so every plane is contiguous and every final sub-band is a
contiguous ``(B, C, h, w)`` view of its level buffer.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sstkd._util import compute_dtype as _compute_dtype
from sstkd._util import device_guard as _guard
from sstkd._util import triton_interpreted as _interpreted
from sstkd.filters import modulated_dfb_filter
from sstkd.geometry import check_dfb_bands, check_dfb_size, dfb_band_shapes, dfb_image_size

__all__ = [
    "dfb_dec_triton",
    "dfb_rec_triton",
    "dfb_energy_triton",
    "KERNELS",
    "tile_config",
    "TileConfig",
    "launch_log",
]

_SQRT2 = math.sqrt(2.0)
_NTAPS = 12

# Polyphase splits (SPLIT constexpr).
_S_1R, _S_2C, _S_ROWS, _S_COLS = 0, 1, 2, 3
# Operand kinds: a parent component through the split map, a child slot, a scratch plane.
_K_P0, _K_P1, _K_Y0, _K_Y1, _K_SCRATCH, _K_NONE = 0, 1, 2, 3, 4, 5
# Child layouts: plain band-major; final layout of levels == 1 / == 2 / >= 3 (first, second half).
_L_PLAIN, _L_FINAL1, _L_FINAL2, _L_FIRST, _L_SECOND = 0, 1, 2, 3, 4
# Energy accumulation.
_E_NONE, _E_ATOMIC, _E_PARTIAL = 0, 1, 2


# --------------------------------------------------------------------------- kernels
@triton.jit
def _addr(rho, c, k, n, N, H, W, h, w, NBC, HALF4,
          KIND: tl.constexpr, SPLIT: tl.constexpr, LAYOUT: tl.constexpr, Y0POS: tl.constexpr):
    """Element offset of sub-band position ``(rho, c)`` (``0 <= rho < h``, ``0 <= c < w``)
    of parent band ``k`` / image ``n`` in the buffer an operand of ``KIND`` lives in."""
    if KIND < 2:
        # parent component q = KIND of the polyphase split (toolbox resampling R1..R4)
        q = KIND
        if SPLIT == 0:  # '1r': y = R2(x); p_q = R3(roll(y[q::2], -q, cols))
            col = (c + rho + q) % W
            col = tl.where(col < 0, col + W, col)
            row = (2 * rho + q - col) % H
            row = tl.where(row < 0, row + H, row)
        elif SPLIT == 1:  # '2c': y = R4(x); p_q = R1(roll(y[:, q::2], -q, rows))
            row = (rho + c + q) % H
            row = tl.where(row < 0, row + H, row)
            col = (2 * c + q - row) % W
            col = tl.where(col < 0, col + W, col)
        elif SPLIT == 2:  # P1 (even band: R3, roll) / P2 (odd band: R4) of the rows x[q::2]
            odd = k % 2
            row = 2 * rho + q
            col = (c + (1 - 2 * odd) * rho + q * (1 - odd)) % W
            col = tl.where(col < 0, col + W, col)
        else:  # P3 (even band: R1, roll) / P4 (odd band: R2) of the columns x[:, q::2]
            odd = k % 2
            col = 2 * c + q
            row = (rho + (1 - 2 * odd) * c + q * (1 - odd)) % H
            row = tl.where(row < 0, row + H, row)
        return (k * N + n).to(tl.int64) * H * W + (row * W + col)
    elif KIND < 4:
        # child sub-band: band 2k + slot of the children buffer, maybe in the final layout
        if KIND == 2:
            cb = 2 * k + Y0POS
        else:
            cb = 2 * k + 1 - Y0POS
        band = cb
        row = rho
        col = c
        if LAYOUT == 1:  # levels == 1: backsampling R4, then R1 on even / odd columns
            col = (c + rho) % w
            col = tl.where(col < 0, col + w, col)
            row = (rho - col // 2) % h
            row = tl.where(row < 0, row + h, row)
        elif LAYOUT == 2:  # levels == 2: the second half of the list is reversed
            band = tl.where(cb < 2, cb, 5 - cb)
        elif LAYOUT == 3:  # levels >= 3, first half: R3 with shift s
            s = 2 * (cb // 2) + 1 - HALF4
            col = (c - s * rho) % w
            col = tl.where(col < 0, col + w, col)
        elif LAYOUT == 4:  # levels >= 3, second half: R1 with shift s, list reversed
            s = 2 * (cb // 2) + 1 - HALF4
            row = (rho - s * c) % h
            row = tl.where(row < 0, row + h, row)
            band = NBC - 1 - cb
        return (band * N + n).to(tl.int64) * h * w + (row * w + col)
    else:
        return (k * N + n).to(tl.int64) * h * w + (rho * w + c)


@triton.jit
def _final_band(cb, NBC, LAYOUT: tl.constexpr):
    """Index in the final sub-band order (within its half) of child band ``cb`` of a last-level stage."""
    if LAYOUT == 2:  # levels == 2: the second half of the list is reversed
        return tl.where(cb < 2, cb, 5 - cb)
    elif LAYOUT == 4:  # levels >= 3, second half: list reversed
        return NBC - 1 - cb
    else:
        return cb


@triton.jit
def _child_scale(G, k, n, GSN, GSK, KOFF, NBC, KIND: tl.constexpr, Y0POS: tl.constexpr, MAP: tl.constexpr):
    """``2·g`` of the sub-band an operand of child ``KIND`` belongs to (per stacked plane row)."""
    if KIND == 2:
        cb = 2 * k + Y0POS
    else:
        cb = 2 * k + 1 - Y0POS
    return 2.0 * tl.load(G + n.to(tl.int64) * GSN + (KOFF + _final_band(cb, NBC, MAP)) * GSK)


@triton.jit
def _planes_of(rows, RR: tl.constexpr, g0, P: tl.constexpr, PLANES, N):
    """Rows ``[0, P·RR)`` of a stacked tile -> (local row, parent band k, image n, plane exists)."""
    plane = g0 + rows // RR
    valid = plane < PLANES
    plane = tl.minimum(plane, PLANES - 1)
    return rows % RR, plane // N, plane % N, valid


@triton.jit
def _load_window(WIN, r0, c0, RR: tl.constexpr, CC: tl.constexpr, rlim, clim, g0, PLANES,
                 N, H, W, h, w, QS, NBC, HALF4,
                 DT: tl.constexpr, KIND: tl.constexpr, SPLIT: tl.constexpr, LAYOUT: tl.constexpr,
                 Y0POS: tl.constexpr, QPER: tl.constexpr, P: tl.constexpr):
    """``(P·RR) × CC`` sub-tile of the extended windows of P planes (stacked along rows):
    extended rows ``r0 + [0, RR)`` and columns ``c0 + [0, CC)`` (may be negative or
    beyond the size: periodic or 'qper_col'); rows ``>= rlim`` / columns ``>= clim``
    of each plane's sub-tile are not needed (masked, no memory traffic)."""
    lr, k, n, valid = _planes_of(tl.arange(0, P * RR)[:, None], RR, g0, P, PLANES, N)
    cc = tl.arange(0, CC)[None, :]
    er = r0 + lr
    ec = c0 + cc
    rho = er % h
    rho = tl.where(rho < 0, rho + h, rho)
    if QPER:  # rows outside the component come circularly shifted by QS columns
        ec = ec + tl.where((er < 0) | (er >= h), QS, 0)
    c = ec % w
    c = tl.where(c < 0, c + w, c)
    off = _addr(rho, c, k, n, N, H, W, h, w, NBC, HALF4, KIND, SPLIT, LAYOUT, Y0POS)
    return tl.load(WIN + off, mask=(lr < rlim) & (cc < clim) & valid, other=0.0).to(DT)


@triton.jit
def _row_matrix(TAPS, M: tl.constexpr, K: tl.constexpr, shift, P: tl.constexpr):
    """Left factor of the column pass, block-diagonal over P stacked planes:
    ``A[a, r] = taps[r + shift - a]`` within a plane (``a < M``, ``r < K`` local)."""
    a = tl.arange(0, P * M)[:, None]
    r = tl.arange(0, P * K)[None, :]
    t = r % K + shift - a % M
    return tl.load(TAPS + t, mask=(t >= 0) & (t < 12) & (a // M == r // K), other=0.0)


@triton.jit
def _col_matrix(TAPS, K: tl.constexpr, M: tl.constexpr, shift):
    """Right factor of the row pass: ``A[c, b] = taps[c + shift - b]`` (``c < K``, ``b < M``)."""
    c = tl.arange(0, K)[:, None]
    b = tl.arange(0, M)[None, :]
    t = c + shift - b
    return tl.load(TAPS + t, mask=(t >= 0) & (t < 12), other=0.0)


# The ladder kernel's integer (size / stride) arguments: never specialized, so that new shapes reuse
# its compiles; the ahead-of-time signatures (compile facts, tests) type them i32.
LADDER_INT_ARGS = ("PLANES", "N", "H", "W", "h", "w", "QS", "NBC", "HALF4", "TILES_W", "NPART", "KOFF", "KTOT", "GSN",
                   "GSK")


@triton.jit(do_not_specialize=LADDER_INT_ARGS)
def _ladder_kernel(
    WIN, CEN, OUT, OUT2, TAPS, EN, G,
    PLANES, N, H, W, h, w, QS, NBC, HALF4, TILES_W, NPART, KOFF, KTOT, GSN, GSK,
    SPLIT: tl.constexpr, BF: tl.constexpr, QPER: tl.constexpr,
    WIN_KIND: tl.constexpr, CEN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, OUT2_KIND: tl.constexpr,
    LAYOUT: tl.constexpr, Y0POS: tl.constexpr, ENERGY: tl.constexpr, EN_SLOT: tl.constexpr,
    TR: tl.constexpr, TC: tl.constexpr, P: tl.constexpr, PREC: tl.constexpr = "ieee",
    MAP: tl.constexpr = 0, SCALED: tl.constexpr = False,
):
    """One ladder pass on a ``TR × TC`` tile of P (parent band k, image n) planes.

    ``out = ALPHA·CEN + BETA·S(WIN)`` with ``S`` the 12×12 separable filter of
    extension ``BF`` (rows and columns), ``OUT2 = GAMMA·WIN`` at the centre;
    ``TAPS = [taps (12), ALPHA, BETA, GAMMA]`` in the compute dtype. Planes are
    ``k·N + n``; the P planes of a program are stacked along the tile rows (P = 1
    on a GPU; the interpreter takes many planes per program).
    ``PREC``: ``tl.dot`` input precision of float32 tiles ("ieee": exact float32
    FMAs; "tf32x3": tensor cores at about float32 accuracy).
    Grid (1-D): tiles fastest, then plane groups, so the neighbouring tiles of one plane
    (which share halo rows and columns in L2) run next to each other.

    Last tree level: ``MAP`` is the final layout whose sub-band order the energies (``EN``, a
    ``(N, KTOT)`` row-major table, this half's bands from column ``KOFF``) and the scales
    follow, while ``LAYOUT`` addresses the children (plain when they are kept for a
    backward). ``SCALED``: child operands are cotangents ``2·g·y`` of the energies: each is
    multiplied by ``2·G[n, KOFF + band]`` (``G`` with strides ``GSN``, ``GSK``), constant over a
    plane, so ``S(s·y) = s·S(y)`` is applied after the filter.
    """
    DT: tl.constexpr = TAPS.dtype.element_ty
    HALO: tl.constexpr = 16
    pid = tl.program_id(0)
    tile = pid % NPART
    g0 = (pid // NPART) * P
    i0 = (tile // TILES_W) * TR
    j0 = (tile % TILES_W) * TC

    # window: extended rows i0 - BF + [0, TR + 16), columns j0 - BF + [0, TC + 16)
    x00 = _load_window(WIN, i0 - BF, j0 - BF, TR, TC, TR, TC, g0, PLANES, N, H, W, h, w, QS, NBC, HALF4,
                       DT, WIN_KIND, SPLIT, LAYOUT, Y0POS, QPER, P)
    x01 = _load_window(WIN, i0 - BF, j0 - BF + TC, TR, HALO, TR, 11, g0, PLANES, N, H, W, h, w, QS, NBC,
                       HALF4, DT, WIN_KIND, SPLIT, LAYOUT, Y0POS, QPER, P)
    x10 = _load_window(WIN, i0 - BF + TR, j0 - BF, HALO, TC, 11, TC, g0, PLANES, N, H, W, h, w, QS, NBC,
                       HALF4, DT, WIN_KIND, SPLIT, LAYOUT, Y0POS, QPER, P)
    x11 = _load_window(WIN, i0 - BF + TR, j0 - BF + TC, HALO, HALO, 11, 11, g0, PLANES, N, H, W, h, w, QS,
                       NBC, HALF4, DT, WIN_KIND, SPLIT, LAYOUT, Y0POS, QPER, P)
    # row pass (12 taps along columns), then column pass (12 taps along rows)
    kh_main = _col_matrix(TAPS, TC, TC, 0)
    kh_halo = _col_matrix(TAPS, HALO, TC, TC)
    # Sums of dots rather than the `acc=` argument: triton 3.6 rejects a float64 accumulator
    # there, and the compiler folds `dot + add` into an accumulating dot anyway.
    h0 = tl.dot(x00, kh_main, input_precision=PREC) + tl.dot(x01, kh_halo, input_precision=PREC)
    h1 = tl.dot(x10, kh_main, input_precision=PREC) + tl.dot(x11, kh_halo, input_precision=PREC)
    s = (tl.dot(_row_matrix(TAPS, TR, TR, 0, P), h0, input_precision=PREC)
         + tl.dot(_row_matrix(TAPS, TR, HALO, TR, P), h1, input_precision=PREC))

    li, k, n, valid = _planes_of(tl.arange(0, P * TR)[:, None], TR, g0, P, PLANES, N)
    i = i0 + li
    j = j0 + tl.arange(0, TC)[None, :]
    ok = (i < h) & (j < w) & valid
    i = tl.minimum(i, h - 1)
    j = tl.minimum(j, w - 1)
    alpha = tl.load(TAPS + 12)
    beta = tl.load(TAPS + 13)
    cen_off = _addr(i, j, k, n, N, H, W, h, w, NBC, HALF4, CEN_KIND, SPLIT, LAYOUT, Y0POS)
    cen = tl.load(CEN + cen_off, mask=ok, other=0.0).to(DT)
    if SCALED:
        if CEN_KIND == 2 or CEN_KIND == 3:
            cen = cen * _child_scale(G, k, n, GSN, GSK, KOFF, NBC, CEN_KIND, Y0POS, MAP).to(DT)
        if WIN_KIND == 2 or WIN_KIND == 3:
            s = s * _child_scale(G, k, n, GSN, GSK, KOFF, NBC, WIN_KIND, Y0POS, MAP).to(DT)
    out = alpha * cen + beta * s
    if OUT_KIND != 5:
        out_off = _addr(i, j, k, n, N, H, W, h, w, NBC, HALF4, OUT_KIND, SPLIT, LAYOUT, Y0POS)
        tl.store(OUT + out_off, out.to(OUT.dtype.element_ty), mask=ok)
    if OUT2_KIND != 5:
        gamma = tl.load(TAPS + 14)
        v_off = _addr(i, j, k, n, N, H, W, h, w, NBC, HALF4, WIN_KIND, SPLIT, LAYOUT, Y0POS)
        v = tl.load(WIN + v_off, mask=ok, other=0.0).to(DT)
        if SCALED and (WIN_KIND == 2 or WIN_KIND == 3):
            v = v * _child_scale(G, k, n, GSN, GSK, KOFF, NBC, WIN_KIND, Y0POS, MAP).to(DT)
        o2_off = _addr(i, j, k, n, N, H, W, h, w, NBC, HALF4, OUT2_KIND, SPLIT, LAYOUT, Y0POS)
        tl.store(OUT2 + o2_off, (gamma * v).to(OUT2.dtype.element_ty), mask=ok)
    if ENERGY != 0:
        # per-plane tile sums: rows of plane p are p·TR .. p·TR + TR - 1
        rows = tl.sum(tl.where(ok, out * out, 0.0), axis=1)
        part = tl.sum(tl.reshape(rows, (P, TR)), axis=1)
        plane = g0 + tl.arange(0, P)
        has = plane < PLANES
        plane = tl.minimum(plane, PLANES - 1)
        kp = plane // N
        if EN_SLOT == 0:
            cb = 2 * kp + Y0POS
        else:
            cb = 2 * kp + 1 - Y0POS
        # (N, KTOT) table in the final sub-band order (per-tile partials: (N, KTOT, NPART))
        slot = (plane % N).to(tl.int64) * KTOT + KOFF + _final_band(cb, NBC, MAP)
        if ENERGY == 1:
            tl.atomic_add(EN + slot, part.to(EN.dtype.element_ty), mask=has)
        else:
            tl.store(EN + slot * NPART + tile, part.to(EN.dtype.element_ty), mask=has)


KERNELS = {"ladder": _ladder_kernel}


# --------------------------------------------------------------------------- launch geometry
class TileConfig(NamedTuple):
    TR: int  # output tile rows (power of two >= 16)
    TC: int  # output tile columns (power of two >= 16)
    P: int  # planes per program, stacked along the rows (power of two)
    num_warps: int


def tile_config(planes: int, h: int, w: int, interpreted: bool | None = None) -> TileConfig:
    """Fixed launch geometry for ``planes`` sub-band planes of size ``h × w`` (no autotuning).

    On a GPU: one plane per program, 32 × 32 output tiles (16 where the band is
    smaller): ~2.3 loads per output pixel and dot operands that fit in shared
    memory. The interpreter runs programs one after another at a fixed cost
    each (~tens of ms), so there a program takes whole planes (tiles up to
    64 × 64) of as many images as fit in 512 stacked rows.
    """
    if interpreted is None:
        interpreted = _interpreted()
    cap = 64 if interpreted else 32
    tr = max(16, min(cap, triton.next_power_of_2(h)))
    tc = max(16, min(cap, triton.next_power_of_2(w)))
    p = min(triton.next_power_of_2(planes), max(1, 512 // tr)) if interpreted else 1
    return TileConfig(tr, tc, p, 4)


# Debug/benchmark hook: when a list, every launch appends its constexprs, grid and tile.
launch_log: list | None = None
# tl.dot precision of the float32 filter products. "ieee" (default) is exact float32 on
# CUDA cores (~120 FMAs per output pixel); "tf32x3" moves them to tensor cores at about
# float32 accuracy: try it on a GPU with `sstkd verify` before making it the default.
DOT_PRECISION = "ieee"


class _Stage(NamedTuple):
    """One two-channel ladder stage applied to every band of an ``(nb, N, H, W)`` group."""

    split: int
    nb: int  # parent bands
    n: int  # images (B·C)
    H: int
    W: int
    h: int  # sub-band (child) size
    w: int
    qper: bool  # 'qper_col' extension (first stage)
    y0pos: int  # child slot of y0: 0 at the first stage, 1 below (children 2k <- y1, 2k+1 <- y0)
    layout: int
    nbc: int  # bands of the children buffer (half) this stage writes
    half4: int  # 2**(levels-2) for the final layouts of levels >= 3


def _plan(levels: int, n: int, H: int, W: int) -> list[list[_Stage]]:
    """The DFB tree as a list of levels, each one stage (levels 1, 2) or two (first / second half)."""
    last = lambda l, layout: layout if l == levels else _L_PLAIN  # noqa: E731
    half4 = 2 ** (levels - 2) if levels >= 2 else 0
    plan = [[_Stage(_S_1R, 1, n, H, W, H // 2, W, True, 0, last(1, _L_FINAL1), 2, half4)]]
    if levels >= 2:
        plan.append([_Stage(_S_2C, 2, n, H // 2, W, H // 2, W // 2, False, 1, last(2, _L_FINAL2), 4, half4)])
    hf, wf = hs, ws = H // 2, W // 2
    for l in range(3, levels + 1):
        nb = 2 ** (l - 2)
        plan.append([
            _Stage(_S_ROWS, nb, n, hf, wf, hf // 2, wf, False, 1, last(l, _L_FIRST), 2 * nb, half4),
            _Stage(_S_COLS, nb, n, hs, ws, hs, ws // 2, False, 1, last(l, _L_SECOND), 2 * nb, half4),
        ])
        hf, ws = hf // 2, ws // 2
    return plan


@functools.lru_cache(maxsize=64)
def _taps(coeffs: tuple[float, float, float], filt: str, device: torch.device, dtype: torch.dtype):
    """``[fm flipped (conv2d correlates), ALPHA, BETA, GAMMA]`` in the compute dtype."""
    fm = modulated_dfb_filter(filt).flip(0)
    if fm.numel() != _NTAPS:  # pragma: no cover - only 'pkva' exists
        raise ValueError(f"filt: the Triton DFB needs a {_NTAPS}-tap ladder filter, got {fm.numel()}")
    return torch.cat([fm, torch.tensor(coeffs, dtype=torch.float64)]).to(device=device, dtype=dtype)


def _launch(st: _Stage, filt: str, cd: torch.dtype, *, win, win_kind, bf, adjoint, cen, cen_kind,
            coeffs, out=None, out_kind=_K_NONE, out2=None, out2_kind=_K_NONE,
            energy=None, energy_mode=_E_NONE, en_slot=0, final=None, scale=None):
    """Launch one ladder pass of stage ``st`` on the current stream of the tensors' device.

    ``final``: ``(map layout, KOFF, KTOT)`` of a last-level stage whose energies or scales
    follow the final sub-band order; ``scale``: ``g`` as an ``(N, KTOT)`` strided tensor (the
    child operands are the cotangents ``2·g·y``)."""
    planes = st.nb * st.n
    cfg = tile_config(planes, st.h, st.w)
    tiles_h, tiles_w = triton.cdiv(st.h, cfg.TR), triton.cdiv(st.w, cfg.TC)
    taps = _taps(tuple(coeffs), filt, win.device, cd)
    qs = ((st.w // 2) if adjoint else (st.w + 1) // 2) if st.qper else 0
    dummy = taps
    grid = (triton.cdiv(planes, cfg.P) * tiles_h * tiles_w,)  # tiles of one plane group are consecutive
    if launch_log is not None:
        launch_log.append(dict(split=st.split, bf=bf, qper=st.qper, kinds=(win_kind, cen_kind, out_kind, out2_kind),
                               layout=st.layout, energy=energy_mode, grid=grid, tile=cfg[:3],
                               final=final, scaled=scale is not None,
                               dtypes=tuple(t.dtype if t is not None else None for t in (win, cen, out, out2))))
    map_layout, koff, ktot = final if final is not None else (_L_PLAIN, 0, 0)
    g, gsn, gsk = (scale, scale.stride(0), scale.stride(1)) if scale is not None else (dummy, 0, 0)
    with _guard(win):
        _ladder_kernel[grid](
            win, cen, out if out is not None else dummy, out2 if out2 is not None else dummy, taps,
            energy if energy is not None else dummy, g,
            planes, st.n, st.H, st.W, st.h, st.w, qs, st.nbc, st.half4, tiles_w, tiles_h * tiles_w,
            koff, ktot, gsn, gsk,
            SPLIT=st.split, BF=bf, QPER=st.qper,
            WIN_KIND=win_kind, CEN_KIND=cen_kind, OUT_KIND=out_kind, OUT2_KIND=out2_kind,
            LAYOUT=st.layout, Y0POS=st.y0pos, ENERGY=energy_mode, EN_SLOT=en_slot,
            TR=cfg.TR, TC=cfg.TC, P=cfg.P, PREC=DOT_PRECISION, MAP=map_layout, SCALED=scale is not None,
            num_warps=cfg.num_warps,
        )


# --------------------------------------------------------------------------- stage passes
# S0 = S(before 5), S1 = S(before 6); the adjoint of S(before b) is S(before 11 - b).
_R2 = _SQRT2
_IR2 = 1.0 / _SQRT2


def _scratch(st: _Stage, like: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    return torch.empty(st.nb, st.n, st.h, st.w, device=like.device, dtype=cd)


def _stage_dec(st, filt, cd, parent, children, energy=None, energy_mode=_E_NONE, final=None, keep=None):
    """y0 = (p0 − S1 p1)/√2, y1 = −√2 p1 − S0 y0 into ``children`` (or energies only).

    y0 goes through a float32 scratch when the children are stored in lower
    precision (pass B must filter the unrounded y0) or not stored at all.
    Energies with ``keep``: the children are also stored there (plain layout, compute dtype).
    """
    if keep is not None:
        common = dict(energy=energy, energy_mode=energy_mode, final=final)
        _launch(st, filt, cd, win=parent, win_kind=_K_P1, bf=6, adjoint=False, cen=parent, cen_kind=_K_P0,
                coeffs=(_IR2, -_IR2, 0.0), out=keep, out_kind=_K_Y0, en_slot=0, **common)
        _launch(st, filt, cd, win=keep, win_kind=_K_Y0, bf=5, adjoint=False, cen=parent, cen_kind=_K_P1,
                coeffs=(-_R2, -1.0, 1.0), out=keep, out_kind=_K_Y1, en_slot=1, **common)
        return
    via = energy_mode != _E_NONE or children.dtype != cd
    y0 = _scratch(st, parent, cd) if via else children
    y0_kind = _K_SCRATCH if via else _K_Y0
    common = dict(energy=energy, energy_mode=energy_mode, final=final)
    _launch(st, filt, cd, win=parent, win_kind=_K_P1, bf=6, adjoint=False, cen=parent, cen_kind=_K_P0,
            coeffs=(_IR2, -_IR2, 0.0), out=y0, out_kind=y0_kind, en_slot=0, **common)
    store = energy_mode == _E_NONE
    _launch(st, filt, cd, win=y0, win_kind=y0_kind, bf=5, adjoint=False, cen=parent, cen_kind=_K_P1,
            coeffs=(-_R2, -1.0, 1.0), out=children if store else None, out_kind=_K_Y1 if store else _K_NONE,
            out2=children if (store and via) else None, out2_kind=_K_Y0 if (store and via) else _K_NONE,
            en_slot=1, **common)


def _stage_dec_adjoint(st, filt, cd, g_children, g_parent, final=None, scale=None):
    """Adjoint of :func:`_stage_dec`: t = g_y0 − S0ᵀ g_y1; g_p1 = −√2 g_y1 − S1ᵀ t/√2; g_p0 = t/√2.
    With ``scale`` the children are sub-bands y and the cotangents ``2·g·y`` (see :func:`_launch`)."""
    t = _scratch(st, g_children, cd)
    sc = dict(final=final, scale=scale)
    _launch(st, filt, cd, win=g_children, win_kind=_K_Y1, bf=6, adjoint=True, cen=g_children, cen_kind=_K_Y0,
            coeffs=(1.0, -1.0, 0.0), out=t, out_kind=_K_SCRATCH, **sc)
    _launch(st, filt, cd, win=t, win_kind=_K_SCRATCH, bf=5, adjoint=True, cen=g_children, cen_kind=_K_Y1,
            coeffs=(-_R2, -_IR2, _IR2), out=g_parent, out_kind=_K_P1, out2=g_parent, out2_kind=_K_P0, **sc)


def _stage_rec(st, filt, cd, children, parent):
    """p1 = −(y1 + S0 y0)/√2, p0 = √2 y0 + S1 p1, scattered into ``parent`` through the split."""
    via = parent.dtype != cd
    p1 = _scratch(st, parent, cd) if via else parent
    p1_kind = _K_SCRATCH if via else _K_P1
    _launch(st, filt, cd, win=children, win_kind=_K_Y0, bf=5, adjoint=False, cen=children, cen_kind=_K_Y1,
            coeffs=(-_IR2, -_IR2, 0.0), out=p1, out_kind=p1_kind)
    _launch(st, filt, cd, win=p1, win_kind=p1_kind, bf=6, adjoint=False, cen=children, cen_kind=_K_Y0,
            coeffs=(_R2, 1.0, 1.0), out=parent, out_kind=_K_P0,
            out2=parent if via else None, out2_kind=_K_P1 if via else _K_NONE)


def _stage_rec_adjoint(st, filt, cd, g_parent, g_children):
    """Adjoint of :func:`_stage_rec`: g_y1 = −(g_p1 + S1ᵀ g_p0)/√2; g_y0 = √2 g_p0 + S0ᵀ g_y1."""
    via = g_children.dtype != cd
    gy1 = _scratch(st, g_parent, cd) if via else g_children
    gy1_kind = _K_SCRATCH if via else _K_Y1
    _launch(st, filt, cd, win=g_parent, win_kind=_K_P0, bf=5, adjoint=True, cen=g_parent, cen_kind=_K_P1,
            coeffs=(-_IR2, -_IR2, 0.0), out=gy1, out_kind=gy1_kind)
    _launch(st, filt, cd, win=gy1, win_kind=gy1_kind, bf=6, adjoint=True, cen=g_parent, cen_kind=_K_P0,
            coeffs=(_R2, 1.0, 1.0), out=g_children, out_kind=_K_Y0,
            out2=g_children if via else None, out2_kind=_K_Y1 if via else _K_NONE)


# --------------------------------------------------------------------------- tree drivers
def _children_buffers(plan, like, cd, out_dtype):
    """Band-major children buffers per level: ``[[buffer per stage] per level]``.

    Level 2's buffer holds both halves (bands 0, 1 | 2, 3); the stages of level 3
    read them as two contiguous views.
    """
    bufs = []
    last = len(plan) - 1
    for l, level in enumerate(plan):
        dt = out_dtype if l == last else cd
        if len(level) == 1:
            st = level[0]
            bufs.append([torch.empty(st.nbc, st.n, st.h, st.w, device=like.device, dtype=dt)])
        else:
            bufs.append([torch.empty(st.nbc, st.n, st.h, st.w, device=like.device, dtype=dt) for st in level])
    return bufs


def _parents(plan, x_planes, bufs):
    """Parent buffer of every stage: ``x`` for level 1, then the previous level's children."""
    parents = [[x_planes]]
    for l in range(1, len(plan)):
        prev = bufs[l - 1]
        if len(prev) == 1 and len(plan[l]) == 2:  # level 3 reads level 2's halves
            nb = prev[0].shape[0] // 2
            parents.append([prev[0][:nb], prev[0][nb:]])
        else:
            parents.append(prev)
    return parents


def _final_bands(last_bufs, shape_bc):
    """The sub-bands as contiguous (B, C, h, w) views of the last level's band-major buffers."""
    b, c = shape_bc
    out = []
    for buf in last_bufs:
        out.extend(buf[k].view(b, c, *buf.shape[-2:]) for k in range(buf.shape[0]))
    return out


def _dec_forward(x: torch.Tensor, levels: int, filt: str, out_dtype: torch.dtype) -> list[torch.Tensor]:
    """(B, C, H, W) -> 2**levels sub-bands (toolbox order) in ``out_dtype``."""
    b, c, H, W = x.shape
    cd = _compute_dtype(x.dtype)
    x_planes = x.contiguous().view(1, b * c, H, W)
    plan = _plan(levels, b * c, H, W)
    bufs = _children_buffers(plan, x, cd, out_dtype)
    parents = _parents(plan, x_planes, bufs)
    for l, level in enumerate(plan):
        for st, parent, child in zip(level, parents[l], bufs[l]):
            _stage_dec(st, filt, cd, parent, child)
    return _final_bands(bufs[-1], (b, c))


def _band_major_view(group, dtype):
    """``(nb, N, h, w)`` view of sub-bands that already are consecutive contiguous planes of one
    buffer (the outputs of :func:`dfb_dec_triton`, or cotangents made from them), else None."""
    first = group[0]
    size = first.numel()
    for k, t in enumerate(group):
        if (t.dtype != dtype or not t.is_contiguous() or t.shape != first.shape
                or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or t.storage_offset() != first.storage_offset() + k * size):
            return None
    b, c, h, w = first.shape
    return first.as_strided((len(group), b * c, h, w), (size, h * w, w, 1))


def _final_buffers_from(bands, plan, dtype):
    """Band-major final buffers of ``plan``'s last level holding the sub-bands (B, C, h, w):
    a view when they already are laid out that way, else one stacking copy."""
    level = plan[-1]
    nbc = level[0].nbc
    groups = [bands] if len(level) == 1 else [bands[:nbc], bands[nbc:]]
    out = []
    for g in groups:
        view = _band_major_view(g, dtype)
        if view is None:
            view = torch.stack([t.to(dtype).reshape(t.shape[0] * t.shape[1], *t.shape[-2:]) for t in g])
        out.append(view)
    return out


def _dec_adjoint(grads, levels, filt, x_shape, x_dtype, device) -> torch.Tensor:
    b, c, H, W = x_shape
    cd = _compute_dtype(x_dtype)
    plan = _plan(levels, b * c, H, W)
    like = grads[0]
    g_children = _final_buffers_from(grads, plan, grads[0].dtype)
    # gradient buffers of every level below the last (plain, compute dtype) and of x
    g_bufs = _children_buffers(plan[:-1], like, cd, cd) if len(plan) > 1 else []
    gx = torch.empty(1, b * c, H, W, device=device, dtype=x_dtype)
    g_parents = _parents(plan, gx, g_bufs + [g_children])
    for l in range(len(plan) - 1, -1, -1):
        g_child_level = g_children if l == len(plan) - 1 else g_bufs[l]
        for st, gp, gc in zip(plan[l], g_parents[l], g_child_level):
            _stage_dec_adjoint(st, filt, cd, gc, gp)
    return gx.view(b, c, H, W)


def _rec_forward(bands, filt, out_dtype) -> torch.Tensor:
    levels = len(bands).bit_length() - 1
    b, c = bands[0].shape[:2]
    H, W = dfb_image_size(bands[0].shape[-2:], levels)
    cd = _compute_dtype(bands[0].dtype)
    plan = _plan(levels, b * c, H, W)
    children = _final_buffers_from(bands, plan, bands[0].dtype)
    bufs = _children_buffers(plan[:-1], bands[0], cd, cd) if len(plan) > 1 else []
    x = torch.empty(1, b * c, H, W, device=bands[0].device, dtype=out_dtype)
    parents = _parents(plan, x, bufs + [children])
    for l in range(len(plan) - 1, -1, -1):
        level_children = children if l == len(plan) - 1 else bufs[l]
        for st, parent, child in zip(plan[l], parents[l], level_children):
            _stage_rec(st, filt, cd, child, parent)
    return x.view(b, c, H, W)


def _rec_adjoint(gx, levels, filt, bands_dtype) -> list[torch.Tensor]:
    b, c, H, W = gx.shape
    cd = _compute_dtype(bands_dtype)
    plan = _plan(levels, b * c, H, W)
    g_planes = gx.contiguous().view(1, b * c, H, W)
    bufs = _children_buffers(plan, gx, cd, bands_dtype)
    parents = _parents(plan, g_planes, bufs)
    for l, level in enumerate(plan):
        for st, gp, gc in zip(level, parents[l], bufs[l]):
            _stage_rec_adjoint(st, filt, cd, gp, gc)
    return _final_bands(bufs[-1], (b, c))


def _finals(plan):
    """``(map layout, KOFF, KTOT)`` of each stage of the last level (KOFF: first sub-band of its half)."""
    level = plan[-1]
    ktot = sum(st.nbc for st in level)
    return [(st.layout, k * level[0].nbc, ktot) for k, st in enumerate(level)]


def _dec_energy(x: torch.Tensor, levels: int, filt: str, keep: bool = False):
    """(B, C, H, W) -> (B, C, 2**levels) sums of squares in the compute dtype.

    The last level is never stored unless ``keep``: then it is also returned, per stage a
    plain band-major ``(nbc, N, h, w)`` buffer in the compute dtype (what the backward needs).
    """
    b, c, H, W = x.shape
    cd = _compute_dtype(x.dtype)
    x_planes = x.contiguous().view(1, b * c, H, W)
    plan = _plan(levels, b * c, H, W)
    bufs = _children_buffers(plan[:-1], x, cd, cd) if len(plan) > 1 else []
    parents = _parents(plan, x_planes, bufs + [[None] * len(plan[-1])])
    for l, level in enumerate(plan[:-1]):
        for st, parent, child in zip(level, parents[l], bufs[l]):
            _stage_dec(st, filt, cd, parent, child)
    deterministic = torch.are_deterministic_algorithms_enabled()
    n, k = b * c, 2**levels
    kept, parts = [], []
    en = None if deterministic else torch.zeros(n, k, device=x.device, dtype=cd)
    for st, parent, fin in zip(plan[-1], parents[-1], _finals(plan)):
        if deterministic:  # per-tile partials (this half's columns; zeros elsewhere), reduced in a fixed order
            cfg = tile_config(st.nb * st.n, st.h, st.w)
            tiles = triton.cdiv(st.h, cfg.TR) * triton.cdiv(st.w, cfg.TC)
            acc, mode = torch.zeros(n, k, tiles, device=x.device, dtype=cd), _E_PARTIAL
            parts.append(acc)
        else:
            acc, mode = en, _E_ATOMIC
        buf = _scratch(st._replace(nb=st.nbc), x, cd) if keep else None
        _stage_dec(st._replace(layout=_L_PLAIN) if keep else st, filt, cd, parent, acc,
                   energy=acc, energy_mode=mode, final=fin, keep=buf)
        kept.append(buf)
    if deterministic:
        en = parts[0].sum(-1)
        for p in parts[1:]:
            en = en + p.sum(-1)
    en = en.view(b, c, k)
    return (en, kept) if keep else en


def _energy_adjoint(kept, g, levels, filt, x_shape, cd) -> torch.Tensor:
    """Gradient of the energies w.r.t. x, (B, C, H, W) in ``cd``: the adjoint of the tree applied to
    ``2·g·y`` (``kept``: the last level of :func:`_dec_energy`; the scaling is done in its first passes)."""
    b, c, H, W = x_shape
    plan = _plan(levels, b * c, H, W)
    g2 = g.reshape(b * c, 2**levels)  # a view unless g is expanded
    g_bufs = _children_buffers(plan[:-1], kept[0], cd, cd) if len(plan) > 1 else []
    gx = torch.empty(1, b * c, H, W, device=kept[0].device, dtype=cd)
    g_parents = _parents(plan, gx, g_bufs + [kept])
    for st, gp, gc, fin in zip(plan[-1], g_parents[-1], kept, _finals(plan)):
        _stage_dec_adjoint(st._replace(layout=_L_PLAIN), filt, cd, gc, gp, final=fin, scale=g2)
    for l in range(len(plan) - 2, -1, -1):
        for st, gp, gc in zip(plan[l], g_parents[l], g_bufs[l]):
            _stage_dec_adjoint(st, filt, cd, gc, gp)
    return gx.view(b, c, H, W)


# --------------------------------------------------------------------------- autograd
class _DFBDec(torch.autograd.Function):
    """Sub-bands of x; backward = the adjoint stages (not the synthesis)."""

    @staticmethod
    def forward(ctx, x, levels, filt, out_dtype):
        ctx.levels, ctx.filt, ctx.shape, ctx.dtype = levels, filt, tuple(x.shape), x.dtype
        return tuple(_dec_forward(x, levels, filt, out_dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        # grads are materialized (zeros for unused sub-bands) by autograd
        gx = _dec_adjoint(list(grads), ctx.levels, ctx.filt, ctx.shape, ctx.dtype, grads[0].device)
        return gx, None, None, None


class _DFBEnergy(torch.autograd.Function):
    """Sums of squares of the sub-bands; forward keeps the last tree level (used where x needs a
    gradient), backward = the adjoint applied to ``2·g·y`` (nothing recomputed)."""

    @staticmethod
    def forward(ctx, x, levels, filt):
        ctx.levels, ctx.filt, ctx.shape = levels, filt, tuple(x.shape)
        en, ctx.kept = _dec_energy(x, levels, filt, keep=True)
        return en

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        kept, ctx.kept = ctx.kept, None
        gx = _energy_adjoint(kept, g, ctx.levels, ctx.filt, ctx.shape, kept[0].dtype)
        return gx, None, None


class _DFBRec(torch.autograd.Function):
    """Image from sub-bands; backward = the adjoint of the synthesis stages."""

    @staticmethod
    def forward(ctx, filt, out_dtype, *bands):
        ctx.filt, ctx.levels = filt, len(bands).bit_length() - 1
        ctx.dtype = bands[0].dtype
        return _rec_forward(list(bands), filt, out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx):
        grads = _rec_adjoint(gx, ctx.levels, ctx.filt, ctx.dtype)
        return (None, None, *grads)


# --------------------------------------------------------------------------- public entry points
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_x(x, levels, name="x"):
    if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES:
        raise TypeError(f"{name}: the Triton DFB kernels take float16/bfloat16/float32/float64 tensors, "
                        f"got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4:
        raise ValueError(f"{name}: expected (B, C, H, W), got shape {tuple(x.shape)}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"levels: expected an int >= 0, got {levels!r}")
    check_dfb_size(x.shape[-2], x.shape[-1], levels, name)


def dfb_dec_triton(x: torch.Tensor, levels: int, filt: str = "pkva", out_dtype: torch.dtype | None = None):
    """Triton ``dfb_dec``: ``x`` (B, C, H, W) -> list of ``2**levels`` sub-bands (toolbox order).

    Computes in float32 (float64 for float64 input) and stores the sub-bands in
    ``out_dtype`` (default ``x.dtype``) as contiguous views of one band-major
    buffer per half. Sizes as :func:`sstkd.ops.dfb_dec` requires; full
    validation is done there. Backward: the adjoint of the decomposition.
    """
    _check_x(x, levels)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if levels == 0:
        return [x.to(out_dtype)]
    return list(_DFBDec.apply(x, levels, filt, out_dtype))


def dfb_rec_triton(bands, filt: str = "pkva", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Triton ``dfb_rec``: the ``2**levels`` sub-bands of :func:`dfb_dec_triton` -> (B, C, H, W).

    Returns ``out_dtype`` (default: the sub-bands' dtype). Validation of the
    list is done by :func:`sstkd.ops.dfb_rec`. Backward: the adjoint.
    """
    bands, levels, _ = check_dfb_bands(bands)
    out_dtype = bands[0].dtype if out_dtype is None else out_dtype
    if levels == 0:
        return bands[0].to(out_dtype)
    return _DFBRec.apply(filt, out_dtype, *bands)


def dfb_energy_triton(x: torch.Tensor, levels: int, filt: str = "pkva") -> torch.Tensor:
    """Sums of squares of the ``2**levels`` DFB sub-bands of ``x``: (B, C, 2**levels) in float32
    (float64 for float64 input), without storing the last tree level unless x needs a gradient
    (then it is kept for the backward: the adjoint applied to ``2·g·y``, the cotangent scaling
    done inside the first adjoint passes, nothing recomputed)."""
    _check_x(x, levels)
    if levels == 0:
        xc = x.to(_compute_dtype(x.dtype))
        return (xc * xc).sum(dim=(-2, -1)).unsqueeze(-1)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _dec_energy(x, levels, filt)
    return _DFBEnergy.apply(x, levels, filt)
