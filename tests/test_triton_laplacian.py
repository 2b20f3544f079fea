"""Triton LP kernels (sstkd.kernels.laplacian) vs the PyTorch reference.

Without a GPU these run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1): small shapes, whole planes per program. The kernels are
also compiled ahead of time for sm_80 and sm_90. Tolerances: DESIGN §6
(tests/triton_utils.py).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from triton_utils import AOT_ARCHS, aot_compile_many, assert_close_to_reference, prefetch  # noqa: E402

triton = pytest.importorskip("triton")

from sstkd.ops import dispatch  # noqa: E402
from sstkd.ops.laplacian import lp_dec, lp_dec_ref, lp_rec, lp_rec_ref  # noqa: E402

K = pytest.importorskip("sstkd.kernels.laplacian")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _dec_and_grad(fn, x, cot):
    x = x.detach().requires_grad_(True)
    low, band = fn(x)
    (gx,) = torch.autograd.grad((low, band), x, cot)
    return low, band, gx


def _rec_and_grad(fn, c, d, cot):
    c = c.detach().requires_grad_(True)
    d = d.detach().requires_grad_(True)
    x = fn(c, d)
    gc, gd = torch.autograd.grad(x, (c, d), cot)
    return x, gc, gd


def _check(actual, exact, reference, names):
    for a, e, r, n in zip(actual, exact, reference, names):
        assert a.dtype == r.dtype, f"{n}: dtype {a.dtype} != {r.dtype}"
        assert_close_to_reference(a, e, r, name=n)


def _verify_dec(x):
    """Forward and input gradient of lp_dec(backend='triton') vs the reference."""
    low_shape = (*x.shape[:2], x.shape[2] // 2, x.shape[3] // 2)
    cot = (torch.randn(low_shape, device=x.device).to(x.dtype), torch.randn(x.shape, device=x.device).to(x.dtype))
    got = _dec_and_grad(lambda t: lp_dec(t, backend="triton"), x, cot)
    ref = _dec_and_grad(lp_dec_ref, x, cot)  # same dtype as x (float32 compute inside)
    exact = _dec_and_grad(lp_dec_ref, x.double(), tuple(c.double() for c in cot))
    _check(got, exact, ref, ("low", "band", "grad x"))
    return got


def _verify_rec(c, d):
    cot = torch.randn(d.shape, device=d.device).to(d.dtype)
    got = _rec_and_grad(lambda a, b: lp_rec(a, b, backend="triton"), c, d, cot)
    ref = _rec_and_grad(lp_rec_ref, c, d, cot)
    exact = _rec_and_grad(lp_rec_ref, c.double(), d.double(), cot.double())
    _check(got, exact, ref, ("rec", "grad low", "grad band"))


# B·C from 1 up, ragged sizes (low-res widths 5, 17, 4, 2), planes smaller than the filters.
SHAPES = [(1, 1, 6, 10), (2, 3, 18, 34), (1, 2, 12, 8), (3, 1, 2, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_forward_and_gradients(shape):
    x = torch.randn(shape, device=DEVICE)
    low, band, _ = _verify_dec(x)
    assert type(low.grad_fn).__name__ == "_LPAnalysisBackward"  # really the Triton path
    _verify_rec(torch.randn_like(low), torch.randn_like(band))  # arbitrary coefficients


@pytest.mark.parametrize(
    "shape, dtype",
    [((2, 3, 18, 34), torch.float16), ((2, 3, 18, 34), torch.bfloat16), ((1, 2, 6, 10), torch.bfloat16)],
    ids=["18x34-fp16", "18x34-bf16", "6x10-bf16"],
)
def test_low_precision_forward_and_gradients(shape, dtype):
    x = (3 * torch.randn(shape, device=DEVICE)).to(dtype)
    low, band, _ = _verify_dec(x)
    assert low.dtype == dtype and band.dtype == dtype
    _verify_rec(torch.randn_like(low), torch.randn_like(band))


def test_float64_matches_reference_to_rounding():
    x = torch.randn(2, 2, 10, 14, dtype=torch.float64, device=DEVICE)
    low, band = lp_dec(x, backend="triton")
    ref_low, ref_band = lp_dec_ref(x)
    assert low.dtype == torch.float64
    torch.testing.assert_close(low, ref_low, rtol=0, atol=1e-12)
    torch.testing.assert_close(band, ref_band, rtol=0, atol=1e-12)
    assert (lp_rec(low, band, backend="triton") - x).abs().max().item() <= 1e-12


def test_double_backward_is_the_forward_again():
    # d/d(cot) of <dec^T(cot), v> is dec(v): exercises the backward of the backward.
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64, device=DEVICE, requires_grad=True)
    cl = torch.randn(1, 2, 4, 6, dtype=torch.float64, device=DEVICE, requires_grad=True)
    cb = torch.randn(1, 2, 8, 12, dtype=torch.float64, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(lp_dec(x, backend="triton"), x, (cl, cb), create_graph=True)
    v = torch.randn_like(x)
    gl, gb = torch.autograd.grad(gx, (cl, cb), v)
    rl, rb = lp_dec_ref(v)
    torch.testing.assert_close(gl, rl, rtol=0, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-12)


def test_non_contiguous_and_channels_last_inputs():
    base = torch.randn(2, 3, 12, 20, device=DEVICE)
    views = {
        "channels_last": base.to(memory_format=torch.channels_last),
        "transposed": base.transpose(-1, -2).contiguous().transpose(-1, -2),
        "strided": torch.randn(2, 3, 12, 40, device=DEVICE)[..., ::2],
    }
    for name, x in views.items():
        assert not x.is_contiguous()
        low, band = lp_dec(x, backend="triton")
        rl, rb = lp_dec_ref(x)
        assert_close_to_reference(low, lp_dec_ref(x.double())[0], rl, name=f"{name} low")
        assert_close_to_reference(band, lp_dec_ref(x.double())[1], rb, name=f"{name} band")
    c = torch.randn(2, 3, 6, 12, device=DEVICE).transpose(-1, -2)  # (2, 3, 12, 6), strided
    d = torch.randn(2, 3, 24, 12, device=DEVICE).to(memory_format=torch.channels_last)
    got = lp_rec(c, d, backend="triton")
    assert_close_to_reference(got, lp_rec_ref(c.double(), d.double()), lp_rec_ref(c, d), name="rec")


def test_multi_program_launch_geometry(monkeypatch):
    # GPU-style geometry in the interpreter: several column strips, two images
    # per program (one padding image in the last group) and row chunks with
    # their own window prologue.
    cfg = K.LaunchConfig(SW=4, BLOCK=8, ROWS=3, num_warps=1, grid=(0, 0))

    def small_config(images, hl, wl, interpreted=None):
        programs = triton.cdiv(images, cfg.BLOCK // cfg.SW) * triton.cdiv(wl, cfg.SW)
        return cfg._replace(grid=(programs, triton.cdiv(hl, cfg.ROWS)))

    monkeypatch.setattr(K, "launch_config", small_config)
    # low-res 4 x 7: 2 column strips (the second ragged), 2 image groups (one padding
    # image), 2 row chunks (3 rows + 1). The backward runs the synthesis kernel.
    _verify_dec(torch.randn(3, 1, 8, 14, device=DEVICE))


def test_launch_config_rules():
    for images, hl, wl in [(128, 64, 64), (1, 3, 5), (4096, 8, 8), (2, 512, 1024)]:
        cfg = K.launch_config(images, hl, wl, interpreted=False)
        assert cfg.SW & (cfg.SW - 1) == 0 and cfg.BLOCK & (cfg.BLOCK - 1) == 0
        assert cfg.SW == min(128, triton.next_power_of_2(wl)) and cfg.SW <= cfg.BLOCK <= 128
        assert 1 <= cfg.ROWS <= hl and cfg.num_warps in (1, 2, 4)
        programs = triton.cdiv(images, cfg.BLOCK // cfg.SW) * triton.cdiv(wl, cfg.SW)
        assert cfg.grid == (programs, triton.cdiv(hl, cfg.ROWS))
    cfg = K.launch_config(6, 9, 17, interpreted=True)
    assert cfg.grid == (1, 1)  # the interpreter runs whole planes of all images in one program


def test_triton_entry_points_reject_bad_input():
    with pytest.raises(TypeError, match="^x: "):
        K.lp_dec_triton(torch.ones(1, 1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="^x: .*even"):
        K.lp_dec_triton(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="^low: .*shape"):
        K.lp_rec_triton(torch.randn(1, 1, 3, 2), torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="^x: .*even"):
        lp_dec(torch.randn(1, 1, 6, 7), backend="triton")  # the public op validates first


def _aot_jobs():
    def sig(name, dt, tap_dt):
        ptrs = ("X", "LOW", "OUT") if name == "analysis" else ("LOW", "BAND", "OUT")
        s = {p: f"*{dt}" for p in ptrs}
        s["TAPS"] = f"*{tap_dt}"
        s.update({a: "i32" for a in ("N", "H", "W", "HL", "WL", "ROWS")})
        return s

    jobs = []
    for name, kernel in K.KERNELS.items():
        for arch in AOT_ARCHS:
            jobs.append((kernel, sig(name, "fp32", "fp32"), {"SW": 128, "BLOCK": 128}, arch, 4))
    # low precision in, float32 compute; small planes sharing a program
    jobs.append((K.KERNELS["analysis"], sig("analysis", "bf16", "fp32"), {"SW": 8, "BLOCK": 128}, 80, 4))
    jobs.append((K.KERNELS["synthesis"], sig("synthesis", "fp16", "fp32"), {"SW": 16, "BLOCK": 64}, 90, 2))
    # out_dtype: bfloat16 read, float32 stored (and the adjoint: float32 read, bfloat16 stored)
    mixed = dict(sig("analysis", "fp32", "fp32"), X="*bf16")
    jobs.append((K.KERNELS["analysis"], mixed, {"SW": 128, "BLOCK": 128}, 90, 4))
    mixed = dict(sig("synthesis", "fp32", "fp32"), OUT="*bf16")
    jobs.append((K.KERNELS["synthesis"], mixed, {"SW": 128, "BLOCK": 128}, 90, 4))
    return jobs


prefetch("aot", _aot_jobs())  # compiled in the session's compile process while other tests run


def test_aot_compile_every_kernel_sm80_sm90():
    jobs = _aot_jobs()
    results = aot_compile_many(jobs)
    assert len(results) == len(jobs)
    for r in results:
        assert r.name in ("_lp_analysis_kernel", "_lp_synthesis_kernel")
        assert "cubin" in r.asm and len(r.asm["cubin"]) > 0
        assert ".target sm_%d" % r.arch in r.asm["ptx"]
        assert ".local" not in r.asm["ptx"]  # no local-memory arrays


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 128, 128), (3, 5, 66, 130), (4, 8, 8, 8)], ids=lambda s: "x".join(map(str, s)))
def test_gpu_compiled_kernels(shape, dtype):
    x = torch.randn(shape, device="cuda").to(dtype)
    low, band, _ = _verify_dec(x)
    _verify_rec(torch.randn_like(low), torch.randn_like(band))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_out_dtype_reads_low_precision_as_is(dtype):
    # lp_dec_triton(x, out_dtype=float32) == lp_dec_triton(x.float()) exactly; the gradient comes back
    # in x.dtype, the float32 adjoint rounded once (by the kernel's store instead of torch's .to:
    # the same on a GPU, where both round to nearest even; Triton's interpreter truncates a float32
    # value stored through a bfloat16 pointer, so there the two may differ by one unit in the last place)
    x = torch.randn(2, 3, 16, 12).to(dtype)
    xa = x.clone().requires_grad_(True)
    low, band = K.lp_dec_triton(xa, out_dtype=torch.float32)
    assert low.dtype == band.dtype == torch.float32
    xb = x.clone().requires_grad_(True)
    low_b, band_b = K.lp_dec_triton(xb.float())
    assert torch.equal(low, low_b) and torch.equal(band, band_b)
    g_low, g_band = torch.randn_like(low), torch.randn_like(band)
    (ga,) = torch.autograd.grad((low, band), xa, (g_low, g_band))
    (gb,) = torch.autograd.grad((low_b, band_b), xb, (g_low, g_band))
    assert ga.dtype == dtype
    torch.testing.assert_close(ga, gb, rtol=torch.finfo(dtype).eps, atol=0)
    if dtype == torch.float16:  # numpy rounds to nearest even in the interpreter too
        assert torch.equal(ga, gb)
    with pytest.raises(TypeError, match="^out_dtype"):
        K.lp_dec_triton(x, out_dtype=torch.int32)
