"""The CUDA extension's kernels on a GPU: forward and every input gradient vs the reference ops.

Marked ``gpu`` (skipped without a CUDA device). The first run JIT-builds the
extension for the visible GPU (~1-2 min, cached). Tolerances are DESIGN §6's
(tests/triton_utils.assert_close_to_reference): float32 within 1e-5 of the
float64 result's scale, float16/bfloat16 within twice the reference's own
low-precision error plus the dtype's noise floor, float64 to 1e-10.
"""
from __future__ import annotations

import pytest
import torch

from sstkd.ops.backends import cuda as _ext
from triton_utils import assert_close_to_reference

pytestmark = pytest.mark.gpu

DEVICE = torch.device("cuda")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)
# (B, C, H, W): tiny (periodic wrap beyond the size), ragged tiles, several tiles, wide/tall.
LP_SHAPES = [(1, 1, 2, 2), (2, 3, 4, 6), (1, 2, 10, 2), (2, 3, 38, 70), (1, 2, 64, 130), (2, 1, 128, 128),
             (1, 1, 6, 200), (1, 3, 98, 34)]


@pytest.fixture(scope="module")
def cuda_ops():
    from sstkd.ops.backends import cuda as _cuda_ops

    _ext.get()
    return _cuda_ops


def _check(actual, exact, reference, name):
    assert actual.dtype == reference.dtype, name
    assert_close_to_reference(actual, exact.to(torch.float64), reference, name)


def _randn(shape, dtype, gen_seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(gen_seed)
    return torch.randn(shape, device=DEVICE, generator=g, dtype=torch.float64).to(dtype)


# --------------------------------------------------------------------------- Laplacian pyramid
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LP_SHAPES)
def test_lp_dec_forward_and_gradient(cuda_ops, shape, dtype):
    from sstkd.ops.laplacian import lp_dec_ref

    x = _randn(shape, dtype)
    b, c, h, w = shape
    gl, gb = _randn((b, c, h // 2, w // 2), dtype, 1), _randn(shape, dtype, 2)
    outs = {}
    for name, fn, inp in (("cuda", cuda_ops.lp_dec_cuda, x), ("ref", lp_dec_ref, x), ("exact", lp_dec_ref, x.double())):
        xi = inp.clone().requires_grad_(True)
        low, band = fn(xi)
        (gx,) = torch.autograd.grad((low * gl.to(low.dtype)).sum() + (band * gb.to(band.dtype)).sum(), xi)
        outs[name] = (low, band, gx)
    for i, what in enumerate(("low", "band", "grad_x")):
        _check(outs["cuda"][i], outs["exact"][i], outs["ref"][i], f"lp_dec {what} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LP_SHAPES)
def test_lp_rec_forward_and_gradients(cuda_ops, shape, dtype):
    from sstkd.ops.laplacian import lp_rec_ref

    b, c, h, w = shape
    low, band = _randn((b, c, h // 2, w // 2), dtype, 3), _randn(shape, dtype, 4)  # arbitrary coefficients
    gx = _randn(shape, dtype, 5)
    outs = {}
    for name, fn, (lo, ba) in (("cuda", cuda_ops.lp_rec_cuda, (low, band)), ("ref", lp_rec_ref, (low, band)),
                               ("exact", lp_rec_ref, (low.double(), band.double()))):
        lo, ba = lo.clone().requires_grad_(True), ba.clone().requires_grad_(True)
        x = fn(lo, ba)
        g_low, g_band = torch.autograd.grad((x * gx.to(x.dtype)).sum(), (lo, ba))
        outs[name] = (x, g_low, g_band)
    for i, what in enumerate(("x", "grad_low", "grad_band")):
        _check(outs["cuda"][i], outs["exact"][i], outs["ref"][i], f"lp_rec {what} {shape}")


def test_lp_gradcheck_float64(cuda_ops):
    x = _randn((1, 2, 6, 8), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cuda_ops.lp_dec_cuda(t), (x,))
    low = _randn((1, 2, 3, 4), torch.float64, 1).requires_grad_(True)
    band = _randn((1, 2, 6, 8), torch.float64, 2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: cuda_ops.lp_rec_cuda(a, b), (low, band))


def test_lp_perfect_reconstruction_and_toolbox_vectors(cuda_ops):
    import os

    import numpy as np

    x = _randn((2, 3, 64, 48), torch.float64)
    torch.testing.assert_close(cuda_ops.lp_rec_cuda(*cuda_ops.lp_dec_cuda(x)), x, atol=1e-12, rtol=0)
    path = os.path.join(os.path.dirname(__file__), "data", "contourlet", "case2_rand64x48_n2-3.npz")
    if os.path.exists(path):
        z = np.load(path)
        xt = torch.from_numpy(z["x"]).to(DEVICE)[None, None]
        low, band = cuda_ops.lp_dec_cuda(xt)
        torch.testing.assert_close(low[0, 0].cpu(), torch.from_numpy(z["lp_c"]), atol=1e-10, rtol=0)
        torch.testing.assert_close(band[0, 0].cpu(), torch.from_numpy(z["lp_d"]), atol=1e-10, rtol=0)


def test_lp_layouts_streams_and_many_images(cuda_ops):
    from sstkd.ops.laplacian import lp_dec_ref

    base = _randn((2, 4, 40, 72), torch.float32)
    for x in (base[:, :, :, ::2], base.to(memory_format=torch.channels_last), base.transpose(2, 3)):
        for got, want in zip(cuda_ops.lp_dec_cuda(x), lp_dec_ref(x)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        low, band = cuda_ops.lp_dec_cuda(base)
    side.synchronize()
    torch.testing.assert_close(band, lp_dec_ref(base)[1], atol=1e-5, rtol=1e-5)
    many = _randn((70000, 1, 2, 4), torch.float32)  # more images than one grid dimension holds
    for got, want in zip(cuda_ops.lp_dec_cuda(many), lp_dec_ref(many)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lp_under_torch_compile(cuda_ops):
    from sstkd.ops.laplacian import lp_dec_ref

    def f(x):
        low, band = cuda_ops.lp_dec_cuda(x)
        return cuda_ops.lp_rec_cuda(low * 2, band), band.square().sum()

    x = _randn((2, 3, 32, 48), torch.float32)
    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    y, e = compiled(x)
    y_ref, e_ref = f(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(e, lp_dec_ref(x)[1].square().sum(), rtol=1e-5, atol=1e-5)
    y2, _ = compiled(_randn((1, 2, 16, 20), torch.float32))  # another shape, same graph
    assert y2.shape == (1, 2, 16, 20)


def test_lp_errors_name_the_argument(cuda_ops):
    import torch as t

    with pytest.raises(RuntimeError, match="even, non-zero H and W"):
        t.ops.sstkd.lp_dec(_randn((2, 5, 4), t.float32))
    with pytest.raises(RuntimeError, match="low dtype"):
        t.ops.sstkd.lp_rec(_randn((2, 2, 2), t.float64), _randn((2, 4, 4), t.float32))
    with pytest.raises(RuntimeError, match="low must have shape"):
        t.ops.sstkd.lp_rec(_randn((2, 3, 2), t.float32), _randn((2, 4, 4), t.float32))
    with pytest.raises(RuntimeError, match="low must be a CUDA tensor"):
        t.ops.sstkd.lp_rec(t.zeros(2, 2, 2), _randn((2, 4, 4), t.float32))


# -------------------------------------------------------------------------------- quantization
def _intensities(dtype, B=3, N=5000, seed=0):
    s = _randn((B, N), torch.float64, seed).tanh()
    s[0, :500] = s[0, 500]  # many equal values: large peer groups in the warp aggregation
    return s.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("mode", ["plain", "iters", "quantiles", "centers"])
def test_quantize_count_forward_and_gradient(cuda_ops, dtype, kernel, mode):
    from sstkd.ops._checks import compute_dtype
    from sstkd.ops.quantize import quantize_count_ref

    L = 32
    s = _intensities(dtype)
    cdt = compute_dtype(s)
    iters = 3 if mode in ("iters", "quantiles") else 0
    quantiles = (0.01, 0.99) if mode == "quantiles" else None
    centers = None
    if mode == "centers":
        centers, _ = quantize_count_ref(_intensities(cdt, seed=7), L, 2, kernel, None, None)
    g = _randn((3, L), cdt, 9)
    s_c = s.clone().requires_grad_(True)
    c_c, h_c = cuda_ops.quantize_count_cuda(s_c, L, iters, kernel, centers, quantiles)
    (gs_c,) = torch.autograd.grad((h_c * g).sum(), s_c)
    assert c_c.dtype == h_c.dtype == cdt and gs_c.dtype == dtype
    # Same input values in the same compute dtype: only the summation order differs (float atomics).
    tol = dict(atol=1e-10, rtol=1e-10) if cdt == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    c_r, _ = quantize_count_ref(s.to(cdt), L, iters, kernel, centers, quantiles)
    if iters and cdt == torch.float32:
        # Lloyd steps amplify the rounding of the sums: a pixel whose tap weight jumps (stlnet's
        # |c - s| < delta) moves a center by ~delta / mass.
        torch.testing.assert_close(c_c, c_r, atol=2e-3, rtol=0)
    else:
        torch.testing.assert_close(c_c, c_r, **tol)
    # The histogram and its gradient at the centers the CUDA path chose: a pixel within rounding
    # of a tap boundary (stlnet's |c - s| < delta) must not decide the comparison.
    s_r = s.clone().requires_grad_(True)
    _, h_r = quantize_count_ref(s_r.to(cdt), L, 0, kernel, c_c, None)
    (gs_r,) = torch.autograd.grad((h_r * g).sum(), s_r)
    torch.testing.assert_close(h_c, h_r, **tol)
    if dtype in LOW:
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(gs_c.float(), gs_r.float(), atol=eps * gs_r.abs().max().item(), rtol=eps)
    else:
        torch.testing.assert_close(gs_c, gs_r, **tol)


@pytest.mark.parametrize("L", [2, 7, 128, 2048])
def test_quantize_counts_are_exact_for_values_on_centers(cuda_ops, L):
    # Integer centers and pixels on them: unit spacing, so every pixel gives weight exactly 1
    # to its own bin (both encodings) and the float counts are exact integers in any order.
    B, N = 4, 300_001
    centers = torch.arange(L, device=DEVICE, dtype=torch.float32).repeat(B, 1)
    idx = torch.randint(0, L, (B, N), device=DEVICE)
    idx[1] = 3 % L  # one bin only: every warp is a single peer group
    idx[2, ::2] = 0  # half the pixels in bin 0, the rest random
    s = centers.gather(1, idx)
    want = torch.stack([torch.bincount(i, minlength=L) for i in idx]).float()
    for kernel in ("triangular", "stlnet"):
        counts, sums = torch.ops.sstkd.quantize_count(s, centers, kernel)
        torch.testing.assert_close(counts, want, atol=0, rtol=0)
        torch.testing.assert_close(sums, want * centers, atol=0, rtol=1e-6)


def test_quantize_constant_image_and_many_rows(cuda_ops):
    from sstkd.ops.quantize import quantize_count_ref

    s = torch.full((2, 1000), 0.3, device=DEVICE)
    c, h = cuda_ops.quantize_count_cuda(s, 16, 2, "triangular", None, None)
    assert torch.isfinite(h).all() and (h[:, 0] == 1).all() and (h[:, 1:] == 0).all()
    s = _randn((3000, 40), torch.float32).sigmoid()
    c_c, h_c = cuda_ops.quantize_count_cuda(s, 8, 1, "stlnet", None, None)
    c_r, h_r = quantize_count_ref(s, 8, 1, "stlnet", None, None)
    torch.testing.assert_close(h_c, h_r, atol=1e-5, rtol=1e-4)


def test_quantize_count_is_flagged_nondeterministic(cuda_ops):
    s = torch.rand(2, 100, device=DEVICE)
    c = torch.linspace(0, 1, 8, device=DEVICE).repeat(2, 1)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="sstkd::quantize_count"):
            torch.ops.sstkd.quantize_count(s, c, "triangular")
    finally:
        torch.use_deterministic_algorithms(False)


def test_quantize_under_torch_compile(cuda_ops):
    s = _randn((2, 4096), torch.float32).tanh()
    c = torch.linspace(-1, 1, 16, device=DEVICE).repeat(2, 1)

    def f(s):
        return cuda_ops.soft_count_cuda(s, c, "triangular")

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(s), f(s), atol=1e-3, rtol=1e-5)


# ---------------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3, 7), (3, 70001), (70000, 3), (6, 64, 64)])
def test_sum_squares(cuda_ops, shape, dtype):
    x = _randn(shape, dtype)
    xr = x.clone().requires_grad_(True)
    e = cuda_ops.sum_squares_cuda(xr)
    want = x.double().square().reshape(shape[0], -1).sum(1)
    assert e.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(e.double(), want, rtol=1e-5 if dtype != torch.float64 else 1e-12, atol=1e-6)
    assert torch.equal(cuda_ops.sum_squares_cuda(x), cuda_ops.sum_squares_cuda(x))  # deterministic
    g = _randn((shape[0],), e.dtype, 1)
    (gx,) = torch.autograd.grad((e * g).sum(), xr)
    want_g = 2 * x.double() * g.double().reshape((-1,) + (1,) * (len(shape) - 1))
    torch.testing.assert_close(gx.double(), want_g, rtol=torch.finfo(dtype).eps * 4, atol=1e-6)


# ------------------------------------------------------------------ directional filter bank (whole plane)
# (levels, (B, C, H, W)): odd width ('qper_col' shifts), bands narrower than the window, the
# training sizes (128 x 128: 128 KB of shared memory, the opt-in path; 64 x 64), and float64 at
# 128 x 128, which does not fit and runs the Triton DFB instead.
DFB_CASES = [(1, (2, 3, 12, 7)), (2, (1, 2, 20, 2)), (3, (2, 2, 24, 16)), (4, (1, 3, 64, 64)),
             (3, (2, 4, 128, 128)), (4, (1, 2, 48, 80))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DFB_CASES)
def test_dfb_dec_forward_and_gradient(cuda_ops, case, dtype):
    from sstkd.ops.dfb import dfb_dec_ref

    levels, shape = case
    x = _randn(shape, dtype)
    outs = {}
    for name, fn, inp in (("cuda", cuda_ops.dfb_dec_cuda, x), ("ref", dfb_dec_ref, x), ("exact", dfb_dec_ref, x.double())):
        xi = inp.clone().requires_grad_(True)
        bands = fn(xi, levels)
        gs = [_randn(t.shape, t.dtype, 10 + k) for k, t in enumerate(bands)]
        (gx,) = torch.autograd.grad(sum((t * g).sum() for t, g in zip(bands, gs)), xi)
        outs[name] = (*bands, gx)
    for i, (c, e, r) in enumerate(zip(outs["cuda"], outs["exact"], outs["ref"])):
        _check(c, e, r, f"dfb_dec({levels}) output {i} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DFB_CASES)
def test_dfb_rec_forward_and_gradients(cuda_ops, case, dtype):
    from sstkd.geometry import dfb_band_shapes
    from sstkd.ops.dfb import dfb_rec_ref

    levels, (b, c, H, W) = case
    bands = [_randn((b, c, *hw), dtype, 20 + k) for k, hw in enumerate(dfb_band_shapes(H, W, levels))]
    gx = _randn((b, c, H, W), dtype, 5)
    outs = {}
    for name, fn, inp in (("cuda", cuda_ops.dfb_rec_cuda, bands), ("ref", dfb_rec_ref, bands),
                          ("exact", dfb_rec_ref, [t.double() for t in bands])):
        bi = [t.clone().requires_grad_(True) for t in inp]
        x = fn(bi)
        outs[name] = (x, *torch.autograd.grad((x * gx.to(x.dtype)).sum(), bi))
    for i, (cu, e, r) in enumerate(zip(outs["cuda"], outs["exact"], outs["ref"])):
        _check(cu, e, r, f"dfb_rec({levels}) {'x' if i == 0 else f'grad_band {i - 1}'} {(b, c, H, W)}")
    x = _randn((b, c, H, W), torch.float64, 6)
    torch.testing.assert_close(cuda_ops.dfb_rec_cuda(cuda_ops.dfb_dec_cuda(x, levels)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DFB_CASES)
def test_dfb_energy_forward_and_gradient(cuda_ops, case, dtype):
    from sstkd.ops.backends import torch as torch_backend

    levels, shape = case
    ref_energy = torch_backend.TABLE["dfb_energy"]
    x = _randn(shape, dtype)
    g = _randn((*shape[:2], 2**levels), torch.float64, 3)
    outs = {}
    for name, fn, inp in (("cuda", cuda_ops.dfb_energy_cuda, x), ("ref", ref_energy, x),
                          ("exact", ref_energy, x.double())):
        xi = inp.clone().requires_grad_(True)
        e = fn(xi, levels, "pkva")
        (gx,) = torch.autograd.grad((e * g.to(e.dtype)).sum(), xi)
        outs[name] = (e, gx)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert outs["cuda"][0].dtype == acc and outs["cuda"][1].dtype == dtype
    torch.testing.assert_close(outs["cuda"][0].double(), outs["exact"][0], atol=0,
                               rtol=1e-12 if dtype == torch.float64 else 1e-5)
    _check(outs["cuda"][1], outs["exact"][1], outs["ref"][1], f"dfb_energy({levels}) grad {shape}")
    e1, e2 = cuda_ops.dfb_energy_cuda(x, levels), cuda_ops.dfb_energy_cuda(x, levels)
    assert torch.equal(e1, e2)  # fixed summation order


def test_dfb_gradcheck_and_toolbox_vectors(cuda_ops):
    import os

    import numpy as np

    x = _randn((1, 2, 12, 6), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: tuple(cuda_ops.dfb_dec_cuda(t, 2)), (x,))
    assert torch.autograd.gradcheck(lambda t: cuda_ops.dfb_energy_cuda(t, 2), (x,))
    path = os.path.join(os.path.dirname(__file__), "data", "contourlet", "case2_rand64x48_n2-3.npz")
    if os.path.exists(path):
        z = np.load(path)
        d = torch.from_numpy(z["lp_d"]).to(DEVICE)[None, None]
        for k, band in enumerate(cuda_ops.dfb_dec_cuda(d, 3)):
            torch.testing.assert_close(band[0, 0].cpu(), torch.from_numpy(z[f"band_2_{k}"]), atol=1e-10, rtol=0)


def test_dfb_shared_memory_limit_and_fallback(cuda_ops):
    from sstkd.ops.dfb import dfb_dec_ref

    x = _randn((1, 2, 128, 128), torch.float64)  # two float64 planes: 256 KB > 227 KB
    assert not cuda_ops.dfb_plane_fits(x.dtype, 128, 128, DEVICE)
    assert cuda_ops.dfb_plane_fits(torch.float32, 128, 128, DEVICE)
    with pytest.raises(RuntimeError, match="shared memory"):
        torch.ops.sstkd.dfb_dec(x.reshape(2, 128, 128), 3)
    for got, want in zip(cuda_ops.dfb_dec_cuda(x, 3), dfb_dec_ref(x, 3)):  # the Triton DFB
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    with pytest.raises(RuntimeError, match="height 20 is not valid for levels=4"):
        torch.ops.sstkd.dfb_dec(_randn((2, 20, 16), torch.float32), 4)


def test_contourlet_energy_backend_cuda(cuda_ops):
    from sstkd.ops.contourlet import contourlet_energy, contourlet_energy_ref

    x = _randn((2, 8, 128, 128), torch.float32)
    g = _randn((2, 8, 1 + 8 + 8), torch.float32, 1)
    res = []
    for fn in (lambda t: contourlet_energy(t, [3, 3], backend="cuda"), lambda t: contourlet_energy_ref(t.double(), [3, 3])):
        xi = x.clone().requires_grad_(True)
        e = fn(xi)
        res.append((e.double(), torch.autograd.grad((e * g.to(e.dtype)).sum(), xi)[0].double()))
    (e, gx), (e_ref, gx_ref) = res
    torch.testing.assert_close(e, e_ref, atol=0, rtol=1e-4)
    torch.testing.assert_close(gx, gx_ref, atol=1e-4 * gx_ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DFB_CASES)
def test_dfb_energy_with_lowpass_forward_and_gradients(cuda_ops, case, dtype):
    # the coarsest contourlet level's launch: the lowpass (here H/2 x W/2 rounded up) energy first;
    # float64 at 128 x 128 takes the fallback (Triton DFB + torch lowpass sum), the same values
    levels, (b, c, H, W) = case
    x, low = _randn((b, c, H, W), dtype), _randn((b, c, (H + 1) // 2, (W + 1) // 2), dtype, 7)
    g = _randn((b, c, 1 + 2**levels), torch.float64, 3)
    outs = {}
    for name, xs, ls in (("cuda", x, low), ("exact", x.double(), low.double())):
        xi, li = xs.clone().requires_grad_(True), ls.clone().requires_grad_(True)
        if name == "cuda":
            e = cuda_ops.dfb_energy_cuda(xi, levels, "pkva", low=li)
        else:
            from sstkd.ops.backends import torch as torch_backend

            e = torch.cat([(li * li).sum((-2, -1))[..., None], torch_backend.TABLE["dfb_energy"](xi, levels, "pkva")], -1)
        outs[name] = (e, *torch.autograd.grad((e * g.to(e.dtype)).sum(), (xi, li)))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    (e, gx, gl), (e_x, gx_x, gl_x) = outs["cuda"], outs["exact"]
    assert e.dtype == acc and e.shape == (b, c, 1 + 2**levels) and gx.dtype == gl.dtype == dtype
    torch.testing.assert_close(e.double(), e_x, atol=0, rtol=1e-12 if dtype == torch.float64 else 1e-5)
    eps = 1e-10 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for got, want in ((gx, gx_x), (gl, gl_x)):
        torch.testing.assert_close(got.double(), want, atol=eps * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contourlet_energy_backend_cuda_fp32_and_bf16(cuda_ops, dtype):
    from sstkd.ops.contourlet import contourlet_energy, contourlet_energy_ref

    x = _randn((2, 4, 64, 64), dtype)
    g = _randn((2, 4, 1 + 16 + 8), torch.float64, 2)
    res = []
    for fn in (lambda t: contourlet_energy(t, [4, 3], backend="cuda"),
               lambda t: contourlet_energy_ref(t.double(), [4, 3])):
        xi = x.clone().requires_grad_(True)
        e = fn(xi)
        res.append((e, torch.autograd.grad((e * g.to(e.dtype)).sum(), xi)[0]))
    (e, gx), (e_ref, gx_ref) = res
    assert e.dtype == gx.dtype == dtype
    eps = 1e-4 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(e.double(), e_ref, atol=0, rtol=eps)
    torch.testing.assert_close(gx.double(), gx_ref, atol=eps * gx_ref.abs().max().item(), rtol=0)


# (levels, (B, C, H, W)): even sizes valid for the DFB; 128 x 128 float32 needs 144 KB (the opt-in
# path); float64 at 128 x 128 does not fit and runs lp_dec + dfb_energy (the Triton DFB) instead
LEVEL_CASES = [(1, (2, 3, 12, 6)), (2, (1, 2, 20, 2)), (3, (2, 2, 24, 16)), (4, (1, 3, 64, 64)),
               (3, (2, 4, 128, 128))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("case", LEVEL_CASES)
def test_level_energy_forward_and_gradient(cuda_ops, case, last, dtype):
    from sstkd.ops.backends import torch as torch_backend
    from sstkd.ops.laplacian import lp_dec_ref

    levels, (b, c, H, W) = case
    x = _randn((b, c, H, W), dtype)
    g = _randn((b, c, int(last) + 2**levels), torch.float64, 3)
    g_low = _randn((b, c, H // 2, W // 2), torch.float64, 4)
    outs = {}
    for name, inp in (("cuda", x), ("exact", x.double())):
        xi = inp.clone().requires_grad_(True)
        if name == "cuda":
            low, e = cuda_ops.level_energy_cuda(xi, levels, last=last)
        else:
            low, band = lp_dec_ref(xi)
            e = torch_backend.TABLE["dfb_energy"](band, levels, "pkva")
            if last:
                e = torch.cat([(low * low).sum((-2, -1))[..., None], e], -1)
        loss = (e * g.to(e.dtype)).sum() + (0 if last else (low * g_low.to(low.dtype)).sum())
        outs[name] = (low, e, torch.autograd.grad(loss, xi)[0])
    (low, e, gx), (low_x, e_x, gx_x) = outs["cuda"], outs["exact"]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert e.dtype == acc and gx.dtype == dtype and (low is None) == last
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(e.double(), e_x.detach(), atol=0, rtol=tol)
    if not last:
        torch.testing.assert_close(low.double(), low_x.detach(), atol=tol * low_x.abs().max().item(), rtol=0)
    eps = tol if dtype in (torch.float32, torch.float64) else 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(gx.double(), gx_x, atol=eps * gx_x.abs().max().item(), rtol=0)
    if dtype == torch.float32:  # fixed summation order
        assert torch.equal(cuda_ops.level_energy_cuda(x, levels, last=last)[1], e.detach())


def test_level_energy_gradcheck_and_shared_memory_limit(cuda_ops):
    x = _randn((1, 2, 12, 8), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: cuda_ops.level_energy_cuda(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: cuda_ops.level_energy_cuda(t, 2, last=True)[1], (x,))
    assert cuda_ops.dfb_level_fits(torch.float32, 128, 128, DEVICE)
    assert not cuda_ops.dfb_level_fits(torch.float64, 128, 128, DEVICE)
    with pytest.raises(RuntimeError, match="shared memory"):
        torch.ops.sstkd.level_energy(_randn((2, 128, 128), torch.float64), 3, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", LEVEL_CASES)
def test_level_dec_forward_and_gradient(cuda_ops, case, dtype):
    """contourlet_dec's pyramid level per launch: the lowpass and the sub-bands vs lp_dec + dfb_dec of the
    exact reference, the gradient (one launch, sub-band cotangents read where they lie) vs autograd."""
    from sstkd.ops.backends import torch as torch_backend
    from sstkd.ops.laplacian import lp_dec_ref

    levels, (b, c, H, W) = case
    x = _randn((b, c, H, W), dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    outs, gs0, g_low0 = {}, None, None
    for name, inp in (("cuda", x), ("exact", x.double())):
        xi = inp.clone().requires_grad_(True)
        if name == "cuda":
            low, bands = cuda_ops.level_dec_cuda(xi, levels)
            # cotangents in the outputs' dtypes; the exact side reads the same (rounded) values
            gs0 = [_randn(t.shape, torch.float64, 5 + k).to(dtype) for k, t in enumerate(bands)]
            g_low0 = _randn(low.shape, torch.float64, 4).to(acc)
        else:
            low, band = lp_dec_ref(xi)
            bands = torch_backend.TABLE["dfb_dec"](band, levels, "pkva", torch.float64)
        gs = [g.to(t.dtype) for g, t in zip(gs0, bands)]
        g_low = g_low0.to(low.dtype)
        loss = sum((t * g).sum() for t, g in zip(bands, gs)) + (low * g_low).sum()
        outs[name] = (low, bands, torch.autograd.grad(loss, xi)[0])
    (low, bands, gx), (low_x, bands_x, gx_x) = outs["cuda"], outs["exact"]
    assert low.dtype == acc and gx.dtype == dtype and all(t.dtype == dtype for t in bands)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    eps = tol if dtype in (torch.float32, torch.float64) else 2 * torch.finfo(dtype).eps
    torch.testing.assert_close(low.double(), low_x.detach(), atol=tol * low_x.abs().max().item(), rtol=0)
    for t, r in zip(bands, bands_x):
        torch.testing.assert_close(t.double(), r.detach(), atol=eps * r.abs().max().item(), rtol=0)
    torch.testing.assert_close(gx.double(), gx_x, atol=eps * gx_x.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contourlet_dec_on_cuda_matches_torch(cuda_ops, dtype):
    """The composition on the CUDA backend (a pyramid level per launch) vs the torch backend, values and
    gradient, dtypes alike; a wavelet level in between."""
    from sstkd.ops import contourlet_dec

    x = _randn((2, 3, 64, 64), dtype)
    res = []
    for backend in ("cuda", "torch"):
        xi = x.clone().requires_grad_(True)
        low, bands = contourlet_dec(xi, [2, 0, 3], backend=backend)
        coeffs = [low] + [t for lv in bands for t in lv]
        gs = [_randn(t.shape, torch.float64, 7 + k).to(t.dtype) for k, t in enumerate(coeffs)]
        res.append((*coeffs, *torch.autograd.grad(coeffs, xi, gs)))
    for got, want in zip(*res):
        assert got.dtype == want.dtype and got.shape == want.shape
        eps = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
        torch.testing.assert_close(got.double(), want.double(), atol=eps * want.abs().max().item(), rtol=0)


def test_level_dec_gradcheck_and_shared_memory_limit(cuda_ops):
    x = _randn((1, 2, 12, 8), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: (lambda lo, bs: (lo, *bs))(*cuda_ops.level_dec_cuda(t, 2)), (x,))
    with pytest.raises(RuntimeError, match="shared memory"):
        torch.ops.sstkd.level_dec(_randn((2, 128, 128), torch.float64), 3)
    # float64 at 128 x 128 does not fit: lp_dec + dfb_dec, same results
    xl = _randn((1, 1, 128, 128), torch.float64)
    low, bands = cuda_ops.level_dec_cuda(xl, 3)
    low_r, band_r = cuda_ops.lp_dec_cuda(xl)
    torch.testing.assert_close(low, low_r, atol=1e-12, rtol=0)
    for t, r in zip(bands, cuda_ops.dfb_dec_cuda(band_r, 3)):
        torch.testing.assert_close(t, r, atol=1e-12, rtol=0)
