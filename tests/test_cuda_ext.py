"""The CUDA extension sstkd._C on a machine without a GPU (runs in CI).

* It JIT-builds for sm_90 (ninja, cached in ~/.cache/sstkd/ext-<hash>: the
  first run compiles, ~40-60 s on 2 cores; later runs load the cached build),
  imports, registers its ops, and rejects CPU tensors with a clear error.
* Its Meta implementations give the right shapes/dtypes, also under symbolic
  (dynamic-shape) tracing, and the autograd wrappers trace on meta tensors.
* The kernels' arithmetic -- the LP tile engine (lp_tile.cuh), the whole-plane
  DFB (dfb_plane.cuh) and the quantization taps (quantize_taps.cuh), the same
  code the kernels run -- is
  compiled for the host (csrc/tests/host_emulation.cu) and checked against
  the reference ops, forward and adjoint. Warp-level code, barriers and the
  launch itself need a GPU: tests/test_cuda_gpu.py.

Skips only when no CUDA toolkit (nvcc) is found or torch is a CPU-only build.
"""
from __future__ import annotations

import ctypes
import glob
import os

import pytest
import torch

from conftest import cuda_build_unavailable, wait_for_prebuild
from prebuild import host_emulation_lib
from sstkd.ops.backends import cuda as _ext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(REPO, "csrc")
OPS = ("lp_dec", "lp_dec_backward", "lp_rec", "lp_rec_backward", "quantize_count", "quantize_count_backward",
       "sum_squares", "dfb_dec", "dfb_dec_backward", "dfb_energy", "dfb_energy_backward", "dfb_energy_low",
       "dfb_energy_low_backward", "level_energy", "level_energy_backward", "level_dec", "level_dec_backward", "dfb_rec",
       "dfb_rec_backward")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _sstkd_build():
    return _ext.build_flags()  # csrc/sstkd_build.py, loaded by path as setup.py loads it


@pytest.fixture(scope="module")
def ext(cuda_ext):
    return cuda_ext  # conftest.py: built once per session for sm_90


# ------------------------------------------------------------------------------------- build + load
def test_extension_imports_and_registers_ops(ext):
    assert _ext.is_loaded() and _ext.load_error() is None
    assert tuple(ext.ops) == OPS
    assert ext.cuda_runtime_version >= 11000
    for name in OPS:
        assert hasattr(torch.ops.sstkd, name), name
    schema = str(torch.ops.sstkd.quantize_count.default._schema)
    assert schema == "sstkd::quantize_count(Tensor s, Tensor centers, str kernel) -> (Tensor counts, Tensor sums)"
    assert _ext.info()["loaded"] and _ext.info()["jit_available"]
    assert _ext.status_line().startswith("loaded (")


def test_setup_py_and_jit_build_the_same_sources():
    # setup.py globs csrc/*.cu + csrc/*.cpp; the JIT build uses sstkd_build.sources().
    sb = _sstkd_build()
    globbed = sorted(glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(CSRC, "*.cpp")))
    assert sb.sources() == globbed
    names = {os.path.basename(f) for f in globbed}
    assert names == {"bindings.cpp", "dfb_kernels.cu", "dfb_kernels_f64.cu", "lp_kernels.cu", "quantize_kernels.cu",
                     "reduce_kernels.cu"}
    # torch headers only in the one binding file: the kernel units stay fast to compile per arch
    for f in globbed:
        text = open(f).read()
        has_torch = "#include <torch/" in text or "#include <ATen/" in text or "#include <c10/" in text
        assert has_torch == f.endswith("bindings.cpp"), f


CPU_CALLS = {
    "lp_dec": lambda: torch.ops.sstkd.lp_dec(torch.zeros(2, 4, 4)),
    "lp_dec_backward": lambda: torch.ops.sstkd.lp_dec_backward(torch.zeros(2, 2, 2), torch.zeros(2, 4, 4)),
    "lp_rec": lambda: torch.ops.sstkd.lp_rec(torch.zeros(2, 2, 2), torch.zeros(2, 4, 4)),
    "lp_rec_backward": lambda: torch.ops.sstkd.lp_rec_backward(torch.zeros(2, 4, 4)),
    "quantize_count": lambda: torch.ops.sstkd.quantize_count(torch.zeros(2, 9), torch.zeros(2, 4), "triangular"),
    "quantize_count_backward": lambda: torch.ops.sstkd.quantize_count_backward(
        torch.zeros(2, 9), torch.zeros(2, 4), "stlnet", torch.zeros(2, 4), None),
    "sum_squares": lambda: torch.ops.sstkd.sum_squares(torch.zeros(3, 5)),
    "dfb_dec": lambda: torch.ops.sstkd.dfb_dec(torch.zeros(2, 16, 16), 2),
    "dfb_dec_backward": lambda: torch.ops.sstkd.dfb_dec_backward(torch.zeros(4, 2, 64), 2, 16, 16, torch.float32),
    "dfb_energy": lambda: torch.ops.sstkd.dfb_energy(torch.zeros(2, 16, 16), 2),
    "dfb_energy_backward": lambda: torch.ops.sstkd.dfb_energy_backward(torch.zeros(2, 16, 16), torch.zeros(2, 4), 2),
    "dfb_energy_low": lambda: torch.ops.sstkd.dfb_energy_low(torch.zeros(2, 16, 16), torch.zeros(2, 8, 8), 2),
    "dfb_energy_low_backward": lambda: torch.ops.sstkd.dfb_energy_low_backward(
        torch.zeros(2, 16, 16), torch.zeros(2, 8, 8), torch.zeros(2, 5), 2),
    "level_energy": lambda: torch.ops.sstkd.level_energy(torch.zeros(2, 16, 16), 2, False),
    "level_energy_backward": lambda: torch.ops.sstkd.level_energy_backward(
        torch.zeros(2, 16, 16), torch.zeros(2, 5), None, 2, True),
    "level_dec": lambda: torch.ops.sstkd.level_dec(torch.zeros(2, 16, 16), 2),
    "level_dec_backward": lambda: torch.ops.sstkd.level_dec_backward(
        [None, torch.zeros(2, 64), None, None], None, 2, 2, 16, 16, torch.float32),
    "dfb_rec": lambda: torch.ops.sstkd.dfb_rec(torch.zeros(4, 2, 64), 2, 16, 16),
    "dfb_rec_backward": lambda: torch.ops.sstkd.dfb_rec_backward(torch.zeros(2, 16, 16), 2, torch.float32),
}


@pytest.mark.parametrize("op", OPS)
def test_cpu_tensors_raise_a_clear_error(ext, op):
    with pytest.raises(RuntimeError, match=rf"sstkd::{op}: \w+ must be a CUDA tensor \(got a cpu tensor\)"):
        CPU_CALLS[op]()


def test_wrappers_raise_a_clear_error_on_cpu(ext):
    from sstkd.ops.backends import cuda as _cuda_ops

    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.lp_dec_cuda(torch.randn(1, 2, 8, 8))
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.quantize_count_cuda(torch.rand(2, 50), 8, 0, "triangular", None, None)
    with pytest.raises(ValueError, match="filt"):
        _cuda_ops.lp_rec_cuda(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 8, 8), filt="5-3")
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.dfb_dec_cuda(torch.randn(1, 2, 16, 16), 2)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.dfb_energy_cuda(torch.randn(1, 2, 16, 16), 3)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.dfb_rec_cuda([torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)])
    with pytest.raises(ValueError, match="filt"):
        _cuda_ops.dfb_dec_cuda(torch.randn(1, 1, 16, 16), 2, filt="haar")
    with pytest.raises(ValueError, match="levels"):
        _cuda_ops.dfb_energy_cuda(torch.randn(1, 1, 16, 16), -1)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.dfb_energy_cuda(torch.randn(1, 2, 16, 16), 3, low=torch.randn(1, 2, 8, 8))
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        _cuda_ops.level_energy_cuda(torch.randn(1, 2, 16, 16), 3)
    for bad in (torch.randn(1, 2, 8, 8, dtype=torch.float64), torch.randn(1, 3, 8, 8), torch.randn(1, 2, 32, 32),
                torch.randn(2, 8, 8)):
        with pytest.raises(ValueError, match=r"low: expected a torch.float32 \(B, C, h, w\)"):
            _cuda_ops.dfb_energy_cuda(torch.randn(1, 2, 16, 16), 3, low=bad)


def test_bad_kernel_name_is_rejected(ext):
    with pytest.raises(RuntimeError, match="kernel must be 'triangular' or 'stlnet', got 'box'"):
        torch.ops.sstkd.quantize_count(torch.empty(2, 9, device="meta"), torch.empty(2, 4, device="meta"), "box")


# ---------------------------------------------------------------------------------------- Meta
@pytest.mark.parametrize("dtype", DTYPES)
def test_meta_shapes_and_dtypes(ext, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.empty(6, 10, 14, device="meta", dtype=dtype)
    low, band = torch.ops.sstkd.lp_dec(x)
    assert (low.shape, band.shape, low.dtype, band.dtype) == ((6, 5, 7), (6, 10, 14), dtype, dtype)
    assert torch.ops.sstkd.lp_dec_backward(low, band).shape == (6, 10, 14)
    assert torch.ops.sstkd.lp_rec(low, band).shape == (6, 10, 14)
    gl, gb = torch.ops.sstkd.lp_rec_backward(band)
    assert (gl.shape, gb.shape, gl.dtype) == ((6, 5, 7), (6, 10, 14), dtype)
    s = torch.empty(3, 100, device="meta", dtype=dtype)
    c = torch.empty(3, 16, device="meta", dtype=acc)
    counts, sums = torch.ops.sstkd.quantize_count(s, c, "stlnet")
    assert (counts.shape, sums.shape, counts.dtype, sums.dtype) == ((3, 16), (3, 16), acc, acc)
    g = torch.ops.sstkd.quantize_count_backward(s, c, "triangular", counts, None)
    assert (g.shape, g.dtype) == ((3, 100), dtype)
    e = torch.ops.sstkd.sum_squares(torch.empty(7, 3, 5, device="meta", dtype=dtype))
    assert (e.shape, e.dtype) == ((7,), acc)
    if dtype in (torch.float16, torch.bfloat16):  # read as is, float32 outputs; the adjoint back to dtype
        low32, band32 = torch.ops.sstkd.lp_dec(x, torch.float32)
        assert low32.dtype == band32.dtype == torch.float32 and low32.shape == (6, 5, 7)
        assert torch.ops.sstkd.lp_dec_backward(low32, band32, dtype).dtype == dtype
    with pytest.raises(RuntimeError, match="lp_dec: out_dtype"):
        torch.ops.sstkd.lp_dec(x, torch.float16 if dtype != torch.float16 else torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dfb_meta_shapes_and_dtypes(ext, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.empty(6, 24, 16, device="meta", dtype=dtype)
    bands = torch.ops.sstkd.dfb_dec(x, 3)
    assert (bands.shape, bands.dtype) == ((8, 6, 48), dtype)
    assert torch.ops.sstkd.dfb_dec(x, 1, acc).dtype == acc
    gx = torch.ops.sstkd.dfb_dec_backward(bands, 3, 24, 16, dtype)
    assert (gx.shape, gx.dtype) == ((6, 24, 16), dtype)
    x_rec = torch.ops.sstkd.dfb_rec(bands, 3, 24, 16, acc)
    assert (x_rec.shape, x_rec.dtype) == ((6, 24, 16), acc)
    g_rec = torch.ops.sstkd.dfb_rec_backward(x_rec, 3, dtype)
    assert (g_rec.shape, g_rec.dtype) == ((8, 6, 48), dtype)
    en = torch.ops.sstkd.dfb_energy(x, 2)
    assert (en.shape, en.dtype) == ((6, 4), acc)
    assert torch.ops.sstkd.dfb_energy_backward(x, en, 2).shape == (6, 24, 16)
    low = torch.empty(6, 12, 8, device="meta", dtype=dtype)
    en_low = torch.ops.sstkd.dfb_energy_low(x, low, 2)
    assert (en_low.shape, en_low.dtype) == ((6, 5), acc)
    gx, g_low = torch.ops.sstkd.dfb_energy_low_backward(x, low, en_low, 2)
    assert (gx.shape, gx.dtype, g_low.shape, g_low.dtype) == ((6, 24, 16), dtype, (6, 12, 8), dtype)
    low2, en2 = torch.ops.sstkd.level_energy(x, 3, False)
    assert (low2.shape, low2.dtype, en2.shape, en2.dtype) == ((6, 12, 8), acc, (6, 8), acc)
    assert torch.ops.sstkd.level_energy(x, 3, True)[1].shape == (6, 9)
    gx2 = torch.ops.sstkd.level_energy_backward(x, en2, low2, 3, False)
    assert (gx2.shape, gx2.dtype) == ((6, 24, 16), dtype)
    with pytest.raises(RuntimeError, match="grad_low is required unless last=True"):
        torch.ops.sstkd.level_energy_backward(x, en2, None, 3, False)
    with pytest.raises(RuntimeError, match="dfb_energy_low: low dtype"):
        torch.ops.sstkd.dfb_energy_low(x, low.to(torch.float64 if dtype != torch.float64 else torch.float32), 2)
    with pytest.raises(RuntimeError, match="cannot pair with"):
        torch.ops.sstkd.dfb_dec(x, 2, torch.float64 if dtype != torch.float64 else torch.float16)
    # the level decomposition: the lowpass (accumulation dtype by default) and the band-major sub-bands
    low3, bands3 = torch.ops.sstkd.level_dec(x, 3)
    assert (low3.shape, low3.dtype, bands3.shape, bands3.dtype) == ((6, 12, 8), acc, (8, 6, 48), dtype)
    assert torch.ops.sstkd.level_dec(x, 2, acc, dtype)[0].dtype == dtype
    gx3 = torch.ops.sstkd.level_dec_backward(list(bands3.unbind(0)), low3, 3, 6, 24, 16, dtype)
    assert (gx3.shape, gx3.dtype) == ((6, 24, 16), dtype)
    assert torch.ops.sstkd.level_dec_backward([None] * 8, low3, 3, 6, 24, 16, dtype).shape == (6, 24, 16)
    with pytest.raises(RuntimeError, match="level_dec: levels must be in \\[1, 5\\]"):
        torch.ops.sstkd.level_dec(x, 6)
    with pytest.raises(RuntimeError, match="level_dec: low_dtype .* cannot pair with"):
        torch.ops.sstkd.level_dec(x, 2, None, torch.float64 if dtype != torch.float64 else torch.float32)
    with pytest.raises(RuntimeError, match="expected 8 sub-band cotangents"):
        torch.ops.sstkd.level_dec_backward(list(bands3.unbind(0))[:4], None, 3, 6, 24, 16, dtype)
    with pytest.raises(RuntimeError, match=r"levels must be in \[1, 20\]"):
        torch.ops.sstkd.dfb_energy(x, 0)


def test_meta_rejects_wrong_rank(ext):
    with pytest.raises(RuntimeError, match=r"sstkd::lp_dec: x must be 3-D \(N, H, W\)"):
        torch.ops.sstkd.lp_dec(torch.empty(2, 3, 8, 8, device="meta"))


def test_symbolic_shapes_trace(ext):
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x, s, c):
        low, band = torch.ops.sstkd.lp_dec(x)
        counts, _ = torch.ops.sstkd.quantize_count(s, c, "triangular")
        en = torch.ops.sstkd.dfb_energy(x, 1)
        return torch.ops.sstkd.lp_rec(low, band), counts, en

    gm = make_fx(f, tracing_mode="symbolic")(
        torch.empty(3, 8, 6, device="meta"), torch.empty(2, 40, device="meta"), torch.empty(2, 5, device="meta"))
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.sstkd.lp_dec.default in ops and torch.ops.sstkd.quantize_count.default in ops
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    shape = out[0].meta["val"].shape
    assert all(isinstance(d, torch.SymInt) for d in shape)  # sizes stay symbolic through the Meta impls


def test_autograd_wrappers_on_meta_tensors(ext):
    from sstkd.ops.backends import cuda as _cuda_ops

    x = torch.empty(2, 3, 12, 10, device="meta", requires_grad=True)
    low, band = _cuda_ops.lp_dec_cuda(x)
    assert low.shape == (2, 3, 6, 5) and band.shape == (2, 3, 12, 10)
    (gx,) = torch.autograd.grad((low.sum() + band.sum()), x)
    assert gx.shape == x.shape
    y = _cuda_ops.lp_rec_cuda(low.detach().requires_grad_(), band.detach().requires_grad_())
    assert y.shape == (2, 3, 12, 10)
    e = _cuda_ops.sum_squares_cuda(torch.empty(4, 9, device="meta", dtype=torch.float16))
    assert e.shape == (4,) and e.dtype == torch.float32


# ----------------------------------------------------------------------------- JIT availability
def test_jit_unavailable_reasons(monkeypatch):
    monkeypatch.setenv("SSTKD_JIT", "0")
    assert _ext.jit_available() == (False, "the JIT build is disabled (SSTKD_JIT=0)")
    monkeypatch.delenv("SSTKD_JIT")
    monkeypatch.setenv("CUDA_HOME", "/nonexistent/cuda")
    ok, why = _ext.jit_available()
    if torch.version.cuda is not None:
        assert not ok and "CUDA_HOME/CUDA_PATH=/nonexistent/cuda is not a CUDA toolkit root" in why
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.setenv("SSTKD_CSRC", "/nonexistent/csrc")
    ok, why = _ext.jit_available()
    assert not ok and "source checkout" in why


def test_get_names_the_missing_toolkit(monkeypatch):
    monkeypatch.setattr(_ext, "_state", {"module": None, "error": None, "build_dir": None})
    monkeypatch.setattr(_ext, "_import_built", lambda: (None, "sstkd._C is not built (test)"))
    monkeypatch.setenv("SSTKD_JIT", "0")
    assert "SSTKD_JIT=0" in _ext.load_error()
    assert "cannot be JIT-built" in _ext.status_line()
    with pytest.raises(RuntimeError, match=r"sstkd._C is not built \(test\), and it cannot be JIT-built: .*SSTKD_JIT=0"):
        _ext.get()


# ------------------------------------------------------------------------------ host emulation
def _emu_lib():
    why = cuda_build_unavailable()
    if why:
        pytest.skip(why)
    wait_for_prebuild()
    return ctypes.CDLL(host_emulation_lib())


@pytest.fixture(scope="module")
def emu():
    return _emu_lib()


_DT = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def _emu_level(emu, mode, filters, y, c_in=None, out_dtype=None):
    """mode 0: (A y, y - S A y); mode 1: S (c_in - A y) + y. filters 0: (h, g); 1: (g, h).
    Outputs in ``out_dtype`` (default y's; the kernel's mixed pairs only, else the call fails)."""
    n, H, W = y.shape
    y = y.contiguous()
    od = y.dtype if out_dtype is None else out_dtype
    out = torch.empty(n, H, W, dtype=od)
    c_out = torch.empty(n, H // 2, W // 2, dtype=od) if mode == 0 else None
    c_in = None if c_in is None else c_in.contiguous()
    i64 = ctypes.c_int64
    rc = emu.sstkd_emu_lp_level(_DT[y.dtype], mode, filters, _ptr(y), _ptr(c_in), _ptr(c_out), _ptr(out),
                                i64(n), i64(H), i64(W), _DT[od])
    assert rc == 0
    return c_out, out


# (N, H, W): tiny images (wrap more than the size), one tile, ragged tile
# coverage in both directions, several tiles.
LP_SHAPES = [(1, 2, 2), (2, 4, 6), (2, 10, 2), (3, 8, 8), (2, 38, 70), (1, 34, 130), (1, 68, 36)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", LP_SHAPES)
def test_emulated_lp_level_matches_the_reference(emu, shape, dtype):
    from sstkd.ops.laplacian import lp_dec_ref, lp_rec_ref

    tol = 1e-12 if dtype == torch.float64 else 2e-6
    x = torch.randn(*shape, dtype=dtype)
    # forward: lp_dec, and lp_rec of arbitrary coefficients (not only of a decomposition)
    low_ref, band_ref = lp_dec_ref(x[:, None])
    low, band = _emu_level(emu, 0, 0, x)
    torch.testing.assert_close(low, low_ref[:, 0], atol=tol, rtol=0)
    torch.testing.assert_close(band, band_ref[:, 0], atol=tol, rtol=0)
    rl, rb = torch.randn_like(low_ref), torch.randn_like(band_ref)
    _, rec = _emu_level(emu, 1, 0, rb[:, 0], rl[:, 0])
    torch.testing.assert_close(rec, lp_rec_ref(rl, rb)[:, 0], atol=tol, rtol=0)
    # adjoints = the reference's autograd
    xg = x[:, None].clone().requires_grad_(True)
    lo, ba = lp_dec_ref(xg)
    gl, gb = torch.randn_like(lo), torch.randn_like(ba)
    (gx_ref,) = torch.autograd.grad((lo * gl).sum() + (ba * gb).sum(), xg)
    _, gx = _emu_level(emu, 1, 1, gb[:, 0], gl[:, 0])
    torch.testing.assert_close(gx, gx_ref[:, 0], atol=tol * 4, rtol=0)
    lg, bg = rl.clone().requires_grad_(True), rb.clone().requires_grad_(True)
    y = lp_rec_ref(lg, bg)
    gy = torch.randn_like(y)
    gl_ref, gb_ref = torch.autograd.grad((y * gy).sum(), (lg, bg))
    gl2, gb2 = _emu_level(emu, 0, 1, gy[:, 0])
    torch.testing.assert_close(gl2, gl_ref[:, 0], atol=tol * 4, rtol=0)
    torch.testing.assert_close(gb2, gb_ref[:, 0], atol=tol * 4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_lp_level_low_precision_rounds_once(emu, dtype):
    from sstkd.ops.laplacian import lp_dec_ref

    x = torch.randn(2, 38, 70).to(dtype)
    low_ref, band_ref = lp_dec_ref(x[:, None].float())  # float32 compute, one rounding at the end
    low, band = _emu_level(emu, 0, 0, x)
    assert low.dtype == band.dtype == dtype
    # within one unit in the last place of the dtype (the float32 sums differ in order only)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(low.float(), low_ref[:, 0], atol=1e-6, rtol=eps)
    torch.testing.assert_close(band.float(), band_ref[:, 0], atol=1e-6, rtol=eps)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2, 2), (2, 10, 2), (2, 38, 70)])
def test_emulated_lp_level_mixed_dtypes(emu, shape, dtype):
    # lp_dec of a 16-bit level with float32 outputs (no conversion copy of the input), and its adjoint
    # from float32 cotangents to a 16-bit gradient (rounded once)
    from sstkd.ops.laplacian import lp_dec_ref

    x = torch.randn(*shape).to(dtype)
    xg = x.double()[:, None].requires_grad_(True)
    lo, ba = lp_dec_ref(xg)  # exact, of the rounded input
    low, band = _emu_level(emu, 0, 0, x, out_dtype=torch.float32)
    assert low.dtype == band.dtype == torch.float32
    torch.testing.assert_close(low.double(), lo[:, 0].detach(), atol=2e-6, rtol=0)
    torch.testing.assert_close(band.double(), ba[:, 0].detach(), atol=2e-6, rtol=0)
    gl, gb = torch.randn(lo.shape), torch.randn(ba.shape)
    (gx_ref,) = torch.autograd.grad((lo * gl.double()).sum() + (ba * gb.double()).sum(), xg)
    _, gx = _emu_level(emu, 1, 1, gb[:, 0], gl[:, 0], out_dtype=dtype)
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.double(), gx_ref[:, 0], atol=1e-5, rtol=torch.finfo(dtype).eps)
    # every other mixed pair is refused (not silently run in the wrong dtype)
    i64, y = ctypes.c_int64, torch.zeros(1, 4, 4)
    for mode, filters, src, dst in ((0, 0, torch.float32, dtype), (0, 1, dtype, torch.float32),
                                    (1, 0, torch.float32, dtype), (1, 1, dtype, torch.float32),
                                    (0, 0, torch.float64, torch.float32)):
        out = torch.empty(1, 4, 4, dtype=dst)
        c = torch.zeros(1, 2, 2, dtype=dst if mode == 0 else src)
        rc = emu.sstkd_emu_lp_level(_DT[src], mode, filters, _ptr(y.to(src)), _ptr(c if mode else None),
                                    _ptr(None if mode else c), _ptr(out), i64(1), i64(4), i64(4), _DT[dst])
        assert rc == 1, (mode, filters, src, dst)


def _emu_plane_level(emu, mode, y, c_in=None, nt=96):
    """The whole-plane LP level (csrc/lp_plane.cuh): mode 0: (A y, y - S A y); 1: y + S (c_in - A y)."""
    n, H, W = y.shape
    y = y.contiguous()
    out = torch.full_like(y, float("nan"))
    c_out = torch.full((n, H // 2, W // 2), float("nan"), dtype=y.dtype) if mode == 0 else None
    c_in = None if c_in is None else c_in.to(y.dtype).contiguous()
    i64 = ctypes.c_int64
    rc = emu.sstkd_emu_lp_plane(int(y.dtype == torch.float64), mode, _ptr(y), _ptr(c_in), _ptr(c_out), _ptr(out),
                                i64(n), i64(H), i64(W), nt)
    assert rc == 0
    return c_out, out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", LP_SHAPES + [(2, 128, 128)])
def test_emulated_lp_plane_equals_the_tile_engine(emu, shape, dtype):
    # the LP half of a fused pyramid level: over a whole plane with periodic indices instead of tiles
    # with halos, same taps in the same order: the same bits as the tile engine (lp_dec and its adjoint)
    x = torch.randn(*shape, dtype=dtype)
    low_t, band_t = _emu_level(emu, 0, 0, x)
    low_p, band_p = _emu_plane_level(emu, 0, x)
    assert torch.equal(low_p, low_t) and torch.equal(band_p, band_t)
    gl, gb = torch.randn_like(low_t), torch.randn_like(band_t)
    _, gx_t = _emu_level(emu, 1, 1, gb, gl)
    _, gx_p = _emu_plane_level(emu, 1, gb, gl)
    assert torch.equal(gx_p, gx_t)
    if dtype == torch.float64:  # and the reference (the tile engine's own test covers the rest)
        from sstkd.ops.laplacian import lp_dec_ref

        xg = x[:, None].clone().requires_grad_(True)
        lo, ba = lp_dec_ref(xg)
        torch.testing.assert_close(low_p, lo[:, 0].detach(), atol=1e-12, rtol=0)
        torch.testing.assert_close(band_p, ba[:, 0].detach(), atol=1e-12, rtol=0)
        (gx_ref,) = torch.autograd.grad((lo[:, 0] * gl).sum() + (ba[:, 0] * gb).sum(), xg)
        torch.testing.assert_close(gx_p, gx_ref[:, 0], atol=4e-12, rtol=0)


def _emu_counts(emu, kernel, s, centers):
    B, N = s.shape
    L = centers.shape[1]
    acc = torch.float64 if s.dtype == torch.float64 else torch.float32
    counts = torch.zeros(B, L, dtype=acc)
    sums = torch.zeros(B, L, dtype=acc)
    c = centers.to(acc).contiguous()
    i64 = ctypes.c_int64
    kid = ("triangular", "stlnet").index(kernel)
    rc = emu.sstkd_emu_quantize_count(_DT[s.dtype], kid, _ptr(s), _ptr(c), _ptr(counts), _ptr(sums), i64(B), i64(N),
                                      i64(L))
    assert rc == 0
    return counts, sums


def _emu_count_grad(emu, kernel, s, centers, grad_counts):
    B, N = s.shape
    L = centers.shape[1]
    g = torch.empty_like(s)
    zeros = torch.zeros_like(grad_counts)
    i64 = ctypes.c_int64
    kid = ("triangular", "stlnet").index(kernel)
    rc = emu.sstkd_emu_quantize_count_backward(_DT[s.dtype], kid, _ptr(s), _ptr(centers.contiguous()),
                                               _ptr(grad_counts.contiguous()), _ptr(zeros), _ptr(g), i64(B), i64(N),
                                               i64(L))
    assert rc == 0
    return g


def _intensities(dtype):
    s = torch.rand(3, 700, dtype=torch.float64) * 2 - 1
    s[0, :40] = s[0, 40]  # repeated values
    s[2] = 0.25  # a constant image
    return s.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
def test_emulated_quantize_counts_match_the_reference(emu, kernel, dtype):
    from sstkd.ops.quantize import initial_centers, intensity_range, lloyd_update, normalize_rows, quantize_count_ref

    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=2e-6, rtol=2e-5)
    s = _intensities(dtype)
    L = 12
    # one Lloyd step from the initial centers: checks the sums Σ E·s and the counts
    centers0 = initial_centers(*intensity_range(s, None), L)
    counts, sums = _emu_counts(emu, kernel, s, centers0)
    c1_ref, _ = quantize_count_ref(s, L, 1, kernel, None, None)
    torch.testing.assert_close(lloyd_update(centers0, counts, sums), c1_ref, **tol)
    # given (non-uniform, partly coincident) centers, and values exactly on a center
    centers = c1_ref.clone()
    centers[1, 5] = centers[1, 4]
    s[1, :7] = centers[1, 4]
    s[0, 50:60] = centers[0, 0] - 0.5  # below the outermost center
    s_ref = s.clone().requires_grad_(True)
    _, hist_ref = quantize_count_ref(s_ref, L, 0, kernel, centers, None)
    counts, _ = _emu_counts(emu, kernel, s, centers)
    torch.testing.assert_close(normalize_rows(counts), hist_ref, **tol)
    # backward: d(Σ g·hist)/ds, with the normalization's chain rule applied to the counts
    g = torch.randn_like(hist_ref)
    (gs_ref,) = torch.autograd.grad((hist_ref * g).sum(), s_ref)
    total = counts.sum(1, keepdim=True)
    total = torch.where(total != 0, total, torch.ones_like(total))
    grad_counts = g / total - (g * counts).sum(1, keepdim=True) / total**2
    torch.testing.assert_close(_emu_count_grad(emu, kernel, s, centers, grad_counts), gs_ref, **tol)


# whole-plane DFB: (levels, H, W) -- odd widths (the 'qper_col' shift (w+1)//2 vs w//2), non-square,
# bands narrower than the 12-tap window (wrap more than once), ragged 16 x 4 blocks
DFB_CASES = [(1, 12, 7), (1, 14, 16), (2, 12, 10), (2, 20, 2), (3, 16, 12), (3, 12, 4), (4, 24, 16), (4, 8 * 3, 40)]
_EMU_THREADS = 96  # 3 groups of 32: ladder tiles, rows and energy partials do not divide evenly


def _energy_cotangent(g, acc):
    """(g in the accumulation dtype with unit column stride, its row stride): rows may be a wider
    tensor's (the launchers' g_stride), so a strided view is passed as it is; (None, 0) for no g."""
    if g is None:
        return None, 0
    g = g.to(acc)
    if g.stride(-1) != 1 or g.stride(0) < g.shape[1]:
        g = g.contiguous()
    return g, g.stride(0)


def _emu_dfb(emu, mode, levels, N, H, W, x_dtype, band_dtype=None, x=None, grad_bands=None, g=None, low=None):
    """mode 0: x -> bands (K, N, H*W/K); 1: grad_bands -> gx; 2: x -> en (N, K); 3: (x, g) -> gx;
    4 (dfb_rec): grad_bands (the sub-bands) -> gx (the image); 5 (its adjoint): x -> bands.
    With ``low`` (N, h, w) (modes 2, 3): en / g are (N, 1 + K), the lowpass first; mode 3 returns
    (gx, g_low). ``g`` is read through its row stride when its rows are dense (a column slice)."""
    band_dtype = x_dtype if band_dtype is None else band_dtype
    acc = torch.float64 if x_dtype == torch.float64 else torch.float32
    K = 2**levels
    lo = 0 if low is None else 1
    bands = torch.full((K, N, H * W // K), float("nan"), dtype=band_dtype) if mode in (0, 5) else None
    en = torch.full((N, lo + K), float("nan"), dtype=acc) if mode == 2 else None
    gx = torch.full((N, H, W), float("nan"), dtype=x_dtype) if mode in (1, 3, 4) else None
    x = None if x is None else x.contiguous()
    grad_bands = None if grad_bands is None else grad_bands.contiguous()
    g, g_stride = _energy_cotangent(g, acc)
    low = None if low is None else low.contiguous()
    g_low = torch.full_like(low, float("nan")) if low is not None and mode == 3 else None
    i64 = ctypes.c_int64
    rc = emu.sstkd_emu_dfb_plane(mode, _DT[x_dtype], _DT[band_dtype], levels, _ptr(x), _ptr(bands), _ptr(grad_bands),
                                 _ptr(g), _ptr(en), _ptr(gx), i64(N), i64(H), i64(W), _EMU_THREADS, _ptr(low),
                                 _ptr(g_low), i64(0 if low is None else low[0].numel()), i64(g_stride))
    assert rc == 0
    return {0: bands, 1: gx, 2: en, 3: gx if low is None else (gx, g_low), 4: gx, 5: bands}[mode]


def _ref_bands(x, levels):
    """Reference sub-bands of (N, H, W) float64 as the kernel's (K, N, h*w) band-major buffer."""
    from sstkd.ops.reference.dfb import _dfb_dec_torch

    ys = _dfb_dec_torch(x[:, None], levels, "pkva")
    return torch.stack([y.reshape(x.shape[0], -1) for y in ys])


@pytest.mark.parametrize("case", DFB_CASES)
def test_emulated_dfb_plane_matches_the_reference(emu, case):
    levels, H, W = case
    N, K = 2, 2**levels
    x = torch.randn(N, H, W, dtype=torch.float64)
    tol = dict(atol=1e-12, rtol=0)
    # forward: every sub-band in the final layout and order
    ref = _ref_bands(x, levels)
    torch.testing.assert_close(_emu_dfb(emu, 0, levels, N, H, W, torch.float64, x=x), ref, **tol)
    # adjoint = the reference's autograd, and <A x, y> = <x, A^T y>
    xg = x.clone().requires_grad_(True)
    gb = torch.randn_like(ref)
    (gx_ref,) = torch.autograd.grad((_ref_bands(xg, levels) * gb).sum(), xg)
    gx = _emu_dfb(emu, 1, levels, N, H, W, torch.float64, grad_bands=gb)
    torch.testing.assert_close(gx, gx_ref, **tol)
    torch.testing.assert_close((ref * gb).sum(), (x * gx).sum(), atol=1e-10, rtol=0)
    # energies (final band order) and their gradient (tree recomputed, scaled by 2 g, adjoint)
    en_ref = (ref * ref).sum(-1).T
    torch.testing.assert_close(_emu_dfb(emu, 2, levels, N, H, W, torch.float64, x=x), en_ref, atol=1e-11, rtol=1e-13)
    g = torch.randn(N, K, dtype=torch.float64)
    (ge_ref,) = torch.autograd.grad(((_ref_bands(xg, levels) ** 2).sum(-1).T * g).sum(), xg)
    torch.testing.assert_close(_emu_dfb(emu, 3, levels, N, H, W, torch.float64, x=x, g=g), ge_ref, **tol)
    # dfb_rec of arbitrary sub-bands, and its adjoint = the reference's autograd
    from sstkd.geometry import dfb_band_shapes
    from sstkd.ops.reference.dfb import _dfb_rec_torch

    shapes = dfb_band_shapes(H, W, levels)
    bands = [gb[k].reshape(N, 1, *shapes[k]).clone().requires_grad_(True) for k in range(K)]
    x_rec = _dfb_rec_torch(bands, "pkva")[:, 0]
    torch.testing.assert_close(_emu_dfb(emu, 4, levels, N, H, W, torch.float64, grad_bands=gb), x_rec.detach(), **tol)
    gy = torch.randn_like(x_rec)
    g_bands = torch.autograd.grad((x_rec * gy).sum(), bands)
    torch.testing.assert_close(_emu_dfb(emu, 5, levels, N, H, W, torch.float64, x=gy),
                               torch.stack([t.reshape(N, -1) for t in g_bands]), **tol)
    # perfect reconstruction
    torch.testing.assert_close(_emu_dfb(emu, 4, levels, N, H, W, torch.float64, grad_bands=ref), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_emulated_dfb_plane_lower_precision(emu, dtype):
    levels, H, W, N = 3, 24, 16, 3
    K = 2**levels
    x = torch.randn(N, H, W).to(dtype)
    ref = _ref_bands(x.double(), levels)  # exact sub-bands of the rounded input
    scale = ref.abs().max().item()
    # float32 compute: float32 bands within float32 rounding; 16-bit bands rounded once
    bands32 = _emu_dfb(emu, 0, levels, N, H, W, dtype, torch.float32, x=x)
    torch.testing.assert_close(bands32.double(), ref, atol=2e-6 * scale, rtol=0)
    bands = _emu_dfb(emu, 0, levels, N, H, W, dtype, x=x)
    assert bands.dtype == dtype
    torch.testing.assert_close(bands.double(), ref, atol=1e-6 * scale, rtol=torch.finfo(dtype).eps)
    # adjoint from float32 cotangents, stored once in dtype
    gb = torch.randn(K, N, H * W // K)
    xg = x.double().requires_grad_(True)
    (gx_ref,) = torch.autograd.grad((_ref_bands(xg, levels) * gb.double()).sum(), xg)
    gx = _emu_dfb(emu, 1, levels, N, H, W, dtype, torch.float32, grad_bands=gb)
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.double(), gx_ref, atol=1e-5 * gx_ref.abs().max().item(),
                               rtol=torch.finfo(dtype).eps)
    en = _emu_dfb(emu, 2, levels, N, H, W, dtype, x=x)
    torch.testing.assert_close(en.double(), (ref * ref).sum(-1).T, atol=0, rtol=1e-5)


# (levels, H, W, h, w): the lowpass folded into the energy launch; odd widths, a lowpass of more than
# kLowLanes (256) pixels, and one of another shape than H/2 x W/2 (any h*w <= H*W)
LOW_CASES = [(1, 12, 7, 6, 3), (2, 48, 40, 24, 20), (3, 16, 12, 8, 6), (4, 24, 16, 5, 7)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", LOW_CASES)
def test_emulated_dfb_energy_with_lowpass(emu, case, dtype):
    levels, H, W, h, w = case
    N, K = 2, 2**levels
    x, low = torch.randn(N, H, W).to(dtype), torch.randn(N, h, w).to(dtype)
    xg, lg = x.double().requires_grad_(True), low.double().requires_grad_(True)  # exact, of the rounded inputs
    en_ref = torch.cat([(lg * lg).sum((1, 2))[:, None], (_ref_bands(xg, levels) ** 2).sum(-1).T], dim=1)
    en = _emu_dfb(emu, 2, levels, N, H, W, dtype, x=x, low=low)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert en.dtype == acc and en.shape == (N, 1 + K)
    torch.testing.assert_close(en.double(), en_ref.detach(), atol=0, rtol=1e-12 if dtype == torch.float64 else 1e-5)
    # the cotangent as a column slice of a wider one (read through its row stride), lowpass column first
    wide = torch.randn(N, K + 3, dtype=torch.float64)
    g = wide[:, 1:2 + K]
    gx_ref, glow_ref = torch.autograd.grad((en_ref * g).sum(), (xg, lg))
    gx, g_low = _emu_dfb(emu, 3, levels, N, H, W, dtype, x=x, g=g, low=low)
    assert gx.dtype == g_low.dtype == dtype and g_low.shape == (N, h, w)
    eps = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    for got, want in ((gx, gx_ref), (g_low, glow_ref)):
        torch.testing.assert_close(got.double(), want, atol=eps * want.abs().max().item(), rtol=0)
    # without the lowpass the same launch gives the plain energies
    torch.testing.assert_close(_emu_dfb(emu, 2, levels, N, H, W, dtype, x=x), en[:, 1:], atol=0, rtol=0)


def _emu_dfb_level(emu, adjoint, levels, last, x, g=None, g_low=None):
    """A pyramid level per launch: adjoint 0: x (N, H, W) -> (low (N, H/2, W/2), en (N, [1 +] K));
    1: (x, g, g_low) -> gx. Accumulation-dtype low / en / g / g_low, x / gx in x's dtype."""
    N, H, W = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    K = 2**levels
    x = x.contiguous()
    low = torch.full((N, H // 2, W // 2), float("nan"), dtype=acc) if not adjoint else None
    en = torch.full((N, int(last) + K), float("nan"), dtype=acc) if not adjoint else None
    gx = torch.full_like(x, float("nan")) if adjoint else None
    g, g_stride = _energy_cotangent(g, acc)
    g_low = None if g_low is None else g_low.to(acc).contiguous()
    i64 = ctypes.c_int64
    rc = emu.sstkd_emu_dfb_level(int(adjoint), _DT[x.dtype], levels, int(last), _ptr(x), _ptr(g), i64(g_stride),
                                 _ptr(en), _ptr(gx), _ptr(low), _ptr(g_low), i64(N), i64(H), i64(W), _EMU_THREADS)
    assert rc == 0
    return gx if adjoint else (low, en)


def _emu_dfb_level_dec(emu, levels, x=None, band_dtype=None, low_dtype=None, grad_bands=None, g_low=None,
                       shape=None, x_dtype=None):
    """The level decomposition per launch: x (N, H, W) -> (low (N, H/2, W/2) of low_dtype (default: the
    accumulation dtype), bands (K, N, H*W/K) of band_dtype (default x's)); with ``grad_bands`` (a list of
    K (N, H*W/K) tensors or None) and ``g_low`` (or None): their adjoint gx (N, H, W) of x_dtype."""
    adjoint = grad_bands is not None
    N, H, W = shape if adjoint else x.shape
    x_dtype = x_dtype if adjoint else x.dtype
    acc = torch.float64 if x_dtype == torch.float64 else torch.float32
    K = 2**levels
    i64 = ctypes.c_int64
    if adjoint:
        keep = [None if g is None else g.contiguous() for g in grad_bands]
        bd = next((g.dtype for g in keep if g is not None), acc)
        ptrs = (ctypes.c_void_p * K)(*[0 if g is None else g.data_ptr() for g in keep])
        g_low = None if g_low is None else g_low.contiguous()
        gx = torch.full((N, H, W), float("nan"), dtype=x_dtype)
        rc = emu.sstkd_emu_dfb_level_dec(1, _DT[x_dtype], _DT[bd], _DT[acc if g_low is None else g_low.dtype], levels,
                                         None, None, None, ptrs, _ptr(g_low), _ptr(gx), i64(N), i64(H), i64(W),
                                         _EMU_THREADS)
        assert rc == 0
        return gx
    band_dtype = x_dtype if band_dtype is None else band_dtype
    low_dtype = acc if low_dtype is None else low_dtype
    x = x.contiguous()
    low = torch.full((N, H // 2, W // 2), float("nan"), dtype=low_dtype)
    bands = torch.full((K, N, H * W // K), float("nan"), dtype=band_dtype)
    rc = emu.sstkd_emu_dfb_level_dec(0, _DT[x_dtype], _DT[band_dtype], _DT[low_dtype], levels, _ptr(x), _ptr(bands),
                                     _ptr(low), None, None, None, i64(N), i64(H), i64(W), _EMU_THREADS)
    assert rc == 0
    return low, bands


# (levels, H, W): even sizes valid for the DFB; odd half-widths, tiny planes, 4 directions levels
LEVEL_CASES = [(1, 12, 6), (2, 20, 2), (3, 16, 12), (4, 24, 16), (2, 12, 10)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("case", LEVEL_CASES)
def test_emulated_pyramid_level_energy(emu, case, last, dtype):
    """One launch per pyramid level each way: the LP level and the DFB energies of its bandpass (the
    lowpass energy first at the coarsest level), and the gradient through both, vs the reference."""
    from sstkd.ops.laplacian import lp_dec_ref

    levels, H, W = case
    N, K = 2, 2**levels
    x = torch.randn(N, H, W).to(dtype)
    xg = x.double().requires_grad_(True)  # exact, of the rounded input
    lo, ba = lp_dec_ref(xg[:, None])
    lo, ba = lo[:, 0], ba[:, 0]
    en_ref = (_ref_bands(ba, levels) ** 2).sum(-1).T
    if last:
        en_ref = torch.cat([(lo * lo).sum((1, 2))[:, None], en_ref], dim=1)
    low, en = _emu_dfb_level(emu, 0, levels, last, x)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert low.dtype == en.dtype == acc and en.shape == (N, int(last) + K)
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(low.double(), lo.detach(), atol=eps * lo.abs().max().item(), rtol=0)
    torch.testing.assert_close(en.double(), en_ref.detach(), atol=0, rtol=eps)
    wide = torch.randn(N, int(last) + K + 2, dtype=torch.float64)
    g = wide[:, 1:1 + int(last) + K]  # a column slice: read through its row stride
    g_low = None if last else torch.randn(N, H // 2, W // 2, dtype=torch.float64)
    loss = (en_ref * g).sum() + (0 if last else (lo * g_low).sum())
    (gx_ref,) = torch.autograd.grad(loss, xg)
    gx = _emu_dfb_level(emu, 1, levels, last, x, g=g, g_low=g_low)
    assert gx.dtype == dtype
    tol = eps if dtype != torch.bfloat16 else torch.finfo(dtype).eps
    torch.testing.assert_close(gx.double(), gx_ref, atol=tol * gx_ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", LEVEL_CASES)
def test_emulated_pyramid_level_dec(emu, case, dtype):
    """One launch per pyramid level each way for contourlet_dec: the lowpass and the sub-bands of the
    DFB of the bandpass vs the reference; the adjoint (sub-band cotangents read where they lie, None:
    zeros) vs autograd of the reference and <A x, y> = <x, A^T y>."""
    from sstkd.ops.laplacian import lp_dec_ref

    levels, H, W = case
    N, K = 2, 2**levels
    x = torch.randn(N, H, W).to(dtype)
    xg = x.double().requires_grad_(True)  # exact, of the rounded input
    lo, ba = lp_dec_ref(xg[:, None])
    lo = lo[:, 0]
    ref = _ref_bands(ba[:, 0], levels)
    low, bands = _emu_dfb_level_dec(emu, levels, x)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert low.dtype == acc and bands.dtype == dtype and bands.shape == (K, N, H * W // K)
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    out_eps = eps if dtype != torch.bfloat16 else torch.finfo(dtype).eps  # the sub-bands rounded once
    torch.testing.assert_close(low.double(), lo.detach(), atol=eps * lo.abs().max().item(), rtol=0)
    torch.testing.assert_close(bands.double(), ref.detach(), atol=out_eps * ref.abs().max().item(), rtol=0)
    low_b, _ = _emu_dfb_level_dec(emu, levels, x, low_dtype=dtype)  # the coarsest lowpass in the output dtype
    assert low_b.dtype == dtype and torch.equal(low_b, low.to(dtype))
    # the adjoint vs autograd of the reference
    g_bands = [torch.randn(N, H * W // K, dtype=torch.float64) for _ in range(K)]
    g_low = torch.randn(N, H // 2, W // 2, dtype=torch.float64)
    (gx_ref,) = torch.autograd.grad((ref * torch.stack(g_bands)).sum() + (lo * g_low).sum(), xg, retain_graph=True)
    gx = _emu_dfb_level_dec(emu, levels, grad_bands=[g.to(dtype) for g in g_bands], g_low=g_low.to(acc),
                            shape=(N, H, W), x_dtype=dtype)
    assert gx.dtype == dtype
    gq = [g.to(dtype).double() for g in g_bands]  # the cotangents as the kernel read them
    (gx_q,) = torch.autograd.grad((ref * torch.stack(gq)).sum() + (lo * g_low.to(acc).double()).sum(), xg,
                                  retain_graph=True)
    torch.testing.assert_close(gx.double(), gx_q, atol=out_eps * gx_q.abs().max().item(), rtol=0)
    if dtype == torch.float64:  # <A x, y> = <x, A^T y> to rounding
        torch.testing.assert_close(gx, gx_ref, atol=1e-12 * gx_ref.abs().max().item(), rtol=0)
        lhs = (bands * torch.stack(g_bands)).sum() + (low * g_low).sum()
        assert abs(lhs.item() - (x * gx).sum().item()) <= 1e-10 * max(1.0, abs(lhs.item()))
    # unused outputs (None) read as zeros; a lowpass cotangent of the output dtype
    keep = [g if k % 2 else None for k, g in enumerate(g_bands)]
    (gx_ref2,) = torch.autograd.grad(sum((ref[k] * g).sum() for k, g in enumerate(keep) if g is not None), xg,
                                      retain_graph=True)
    gx2 = _emu_dfb_level_dec(emu, levels, grad_bands=[None if g is None else g.to(dtype) for g in keep], g_low=None,
                             shape=(N, H, W), x_dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(gx2.double(), gx_ref2, atol=tol * gx_ref2.abs().max().item(), rtol=0)
    gx3 = _emu_dfb_level_dec(emu, levels, grad_bands=[None] * K, g_low=g_low.to(dtype), shape=(N, H, W),
                             x_dtype=dtype)
    (gx_ref3,) = torch.autograd.grad((lo * g_low.to(dtype).double()).sum(), xg)
    torch.testing.assert_close(gx3.double(), gx_ref3, atol=tol * gx_ref3.abs().max().item(), rtol=0)


# ------------------------------------------------- the autograd wrappers on the emulated kernels
class _TorchWithEmulatedOps:
    """``torch`` for sstkd.ops.backends.cuda, with ``torch.ops.sstkd.*`` answered by the host emulation."""

    def __init__(self, emu):
        acc = lambda t: torch.float64 if t.dtype == torch.float64 else torch.float32  # noqa: E731

        def qc_backward(s, c, kernel, gc, gs):
            gs = torch.zeros_like(gc) if gs is None else gs
            assert gs.abs().max() == 0, "the wrappers never pass grad_sums"
            return _emu_count_grad(emu, kernel, s.contiguous(), c.to(acc(s)), gc.to(acc(s)))

        self.ops = type("Ops", (), {})()
        self.ops.sstkd = type("Sstkd", (), dict(
            lp_dec=staticmethod(lambda x, out_dtype=None: _emu_level(emu, 0, 0, x, out_dtype=out_dtype)),
            lp_dec_backward=staticmethod(lambda gl, gb, out_dtype=None: _emu_level(
                emu, 1, 1, gb, gl, out_dtype=out_dtype)[1]),
            lp_rec=staticmethod(lambda low, band: _emu_level(emu, 1, 0, band, low)[1]),
            lp_rec_backward=staticmethod(lambda gx: _emu_level(emu, 0, 1, gx)),
            quantize_count=staticmethod(lambda s, c, k: _emu_counts(emu, k, s.contiguous(), c)),
            quantize_count_backward=staticmethod(qc_backward),
            sum_squares=staticmethod(lambda x: x.to(acc(x)).square().reshape(x.shape[0], -1).sum(1)),
            dfb_dec=staticmethod(lambda x, levels, out_dtype=None: _emu_dfb(
                emu, 0, levels, *x.shape, x.dtype, out_dtype, x=x)),
            dfb_dec_backward=staticmethod(lambda g, levels, H, W, x_dtype: _emu_dfb(
                emu, 1, levels, g.shape[1], H, W, x_dtype, g.dtype, grad_bands=g)),
            dfb_energy=staticmethod(lambda x, levels: _emu_dfb(emu, 2, levels, *x.shape, x.dtype, x=x)),
            dfb_rec=staticmethod(lambda b, levels, H, W, out_dtype=None: _emu_dfb(
                emu, 4, levels, b.shape[1], H, W, out_dtype or b.dtype, b.dtype, grad_bands=b)),
            dfb_rec_backward=staticmethod(lambda gx, levels, band_dtype: _emu_dfb(
                emu, 5, levels, *gx.shape, gx.dtype, band_dtype, x=gx)),
            dfb_energy_backward=staticmethod(lambda x, g, levels: _emu_dfb(
                emu, 3, levels, *x.shape, x.dtype, x=x, g=g)),
            dfb_energy_low=staticmethod(lambda x, low, levels: _emu_dfb(
                emu, 2, levels, *x.shape, x.dtype, x=x, low=low)),
            dfb_energy_low_backward=staticmethod(lambda x, low, g, levels: _emu_dfb(
                emu, 3, levels, *x.shape, x.dtype, x=x, g=g, low=low)),
            level_energy=staticmethod(lambda x, levels, last: _emu_dfb_level(emu, 0, levels, last, x)),
            level_dec=staticmethod(lambda x, levels, band_dtype=None, low_dtype=None: _emu_dfb_level_dec(
                emu, levels, x, band_dtype, low_dtype)),
            level_dec_backward=staticmethod(lambda gb, gl, levels, N, H, W, x_dtype: _emu_dfb_level_dec(
                emu, levels, grad_bands=gb, g_low=gl, shape=(N, H, W), x_dtype=x_dtype)),
            level_energy_backward=staticmethod(lambda x, g, g_low, levels, last: _emu_dfb_level(
                emu, 1, levels, last, x, g=g, g_low=g_low)),
        ))()

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture()
def emulated_cuda_ops(emu, monkeypatch):
    from sstkd.ops.backends import cuda as _cuda_ops

    shim = _TorchWithEmulatedOps(emu)
    monkeypatch.setattr(_cuda_ops, "torch", shim)
    monkeypatch.setattr(_cuda_ops, "_ops", lambda: shim.ops.sstkd)
    return _cuda_ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_lp_wrappers_on_emulated_kernels(emulated_cuda_ops, dtype):
    from sstkd.ops.laplacian import lp_dec_ref, lp_rec_ref

    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    x = torch.randn(2, 3, 38, 70).to(dtype).to(memory_format=torch.channels_last)
    gl, gb = torch.randn(2, 3, 19, 35).to(dtype), torch.randn(2, 3, 38, 70).to(dtype)
    res = []
    for dec, rec in ((emulated_cuda_ops.lp_dec_cuda, emulated_cuda_ops.lp_rec_cuda), (lp_dec_ref, lp_rec_ref)):
        xi = x.clone().requires_grad_(True)
        low, band = dec(xi)
        (gx,) = torch.autograd.grad((low * gl).sum() + (band * gb).sum(), xi)
        lo, ba = gl.clone().requires_grad_(True), gb.clone().requires_grad_(True)
        y = rec(lo, ba)
        g_lo, g_ba = torch.autograd.grad((y * x).sum(), (lo, ba))
        (g_band_only,) = torch.autograd.grad(dec(xi)[1].sum(), xi)  # one output unused: zero grad for it
        res.append((low, band, gx, y, g_lo, g_ba, g_band_only))
    for got, want in zip(*res):
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.float(), want.float(), atol=tol * max(1.0, want.abs().max().item()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lp_dec_wrapper_out_dtype_on_emulated_kernels(emulated_cuda_ops, dtype):
    from sstkd.ops.laplacian import lp_dec_ref

    x = torch.randn(2, 3, 38, 70).to(dtype)
    gl, gb = torch.randn(2, 3, 19, 35), torch.randn(2, 3, 38, 70)
    res = []
    for dec, inp in ((emulated_cuda_ops.lp_dec_cuda, x), (lp_dec_ref, x.double())):
        xi = inp.clone().requires_grad_(True)
        low, band = dec(xi, out_dtype=torch.float32) if dec is not lp_dec_ref else dec(xi)
        (gx,) = torch.autograd.grad((low * gl.to(low.dtype)).sum() + (band * gb.to(band.dtype)).sum(), xi)
        res.append((low, band, gx))
    (low, band, gx), (low_r, band_r, gx_r) = res
    assert low.dtype == band.dtype == torch.float32 and gx.dtype == dtype
    torch.testing.assert_close(low.double(), low_r, atol=2e-6 * low_r.abs().max().item(), rtol=0)
    torch.testing.assert_close(band.double(), band_r, atol=2e-6 * band_r.abs().max().item(), rtol=0)
    torch.testing.assert_close(gx.double(), gx_r, atol=1e-5 * gx_r.abs().max().item(), rtol=torch.finfo(dtype).eps)
    # a pair the kernel does not take converts first: float32 -> float64 outputs
    low64, _ = emulated_cuda_ops.lp_dec_cuda(x.float(), out_dtype=torch.float64)
    assert low64.dtype == torch.float64
    assert emulated_cuda_ops.lp_dec_cuda.takes_out_dtype


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("kernel", ["triangular", "stlnet"])
@pytest.mark.parametrize("mode", ["plain", "iters", "quantiles", "centers"])
def test_quantize_wrapper_on_emulated_kernels(emulated_cuda_ops, dtype, kernel, mode):
    from sstkd.ops._checks import compute_dtype
    from sstkd.ops.quantize import quantize_count_ref

    L = 10
    s = _intensities(dtype)
    cdt = compute_dtype(s)
    iters = 3 if mode in ("iters", "quantiles") else 0
    quantiles = (0.05, 0.95) if mode == "quantiles" else None
    centers = quantize_count_ref(_intensities(cdt) * 0.5, L, 1, kernel, None, None)[0] if mode == "centers" else None
    g = torch.randn(3, L, dtype=cdt)
    res = []
    for fn in (emulated_cuda_ops.quantize_count_cuda, quantize_count_ref):
        si = s.clone().requires_grad_(True)
        c, h = fn(si if fn is not quantize_count_ref else si.to(cdt), L, iters, kernel, centers, quantiles)
        (gs,) = torch.autograd.grad((h * g).sum(), si)
        res.append((c, h, gs))
    tol = dict(atol=1e-10, rtol=1e-10) if cdt == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    (c, h, gs), (c_r, h_r, gs_r) = res
    assert c.dtype == h.dtype == cdt and gs.dtype == dtype
    torch.testing.assert_close(c, c_r, **tol)
    torch.testing.assert_close(h, h_r, **tol)
    torch.testing.assert_close(gs.float(), gs_r.float(), atol=1e-3 if dtype == torch.float16 else tol["atol"],
                               rtol=tol["rtol"])


def test_sum_squares_wrapper_gradient(emulated_cuda_ops):
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    e = emulated_cuda_ops.sum_squares_cuda(x)
    torch.testing.assert_close(e, x.detach().square().sum((1, 2)))
    g = torch.randn(4, dtype=torch.float64)
    (gx,) = torch.autograd.grad((e * g).sum(), x)
    torch.testing.assert_close(gx, 2 * x.detach() * g[:, None, None])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("levels", [1, 3])
def test_dfb_wrappers_on_emulated_kernels(emulated_cuda_ops, dtype, levels):
    from sstkd.ops.dfb import dfb_dec_ref

    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    x = torch.randn(2, 3, 24, 16).to(dtype).to(memory_format=torch.channels_last)
    res = []
    for dec in (emulated_cuda_ops.dfb_dec_cuda, dfb_dec_ref):
        xi = x.clone().requires_grad_(True)
        bands = dec(xi, levels)
        gs = [torch.randn(t.shape, generator=torch.Generator().manual_seed(k)).to(t.dtype) for k, t in enumerate(bands)]
        (gx,) = torch.autograd.grad(sum((t * g).sum() for t, g in zip(bands, gs)), xi)
        (g_one,) = torch.autograd.grad(dec(xi, levels)[1].sum(), xi)  # other sub-bands unused: zero cotangents
        res.append((*bands, gx, g_one))
    for got, want in zip(*res):
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=tol * max(1.0, want.abs().max().item()), rtol=0)
    # out_dtype: the accumulation dtype is stored directly, another one converted once
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for od in (acc, torch.float16):
        bands = emulated_cuda_ops.dfb_dec_cuda(x, levels, out_dtype=od)
        assert all(t.dtype == od for t in bands)
        torch.testing.assert_close(bands[-1].float(), res[1][len(bands) - 1].float(),
                                   atol=max(tol, 2e-3) * max(1.0, res[1][len(bands) - 1].abs().max().item()), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("levels", [1, 3])
def test_dfb_rec_wrapper_on_emulated_kernels(emulated_cuda_ops, dtype, levels):
    from sstkd.geometry import dfb_band_shapes
    from sstkd.ops.dfb import dfb_rec_ref

    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    bands = [torch.randn(2, 3, *hw).to(dtype) for hw in dfb_band_shapes(24, 16, levels)]
    gx = torch.randn(2, 3, 24, 16).to(dtype)
    res = []
    for rec in (emulated_cuda_ops.dfb_rec_cuda, dfb_rec_ref):
        bi = [t.clone().requires_grad_(True) for t in bands]
        x = rec(bi)
        res.append((x, *torch.autograd.grad((x * gx.to(x.dtype)).sum(), bi)))
    for got, want in zip(*res):
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=tol * max(1.0, want.abs().max().item()), rtol=0)
    # perfect reconstruction through both CUDA wrappers (float64), and an out_dtype across the pairs
    x = torch.randn(2, 3, 24, 16, dtype=torch.float64)
    torch.testing.assert_close(emulated_cuda_ops.dfb_rec_cuda(emulated_cuda_ops.dfb_dec_cuda(x, levels)), x,
                               atol=1e-12, rtol=0)
    y = emulated_cuda_ops.dfb_rec_cuda([t.float() for t in emulated_cuda_ops.dfb_dec_cuda(x, levels)],
                                       out_dtype=torch.float64)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="bands: expected a list of 2\\*\\*levels"):
        emulated_cuda_ops.dfb_rec_cuda(bands + bands[:1])
    with pytest.raises(ValueError, match=r"bands\[1\]: expected"):
        emulated_cuda_ops.dfb_rec_cuda([bands[0], bands[1][:, :, :-1]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_dfb_energy_wrapper_on_emulated_kernels(emulated_cuda_ops, dtype):
    from sstkd.ops.backends import torch as torch_backend

    x = torch.randn(2, 2, 16, 12).to(dtype)
    g = torch.randn(2, 2, 8, dtype=torch.float64)
    res = []
    for energy in (emulated_cuda_ops.dfb_energy_cuda, torch_backend.TABLE["dfb_energy"]):
        xi = x.clone().requires_grad_(True)
        e = energy(xi if energy is emulated_cuda_ops.dfb_energy_cuda else xi.double(), 3, "pkva")
        (gx,) = torch.autograd.grad((e * g.to(e.dtype)).sum(), xi)
        res.append((e, gx))
    (e, gx), (e_ref, gx_ref) = res
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert e.dtype == acc and e.shape == (2, 2, 8) and gx.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(e.double(), e_ref, atol=0, rtol=tol)
    atol = (tol if dtype != torch.float16 else 2e-3) * gx_ref.abs().max().item()
    torch.testing.assert_close(gx.double(), gx_ref.double(), atol=atol, rtol=0)
    assert getattr(emulated_cuda_ops.dfb_energy_cuda, "keeps_for_backward", False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_dfb_energy_wrapper_with_lowpass(emulated_cuda_ops, dtype):
    from sstkd.ops.backends import torch as torch_backend

    x, low = torch.randn(2, 3, 24, 16).to(dtype), torch.randn(2, 3, 12, 8).to(dtype)
    g = torch.randn(2, 3, 9, dtype=torch.float64)
    xi, li = x.clone().requires_grad_(True), low.clone().requires_grad_(True)
    e = emulated_cuda_ops.dfb_energy_cuda(xi, 3, "pkva", low=li)
    got = (e, *torch.autograd.grad((e * g.to(e.dtype)).sum(), (xi, li)))
    xr, lr = x.double().requires_grad_(True), low.double().requires_grad_(True)
    e_ref = torch.cat([(lr * lr).sum((-2, -1))[..., None], torch_backend.TABLE["dfb_energy"](xr, 3, "pkva")], -1)
    want = (e_ref, *torch.autograd.grad((e_ref * g).sum(), (xr, lr)))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert got[0].dtype == acc and got[0].shape == (2, 3, 9) and got[1].dtype == got[2].dtype == dtype
    eps = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(got[0].double(), want[0].detach(), atol=0, rtol=max(eps, 1e-5) if acc != torch.float64
                               else eps)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a.double(), b, atol=eps * b.abs().max().item(), rtol=0)
    assert emulated_cuda_ops.dfb_energy_cuda.takes_low


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("last", [False, True])
def test_level_energy_wrapper_on_emulated_kernels(emulated_cuda_ops, dtype, last):
    from sstkd.ops.backends import torch as torch_backend
    from sstkd.ops.laplacian import lp_dec_ref

    x = torch.randn(2, 3, 24, 16).to(dtype)
    g = torch.randn(2, 3, int(last) + 8, dtype=torch.float64)
    g_low = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    xi = x.clone().requires_grad_(True)
    low, e = emulated_cuda_ops.level_energy_cuda(xi, 3, last=last)
    loss = (e * g.to(e.dtype)).sum() + (0 if last else (low * g_low.to(low.dtype)).sum())
    got = (e, *torch.autograd.grad(loss, xi))
    xr = x.double().requires_grad_(True)
    lo, ba = lp_dec_ref(xr)
    e_ref = torch_backend.TABLE["dfb_energy"](ba, 3, "pkva")
    if last:
        e_ref = torch.cat([(lo * lo).sum((-2, -1))[..., None], e_ref], -1)
    want = (e_ref, *torch.autograd.grad((e_ref * g).sum() + (0 if last else (lo * g_low).sum()), xr,
                                        retain_graph=True))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert (low is None) == last and got[0].dtype == acc and got[1].dtype == dtype
    if not last:
        assert low.dtype == acc and low.shape == (2, 3, 12, 8)
        torch.testing.assert_close(low.double(), lo.detach(), atol=1e-5 * lo.abs().max().item(), rtol=0)
    eps = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(got[0].double(), want[0].detach(), atol=0, rtol=max(eps, 1e-12 if acc == torch.float64
                                                                                  else 1e-5))
    torch.testing.assert_close(got[1].double(), want[1], atol=eps * want[1].abs().max().item(), rtol=0)
    # an unused lowpass (g_low None) or unused energies (g_en None) still give the gradient of the rest
    if not last:
        xi = x.clone().requires_grad_(True)
        low, e = emulated_cuda_ops.level_energy_cuda(xi, 3)
        (g1,) = torch.autograd.grad((e * g.to(e.dtype)).sum(), xi, retain_graph=True)
        (g_ref1,) = torch.autograd.grad((e_ref * g).sum(), xr, retain_graph=True)
        torch.testing.assert_close(g1.double(), g_ref1, atol=eps * g_ref1.abs().max().item(), rtol=0)
        (g2,) = torch.autograd.grad((low * g_low.to(low.dtype)).sum(), xi)
        (g_ref2,) = torch.autograd.grad((lo * g_low).sum(), xr)
        torch.testing.assert_close(g2.double(), g_ref2, atol=max(eps, 1e-6) * g_ref2.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="even H, W"):
        emulated_cuda_ops.level_energy_cuda(torch.randn(1, 1, 24, 15), 1)
    with pytest.raises(ValueError, match="filt"):
        emulated_cuda_ops.level_energy_cuda(x, 3, pfilt="5-3")


def _cuda_passes(emulated_cuda_ops, monkeypatch, fused, **dfb_pass):
    """The torch backend's table with the CUDA LP pass and ``dfb_pass``; unless ``fused``, no pyramid
    level takes the one-launch level kernel (as for levels too large for shared memory)."""
    from sstkd.ops.backends import torch as torch_backend

    if not fused:
        monkeypatch.setattr(emulated_cuda_ops, "_level_kernel_takes", lambda device, dtype, h, w: False)
    passes = dict(torch_backend.TABLE)
    passes.update(lp_dec=emulated_cuda_ops.lp_dec_cuda, **dfb_pass)
    return passes


def _assert_matches_torch_backend(got_all, want_all, dtype):
    """Each output and gradient of a composition with the CUDA passes vs the torch backend's: the same
    dtype and shape, and values within the dtype's tolerance."""
    assert len(got_all) == len(want_all)
    for got, want in zip(got_all, want_all):
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-12)
        else:  # float32 compute on both sides; bfloat16 results rounded once
            eps = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
            torch.testing.assert_close(got.float(), want.float(), atol=eps * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nlevs", [[2, 3], [1, 4], [0, 3], [3]])
@pytest.mark.parametrize("fused", [True, False])
def test_contourlet_energy_composes_the_emulated_dfb_energy(emulated_cuda_ops, monkeypatch, dtype, nlevs, fused):
    """The composition (sstkd.ops.algorithms) with the CUDA LP and DFB energy passes: autograd through
    the passes equals the torch backend -- a whole pyramid level per launch (fused), or, for levels
    too large for shared memory, the LP and DFB energy launches (the energy pass differentiable
    itself; the coarsest one adds the lowpass energy, unless the coarsest level is a wavelet one)."""
    from sstkd.ops import algorithms
    from sstkd.ops.backends import torch as torch_backend

    passes = _cuda_passes(emulated_cuda_ops, monkeypatch, fused, dfb_energy=emulated_cuda_ops.dfb_energy_cuda)
    x = torch.randn(1, 2, 32, 24).to(dtype)
    g = torch.randn(1, 2, 1 + sum(2**n if n else 3 for n in nlevs)).to(dtype)
    res = []
    for p in (passes, torch_backend.TABLE):
        xi = x.clone().requires_grad_(True)
        e = algorithms.contourlet_energy(xi, nlevs, "9-7", "pkva", p)
        res.append((e, *torch.autograd.grad((e * g).sum(), xi)))
    _assert_matches_torch_backend(*res, dtype)


def test_dfb_planes_too_large_for_shared_memory_fall_back_to_triton(emulated_cuda_ops, monkeypatch):
    """A plane that does not fit (here: a pretended 1 KB of shared memory) runs the Triton DFB through
    its backend table, with its own autograd -- same values, nothing silently wrong."""
    from sstkd.ops.backends import triton as triton_backend

    if triton_backend.unavailable_reason(None) is not None:
        pytest.skip(f"triton: {triton_backend.unavailable_reason(None)}")
    monkeypatch.setattr(emulated_cuda_ops, "_smem_optin", lambda device: 1024)
    monkeypatch.setattr(emulated_cuda_ops, "_plane_kernel_takes",
                        lambda device, dtype, h, w: emulated_cuda_ops.dfb_plane_fits(dtype, h, w, device))
    assert emulated_cuda_ops.dfb_plane_fits(torch.float32, 16, 8, "cpu")  # 1 KB: two 16 x 8 float32 planes
    assert not emulated_cuda_ops.dfb_plane_fits(torch.float32, 16, 12, "cpu")
    assert not emulated_cuda_ops.dfb_plane_fits(torch.float64, 16, 8, "cpu")
    calls = []
    for name in ("dfb_dec", "dfb_energy", "dfb_rec"):
        fn = triton_backend.TABLE[name]
        monkeypatch.setitem(triton_backend.TABLE, name, lambda *a, _fn=fn, _n=name, **k: calls.append(_n) or _fn(*a, **k))
    x = torch.randn(1, 2, 16, 12, dtype=torch.float64)
    bands = emulated_cuda_ops.dfb_dec_cuda(x, 2)
    en = emulated_cuda_ops.dfb_energy_cuda(x, 2)
    x_rec = emulated_cuda_ops.dfb_rec_cuda(bands)
    assert calls == ["dfb_dec", "dfb_energy", "dfb_rec"]
    torch.testing.assert_close(x_rec, x, atol=1e-12, rtol=0)
    ref = _ref_bands(x.reshape(2, 16, 12), 2)
    torch.testing.assert_close(torch.stack([t.reshape(2, -1) for t in bands]), ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(en.reshape(2, 4), (ref * ref).sum(-1).T, atol=1e-11, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_level_dec_wrapper_on_emulated_kernels(emulated_cuda_ops, dtype):
    """level_dec_cuda: the lowpass and the sub-bands (views of one buffer) vs lp_dec + dfb_dec of the
    reference, the gradient through both (an unused output: no cotangent needed), clear errors."""
    from sstkd.ops.backends import torch as torch_backend
    from sstkd.ops.laplacian import lp_dec_ref

    x = torch.randn(2, 3, 24, 16).to(dtype)
    xi = x.clone().requires_grad_(True)
    low, bands = emulated_cuda_ops.level_dec_cuda(xi, 3)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    xr = x.double().requires_grad_(True)
    lo, ba = lp_dec_ref(xr)
    ref = torch_backend.TABLE["dfb_dec"](ba, 3, "pkva", torch.float64)
    assert low.dtype == acc and low.shape == (2, 3, 12, 8) and len(bands) == 8
    assert all(t.dtype == dtype and t.shape == r.shape for t, r in zip(bands, ref))
    assert len({t.untyped_storage().data_ptr() for t in bands}) == 1  # views of one band-major buffer
    eps = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(low.double(), lo.detach(), atol=max(eps, 1e-12 if acc == torch.float64 else 1e-5)
                               * lo.abs().max().item(), rtol=0)
    for t, r in zip(bands, ref):
        torch.testing.assert_close(t.double(), r.detach(), atol=eps * r.abs().max().item(), rtol=0)
    gs = [torch.randn(r.shape, dtype=torch.float64) for r in ref]
    g_low = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    loss = sum((t * g.to(t.dtype)).sum() for t, g in zip(bands, gs)) + (low * g_low.to(low.dtype)).sum()
    (gx,) = torch.autograd.grad(loss, xi)
    gq = [g.to(dtype).double() for g in gs]  # the cotangents as the kernel reads them
    (gx_ref,) = torch.autograd.grad(sum((r * g).sum() for r, g in zip(ref, gq)) + (lo * g_low.to(acc).double()).sum(),
                                    xr, retain_graph=True)
    assert gx.dtype == dtype
    torch.testing.assert_close(gx.double(), gx_ref, atol=eps * gx_ref.abs().max().item(), rtol=0)
    # only two sub-bands used (the lowpass and the rest unused)
    xi = x.clone().requires_grad_(True)
    low, bands = emulated_cuda_ops.level_dec_cuda(xi, 3)
    (gx2,) = torch.autograd.grad((bands[1] * gs[1].to(dtype)).sum() + (bands[6] * gs[6].to(dtype)).sum(), xi)
    (gx_ref2,) = torch.autograd.grad((ref[1] * gq[1]).sum() + (ref[6] * gq[6]).sum(), xr)
    tol = 1e-12 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(gx2.double(), gx_ref2, atol=tol * gx_ref2.abs().max().item(), rtol=0)
    # output dtypes: a lowpass of the output dtype (the coarsest level), float64 outputs of a float32 level
    low_o, _ = emulated_cuda_ops.level_dec_cuda(x, 2, low_dtype=dtype)
    assert low_o.dtype == dtype
    if dtype == torch.float32:
        low64, bands64 = emulated_cuda_ops.level_dec_cuda(x, 2, out_dtype=torch.float64, low_dtype=torch.float64)
        assert low64.dtype == torch.float64 and all(t.dtype == torch.float64 for t in bands64)
    with pytest.raises(ValueError, match="even H, W"):
        emulated_cuda_ops.level_dec_cuda(torch.randn(1, 1, 24, 15), 1)
    with pytest.raises(ValueError, match="filt"):
        emulated_cuda_ops.level_dec_cuda(x, 3, dfilt="haar")
    with pytest.raises(ValueError, match="low_dtype"):
        emulated_cuda_ops.level_dec_cuda(x, 3, low_dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nlevs", [[2, 3], [1, 4], [0, 3], [3, 0], [3]])
@pytest.mark.parametrize("fused", [True, False])
def test_contourlet_dec_composes_the_emulated_level_dec(emulated_cuda_ops, monkeypatch, dtype, nlevs, fused):
    """contourlet_dec (sstkd.ops.algorithms) with the CUDA passes equals the torch backend, forward and
    gradient: a whole pyramid level per launch each way (fused), or the LP and DFB launches for levels
    too large for shared memory; wavelet levels (0) in between. Same dtypes as the torch backend."""
    from sstkd.ops import algorithms
    from sstkd.ops.backends import torch as torch_backend

    passes = _cuda_passes(emulated_cuda_ops, monkeypatch, fused, dfb_dec=emulated_cuda_ops.dfb_dec_cuda)
    calls = []
    level = emulated_cuda_ops.level_dec_cuda
    monkeypatch.setattr(emulated_cuda_ops.dfb_dec_cuda, "level",
                        lambda *a, **k: calls.append(a[1]) or level(*a, **k))
    x = torch.randn(1, 2, 32, 24).to(dtype)
    res = []
    for p in (passes, torch_backend.TABLE):
        xi = x.clone().requires_grad_(True)
        low, bands = algorithms.contourlet_dec(xi, nlevs, "9-7", "pkva", p)
        coeffs = [low] + [t for lv in bands for t in lv]
        torch.manual_seed(0)
        gs = [torch.randn(t.shape).to(t.dtype) for t in coeffs]
        res.append((*coeffs, *torch.autograd.grad(coeffs, xi, gs)))
    assert calls == [n for n in reversed(nlevs) if n]
    _assert_matches_torch_backend(*res, dtype)
