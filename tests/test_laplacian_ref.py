"""Reference (plain PyTorch) Laplacian pyramid level vs the toolbox vectors and literal formulas."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from sstkd.filters import pyramid_filters
from sstkd.ops.laplacian import LaplacianPyramid, lp_dec, lp_dec_ref, lp_rec, lp_rec_ref

DATA = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "data", "contourlet", "*.npz")))


# --------------------------------------------------------------------------- literal formulas
def _filt(x, f, dim, origin):
    """Periodic ``y[n] = sum_k f[k] x[(n + k - origin) mod N]`` along ``dim`` (written literally)."""
    y = torch.zeros_like(x)
    for k in range(f.numel()):
        y = y + f[k] * torch.roll(x, shifts=origin - k, dims=dim)
    return y


def _filt_t(y, f, dim, origin):
    """Transpose of :func:`_filt`: ``x[m] = sum_k f[k] y[(m - k + origin) mod N]``."""
    x = torch.zeros_like(y)
    for k in range(f.numel()):
        x = x + f[k] * torch.roll(y, shifts=k - origin, dims=dim)
    return x


def _up2(c):
    u = c.new_zeros(*c.shape[:-2], 2 * c.shape[-2], 2 * c.shape[-1])
    u[..., 0::2, 0::2] = c
    return u


def _filt2(x, f, origin):
    return _filt(_filt(x, f, -2, origin), f, -1, origin)


def _filt2_t(x, f, origin):
    return _filt_t(_filt_t(x, f, -1, origin), f, -2, origin)


def _direct_dec(x):
    h, g = pyramid_filters("9-7")
    c = _filt2(x, h, 4)[..., 0::2, 0::2]
    d = x - _filt2(_up2(c), g, 3)
    return c, d


def _direct_rec(c, d):
    h, g = pyramid_filters("9-7")
    return _filt2(_up2(c - _filt2(d, h, 4)[..., 0::2, 0::2]), g, 3) + d


def _direct_dec_adjoint(yc, yd):
    """dec(x) = (A x, x − P A x) with A = down∘H, P = G∘up  ⇒  decᵀ(yc, yd) = Aᵀ yc + yd − Aᵀ Pᵀ yd."""
    h, g = pyramid_filters("9-7")

    def a_t(c):
        return _filt2_t(_up2(c), h, 4)

    pt_yd = _filt2_t(yd, g, 3)[..., 0::2, 0::2]
    return a_t(yc) + yd - a_t(pt_yd)


# --------------------------------------------------------------------------- toolbox vectors
@pytest.mark.parametrize("path", DATA, ids=[os.path.basename(p) for p in DATA])
def test_matches_toolbox_vectors(path):
    z = np.load(path)
    x = torch.from_numpy(z["x"])
    # Several images with different content in one batch, to check B·C folding.
    xb = torch.stack([x, -2 * x, x.flip(0)]).view(1, 3, *x.shape)
    low, band = lp_dec(xb)
    assert low.dtype == torch.float64 and band.dtype == torch.float64
    assert low.shape == (1, 3, x.shape[0] // 2, x.shape[1] // 2) and band.shape == xb.shape
    np.testing.assert_allclose(low[0, 0].numpy(), z["lp_c"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(band[0, 0].numpy(), z["lp_d"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(low[0, 1].numpy(), -2 * z["lp_c"], rtol=0, atol=1e-10)
    rec = lp_rec(low, band)
    assert (rec - xb).abs().max().item() <= 1e-12


@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 1, 2, 2), (1, 2, 4, 6), (2, 1, 6, 10), (1, 1, 8, 2)])
def test_dec_equals_direct_formula_and_reconstructs(shape):
    # Sizes below the filter support (2, 4, 6) exercise the wrap-around gather.
    x = torch.randn(*shape, dtype=torch.float64)
    low, band = lp_dec(x)
    c, d = _direct_dec(x)
    torch.testing.assert_close(low, c, rtol=0, atol=1e-12)
    torch.testing.assert_close(band, d, rtol=0, atol=1e-12)
    assert (lp_rec(low, band) - x).abs().max().item() <= 1e-12


@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 1, 2, 4), (1, 2, 6, 6)])
def test_rec_of_random_coefficients_equals_direct_formula(shape):
    b, ch, h, w = shape
    c = torch.randn(b, ch, h // 2, w // 2, dtype=torch.float64)
    d = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(lp_rec(c, d), _direct_rec(c, d), rtol=0, atol=1e-12)
    # The naive synthesis up(c)*g + d is *not* what we compute for arbitrary coefficients.
    _, g = pyramid_filters("9-7")
    assert (lp_rec(c, d) - (_filt2(_up2(c), g, 3) + d)).abs().max().item() > 1e-3


@pytest.mark.parametrize("shape", [(2, 2, 12, 8), (1, 1, 4, 2)])
def test_backward_is_adjoint(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    low, band = lp_dec(x)
    yc, yd = torch.randn_like(low), torch.randn_like(band)
    (gx,) = torch.autograd.grad((low * yc).sum() + (band * yd).sum(), x)
    adj = _direct_dec_adjoint(yc, yd)
    torch.testing.assert_close(gx, adj, rtol=0, atol=1e-12)
    lhs = (low * yc).sum() + (band * yd).sum()
    rhs = (x * adj).sum()
    assert abs(lhs.item() - rhs.item()) <= 1e-10 * (1 + abs(lhs.item()))
    # The adjoint is not the synthesis.
    assert (adj - lp_rec(yc, yd)).abs().max().item() > 1e-3


def test_gradcheck():
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lp_dec(t), (x,))
    c = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    d = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lp_rec(a, b), (c, d))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_compute_in_float32(dtype):
    x = torch.randn(2, 3, 16, 8).to(dtype)
    low, band = lp_dec(x)
    assert low.dtype == dtype and band.dtype == dtype
    c, d = _direct_dec(x.double())
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(low.double(), c, rtol=tol, atol=tol)
    torch.testing.assert_close(band.double(), d, rtol=tol, atol=tol)
    rec = lp_rec(low, band)
    assert rec.dtype == dtype
    torch.testing.assert_close(rec.double(), x.double(), rtol=tol, atol=2 * tol)


def test_non_contiguous_and_channels_last_inputs():
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    ref_low, ref_band = lp_dec(x)
    for xv in (x.to(memory_format=torch.channels_last), x.transpose(-1, -2).contiguous().transpose(-1, -2)):
        low, band = lp_dec(xv)
        torch.testing.assert_close(low, ref_low, rtol=0, atol=0)
        torch.testing.assert_close(band, ref_band, rtol=0, atol=0)
    wide = torch.randn(2, 3, 12, 32, dtype=torch.float64)
    low, band = lp_dec(wide[..., ::2])
    torch.testing.assert_close(band, lp_dec(wide[..., ::2].contiguous())[1], rtol=0, atol=0)


def test_reference_names_and_torch_backend():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    for a, b in zip(lp_dec(x, backend="torch"), lp_dec_ref(x)):
        assert torch.equal(a, b)
    low, band = lp_dec_ref(x)
    assert torch.equal(lp_rec(low, band, backend="torch"), lp_rec_ref(low, band))


# --------------------------------------------------------------------------- module
def test_pyramid_module_levels_and_inverse():
    x = torch.randn(2, 3, 32, 16, dtype=torch.float64)
    pyr = LaplacianPyramid(levels=3)
    low, bands = pyr(x)
    assert low.shape == (2, 3, 4, 2)
    assert [tuple(b.shape[-2:]) for b in bands] == [(32, 16), (16, 8), (8, 4)]  # fine -> coarse
    l1, b1 = lp_dec(x)
    torch.testing.assert_close(bands[0], b1, rtol=0, atol=0)
    torch.testing.assert_close(bands[1], lp_dec(l1)[1], rtol=0, atol=0)
    assert (pyr.inverse(low, bands) - x).abs().max().item() <= 1e-12
    with pytest.raises(ValueError, match="x: .*multiples of 8.*12x16"):
        pyr(torch.randn(1, 1, 12, 16))
    with pytest.raises(ValueError, match="bands"):
        pyr.inverse(low, bands[:2])
    with pytest.raises(ValueError, match="levels"):
        LaplacianPyramid(levels=0)
    with pytest.raises(ValueError, match="filt"):
        LaplacianPyramid(filt="haar")
    with pytest.raises(ValueError, match="backend"):
        LaplacianPyramid(backend="fast")


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="^x: .*4-D"):
        lp_dec(torch.randn(8, 8))
    with pytest.raises(TypeError, match="^x: .*floating"):
        lp_dec(torch.ones(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="^x: .*floating"):
        lp_dec(torch.ones(1, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="^x: "):
        lp_dec(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="^x: .*even.*7x8"):
        lp_dec(torch.randn(1, 1, 7, 8))
    with pytest.raises(ValueError, match="^x: .*even.*8x5"):
        lp_dec(torch.randn(1, 1, 8, 5))
    with pytest.raises(ValueError, match="^x: .*empty"):
        lp_dec(torch.randn(0, 1, 8, 8))
    with pytest.raises(ValueError, match="^filt: "):
        lp_dec(x, filt="haar")
    with pytest.raises(TypeError, match="^filt: "):
        lp_dec(x, filt=3)
    with pytest.raises(ValueError, match="^backend: "):
        lp_dec(x, backend="opencl")
    low, band = lp_dec(x)
    with pytest.raises(ValueError, match="^low: .*shape"):
        lp_rec(low[..., :3], band)
    with pytest.raises(ValueError, match="^band: .*even"):
        lp_rec(low, torch.randn(1, 1, 7, 8))
    with pytest.raises(TypeError, match="^low: .*dtype"):
        lp_rec(low.double(), band)
    with pytest.raises(TypeError, match="^band: .*floating"):
        lp_rec(low, band.int())
    with pytest.raises(ValueError, match="^backend: "):
        lp_rec(low, band, backend="nope")
    with pytest.raises(ValueError, match="^filt: "):
        lp_rec(low, band, filt="5-3")
