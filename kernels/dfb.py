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
adds its tile's sum of squares to a per-(sub-band, image) accumulator with one
atomic, or, when ``torch.are_deterministic_algorithms_enabled()``, stores a
per-tile partial that a fixed-order ``sum`` reduces.

Layout: an ``nb``-band group of ``N = B·C`` images is stored band-major
``(nb, N, h, w)``, so every plane is contiguous and every final sub-band is a
contiguous ``(B, C, h, w)`` view of its level buffer.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sstkd.filters import modulated_dfb_filter

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
# Every operand is addressed at sub-band position (rho, c): rho is the row a program is at
# (a scalar on a GPU), c a column already wrapped into [0, w). What depends on the column
# only is computed once per lane before the row loop ("column terms", `%` allowed there);
# what depends on the row only is a few scalars per row ("row terms", one compare-and-select
# wrap each when FAST); per element the maps cost adds, compares and selects only.
@triton.jit
def _pmod(x, m):
    """x mod m in [0, m) for either sign convention of `%`."""
    r = x % m
    return tl.where(r < 0, r + m, r)


@triton.jit
def _col_terms(c, k, H, W, h, w, HALF4,
               KIND: tl.constexpr, SPLIT: tl.constexpr, LAYOUT: tl.constexpr, Y0POS: tl.constexpr):
    """Row-independent terms (t1, t2) of the address of columns ``c`` (in [0, w)) of an operand."""
    t1 = c * 0
    t2 = c * 0
    if KIND < 2:
        q = KIND
        odd = k % 2
        if SPLIT == 0:  # (-c) mod H
            t1 = _pmod(-c, H)
        elif SPLIT == 1:  # c mod H, (2c + q - c mod H) mod W
            t1 = _pmod(c, H)
            t2 = _pmod(2 * c + q - t1, W)
        elif SPLIT == 3:  # ((1 - 2 odd) c + q (1 - odd)) mod H
            t1 = _pmod((1 - 2 * odd) * c + q * (1 - odd), H)
    elif KIND < 4:
        if LAYOUT == 4:  # (-s c) mod h
            if KIND == 2:
                cb = 2 * k + Y0POS
            else:
                cb = 2 * k + 1 - Y0POS
            t1 = _pmod(-(2 * (cb // 2) + 1 - HALF4) * c, h)
    return t1, t2


@triton.jit
def _row_terms(rho, qs, k, H, W, h, w, HALF4, WMH, HMW,
               KIND: tl.constexpr, SPLIT: tl.constexpr, LAYOUT: tl.constexpr, Y0POS: tl.constexpr,
               FAST: tl.constexpr):
    """Column-independent terms (r0, r1, r2) at sub-band row ``rho`` (in [0, h)); ``qs`` is the
    'qper_col' column shift of the row (in [0, w)). FAST: every wrap below is one add or
    subtract (the launcher checks the sizes allow it), else an exact modulo."""
    r0 = rho * 0
    r1 = rho * 0
    r2 = rho * 0
    if KIND < 2:
        q = KIND
        if SPLIT == 0:  # col = (c + a) mod W, row = (t1 + B + wrap·(W mod H)) mod H
            a = rho + q + qs
            b = 2 * rho + q
            if FAST:  # a in [0, 2W), b - a in [-W, H)
                a = tl.where(a >= W, a - W, a)
                b = b - a
                b = tl.where(b < 0, b + H, b)
            else:
                a = _pmod(a, W)
                b = _pmod(b - a, H)
            r0 = a
            r1 = b
            r2 = rho * 0 + WMH
        elif SPLIT == 1:  # row = (t1 + a) mod H, col = (t2 + (-a mod W) + wrap·(H mod W)) mod W
            a = rho + q
            a = tl.where(a >= H, a - H, a)
            if FAST:  # -a in [-W, 0]
                na = tl.where(a > 0, W - a, 0)
            else:
                na = _pmod(-a, W)
            r0 = a
            r1 = na
            r2 = rho * 0 + HMW
        elif SPLIT == 2:  # row = 2 rho + q, col = (c + r1) mod W
            r0 = (2 * rho + q) * W
            if k % 2 == 1:
                e = -rho
            else:
                e = rho + q
            if FAST:  # e in [-W, 2W)
                r1 = tl.where(e < 0, e + W, tl.where(e >= W, e - W, e))
            else:
                r1 = _pmod(e, W)
        else:  # col = 2c + q, row = (t1 + rho) mod H
            r0 = rho
    elif KIND < 4:
        if LAYOUT == 1:  # col = (c + r0) mod w, row = (rho - col // 2) mod h
            e = rho + qs
            if FAST:
                r0 = tl.where(e >= w, e - w, e)
            else:
                r0 = _pmod(e, w)
            r1 = rho
        elif LAYOUT == 3:  # col = (c + r1) mod w
            if KIND == 2:
                cb = 2 * k + Y0POS
            else:
                cb = 2 * k + 1 - Y0POS
            e = qs - (2 * (cb // 2) + 1 - HALF4) * rho
            r0 = rho * w
            if FAST:  # e in [-w, 2w)
                r1 = tl.where(e < 0, e + w, tl.where(e >= w, e - w, e))
            else:
                r1 = _pmod(e, w)
        elif LAYOUT == 4:  # row = (t1 + rho) mod h
            r0 = rho
        else:
            r0 = rho * w
            r1 = qs
    else:
        r0 = rho * w
        r1 = qs
    return r0, r1, r2


@triton.jit
def _offsets(c, t1, t2, r0, r1, r2, H, W, h, w,
             KIND: tl.constexpr, SPLIT: tl.constexpr, LAYOUT: tl.constexpr, NF1: tl.constexpr):
    """Offsets, inside the operand's plane, of the columns ``c`` at the row of ``r*``."""
    if KIND < 2:
        if SPLIT == 0:
            x = c + r0
            wrap = x >= W
            col = tl.where(wrap, x - W, x)
            row = t1 + r1 + tl.where(wrap, r2, 0)  # < 3H
            row = tl.where(row >= H, row - H, row)
            row = tl.where(row >= H, row - H, row)
            off = row * W + col
        elif SPLIT == 1:
            y = t1 + r0
            wrap = y >= H
            row = tl.where(wrap, y - H, y)
            col = t2 + r1 + tl.where(wrap, r2, 0)  # < 3W
            col = tl.where(col >= W, col - W, col)
            col = tl.where(col >= W, col - W, col)
            off = row * W + col
        elif SPLIT == 2:
            col = c + r1
            off = r0 + tl.where(col >= W, col - W, col)
        else:
            row = t1 + r0
            off = tl.where(row >= H, row - H, row) * W + 2 * c + KIND
    elif KIND < 4:
        if LAYOUT == 1:
            col = c + r0
            col = tl.where(col >= w, col - w, col)
            row = r1 - col // 2
            if NF1 == 0:  # (w - 1) // 2 > h: several wraps
                row = _pmod(row, h)
            else:
                row = tl.where(row < 0, row + h, row)
            off = row * w + col
        elif LAYOUT == 4:
            row = t1 + r0
            off = tl.where(row >= h, row - h, row) * w + c
        else:
            col = c + r1
            off = r0 + tl.where(col >= w, col - w, col)
    else:
        col = c + r1
        off = r0 + tl.where(col >= w, col - w, col)
    return off


@triton.jit
def _plane_base(k, n, N, H, W, h, w, NBC, KIND: tl.constexpr, LAYOUT: tl.constexpr, Y0POS: tl.constexpr):
    """Element offset (int64) of the plane of parent band ``k`` / image ``n`` an operand lives in."""
    if KIND < 2:
        base = (k * N + n).to(tl.int64) * H * W
    elif KIND < 4:
        if KIND == 2:
            cb = 2 * k + Y0POS
        else:
            cb = 2 * k + 1 - Y0POS
        band = cb
        if LAYOUT == 2:  # levels == 2: the second half of the list is reversed
            band = tl.where(cb < 2, cb, 5 - cb)
        elif LAYOUT == 4:
            band = NBC - 1 - cb
        base = (band * N + n).to(tl.int64) * h * w
    else:
        base = (k * N + n).to(tl.int64) * h * w
    return base


@triton.jit
def _ladder_kernel(
    WIN, CEN, OUT, OUT2, TAPS, EN,
    N, H, W, h, w, QS, NBC, HALF4, IMG_GROUPS, CHUNK_GROUPS, STRIPS, ROWS,
    SPLIT: tl.constexpr, BF: tl.constexpr, QPER: tl.constexpr,
    WIN_KIND: tl.constexpr, CEN_KIND: tl.constexpr, OUT_KIND: tl.constexpr, OUT2_KIND: tl.constexpr,
    LAYOUT: tl.constexpr, Y0POS: tl.constexpr, ENERGY: tl.constexpr, EN_SLOT: tl.constexpr,
    CG: tl.constexpr, GPL: tl.constexpr, PL: tl.constexpr, CPL: tl.constexpr,
    FAST: tl.constexpr = 0, NF1: tl.constexpr = 0,
):
    """One ladder pass: ``out = ALPHA·CEN + BETA·S(WIN)`` (``OUT2 = GAMMA·WIN`` at the centre).

    ``S`` is the 12×12 separable filter of extension ``BF``; ``TAPS = [taps (12), ALPHA, BETA,
    GAMMA]`` in the compute dtype. A lane owns CG consecutive output columns of one image of
    parent band k and marches down a chunk of ROWS rows: per row it loads its CG + 11 window
    columns at once ([16, lanes]), filters them horizontally with a [CG, 16] Toeplitz block
    (a broadcast multiply-sum, in registers), and keeps the last 12 such rows as a sliding
    window of registers for the vertical taps. Lanes: CPL row chunks × PL images × GPL column
    groups (CPL > 1 only in the interpreter, whose cost is per vector op).
    Grid (1-D): strips fastest, then row chunks, image groups, parent bands, so the tiles of
    one plane run next to each other.
    """
    DT: tl.constexpr = TAPS.dtype.element_ty
    NXP: tl.constexpr = 16 if CG <= 5 else 32  # window columns CG + 11, padded
    L: tl.constexpr = CPL * PL * GPL
    pid = tl.program_id(0)
    strip = pid % STRIPS
    rest = pid // STRIPS
    cgrp = rest % CHUNK_GROUPS
    rest = rest // CHUNK_GROUPS
    ig = rest % IMG_GROUPS
    k = rest // IMG_GROUPS
    lane = tl.arange(0, L)[None, :]
    n = ig * PL + (lane // GPL) % PL
    has_img = n < N
    n = tl.minimum(n, N - 1)
    cb = strip * (GPL * CG) + (lane % GPL) * CG  # first output column of the lane
    if CPL == 1:
        i0 = cgrp * ROWS
    else:
        i0 = (cgrp * CPL + lane // (PL * GPL)) * ROWS
    i1 = tl.minimum(i0 + ROWS, h)
    WMH = W % H
    HMW = H % W
    QSM = QS % w

    taps = ()
    for t in tl.static_range(12):
        taps = taps + (tl.load(TAPS + t),)
    alpha = tl.load(TAPS + 12)
    beta = tl.load(TAPS + 13)
    jx = tl.arange(0, NXP)[:, None]
    oo = tl.arange(0, CG)[:, None]
    u = tl.arange(0, NXP)[None, :] - oo  # horizontal Toeplitz block [CG, NXP]: taps[j - o]
    hmat = tl.load(TAPS + u, mask=(u >= 0) & (u < 12), other=0.0)

    # window columns cb - BF + [0, CG + 11) and output columns cb + [0, CG), wrapped once per lane
    xc = _pmod(cb - BF + jx, w)
    xok = jx < CG + 11
    xt1, xt2 = _col_terms(xc, k, H, W, h, w, HALF4, WIN_KIND, SPLIT, LAYOUT, Y0POS)
    win_ptr = WIN + _plane_base(k, n, N, H, W, h, w, NBC, WIN_KIND, LAYOUT, Y0POS)
    oc = _pmod(cb + oo, w)
    ook = has_img & (cb + oo < w)
    ct1, ct2 = _col_terms(oc, k, H, W, h, w, HALF4, CEN_KIND, SPLIT, LAYOUT, Y0POS)
    cen_ptr = CEN + _plane_base(k, n, N, H, W, h, w, NBC, CEN_KIND, LAYOUT, Y0POS)
    if OUT_KIND != 5:
        ot1, ot2 = _col_terms(oc, k, H, W, h, w, HALF4, OUT_KIND, SPLIT, LAYOUT, Y0POS)
        out_ptr = OUT + _plane_base(k, n, N, H, W, h, w, NBC, OUT_KIND, LAYOUT, Y0POS)
    if OUT2_KIND != 5:
        gamma = tl.load(TAPS + 14)
        vt1, vt2 = _col_terms(oc, k, H, W, h, w, HALF4, WIN_KIND, SPLIT, LAYOUT, Y0POS)
        o2t1, o2t2 = _col_terms(oc, k, H, W, h, w, HALF4, OUT2_KIND, SPLIT, LAYOUT, Y0POS)
        o2_ptr = OUT2 + _plane_base(k, n, N, H, W, h, w, NBC, OUT2_KIND, LAYOUT, Y0POS)

    z = tl.zeros((CG, L), DT)
    win = (z, z, z, z, z, z, z, z, z, z, z)  # the last 11 horizontally filtered rows
    en = z
    rho = _pmod(i0 - BF, h)  # sub-band row of window row r, advanced by one per iteration
    for it in range(0, ROWS + 11):
        r = i0 - BF + it
        qs = 0
        if QPER:  # 'qper_col': halo rows come circularly shifted by QS columns
            qs = tl.where((r < 0) | (r >= h), QSM, 0)
        r0, r1, r2 = _row_terms(rho, qs, k, H, W, h, w, HALF4, WMH, HMW, WIN_KIND, SPLIT, LAYOUT, Y0POS, FAST)
        offs = _offsets(xc, xt1, xt2, r0, r1, r2, H, W, h, w, WIN_KIND, SPLIT, LAYOUT, NF1)
        x = tl.load(win_ptr + offs, mask=xok, other=0.0).to(DT)
        hrow = tl.sum(hmat[:, :, None] * x[None, :, :], axis=1)
        win = win + (hrow,)
        if it >= 11:
            i = r - 11 + BF  # output row: the window holds rows i - BF .. i - BF + 11
            ok = ook & (i < i1)
            c0, c1, c2 = _row_terms(i, 0, k, H, W, h, w, HALF4, WMH, HMW, CEN_KIND, SPLIT, LAYOUT, Y0POS, FAST)
            cen = tl.load(cen_ptr + _offsets(oc, ct1, ct2, c0, c1, c2, H, W, h, w, CEN_KIND, SPLIT, LAYOUT, NF1),
                          mask=ok, other=0.0).to(DT)
            s = taps[0] * win[0]
            for t in tl.static_range(1, 12):
                s += taps[t] * win[t]
            out = alpha * cen + beta * s
            if OUT_KIND != 5:
                p0, p1, p2 = _row_terms(i, 0, k, H, W, h, w, HALF4, WMH, HMW, OUT_KIND, SPLIT, LAYOUT, Y0POS, FAST)
                tl.store(out_ptr + _offsets(oc, ot1, ot2, p0, p1, p2, H, W, h, w, OUT_KIND, SPLIT, LAYOUT, NF1),
                         out.to(OUT.dtype.element_ty), mask=ok)
            if OUT2_KIND != 5:
                v0, v1, v2 = _row_terms(i, 0, k, H, W, h, w, HALF4, WMH, HMW, WIN_KIND, SPLIT, LAYOUT, Y0POS, FAST)
                v = tl.load(win_ptr + _offsets(oc, vt1, vt2, v0, v1, v2, H, W, h, w, WIN_KIND, SPLIT, LAYOUT, NF1),
                            mask=ok, other=0.0).to(DT)
                u0, u1, u2 = _row_terms(i, 0, k, H, W, h, w, HALF4, WMH, HMW, OUT2_KIND, SPLIT, LAYOUT, Y0POS, FAST)
                tl.store(o2_ptr + _offsets(oc, o2t1, o2t2, u0, u1, u2, H, W, h, w, OUT2_KIND, SPLIT, LAYOUT, NF1),
                         (gamma * v).to(OUT2.dtype.element_ty), mask=ok)
            if ENERGY != 0:
                en += tl.where(ok, out * out, 0.0)
        win = win[1:]
        rho = tl.where(rho + 1 == h, 0, rho + 1)
    if ENERGY != 0:
        # per (row chunk, image) sums: lanes are chunk-major, then image, then column group
        part = tl.sum(tl.reshape(tl.sum(en, axis=0), (CPL * PL, GPL)), axis=1)
        slot_ids = tl.arange(0, CPL * PL)
        img = ig * PL + slot_ids % PL
        chunk = cgrp * CPL + slot_ids // PL
        if EN_SLOT == 0:
            cbe = 2 * k + Y0POS
        else:
            cbe = 2 * k + 1 - Y0POS
        slot = cbe * N + tl.minimum(img, N - 1)
        has = img < N  # chunks past the last row store a zero partial
        if ENERGY == 1:
            tl.atomic_add(EN + slot, part.to(EN.dtype.element_ty), mask=has)
        else:
            tiles = CHUNK_GROUPS * CPL * STRIPS
            tl.store(EN + slot.to(tl.int64) * tiles + chunk * STRIPS + strip, part.to(EN.dtype.element_ty), mask=has)


KERNELS = {"ladder": _ladder_kernel}


# --------------------------------------------------------------------------- launch geometry
def _interpreted() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class TileConfig(NamedTuple):
    CG: int  # output columns per lane (the window adds 11)
    GPL: int  # column groups per image: a strip is GPL·CG columns (power of two)
    PL: int  # images per program (power of two)
    CPL: int  # row chunks per program, side by side in the lanes (interpreter only; power of two)
    ROWS: int  # output rows per chunk (the window re-reads 11 rows per chunk)
    num_warps: int


def tile_config(images: int, h: int, w: int, bands: int = 1, interpreted: bool | None = None) -> TileConfig:
    """Fixed launch geometry for ``bands`` parent bands × ``images`` planes of sub-band size ``h × w``.

    On a GPU: 4 output columns per lane (16 window loads per 4 outputs, a 12 × 4 register
    window), 128 lanes: a strip of up to 512 columns of one image, or several images side by
    side when the band is narrow; rows in one chunk per plane, split into chunks of at least 32
    rows only to fill the GPU (~1024 programs). The interpreter runs programs one after another
    at a fixed cost per vector op, so there a lane owns one column and one output row, and a
    program holds whole planes (up to 16384 lanes): 12 loop iterations per pass.
    """
    if interpreted is None:
        interpreted = _interpreted()
    if interpreted:
        gpl = triton.next_power_of_2(w)
        cpl = triton.next_power_of_2(h)
        pl = max(1, min(triton.next_power_of_2(images), 16384 // (gpl * cpl)))
        return TileConfig(1, gpl, pl, cpl, 1, 4)
    cg, lanes = 4, 128
    gpl = min(lanes, triton.next_power_of_2(triton.cdiv(w, cg)))
    pl = max(1, min(lanes // gpl, triton.next_power_of_2(images)))
    programs = bands * triton.cdiv(images, pl) * triton.cdiv(w, gpl * cg)
    chunks = max(1, triton.cdiv(1024, programs))
    rows = min(h, max(32, triton.cdiv(h, chunks)))
    return TileConfig(cg, gpl, pl, 1, rows, max(1, min(4, gpl * pl // 32)))


def _grid(cfg: TileConfig, bands: int, images: int, h: int, w: int) -> tuple[int, int, int, int, int]:
    """(programs, image groups, chunk groups, column strips, tiles per plane) of a launch."""
    groups = triton.cdiv(images, cfg.PL)
    chunk_groups = triton.cdiv(triton.cdiv(h, cfg.ROWS), cfg.CPL)
    strips = triton.cdiv(w, cfg.GPL * cfg.CG)
    return bands * groups * chunk_groups * strips, groups, chunk_groups, strips, chunk_groups * cfg.CPL * strips


def _fast_wraps(st: "_Stage") -> bool:
    """Whether every row-term wrap of stage ``st`` is a single add or subtract (else exact `%`)."""
    ok = True
    if st.split == _S_1R:
        ok = st.h <= st.W <= st.H
    elif st.split == _S_2C:
        ok = st.H <= st.W
    elif st.split == _S_ROWS:
        ok = st.h <= st.W
    if st.layout == _L_FINAL1:
        ok = ok and st.h <= st.w
    elif st.layout == _L_FIRST:
        ok = ok and max(st.half4 - 1, 1) * st.h <= st.w
    return ok


# Debug/benchmark hook: when a list, every launch appends its constexprs, grid and tile.
launch_log: list | None = None


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
            energy=None, energy_mode=_E_NONE, en_slot=0):
    """Launch one ladder pass of stage ``st`` on the current stream of the tensors' device."""
    cfg = tile_config(st.n, st.h, st.w, st.nb)
    programs, groups, chunk_groups, strips, _ = _grid(cfg, st.nb, st.n, st.h, st.w)
    taps = _taps(tuple(coeffs), filt, win.device, cd)
    qs = ((st.w // 2) if adjoint else (st.w + 1) // 2) if st.qper else 0
    dummy = taps
    if launch_log is not None:
        launch_log.append(dict(split=st.split, bf=bf, qper=st.qper, kinds=(win_kind, cen_kind, out_kind, out2_kind),
                               layout=st.layout, energy=energy_mode, grid=(programs,), tile=tuple(cfg[:5]),
                               dtypes=tuple(t.dtype if t is not None else None for t in (win, cen, out, out2))))
    guard = torch.cuda.device(win.device) if win.device.type == "cuda" else contextlib.nullcontext()
    with guard:
        _ladder_kernel[(programs,)](
            win, cen, out if out is not None else dummy, out2 if out2 is not None else dummy, taps,
            energy if energy is not None else dummy,
            st.n, st.H, st.W, st.h, st.w, qs, st.nbc, st.half4, groups, chunk_groups, strips, cfg.ROWS,
            SPLIT=st.split, BF=bf, QPER=st.qper,
            WIN_KIND=win_kind, CEN_KIND=cen_kind, OUT_KIND=out_kind, OUT2_KIND=out2_kind,
            LAYOUT=st.layout, Y0POS=st.y0pos, ENERGY=energy_mode, EN_SLOT=en_slot,
            CG=cfg.CG, GPL=cfg.GPL, PL=cfg.PL, CPL=cfg.CPL, FAST=int(_fast_wraps(st)),
            NF1=int((st.w - 1) // 2 <= st.h), num_warps=cfg.num_warps,
        )


# --------------------------------------------------------------------------- stage passes
# S0 = S(before 5), S1 = S(before 6); the adjoint of S(before b) is S(before 11 - b).
_R2 = _SQRT2
_IR2 = 1.0 / _SQRT2


def _scratch(st: _Stage, like: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    return torch.empty(st.nb, st.n, st.h, st.w, device=like.device, dtype=cd)


def _stage_dec(st, filt, cd, parent, children, energy=None, energy_mode=_E_NONE):
    """y0 = (p0 − S1 p1)/√2, y1 = −√2 p1 − S0 y0 into ``children`` (or energies only).

    y0 goes through a float32 scratch when the children are stored in lower
    precision (pass B must filter the unrounded y0) or not stored at all.
    """
    via = energy_mode != _E_NONE or children.dtype != cd
    y0 = _scratch(st, parent, cd) if via else children
    y0_kind = _K_SCRATCH if via else _K_Y0
    common = dict(energy=energy, energy_mode=energy_mode)
    _launch(st, filt, cd, win=parent, win_kind=_K_P1, bf=6, adjoint=False, cen=parent, cen_kind=_K_P0,
            coeffs=(_IR2, -_IR2, 0.0), out=y0, out_kind=y0_kind, en_slot=0, **common)
    store = energy_mode == _E_NONE
    _launch(st, filt, cd, win=y0, win_kind=y0_kind, bf=5, adjoint=False, cen=parent, cen_kind=_K_P1,
            coeffs=(-_R2, -1.0, 1.0), out=children if store else None, out_kind=_K_Y1 if store else _K_NONE,
            out2=children if (store and via) else None, out2_kind=_K_Y0 if (store and via) else _K_NONE,
            en_slot=1, **common)


def _stage_dec_adjoint(st, filt, cd, g_children, g_parent):
    """Adjoint of :func:`_stage_dec`: t = g_y0 − S0ᵀ g_y1; g_p1 = −√2 g_y1 − S1ᵀ t/√2; g_p0 = t/√2."""
    t = _scratch(st, g_children, cd)
    _launch(st, filt, cd, win=g_children, win_kind=_K_Y1, bf=6, adjoint=True, cen=g_children, cen_kind=_K_Y0,
            coeffs=(1.0, -1.0, 0.0), out=t, out_kind=_K_SCRATCH)
    _launch(st, filt, cd, win=t, win_kind=_K_SCRATCH, bf=5, adjoint=True, cen=g_children, cen_kind=_K_Y1,
            coeffs=(-_R2, -_IR2, _IR2), out=g_parent, out_kind=_K_P1, out2=g_parent, out2_kind=_K_P0)


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
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    H, W = _image_size(bands[0].shape[-2:], levels)
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


def _image_size(band_hw, levels):
    h0, w0 = band_hw
    if levels == 1:
        return 2 * h0, w0
    return h0 * 2 ** (levels - 1), 2 * w0


def _energy_order(st: _Stage, en: torch.Tensor) -> torch.Tensor:
    """``(nbc, N)`` energies per child band -> final sub-band order of this half."""
    if st.layout == _L_FINAL2:  # bands 2, 3 are the reversed second half (no index tensor: no H2D copy)
        return torch.cat([en[:2], en[2:].flip(0)])
    if st.layout == _L_SECOND:
        return en.flip(0)
    return en


def _dec_energy(x: torch.Tensor, levels: int, filt: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2**levels) sums of squares, the last level never stored."""
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
    out = []
    for st, parent in zip(plan[-1], parents[-1]):
        if deterministic:  # per-tile partials, reduced in a fixed order
            cfg = tile_config(st.n, st.h, st.w, st.nb)
            tiles = _grid(cfg, st.nb, st.n, st.h, st.w)[4]
            part = torch.empty(st.nbc, st.n, tiles, device=x.device, dtype=cd)
            _stage_dec(st, filt, cd, parent, part, energy=part, energy_mode=_E_PARTIAL)
            en = part.sum(-1)
        else:
            en = torch.zeros(st.nbc, st.n, device=x.device, dtype=cd)
            _stage_dec(st, filt, cd, parent, en, energy=en, energy_mode=_E_ATOMIC)
        out.append(_energy_order(st, en))
    return torch.cat(out).t().reshape(b, c, 2**levels)


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
    from sstkd.ops.dfb import check_dfb_size

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
    bands = list(bands)
    for k, t in enumerate(bands):
        if not isinstance(t, torch.Tensor) or t.dtype not in _DTYPES or t.dim() != 4:
            raise TypeError(f"bands[{k}]: expected a (B, C, h, w) float16/bfloat16/float32/float64 tensor")
    levels = len(bands).bit_length() - 1
    if len(bands) == 0 or 2**levels != len(bands):
        raise ValueError(f"bands: expected a list of 2**levels sub-bands, got {len(bands)}")
    out_dtype = bands[0].dtype if out_dtype is None else out_dtype
    if levels == 0:
        return bands[0].to(out_dtype)
    from sstkd.ops.dfb import dfb_band_shapes

    b, c = bands[0].shape[:2]
    H, W = _image_size(bands[0].shape[-2:], levels)
    for k, (t, hw) in enumerate(zip(bands, dfb_band_shapes(H, W, levels))):  # the kernels trust these shapes
        if tuple(t.shape) != (b, c, *hw) or t.dtype != bands[0].dtype or t.device != bands[0].device:
            raise ValueError(f"bands[{k}]: expected a {bands[0].dtype} tensor of shape {(b, c, *hw)} on "
                             f"{bands[0].device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return _DFBRec.apply(filt, out_dtype, *bands)


def dfb_energy_triton(x: torch.Tensor, levels: int, filt: str = "pkva") -> torch.Tensor:
    """Sums of squares of the ``2**levels`` DFB sub-bands of ``x``: (B, C, 2**levels) in float32
    (float64 for float64 input), without storing the last tree level. No autograd
    (:func:`sstkd.kernels.contourlet.contourlet_energy_triton` provides the backward)."""
    _check_x(x, levels)
    if levels == 0:
        xc = x.to(_compute_dtype(x.dtype))
        return (xc * xc).sum(dim=(-2, -1)).unsqueeze(-1)
    return _dec_energy(x, levels, filt)
