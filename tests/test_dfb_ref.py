"""Reference (plain PyTorch) directional filter bank: toolbox vectors, perfect reconstruction,
adjoint, gradcheck, directional selectivity, dtypes and input validation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sstkd.ops.dfb import DirectionalFilterBank, dfb_band_shapes, dfb_dec, dfb_rec, dfb_required_multiple

DATA = Path(__file__).parent / "data" / "contourlet"
CASES = sorted(DATA.glob("case*.npz"))


def _camera(h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """A real image: skimage's camera, downscaled by 2 and cropped, in [0, 1], float64, (1, 1, h, w)."""
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    img = transform.resize(data.camera() / 255.0, (256, 256), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img[top : top + h, left : left + w]))[None, None]


def _max_err(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# --------------------------------------------------------------------------- toolbox vectors
def test_reference_vectors_present():
    assert len(CASES) == 4, f"expected the 4 toolbox cases in {DATA}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_dfb_matches_toolbox_finest_level(path):
    z = np.load(path)
    nlevs = [int(n) for n in z["nlevs"]]
    j, n = len(nlevs), nlevs[-1]
    if n == 0:
        pytest.skip("finest level is a wavelet level")
    d = torch.from_numpy(z["lp_d"])[None, None]
    bands = dfb_dec(d, n)
    assert len(bands) == 2**n == int(z["band_counts"][-1])
    for k, band in enumerate(bands):
        want = torch.from_numpy(z[f"band_{j}_{k}"])
        assert band.dtype == torch.float64 and band.shape == (1, 1, *want.shape)
        torch.testing.assert_close(band[0, 0], want, atol=1e-10, rtol=0)
    # synthesis of the toolbox's coefficients gives back the bandpass
    rec = dfb_rec([torch.from_numpy(z[f"band_{j}_{k}"])[None, None] for k in range(2**n)])
    torch.testing.assert_close(rec, d, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- perfect reconstruction
PR_SIZES = {
    1: [(12, 10), (14, 9), (20, 32)],
    2: [(12, 6), (16, 16), (22, 34)],
    3: [(12, 8), (32, 24)],
    4: [(16, 24), (40, 16)],
    5: [(16, 16), (48, 64)],
}


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_perfect_reconstruction_random(levels):
    for h, w in PR_SIZES[levels]:
        x = torch.randn(2, 1, h, w, dtype=torch.float64)
        bands = dfb_dec(x, levels)
        assert [tuple(b.shape[-2:]) for b in bands] == dfb_band_shapes(h, w, levels)
        assert sum(b[0].numel() for b in bands) == x[0].numel()  # critically sampled
        torch.testing.assert_close(dfb_rec(bands), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_perfect_reconstruction_camera(levels):
    for h, w, top, left in [(64, 64, 40, 60), (96, 48, 100, 120)]:
        x = _camera(h, w, top, left)
        torch.testing.assert_close(dfb_rec(dfb_dec(x, levels)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shift", [0, 1])
def test_small_subbands_wrap_periodically(shift):
    # a 3x4 image is smaller than the 12-tap support: filtering must equal filtering its periodic tiling
    from sstkd.ops.reference.dfb import _ladder_weights, _sefilter

    weights = _ladder_weights("pkva", torch.device("cpu"), torch.float64)
    x = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    tiled = x.repeat(1, 1, 5, 5)  # 15x20: large enough for the circular-pad path
    small = _sefilter(x, weights, "per", shift)
    big = _sefilter(tiled, weights, "per", shift)
    torch.testing.assert_close(small, big[..., 6:9, 8:12], atol=1e-13, rtol=0)


def test_levels_zero_is_identity():
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    (y,) = dfb_dec(x, 0)
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    torch.testing.assert_close(dfb_rec([y]), x, atol=0, rtol=0)


def test_band_shapes_follow_toolbox():
    assert dfb_band_shapes(32, 48, 1) == [(16, 48)] * 2
    assert dfb_band_shapes(32, 48, 2) == [(16, 24)] * 4
    assert dfb_band_shapes(32, 48, 4) == [(4, 24)] * 8 + [(16, 6)] * 8
    assert dfb_required_multiple(0) == (1, 1)
    assert dfb_required_multiple(1) == (2, 1)
    assert dfb_required_multiple(4) == (8, 8)


def test_batch_and_channels_independent():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    bands = dfb_dec(x, 3)
    for b in range(2):
        for c in range(3):
            single = dfb_dec(x[b : b + 1, c : c + 1], 3)
            assert _max_err([t[b : b + 1, c : c + 1] for t in bands], single) == 0.0
    torch.testing.assert_close(dfb_rec(bands), x, atol=1e-12, rtol=0)


def test_non_contiguous_input():
    x = torch.randn(2, 16, 24, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last view
    assert _max_err(dfb_dec(x, 3), dfb_dec(x.contiguous(), 3)) == 0.0


# --------------------------------------------------------------------------- adjoint / gradients
def _matrix(op, h, w):
    """Matrix of a linear op on (1, 1, h, w) images, from the batch of all basis images."""
    eye = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    return torch.cat([t.reshape(h * w, -1) for t in op(eye)], dim=1).T  # (outputs, inputs)


def test_backward_is_the_adjoint():
    h, w, levels = 12, 8, 3
    m = _matrix(lambda x: dfb_dec(x, levels), h, w)
    x = torch.randn(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    bands = dfb_dec(x, levels)
    ys = [torch.randn_like(b) for b in bands]
    (g,) = torch.autograd.grad(bands, x, grad_outputs=ys)
    y_flat = torch.cat([y.reshape(-1) for y in ys])
    torch.testing.assert_close(g.reshape(-1), m.T @ y_flat, atol=1e-12, rtol=0)
    # <dec(x2), y> == <x2, dec^T(y)> for a fresh x2 (the op is linear)
    x2 = torch.randn(1, 1, h, w, dtype=torch.float64)
    lhs = sum((b * y).sum() for b, y in zip(dfb_dec(x2, levels), ys))
    torch.testing.assert_close(lhs, (x2 * g).sum(), atol=1e-11, rtol=0)


def test_backward_is_not_the_synthesis():
    # the DFB is biorthogonal, so its adjoint differs from its inverse: the test above can tell them apart
    m = _matrix(lambda x: dfb_dec(x, 2), 12, 8)
    assert (m.T @ m - torch.eye(96, dtype=torch.float64)).abs().max() > 1e-3


@pytest.mark.parametrize("levels", [1, 3])
def test_gradcheck_dec(levels):
    x = torch.randn(1, 1, 12, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tuple(dfb_dec(t, levels)), (x,))


def test_gradcheck_rec():
    shapes = dfb_band_shapes(12, 8, 2)
    bands = [torch.randn(1, 1, *s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *b: dfb_rec(list(b)), tuple(bands))


# --------------------------------------------------------------------------- directional selectivity
def _grating(n: int, fx: int, fy: int) -> torch.Tensor:
    """Periodic cosine whose lines are perpendicular to the frequency ``(fx, fy)`` (cycles per image;
    x to the right, y up)."""
    r = torch.arange(n, dtype=torch.float64).view(n, 1)
    c = torch.arange(n, dtype=torch.float64).view(1, n)
    return torch.cos(2 * math.pi * (fx * c - fy * r) / n)[None, None]


# Line orientations at the centres of the 8 wedges of a 3-level DFB, clockwise from ~135°:
# cot = -3/4, -1/4, 1/4, 3/4 (first half), then tan = 3/4, 1/4, -1/4, -3/4 (second half).
# Each entry is the grating's frequency vector (perpendicular to its lines).
WEDGE_FREQS = [(4, 3), (4, 1), (4, -1), (4, -3), (3, -4), (1, -4), (1, 4), (3, 4)]


def test_directional_selectivity():
    shares = []
    dominant = []
    for fx, fy in WEDGE_FREQS:
        k = 5 if abs(fx) + abs(fy) == 7 else 6  # |f| about 25 cycles per 64 pixels
        energy = torch.stack([b.square().sum() for b in dfb_dec(_grating(64, k * fx, k * fy), 3)])
        share = energy / energy.sum()
        dominant.append(int(share.argmax()))
        shares.append(float(share.max()))
    # every orientation has its own sub-band, in the toolbox's clockwise order; measured shares >= 0.98
    assert dominant == list(range(8)), dominant
    assert min(shares) > 0.9, shares


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_low_precision_dtypes(dtype, atol):
    x = torch.randn(2, 3, 32, 24, dtype=torch.float64).to(dtype)
    ref = dfb_dec(x.double(), 3)
    out = dfb_dec(x, 3)
    assert all(b.dtype == dtype for b in out)
    assert _max_err([b.double() for b in out], ref) < atol
    rec = dfb_rec(out)
    assert rec.dtype == dtype
    assert (rec.double() - x.double()).abs().max() < 2 * atol


# --------------------------------------------------------------------------- module
def test_module():
    dfb = DirectionalFilterBank(levels=3)
    assert "levels=3" in repr(dfb)
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    bands = dfb(x)
    assert _max_err(bands, dfb_dec(x, 3)) == 0.0
    torch.testing.assert_close(dfb.inverse(bands), x, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="bands"):
        dfb.inverse(bands[:4])
    with pytest.raises(ValueError, match="levels"):
        DirectionalFilterBank(levels=-1)
    with pytest.raises(ValueError, match="filt"):
        DirectionalFilterBank(levels=2, filt="haar")
    with pytest.raises(ValueError, match="backend"):
        DirectionalFilterBank(levels=2, backend="numpy")


# --------------------------------------------------------------------------- bad input
def test_bad_input_dec():
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(TypeError, match="^x"):
        dfb_dec(x.numpy(), 2)
    with pytest.raises(ValueError, match="^x"):
        dfb_dec(x[0], 2)
    with pytest.raises(TypeError, match="^x"):
        dfb_dec(x.to(torch.int32), 2)
    with pytest.raises(TypeError, match="^x"):
        dfb_dec(x.to(torch.complex64), 2)
    with pytest.raises(ValueError, match="^x"):
        dfb_dec(torch.empty(1, 0, 16, 16), 2)
    with pytest.raises(ValueError, match=r"^x: width 6 is not valid for levels=3: need a multiple of 4"):
        dfb_dec(torch.randn(1, 1, 16, 6), 3)
    msg = r"^x: height 10 is not valid for levels=1: need a multiple of 2 \(and >= 12\)"
    with pytest.raises(ValueError, match=msg):
        dfb_dec(torch.randn(1, 1, 10, 16), 1)
    with pytest.raises(ValueError, match=r"^x: height 15 .* multiple of 2"):
        dfb_dec(torch.randn(1, 1, 15, 16), 1)
    with pytest.raises(ValueError, match=r"^x: height 16 .* multiple of 32"):  # too deep
        dfb_dec(x, 6)
    with pytest.raises(ValueError, match="^levels"):
        dfb_dec(x, -1)
    with pytest.raises(TypeError, match="^levels"):
        dfb_dec(x, 2.0)
    with pytest.raises(TypeError, match="^levels"):
        dfb_dec(x, True)
    with pytest.raises(ValueError, match="^filt"):
        dfb_dec(x, 2, filt="haar")
    with pytest.raises(TypeError, match="^filt"):
        dfb_dec(x, 2, filt=3)
    with pytest.raises(ValueError, match="^backend"):
        dfb_dec(x, 2, backend="numpy")


def test_explicit_unavailable_backend_raises(monkeypatch):
    # The CUDA DFB needs CUDA tensors, and the Triton kernels need a GPU or the interpreter.
    with pytest.raises(RuntimeError, match="cuda"):
        dfb_dec(torch.randn(1, 1, 16, 16), 2, backend="cuda")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="triton"):
            dfb_dec(torch.randn(1, 1, 16, 16), 2, backend="triton")


def test_bad_input_rec():
    bands = dfb_dec(torch.randn(1, 2, 16, 16, dtype=torch.float64), 3)
    with pytest.raises(TypeError, match="^bands"):
        dfb_rec(bands[0])
    with pytest.raises(ValueError, match="^bands"):
        dfb_rec(bands[:3])
    with pytest.raises(ValueError, match="^bands"):
        dfb_rec([])
    with pytest.raises(ValueError, match=r"^bands\[5\]"):
        dfb_rec(bands[:5] + [bands[5][..., :-1]] + bands[6:])
    with pytest.raises(ValueError, match=r"^bands\[2\]"):
        dfb_rec(bands[:2] + [bands[2][:, :1]] + bands[3:])
    with pytest.raises(TypeError, match=r"^bands\[1\]"):
        dfb_rec([bands[0], bands[1].float()] + bands[2:])
    with pytest.raises(TypeError, match=r"^bands\[3\]"):
        dfb_rec(bands[:3] + [bands[3].to(torch.int64)] + bands[4:])
    with pytest.raises(ValueError, match="^filt"):
        dfb_rec(bands, filt="haar")
    with pytest.raises(ValueError, match="^backend"):
        dfb_rec(bands, backend="gpu")
