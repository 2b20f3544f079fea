"""Fused Triton kernels of one Laplacian pyramid level (``lp_dec`` / ``lp_rec``) with autograd.

Everything an LP level does is separable and 2-periodic, so in 1-D it is a
handful of banded operators on a periodic signal (``A = down∘h``,
``P = g∘up``, ``K = P·A``)::

    lp_dec:  low = A x,           band = x − K x
    lp_rec:  x   = band − K band + P low
    adjoint of lp_dec:  gx = g_band − Kᵀ g_band + Aᵀ g_low      (synthesis shape)
    adjoint of lp_rec:  g_low = Pᵀ gx,  g_band = gx − Kᵀ gx     (analysis shape)

So two kernels cover all four directions; only their taps differ:

* ``_lp_analysis_kernel``: full-res ``X`` -> decimated ``LOW = L X`` and
  full-res ``OUT = X − K X`` (``L`` 9 taps per axis, ``K`` two polyphase
  components of 16 taps per axis);
* ``_lp_synthesis_kernel``: ``LOW``, ``BAND`` -> ``OUT = BAND − K BAND + U LOW``
  (``U`` two polyphase components of 5 taps per axis; no zero insertion).

Taps are extracted once per (filter, device, dtype) from the 1-D operator
matrices, so forward, adjoint and both their transposes share one code path
and the backward of each Function is the other Function with transposed taps
(double backward works too).

One launch per direction, and why that is feasible: ``band = x − K x`` with
``K = P·A`` is itself a separable polyphase filter of ``x`` (16 taps per axis
and phase), so the bandpass never needs the lowpass at neighbouring positions
— no halo of ``c`` recomputed in registers, no scratch buffer, no second
launch; the lowpass comes out of the same window for free.

Each program owns a strip of ``SW`` low-res columns (``2·SW`` full-res
columns) of ``BLOCK // SW`` images (small planes share a program) and marches
down ``ROWS`` low-res rows. Per input row it does 16 strided loads (periodic
wrap by modulo, so sizes smaller than the filter support wrap as in the
toolbox) and filters them horizontally into the three values the vertical
pass needs (two band phases, the lowpass); the vertical pass keeps a sliding
window of those per-row results in registers (loop-carried tuples), so each
input element is read from global memory once, plus 7 warm-up iterations
(14 rows) per row chunk. The two column phases of a full-res output row are
written by two stride-2 stores (they fill the same sectors; a register
interleave would cost a shared-memory layout conversion per row). Accumulation is float32 (float64 for
float64 inputs); loads and stores are in the tensors' own dtype. The float32-compute launches cap
registers at 128 (``maxnreg``): the same sm_90 code without spills, 4 blocks of 128 threads per SM
instead of 3 (tests/test_kernel_budgets.py).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from sstkd._util import compute_dtype as _compute_dtype
from sstkd._util import device_guard as _guard
from sstkd._util import triton_interpreted as _interpreted
from sstkd.filters import pyramid_filters

__all__ = ["lp_dec_triton", "lp_rec_triton", "KERNELS", "launch_config", "LaunchConfig"]

# Window geometry (per axis). Analysis: LOW[m] uses X[2m-4 .. 2m+4]; band
# phase p of output 2m+p uses X[2m-7 .. 2m+8]. Synthesis: up phase p uses
# LOW[m-2 .. m+2].
_L_TAPS, _L_FIRST = 9, -4
_K_TAPS, _K_FIRST = 16, -7
_U_TAPS, _U_FIRST = 5, -2


# --------------------------------------------------------------------------- kernels
# The interpreter re-patches triton.language on every device-function call
# (~ms each), so the per-row work is done by one helper call and the small
# tap sums are written out as static loops rather than nested helpers.
@triton.jit
def _load_taps(TAPS, start: tl.constexpr, count: tl.constexpr):
    taps = ()
    for j in tl.static_range(count):
        taps = taps + (tl.load(TAPS + start + j),)
    return taps


@triton.jit
def _zeros14(BLOCK: tl.constexpr, DT: tl.constexpr):
    z = tl.zeros((BLOCK,), DT)
    return (z, z, z, z, z, z, z, z, z, z, z, z, z, z)


@triton.jit
def _zeros4(BLOCK: tl.constexpr, DT: tl.constexpr):
    z = tl.zeros((BLOCK,), DT)
    return (z, z, z, z)


@triton.jit
def _setup(N, W, WL, TAPS, KSTART: tl.constexpr, SW: tl.constexpr, BLOCK: tl.constexpr):
    """Lanes of this program, window column offsets and band taps.

    A program covers BLOCK // SW images side by side, each on a strip of SW
    low-res columns (small planes share a program): lane -> (img, n), valid
    where ``ok``. ``cols[j]`` is the periodic column 2n + j - 7.
    """
    strips = tl.cdiv(WL, SW)
    pid = tl.program_id(0)
    first_img = (pid // strips) * (BLOCK // SW)
    col0 = (pid % strips) * SW
    lane = tl.arange(0, BLOCK)
    img = first_img + lane // SW
    n = col0 + lane % SW
    ok = (img < N) & (n < WL)
    # padding lanes are clamped to a valid image: they load real memory, never store
    img = tl.minimum(img, N - 1).to(tl.int64)
    cols = ()
    for j in tl.static_range(16):
        c = (2 * n + (j - 7)) % W
        cols = cols + (tl.where(c < 0, c + W, c),)  # either sign convention of %
    k0 = _load_taps(TAPS, KSTART, 16)
    k1 = _load_taps(TAPS, KSTART + 16, 16)
    return img, n, ok, cols, k0, k1


@triton.jit
def _filter_row(img_ptr, r, H, W, cols, k0, k1, lt, DT: tl.constexpr, WITH_LOW: tl.constexpr):
    """Horizontal pass of input row ``r mod H``: both band phases (16 taps) and,
    if WITH_LOW, the decimating lowpass (9 taps, the centre of the window)."""
    r = r % H
    r = tl.where(r < 0, r + H, r)
    row_ptr = img_ptr + r * W
    v = tl.load(row_ptr + cols[0]).to(DT)
    a0 = k0[0] * v
    a1 = k1[0] * v
    al = a0
    for j in tl.static_range(1, 16):
        v = tl.load(row_ptr + cols[j]).to(DT)
        a0 += k0[j] * v
        a1 += k1[j] * v
        if WITH_LOW:
            if j == 3:
                al = lt[0] * v
            elif j > 3 and j < 12:
                al += lt[j - 3] * v
    return a0, a1, al


@triton.jit
def _filter_low_row(img_ptr, r, HL, WL, lcols, u0, u1, DT: tl.constexpr):
    """Horizontal pass of low-res row ``r mod HL``: both polyphase up filters (5 taps)."""
    r = r % HL
    r = tl.where(r < 0, r + HL, r)
    row_ptr = img_ptr + r * WL
    v = tl.load(row_ptr + lcols[0]).to(DT)
    b0 = u0[0] * v
    b1 = u1[0] * v
    for s in tl.static_range(1, 5):
        v = tl.load(row_ptr + lcols[s]).to(DT)
        b0 += u0[s] * v
        b1 += u1[s] * v
    return b0, b1


@triton.jit(do_not_specialize=("N", "H", "W", "HL", "WL", "ROWS"))
def _lp_analysis_kernel(
    X, LOW, OUT, TAPS,
    N, H, W, HL, WL, ROWS,
    SW: tl.constexpr, BLOCK: tl.constexpr,
):
    """LOW = L X (decimated) and OUT = X − K X on N contiguous (H, W) planes.

    TAPS: [L (9), K phase 0 (16), K phase 1 (16)] in the compute dtype.
    Grid: (image groups × column strips, chunks of ROWS low-res rows).
    """
    DT: tl.constexpr = TAPS.dtype.element_ty
    img, n, ok, cols, k0, k1 = _setup(N, W, WL, TAPS, 9, SW, BLOCK)
    lt = _load_taps(TAPS, 0, 9)
    m0 = tl.program_id(1) * ROWS
    m1 = tl.minimum(m0 + ROWS, HL)
    x_img = X + img * H * W
    low_img = LOW + img * HL * WL + n
    # full-res column 2n (+1 for phase q = 1) of the lane's image; the two phases
    # are stored by two stride-2 stores that fill the same sectors
    xo_img = x_img + 2 * n
    out_img = OUT + img * H * W + 2 * n

    # Sliding window of horizontally filtered rows. The first 7 iterations
    # (m < m0) only fill it with rows 2*m0-7 .. 2*m0+6; they store nothing.
    w0 = _zeros14(BLOCK, DT)
    w1 = _zeros14(BLOCK, DT)
    wl = _zeros14(BLOCK, DT)
    for m in range(m0 - 7, m1):
        for j in tl.static_range(2):
            a0, a1, al = _filter_row(x_img, 2 * m + 7 + j, H, W, cols, k0, k1, lt, DT, True)
            w0 = w0 + (a0,)
            w1 = w1 + (a1,)
            wl = wl + (al,)
        if m >= m0:
            # the window now holds rows 2m-7 .. 2m+8; the lowpass uses 2m-4 .. 2m+4
            low = lt[0] * wl[3]
            for a in tl.static_range(1, 9):
                low += lt[a] * wl[3 + a]
            tl.store(low_img + m * WL, low, mask=ok)
            for p in tl.static_range(2):
                if p == 0:
                    kp = k0
                else:
                    kp = k1
                b0 = kp[0] * w0[0]
                b1 = kp[0] * w1[0]
                for j in tl.static_range(1, 16):
                    b0 += kp[j] * w0[j]
                    b1 += kp[j] * w1[j]
                row = (2 * m + p) * W
                xo0 = tl.load(xo_img + row, mask=ok, other=0.0).to(DT)
                xo1 = tl.load(xo_img + row + 1, mask=ok, other=0.0).to(DT)
                tl.store(out_img + row, xo0 - b0, mask=ok)
                tl.store(out_img + row + 1, xo1 - b1, mask=ok)
        w0 = w0[2:]
        w1 = w1[2:]
        wl = wl[2:]


@triton.jit(do_not_specialize=("N", "H", "W", "HL", "WL", "ROWS"))
def _lp_synthesis_kernel(
    LOW, BAND, OUT, TAPS,
    N, H, W, HL, WL, ROWS,
    SW: tl.constexpr, BLOCK: tl.constexpr,
):
    """OUT = BAND − K BAND + U LOW (polyphase upsampling) on N contiguous planes.

    TAPS: [U phase 0 (5), U phase 1 (5), K phase 0 (16), K phase 1 (16)].
    Grid: (image groups × column strips, chunks of ROWS low-res rows).
    """
    DT: tl.constexpr = TAPS.dtype.element_ty
    img, n, ok, cols, k0, k1 = _setup(N, W, WL, TAPS, 10, SW, BLOCK)
    u0 = _load_taps(TAPS, 0, 5)
    u1 = _load_taps(TAPS, 5, 5)
    lcols = ()
    for s in tl.static_range(5):
        c = (n + (s - 2)) % WL
        lcols = lcols + (tl.where(c < 0, c + WL, c),)
    m0 = tl.program_id(1) * ROWS
    m1 = tl.minimum(m0 + ROWS, HL)
    low_img = LOW + img * HL * WL
    band_img = BAND + img * H * W
    bo_img = band_img + 2 * n
    out_img = OUT + img * H * W + 2 * n

    # Sliding windows (band rows 2m-7 .. 2m+8, low rows m-2 .. m+2); the first
    # 7 iterations (m < m0) only fill them and store nothing.
    w0 = _zeros14(BLOCK, DT)
    w1 = _zeros14(BLOCK, DT)
    v0 = _zeros4(BLOCK, DT)
    v1 = _zeros4(BLOCK, DT)
    for m in range(m0 - 7, m1):
        for j in tl.static_range(2):
            a0, a1, _unused = _filter_row(band_img, 2 * m + 7 + j, H, W, cols, k0, k1, k0, DT, False)
            w0 = w0 + (a0,)
            w1 = w1 + (a1,)
        l0, l1 = _filter_low_row(low_img, m + 2, HL, WL, lcols, u0, u1, DT)
        v0 = v0 + (l0,)
        v1 = v1 + (l1,)
        if m >= m0:
            for p in tl.static_range(2):
                if p == 0:
                    kp = k0
                    up = u0
                else:
                    kp = k1
                    up = u1
                # U LOW − K BAND for both column phases
                b0 = up[0] * v0[0]
                b1 = up[0] * v1[0]
                for t in tl.static_range(1, 5):
                    b0 += up[t] * v0[t]
                    b1 += up[t] * v1[t]
                for j in tl.static_range(16):
                    b0 -= kp[j] * w0[j]
                    b1 -= kp[j] * w1[j]
                row = (2 * m + p) * W
                bo0 = tl.load(bo_img + row, mask=ok, other=0.0).to(DT)
                bo1 = tl.load(bo_img + row + 1, mask=ok, other=0.0).to(DT)
                tl.store(out_img + row, bo0 + b0, mask=ok)
                tl.store(out_img + row + 1, bo1 + b1, mask=ok)
        w0 = w0[2:]
        w1 = w1[2:]
        v0 = v0[1:]
        v1 = v1[1:]


KERNELS = {"analysis": _lp_analysis_kernel, "synthesis": _lp_synthesis_kernel}


# --------------------------------------------------------------------------- taps
def _periodic_matrix(f: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) matrix of ``y[i] = sum_k f[k] x[(i + k - centre) mod n]``."""
    centre = (f.numel() - 1) // 2
    m = torch.zeros(n, n, dtype=torch.float64)
    i = torch.arange(n)
    for k in range(f.numel()):
        m[i, (i + k - centre) % n] += f[k]
    return m


def _band(mat: torch.Tensor, row: int, first: int, count: int) -> torch.Tensor:
    """``mat[row, row_base + first : + count]`` after checking the row has no other support."""
    n = mat.shape[1]
    cols = [(first + j) % n for j in range(count)]
    outside = mat[row].clone()
    outside[cols] = 0
    if outside.abs().max() > 0:  # pragma: no cover - guards the window geometry
        raise AssertionError("lp kernel window does not cover the operator support")
    return mat[row, cols]


@functools.lru_cache(maxsize=None)
def _taps_1d(filt: str) -> dict[str, torch.Tensor]:
    """Float64 taps of the four directions, from the 1-D operators on a 64-periodic signal."""
    h, g = pyramid_filters(filt)
    n = 64
    down = torch.zeros(n // 2, n, dtype=torch.float64)
    down[torch.arange(n // 2), 2 * torch.arange(n // 2)] = 1.0
    a = down @ _periodic_matrix(h, n)  # A = down ∘ h
    p = _periodic_matrix(g, n) @ down.T  # P = g ∘ up (zero insertion at even positions)
    k = p @ a
    m = n // 4  # an interior output row, away from the wrap

    def analysis(lmat, kmat):
        return torch.cat(
            [_band(lmat, m, 2 * m + _L_FIRST, _L_TAPS)]
            + [_band(kmat, 2 * m + q, 2 * m + _K_FIRST, _K_TAPS) for q in (0, 1)]
        )

    def synthesis(umat, kmat):
        return torch.cat(
            [_band(umat, 2 * m + q, m + _U_FIRST, _U_TAPS) for q in (0, 1)]
            + [_band(kmat, 2 * m + q, 2 * m + _K_FIRST, _K_TAPS) for q in (0, 1)]
        )

    return {
        "dec": analysis(a, k),  # low = A x, band = x − K x
        "rec_T": analysis(p.T, k.T),  # g_low = Pᵀ g, g_band = g − Kᵀ g
        "rec": synthesis(p, k),  # x = band − K band + P low
        "dec_T": synthesis(a.T, k.T),  # gx = g_band − Kᵀ g_band + Aᵀ g_low
    }


@functools.lru_cache(maxsize=None)
def _taps(filt: str, mode: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _taps_1d(filt)[mode].to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- launchers
class LaunchConfig(NamedTuple):
    SW: int  # low-res columns per image strip (power of two)
    BLOCK: int  # lanes per program = (BLOCK // SW) images × SW columns
    ROWS: int  # low-res rows per program
    num_warps: int
    grid: tuple[int, int]


def launch_config(images: int, hl: int, wl: int, interpreted: bool | None = None) -> LaunchConfig:
    """Fixed launch parameters for ``images`` planes of low-res size ``hl × wl`` (no autotuning).

    A program covers a strip of ``SW`` low-res columns (up to 128) of
    ``BLOCK // SW`` images (small planes share a program, so lanes are not
    wasted on padding) and marches down ``ROWS`` low-res rows: enough chunks
    for about a thousand programs, but at least 16 rows each so the 14-row
    window prologue stays a small overhead. The interpreter runs programs one
    after another, so there a program takes whole planes of as many images as
    fit in 4096 lanes (fewest programs).
    """
    if interpreted is None:
        interpreted = _interpreted()
    sw = triton.next_power_of_2(wl)
    if interpreted:
        block = max(sw, min(4096, triton.next_power_of_2(images) * sw))
        rows = hl
    else:
        sw = min(128, sw)
        block = min(128, max(sw, triton.next_power_of_2(images * sw)))
    programs = triton.cdiv(images, block // sw) * triton.cdiv(wl, sw)
    if not interpreted:
        chunks = max(1, triton.cdiv(1024, programs))
        rows = min(hl, max(16, triton.cdiv(hl, chunks)))
    warps = max(1, min(4, block // 32))
    return LaunchConfig(sw, block, rows, warps, (programs, triton.cdiv(hl, rows)))


# Register cap of the float32-compute kernels: ptxas would take 168 (3 blocks of 128 threads
# per SM); at 128 the sm_90 code has the same instructions and no spills, and 4 blocks fit.
# float64 windows need twice the registers: uncapped (capping spills).
MAXNREG = 128


def maxnreg_for(compute_dtype: torch.dtype) -> int | None:
    """The ``maxnreg`` launch option of the LP kernels computing in ``compute_dtype``."""
    return None if compute_dtype == torch.float64 else MAXNREG


def _check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name}: the Triton LP kernels take float16/bfloat16/float32/float64, got {t.dtype}")


def _launch(kernel, tensors, shape, mode: str, filt: str) -> None:
    """Launch ``kernel`` on the current stream of the tensors' device."""
    b, c, h, w = shape
    ref = tensors[-1]
    if ref.device.type != "cuda" and not _interpreted():
        raise RuntimeError(
            f"the Triton LP kernels need CUDA tensors (got {ref.device.type}); set TRITON_INTERPRET=1 to interpret"
        )
    cd = _compute_dtype(ref.dtype)
    taps = _taps(filt, mode, ref.device, cd)
    cfg = launch_config(b * c, h // 2, w // 2)
    with _guard(ref):
        kernel[cfg.grid](
            *tensors, taps, b * c, h, w, h // 2, w // 2, cfg.ROWS,
            SW=cfg.SW, BLOCK=cfg.BLOCK, num_warps=cfg.num_warps, maxnreg=maxnreg_for(cd),
        )


def _analysis(x: torch.Tensor, mode: str, filt: str, out_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (low (B, C, H/2, W/2), out (B, C, H, W)) in ``out_dtype`` (default x.dtype),
    computed in the compute dtype of the outputs (the kernel converts on load and store)."""
    b, c, h, w = x.shape
    x = x.contiguous()  # channels-last / strided inputs: one copy
    dt = x.dtype if out_dtype is None else out_dtype
    low = torch.empty(b, c, h // 2, w // 2, device=x.device, dtype=dt)
    out = torch.empty(b, c, h, w, device=x.device, dtype=dt)
    _launch(_lp_analysis_kernel, (x, low, out), x.shape, mode, filt)
    return low, out


def _synthesis(low: torch.Tensor, band: torch.Tensor, mode: str, filt: str, out_dtype=None) -> torch.Tensor:
    """low (B, C, H/2, W/2), band (B, C, H, W) -> (B, C, H, W) in ``out_dtype`` (default band.dtype),
    computed in float32 at least (the compute dtype of band and output)."""
    low = low.contiguous()
    band = band.contiguous()
    out = torch.empty(band.shape, device=band.device, dtype=band.dtype if out_dtype is None else out_dtype)
    _launch(_lp_synthesis_kernel, (low, band, out), band.shape, mode, filt)
    return out


# --------------------------------------------------------------------------- autograd
_ADJOINT = {"dec": "dec_T", "dec_T": "dec", "rec": "rec_T", "rec_T": "rec"}


class _LPAnalysis(torch.autograd.Function):
    """(low, out) = (L x, x − K x); backward = the synthesis kernel with transposed taps."""

    @staticmethod
    def forward(ctx, x, mode, filt, out_dtype=None):
        ctx.mode, ctx.filt, ctx.x_dtype = mode, filt, x.dtype
        return _analysis(x, mode, filt, out_dtype)

    @staticmethod
    def backward(ctx, g_low, g_out):
        gx = _LPSynthesis.apply(g_low.to(g_out.dtype), g_out, _ADJOINT[ctx.mode], ctx.filt, ctx.x_dtype)
        return gx, None, None, None


class _LPSynthesis(torch.autograd.Function):
    """out = band − K band + U low; backward = the analysis kernel with transposed taps."""

    @staticmethod
    def forward(ctx, low, band, mode, filt, out_dtype=None):
        ctx.mode, ctx.filt = mode, filt
        ctx.low_dtype, ctx.band_dtype = low.dtype, band.dtype
        return _synthesis(low.to(band.dtype), band, mode, filt, out_dtype)

    @staticmethod
    def backward(ctx, g_out):
        g_low, g_band = _LPAnalysis.apply(g_out, _ADJOINT[ctx.mode], ctx.filt, ctx.band_dtype)
        return g_low.to(ctx.low_dtype), g_band, None, None, None


# --------------------------------------------------------------------------- public entry points
def lp_dec_triton(x: torch.Tensor, filt: str = "9-7", out_dtype: torch.dtype | None = None):
    """Triton ``lp_dec``: ``x`` (B, C, H, W), even H/W -> ``(low, band)`` in ``out_dtype``
    (default ``x.dtype``): a float16/bfloat16 ``x`` is read as it is and the outputs stored in
    float32 without a conversion copy; the gradient comes back in ``x.dtype``.

    Validation of shapes and names is done by :func:`sstkd.ops.lp_dec`; this
    entry point only checks what the kernels themselves need.
    """
    _check_dtype(x, "x")
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"x: expected (B, C, H, W) with even H and W, got shape {tuple(x.shape)}")
    if out_dtype is not None and out_dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"out_dtype: expected float16/bfloat16/float32/float64, got {out_dtype!r}")
    return _LPAnalysis.apply(x, "dec", filt, out_dtype)


def lp_rec_triton(low: torch.Tensor, band: torch.Tensor, filt: str = "9-7") -> torch.Tensor:
    """Triton ``lp_rec``: ``low`` (B, C, H/2, W/2), ``band`` (B, C, H, W) -> (B, C, H, W)."""
    _check_dtype(low, "low")
    _check_dtype(band, "band")
    if band.dim() != 4 or band.shape[-2] % 2 or band.shape[-1] % 2:
        raise ValueError(f"band: expected (B, C, H, W) with even H and W, got shape {tuple(band.shape)}")
    b, c, h, w = band.shape
    if tuple(low.shape) != (b, c, h // 2, w // 2):
        raise ValueError(f"low: expected shape {(b, c, h // 2, w // 2)}, got {tuple(low.shape)}")
    return _LPSynthesis.apply(low, band, "rec", filt)
