"""Triton DFB kernels (sstkd.kernels.dfb) vs the PyTorch reference (sstkd.ops.dfb).

Without a GPU these run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1): small shapes, many planes per program. The kernel is also
compiled ahead of time for sm_80 and sm_90. Tolerances: DESIGN §6
(tests/triton_utils.py). Every input gradient is checked against autograd of
the reference, which is the exact adjoint of the decomposition / synthesis.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from triton_utils import AOT_ARCHS, aot_compile_many, assert_close_to_reference, prefetch  # noqa: E402

triton = pytest.importorskip("triton")

from sstkd.filters import modulated_dfb_filter  # noqa: E402
from sstkd.ops.dfb import dfb_dec_ref, dfb_rec_ref  # noqa: E402

K = pytest.importorskip("sstkd.kernels.dfb")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- helpers
def _dec_and_grad(fn, x, cots):
    x = x.detach().requires_grad_(True)
    bands = fn(x)
    (gx,) = torch.autograd.grad(bands, x, cots)
    return [b.detach() for b in bands] + [gx]


def _rec_and_grad(fn, bands, cot):
    bands = [b.detach().requires_grad_(True) for b in bands]
    x = fn(bands)
    grads = torch.autograd.grad(x, bands, cot)
    return [x.detach()] + list(grads)


def _check(actual, exact, reference, what):
    assert len(actual) == len(exact) == len(reference)
    for k, (a, e, r) in enumerate(zip(actual, exact, reference)):
        assert a.dtype == r.dtype, f"{what}[{k}]: dtype {a.dtype} != {r.dtype}"
        assert a.shape == r.shape, f"{what}[{k}]: shape {tuple(a.shape)} != {tuple(r.shape)}"
        assert_close_to_reference(a, e, r, name=f"{what}[{k}]")


def _verify(x, levels, rec=True):
    """dfb_dec_triton / dfb_rec_triton forward and every input gradient vs the reference.

    ``exact`` is the float64 reference on the same (rounded) inputs, ``ref`` the
    reference in x's dtype (float32 compute inside, like the kernels).
    """
    shapes = [t.shape for t in dfb_dec_ref(x.double(), levels)]
    cots = [torch.randn(s, device=x.device).to(x.dtype) for s in shapes]
    got = _dec_and_grad(lambda t: K.dfb_dec_triton(t, levels), x, cots)
    ref = _dec_and_grad(lambda t: dfb_dec_ref(t, levels), x, cots)
    exact = _dec_and_grad(lambda t: dfb_dec_ref(t, levels), x.double(), [c.double() for c in cots])
    _check(got, exact, ref, f"dec{levels}")
    if rec:
        bands = [torch.randn(s, device=x.device).to(x.dtype) for s in shapes]  # arbitrary coefficients
        cot = torch.randn(x.shape, device=x.device).to(x.dtype)
        got = _rec_and_grad(K.dfb_rec_triton, bands, cot)
        ref = _rec_and_grad(dfb_rec_ref, bands, cot)
        exact = _rec_and_grad(dfb_rec_ref, [b.double() for b in bands], cot.double())
        _check(got, exact, ref, f"rec{levels}")


# (B, C, H, W, levels): levels 1..4, B·C from 1 up, odd / non-square sizes, and
# sub-bands smaller than the 12-tap support (wrap beyond the size): 24x16 at 3
# levels gives 6x8 and 12x4 sub-bands, 16x16 at 4 levels 2x8 and 8x2.
CASES = [
    (1, 1, 12, 8, 1),
    (2, 1, 12, 7, 1),  # odd width: the 'qper_col' shift (w+1)//2 and its adjoint w//2 differ
    (1, 2, 16, 24, 2),
    (2, 1, 24, 16, 3),
    (1, 1, 16, 16, 4),
]


def _ids(case):
    return "{}x{}x{}x{}-L{}".format(*case)


# --------------------------------------------------------------------------- interpreter / GPU checks
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float64_matches_reference_to_rounding(case):
    *shape, levels = case
    _verify(torch.randn(*shape, dtype=torch.float64, device=DEVICE), levels)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=_ids)
def test_float32_forward_and_gradients(case):
    *shape, levels = case
    _verify(torch.randn(*shape, device=DEVICE), levels)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_forward_and_gradients(dtype):
    # the last level's y0 (and rec's p1, recᵀ's g_y1) go through a float32 scratch
    _verify(torch.randn(2, 1, 24, 16, device=DEVICE).to(dtype), 3)


def test_non_contiguous_and_channels_last_inputs():
    wide = torch.randn(1, 3, 16, 20, device=DEVICE)
    x = wide[..., 2:18]  # non-contiguous view
    cl = torch.randn(1, 3, 16, 16, device=DEVICE).to(memory_format=torch.channels_last)
    for t in (x, cl):
        assert not t.is_contiguous()
        _verify(t, 2, rec=False)
    bands = [torch.randn(1, 3, 8, 8, device=DEVICE) for _ in range(4)]
    odd = [b.transpose(-1, -2).contiguous().transpose(-1, -2) for b in bands[:2]]
    odd += [b.to(memory_format=torch.channels_last) for b in bands[2:]]
    assert not any(b.is_contiguous() for b in odd)
    torch.testing.assert_close(K.dfb_rec_triton(odd), dfb_rec_ref(bands), rtol=0, atol=1e-5)


def test_outputs_are_contiguous_views_in_toolbox_order():
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    got = K.dfb_dec_triton(x, 3)
    ref = dfb_dec_ref(x, 3)
    assert [t.shape for t in got] == [t.shape for t in ref]
    assert all(t.is_contiguous() for t in got)
    for t, r in zip(got, ref):
        torch.testing.assert_close(t, r, rtol=0, atol=1e-5)
    assert torch.equal(K.dfb_dec_triton(x, 0)[0], x)
    # the outputs are consecutive planes of one buffer per half: the synthesis reads them in place
    assert K._band_major_view(got[:4], got[0].dtype) is not None
    torch.testing.assert_close(K.dfb_rec_triton(got), x, rtol=0, atol=1e-5)  # perfect reconstruction


def test_multi_tile_gpu_geometry(monkeypatch):
    """One plane per program and 16x16 tiles, as on a GPU (several tiles per plane,
    per-tile energy partials)."""
    monkeypatch.setattr(K, "tile_config", lambda planes, h, w, interpreted=None: K.TileConfig(16, 16, 1, 4))
    x = torch.randn(1, 1, 36, 20, device=DEVICE)  # level-1 sub-bands 18x20, level-2 18x10: ragged 2x2, 2x1 tiles
    _verify(x, 2, rec=False)
    ref = torch.stack([t.square().sum((-2, -1)) for t in dfb_dec_ref(x, 2)], -1)
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        try:
            en = K.dfb_energy_triton(x, 2)
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(en, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("levels, shape", [(1, (2, 2, 12, 7)), (2, (1, 3, 16, 24)), (3, (2, 1, 24, 16))])
def test_energy_matches_reference_and_is_deterministic(levels, shape):
    x = torch.randn(*shape, device=DEVICE)
    ref = torch.stack([t.double().square().sum((-2, -1)) for t in dfb_dec_ref(x.double(), levels)], -1)
    en = K.dfb_energy_triton(x, levels)
    assert en.shape == (*shape[:2], 2**levels) and en.dtype == torch.float32
    torch.testing.assert_close(en.double(), ref, rtol=1e-5, atol=0)
    torch.use_deterministic_algorithms(True)
    try:
        a, b = K.dfb_energy_triton(x, levels), K.dfb_energy_triton(x, levels)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=0)


def test_launches_per_level_and_energy_never_stores_the_last_level(monkeypatch):
    log = []
    monkeypatch.setattr(K, "launch_log", log)
    x = torch.randn(1, 1, 16, 16, device=DEVICE)
    expected = {1: 2, 2: 4, 3: 8, 4: 12}  # 2 passes per stage; two stages (halves) from level 3 on
    for levels, count in expected.items():
        log.clear()
        K.dfb_dec_triton(x, levels)
        assert len(log) == count
        log.clear()
        K.dfb_energy_triton(x, levels)
        assert len(log) == count
        last = log[-2 if levels < 3 else -4:]
        assert all(e["energy"] != 0 for e in last)
        # the last level writes only y0 to a scratch (kind 4): no child sub-band (kinds 2, 3) is stored
        assert all(e["kinds"][2] in (4, 5) and e["kinds"][3] == 5 for e in last)


def test_tile_config_rules():
    gpu = K.tile_config(4096, 64, 128, interpreted=False)
    assert (gpu.TR, gpu.TC, gpu.P) == (32, 32, 1)
    small = K.tile_config(8, 6, 4, interpreted=False)
    assert (small.TR, small.TC, small.P) == (16, 16, 1)
    interp = K.tile_config(6, 24, 40, interpreted=True)
    assert (interp.TR, interp.TC) == (32, 64) and interp.P == 8 and interp.P * interp.TR <= 512


def test_entry_points_reject_bad_input():
    with pytest.raises(TypeError, match="^x"):
        K.dfb_dec_triton(torch.zeros(1, 1, 16, 16, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="^x.*height 10"):
        K.dfb_dec_triton(torch.zeros(1, 1, 10, 16), 1)
    with pytest.raises(ValueError, match="^x"):
        K.dfb_dec_triton(torch.zeros(16, 16), 1)
    with pytest.raises(ValueError, match="^levels"):
        K.dfb_dec_triton(torch.zeros(1, 1, 16, 16), -1)
    with pytest.raises(ValueError, match=r"^bands"):
        K.dfb_rec_triton([torch.zeros(1, 1, 8, 8)] * 3)
    with pytest.raises(ValueError, match=r"^bands\[1\]"):
        K.dfb_rec_triton([torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 4)])
    with pytest.raises(TypeError, match=r"^bands\[0\]"):
        K.dfb_rec_triton([torch.zeros(1, 1, 8, 8, dtype=torch.int64)] * 2)


# --------------------------------------------------------------------------- the adjoint identities the kernel uses
def _sefilter(x, before, qshift=None):
    """Toolbox sefilter2(x, fm, fm) with extension ``before`` (rows and columns),
    'per' or, with ``qshift``, 'qper_col' (rows outside shifted by ``qshift`` columns)."""
    h, w = x.shape
    k = modulated_dfb_filter().flip(0)
    r = torch.arange(-before, h + 11 - before)
    c = torch.arange(-before, w + 11 - before)
    shift = torch.zeros_like(r) if qshift is None else torch.where((r < 0) | (r >= h), qshift, 0)
    e = x[r.remainder(h)[:, None], (c[None, :] + shift[:, None]).remainder(w)]
    return torch.stack([sum(k[t] * e[i + t] for t in range(12)) for i in range(h)]) @ torch.stack(
        [torch.nn.functional.pad(k, (j, w - 1 - j)) for j in range(w)], dim=1
    )


@pytest.mark.parametrize("h, w", [(7, 5), (6, 12), (4, 3), (13, 16)])
def test_sefilter_adjoint_is_the_other_shift(h, w):
    """<S_b x, y> == <x, S_{11-b} y>: 'per' with the same taps (fm⊗fm is centro-symmetric);
    'qper_col' with the column shift (w+1)//2 becomes w//2, also when the extension wraps
    more than once."""
    x = torch.randn(h, w, dtype=torch.float64)
    y = torch.randn(h, w, dtype=torch.float64)
    for b in (5, 6):
        lhs = (_sefilter(x, b) * y).sum()
        torch.testing.assert_close(lhs, (x * _sefilter(y, 11 - b)).sum(), rtol=1e-12, atol=1e-12)
        lhs = (_sefilter(x, b, (w + 1) // 2) * y).sum()
        torch.testing.assert_close(lhs, (x * _sefilter(y, 11 - b, w // 2)).sum(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- ahead-of-time compilation
# A covering set of constexpr variants: every split, operand kind, child layout,
# energy mode and storage dtype appears at least once.
_VARIANTS = [
    # (pointer dtypes win/cen, out, en), constexprs
    (("*bf16", "*fp32", "*fp32"), dict(SPLIT=0, BF=6, QPER=True, WIN_KIND=1, CEN_KIND=0, OUT_KIND=2,
                                       OUT2_KIND=5, LAYOUT=0, Y0POS=0, ENERGY=0, EN_SLOT=0)),
    (("*fp32", "*fp16", "*fp32"), dict(SPLIT=0, BF=5, QPER=True, WIN_KIND=4, CEN_KIND=1, OUT_KIND=3,
                                       OUT2_KIND=2, LAYOUT=1, Y0POS=0, ENERGY=0, EN_SLOT=0)),
    (("*fp32", "*fp32", "*fp32"), dict(SPLIT=1, BF=6, QPER=False, WIN_KIND=1, CEN_KIND=0, OUT_KIND=4,
                                       OUT2_KIND=5, LAYOUT=2, Y0POS=1, ENERGY=1, EN_SLOT=0)),
    (("*fp32", "*bf16", "*fp32"), dict(SPLIT=2, BF=5, QPER=False, WIN_KIND=4, CEN_KIND=3, OUT_KIND=1,
                                       OUT2_KIND=0, LAYOUT=3, Y0POS=1, ENERGY=0, EN_SLOT=0)),
    (("*fp32", "*fp32", "*fp32"), dict(SPLIT=3, BF=5, QPER=False, WIN_KIND=4, CEN_KIND=1, OUT_KIND=5,
                                       OUT2_KIND=5, LAYOUT=4, Y0POS=1, ENERGY=2, EN_SLOT=1)),
    # float64 end to end (float64 tl.dot): triton 3.6 rejected a float64 `acc=` accumulator here
    (("*fp64", "*fp64", "*fp64"), dict(SPLIT=1, BF=5, QPER=True, WIN_KIND=1, CEN_KIND=0, OUT_KIND=2,
                                       OUT2_KIND=5, LAYOUT=0, Y0POS=0, ENERGY=0, EN_SLOT=0)),
    (("*bf16", "*bf16", "*fp32"), dict(SPLIT=3, BF=6, QPER=False, WIN_KIND=3, CEN_KIND=0, OUT_KIND=2,
                                       OUT2_KIND=5, LAYOUT=4, Y0POS=1, ENERGY=0, EN_SLOT=0)),
    # energies kept for the backward (plain children, final-order table) and the scaled adjoint passes
    (("*fp32", "*fp32", "*fp32"), dict(SPLIT=2, BF=5, QPER=False, WIN_KIND=2, CEN_KIND=1, OUT_KIND=3,
                                       OUT2_KIND=5, LAYOUT=0, Y0POS=1, ENERGY=1, EN_SLOT=1, MAP=3)),
    (("*fp32", "*fp32", "*fp32"), dict(SPLIT=1, BF=6, QPER=False, WIN_KIND=3, CEN_KIND=2, OUT_KIND=4,
                                       OUT2_KIND=5, LAYOUT=0, Y0POS=1, ENERGY=0, EN_SLOT=0, MAP=2,
                                       SCALED=True)),
    (("*fp64", "*fp64", "*fp64"), dict(SPLIT=3, BF=5, QPER=False, WIN_KIND=4, CEN_KIND=3, OUT_KIND=1,
                                       OUT2_KIND=0, LAYOUT=0, Y0POS=1, ENERGY=0, EN_SLOT=0, MAP=4,
                                       SCALED=True)),
]


def _aot_jobs():
    jobs = []
    for arch in AOT_ARCHS:
        for i, ((src, dst, en), ce) in enumerate(_VARIANTS):
            sig = {name: "i32" for name in K.LADDER_INT_ARGS}
            taps = "*fp64" if src == "*fp64" else "*fp32"  # taps come in the compute dtype
            sig.update(WIN=src, CEN=src, OUT=dst, OUT2=dst, TAPS=taps, EN=en, G="*bf16" if i % 2 else en)
            ce = dict(dict(MAP=0, SCALED=False), **ce)
            tile = 16 if i == len(_VARIANTS) - 1 else 32  # both GPU tile sizes
            prec = "tf32x3" if i == 0 else "ieee"  # the optional tensor-core path compiles too
            jobs.append((K._ladder_kernel, sig, dict(ce, TR=tile, TC=tile, P=1, PREC=prec), arch, 4))
    return jobs


prefetch("aot", _aot_jobs())  # compiled in the session's compile process while other tests run


def test_aot_compile_every_variant_sm80_sm90():
    jobs = _aot_jobs()
    results = aot_compile_many(jobs)
    assert len(results) == len(jobs)
    for r in results:
        assert r.name == "_ladder_kernel" and r.arch in AOT_ARCHS
        assert "ptx" in r.asm and len(r.asm["cubin"]) > 0
        assert r.shared <= 64 * 1024, f"sm_{r.arch}: {r.shared} bytes of shared memory"


# --------------------------------------------------------------------------- GPU (compiled kernels)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("levels", [1, 3, 4])
def test_gpu_compiled_kernels(levels, dtype):
    _verify(torch.randn(2, 3, 64, 96, device="cuda").to(dtype), levels)
