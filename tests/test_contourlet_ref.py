"""Reference (plain PyTorch) contourlet transform and its wavelet level: toolbox vectors,
perfect reconstruction, adjoint, gradcheck, directional selectivity, sizes, dtypes, bad input."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sstkd.ops.contourlet import (
    Contourlet,
    check_contourlet_size,
    contourlet_band_shapes,
    contourlet_dec,
    contourlet_energy,
    contourlet_rec,
    contourlet_required_multiple,
)
from sstkd.ops.dfb import dfb_dec
from sstkd.ops.laplacian import lp_dec
from sstkd.ops.wavelet import wfb_dec, wfb_rec

DATA = Path(__file__).parent / "data" / "contourlet"
CASES = sorted(DATA.glob("case*.npz"))


def _flat(low, bands):
    return [low] + [t for level in bands for t in level]


def _max_err(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(_flat(*a), _flat(*b)))


def _camera(h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """A real image: skimage's camera, downscaled by 2 and cropped, in [0, 1], float64, (1, 1, h, w)."""
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    img = transform.resize(data.camera() / 255.0, (256, 256), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img[top : top + h, left : left + w]))[None, None]


def _load(path):
    z = np.load(path)
    nlevs = [int(n) for n in z["nlevs"]]
    counts = [int(c) for c in z["band_counts"]]

    def coeffs(prefix):
        low = torch.from_numpy(z[f"{prefix}low"])[None, None]
        bands = [
            [torch.from_numpy(z[f"{prefix}band_{lvl + 1}_{k}"])[None, None] for k in range(counts[lvl])]
            for lvl in range(len(nlevs))
        ]
        return low, bands

    return z, nlevs, coeffs


# --------------------------------------------------------------------------- toolbox vectors
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_contourlet_matches_toolbox(path):
    z, nlevs, coeffs = _load(path)
    x = torch.from_numpy(z["x"])[None, None]
    low, bands = contourlet_dec(x, nlevs)
    want_low, want_bands = coeffs("")
    assert [len(level) for level in bands] == [len(level) for level in want_bands]
    for got, want in zip(_flat(low, bands), _flat(want_low, want_bands)):
        assert got.dtype == torch.float64 and got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    torch.testing.assert_close(contourlet_rec(low, bands), torch.from_numpy(z["rec"])[None, None], atol=1e-10, rtol=0)
    torch.testing.assert_close(contourlet_rec(low, bands), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_contourlet_rec_of_arbitrary_coefficients_matches_toolbox(path):
    z, _, coeffs = _load(path)
    rec = contourlet_rec(*coeffs("rnd_"))
    torch.testing.assert_close(rec, torch.from_numpy(z["rnd_rec"])[None, None], atol=1e-10, rtol=0)


def test_wavelet_level_matches_toolbox():
    z, nlevs, coeffs = _load(DATA / "case4_rand64x64_n0-2.npz")
    assert nlevs == [0, 2]
    ll, hi = wfb_dec(torch.from_numpy(z["lp_c"])[None, None])  # level 1 works on the LP lowpass of x
    want_low, want_bands = coeffs("")
    torch.testing.assert_close(ll, want_low, atol=1e-10, rtol=0)
    for got, want in zip(hi, want_bands[0]):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------- perfect reconstruction
PR_CASES = [
    ([1], (24, 18)),
    ([0], (6, 10)),
    ([2, 3], (32, 24)),
    ([0, 0, 1], (48, 40)),
    ([3, 0, 2], (96, 32)),
    ([4, 4], (48, 32)),
    ([5], (32, 48)),
]


@pytest.mark.parametrize("nlevs,size", PR_CASES, ids=str)
def test_perfect_reconstruction_random(nlevs, size):
    x = torch.randn(2, 1, *size, dtype=torch.float64)
    low, bands = contourlet_dec(x, nlevs)
    low_shape, shapes = contourlet_band_shapes(*size, nlevs)
    assert tuple(low.shape[-2:]) == low_shape
    assert [[tuple(t.shape[-2:]) for t in level] for level in bands] == shapes
    assert sum(t[0].numel() for t in _flat(low, bands)) <= 4 / 3 * x[0].numel()  # LP redundancy < 4/3
    torch.testing.assert_close(contourlet_rec(low, bands), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("nlevs", [[3, 3], [0, 2, 3], [2, 0]], ids=str)
def test_perfect_reconstruction_camera(nlevs):
    for h, w, top, left in [(128, 128, 64, 64), (96, 160, 20, 40)]:
        x = _camera(h, w, top, left)
        torch.testing.assert_close(contourlet_rec(*contourlet_dec(x, nlevs)), x, atol=1e-12, rtol=0)


def test_wavelet_perfect_reconstruction():
    x = torch.randn(2, 3, 10, 6, dtype=torch.float64)
    ll, hi = wfb_dec(x)
    assert ll.shape == (2, 3, 5, 3) and all(t.shape == ll.shape for t in hi)
    torch.testing.assert_close(wfb_rec(ll, hi), x, atol=1e-12, rtol=0)


def test_batch_and_channels_independent():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    nlevs = [0, 3]
    out = contourlet_dec(x, nlevs)
    for b in range(2):
        for c in range(3):
            single = contourlet_dec(x[b : b + 1, c : c + 1], nlevs)
            sliced = (out[0][b : b + 1, c : c + 1], [[t[b : b + 1, c : c + 1] for t in lv] for lv in out[1]])
            assert _max_err(sliced, single) == 0.0
    torch.testing.assert_close(contourlet_rec(*out), x, atol=1e-12, rtol=0)


def test_energy():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    nlevs = [2, 3]
    e = contourlet_energy(x, nlevs)
    assert e.shape == (2, 3, 1 + 4 + 8)
    want = torch.stack([t.square().sum(dim=(-2, -1)) for t in _flat(*contourlet_dec(x, nlevs))], dim=-1)
    torch.testing.assert_close(e, want, atol=1e-12, rtol=1e-12)
    e16 = contourlet_energy(x.half(), nlevs)
    assert e16.dtype == torch.float16
    torch.testing.assert_close(e16.double(), contourlet_energy(x.half().double(), nlevs), atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------- adjoint / gradients
def test_backward_is_the_adjoint():
    h, w, nlevs = 24, 16, [0, 2]
    eye = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
    m = torch.cat([t.reshape(h * w, -1) for t in _flat(*contourlet_dec(eye, nlevs))], dim=1).T  # (outputs, inputs)
    x = torch.randn(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    outs = _flat(*contourlet_dec(x, nlevs))
    ys = [torch.randn_like(t) for t in outs]
    (g,) = torch.autograd.grad(outs, x, grad_outputs=ys)
    torch.testing.assert_close(g.reshape(-1), m.T @ torch.cat([y.reshape(-1) for y in ys]), atol=1e-12, rtol=0)
    x2 = torch.randn(1, 1, h, w, dtype=torch.float64)
    lhs = sum((t * y).sum() for t, y in zip(_flat(*contourlet_dec(x2, nlevs)), ys))
    torch.testing.assert_close(lhs, (x2 * g).sum(), atol=1e-11, rtol=0)
    # and the adjoint is not the synthesis (the LP frame is not tight with 9-7)
    assert (m.T @ m - torch.eye(h * w, dtype=torch.float64)).abs().max() > 1e-3


@pytest.mark.parametrize("nlevs", [[2], [0, 1]], ids=str)
def test_gradcheck_dec(nlevs):
    x = torch.randn(1, 1, 12, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tuple(_flat(*contourlet_dec(t, nlevs))), (x,))


@pytest.mark.parametrize("nlevs", [[2], [0, 1]], ids=str)
def test_gradcheck_rec(nlevs):
    low_shape, shapes = contourlet_band_shapes(12, 8, nlevs)
    counts = [len(level) for level in shapes]
    inputs = [torch.randn(1, 1, *low_shape, dtype=torch.float64, requires_grad=True)]
    inputs += [torch.randn(1, 1, *s, dtype=torch.float64, requires_grad=True) for level in shapes for s in level]

    def rec(low, *flat):
        bands, i = [], 0
        for c in counts:
            bands.append(list(flat[i : i + c]))
            i += c
        return contourlet_rec(low, bands)

    assert torch.autograd.gradcheck(rec, tuple(inputs))


# --------------------------------------------------------------------------- directional selectivity
# Frequency vectors of gratings whose lines lie at the centres of the 8 wedges of a 3-level DFB,
# clockwise from ~135° (see tests/test_dfb_ref.py); magnitude ~25 cycles per 64 pixels (LP bandpass).
WEDGE_FREQS = [(20, 15), (24, 6), (24, -6), (20, -15), (15, -20), (6, -24), (6, 24), (15, 20)]


def test_directional_selectivity_on_lp_band():
    n = 64
    r = torch.arange(n, dtype=torch.float64).view(n, 1)
    c = torch.arange(n, dtype=torch.float64).view(1, n)
    x = torch.stack([torch.cos(2 * math.pi * (fx * c - fy * r) / n) for fx, fy in WEDGE_FREQS])[:, None]
    _, bands = contourlet_dec(x, [3])  # the 8 gratings as a batch
    energy = torch.stack([t.square().sum(dim=(1, 2, 3)) for t in bands[0]], dim=1)  # (8 gratings, 8 bands)
    share = energy / energy.sum(dim=1, keepdim=True)
    assert share.argmax(dim=1).tolist() == list(range(8))
    assert share.max(dim=1).values.min() > 0.7  # measured >= 0.79
    # and the finest contourlet level is exactly the DFB of the LP bandpass
    for got, want in zip(bands[0], dfb_dec(lp_dec(x)[1], 3)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


# --------------------------------------------------------------------------- sizes
def test_required_multiple_and_size_check():
    assert contourlet_required_multiple([3, 3]) == (8, 8)
    assert contourlet_required_multiple([2]) == (2, 2)
    assert contourlet_required_multiple([0, 2]) == (4, 4)
    assert contourlet_required_multiple([5]) == (16, 16)
    assert contourlet_required_multiple([1, 1, 1]) == (8, 8)
    assert contourlet_required_multiple([4, 0, 0]) == (32, 32)
    msg = r"^x: height 30 is not valid for nlevs=\[3, 3\]: need a multiple of 8 \(and >= 24\)"
    with pytest.raises(ValueError, match=msg):
        check_contourlet_size(30, 32, [3, 3])
    with pytest.raises(ValueError, match=r"^x: height 16 .* >= 24"):  # divisible, but too small
        check_contourlet_size(16, 32, [3, 3])
    with pytest.raises(ValueError, match=r"^x: width 20 is not valid for nlevs=\[3, 3\]: need a multiple of 8"):
        check_contourlet_size(32, 20, [3, 3])
    with pytest.raises(ValueError, match=r"^feat: height"):
        check_contourlet_size(30, 32, [3, 3], name="feat")
    with pytest.raises(TypeError, match="height"):
        check_contourlet_size(32.0, 32, [3, 3])


@pytest.mark.parametrize("nlevs", [[3, 3], [0, 2], [1], [2, 0, 4]], ids=str)
def test_smallest_valid_size_works(nlevs):
    mh, mw = contourlet_required_multiple(nlevs)
    h = mh
    while True:  # the smallest height the check accepts
        try:
            check_contourlet_size(h, mw, nlevs)
            break
        except ValueError:
            h += mh
    x = torch.randn(1, 1, h, mw, dtype=torch.float64)
    torch.testing.assert_close(contourlet_rec(*contourlet_dec(x, nlevs)), x, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="^x: height"):
        contourlet_dec(torch.randn(1, 1, h - mh // 2, mw), nlevs)


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_low_precision_dtypes(dtype, atol):
    x = torch.randn(2, 3, 32, 24, dtype=torch.float64).to(dtype)
    nlevs = [0, 3]
    out = contourlet_dec(x, nlevs)
    assert all(t.dtype == dtype for t in _flat(*out))
    ref = contourlet_dec(x.double(), nlevs)
    assert _max_err((out[0].double(), [[t.double() for t in lv] for lv in out[1]]), ref) < atol
    rec = contourlet_rec(*out)
    assert rec.dtype == dtype
    assert (rec.double() - x.double()).abs().max() < 2 * atol


# --------------------------------------------------------------------------- module
def test_module():
    m = Contourlet(nlevs=[2, 3])
    assert "nlevs=[2, 3]" in repr(m) and m.required_multiple() == (4, 4)
    x = torch.randn(1, 2, 32, 32, dtype=torch.float64)
    low, bands = m(x)
    assert _max_err((low, bands), contourlet_dec(x, [2, 3])) == 0.0
    torch.testing.assert_close(m.inverse(low, bands), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(m.energy(x), contourlet_energy(x, [2, 3]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="^bands"):
        m.inverse(low, bands[:1])
    with pytest.raises(ValueError, match="^nlevs"):
        Contourlet(nlevs=[])
    with pytest.raises(ValueError, match="^pfilt"):
        Contourlet(pfilt="db4")
    with pytest.raises(ValueError, match="^dfilt"):
        Contourlet(dfilt="haar")
    with pytest.raises(ValueError, match="^backend"):
        Contourlet(backend="numpy")


# --------------------------------------------------------------------------- bad input
def test_bad_input_dec():
    x = torch.randn(1, 1, 32, 32)
    with pytest.raises(TypeError, match="^x"):
        contourlet_dec(x.numpy(), [2])
    with pytest.raises(ValueError, match="^x"):
        contourlet_dec(x[0], [2])
    with pytest.raises(TypeError, match="^x"):
        contourlet_dec(x.to(torch.int64), [2])
    with pytest.raises(TypeError, match="^x"):
        contourlet_dec(x.to(torch.complex64), [2])
    with pytest.raises(ValueError, match=r"^x: height 30 .* multiple of 8"):
        contourlet_dec(torch.randn(1, 1, 30, 32), [3, 3])
    with pytest.raises(ValueError, match=r"^x: height 32 .* multiple of 128"):  # too deep
        contourlet_dec(x, [3, 3, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="^x: height"):  # too deep for one DFB
        contourlet_dec(x, [7])
    with pytest.raises(ValueError, match="^nlevs"):
        contourlet_dec(x, [])
    with pytest.raises(ValueError, match=r"^nlevs\[1\]"):
        contourlet_dec(x, [2, -1])
    with pytest.raises(TypeError, match=r"^nlevs\[0\]"):
        contourlet_dec(x, [1.5])
    with pytest.raises(TypeError, match=r"^nlevs\[0\]"):
        contourlet_dec(x, [True])
    with pytest.raises(TypeError, match="^nlevs"):
        contourlet_dec(x, 3)
    with pytest.raises(TypeError, match="^nlevs"):
        contourlet_dec(x, "33")
    with pytest.raises(ValueError, match="^pfilt"):
        contourlet_dec(x, [2], pfilt="db4")
    with pytest.raises(TypeError, match="^pfilt"):
        contourlet_dec(x, [2], pfilt=None)
    with pytest.raises(ValueError, match="^dfilt"):
        contourlet_dec(x, [2], dfilt="haar")
    with pytest.raises(ValueError, match="^backend"):
        contourlet_dec(x, [2], backend="numpy")
    with pytest.raises(ValueError, match="^backend"):
        contourlet_energy(x, [2], backend="numpy")
    with pytest.raises(ValueError, match="^nlevs"):
        contourlet_energy(x, [])


def test_bad_input_rec():
    low, bands = contourlet_dec(torch.randn(1, 2, 32, 32, dtype=torch.float64), [0, 3])
    with pytest.raises(TypeError, match="^low"):
        contourlet_rec(low.numpy(), bands)
    with pytest.raises(TypeError, match="^bands"):
        contourlet_rec(low, bands[0][0])
    with pytest.raises(ValueError, match="^bands"):
        contourlet_rec(low, [])
    with pytest.raises(TypeError, match=r"^bands\[1\]"):
        contourlet_rec(low, [bands[0], bands[1][0]])
    with pytest.raises(ValueError, match=r"^bands\[1\]"):
        contourlet_rec(low, [bands[0], bands[1][:5]])  # neither 3 nor a power of two
    with pytest.raises(ValueError, match=r"^bands\[1\]\[2\]"):
        contourlet_rec(low, [bands[0], bands[1][:2] + [bands[1][2][..., :-2]] + bands[1][3:]])
    with pytest.raises(ValueError, match=r"^bands\[1\]\[0\]"):
        contourlet_rec(low, [bands[0], bands[1][:4]])  # a 2-level DFB has other shapes
    with pytest.raises(TypeError, match=r"^bands\[0\]\[1\]"):
        contourlet_rec(low, [[bands[0][0], bands[0][1].float(), bands[0][2]], bands[1]])
    with pytest.raises(ValueError, match=r"^low"):
        contourlet_rec(low[..., :1, :], bands)
    with pytest.raises(ValueError, match="^dfilt"):
        contourlet_rec(low, bands, dfilt="haar")
    with pytest.raises(ValueError, match="^backend"):
        contourlet_rec(low, bands, backend="numpy")


def test_bad_input_wavelet():
    with pytest.raises(ValueError, match=r"^x: height 5"):
        wfb_dec(torch.randn(1, 1, 5, 6))
    with pytest.raises(TypeError, match="^x"):
        wfb_dec(torch.zeros(1, 1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="^filt"):
        wfb_dec(torch.randn(1, 1, 4, 4), filt="db4")
    ll, hi = wfb_dec(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="^bands"):
        wfb_rec(ll, hi[:2])
    with pytest.raises(ValueError, match=r"^bands\[1\]"):
        wfb_rec(ll, [hi[0], hi[1][..., :-1], hi[2]])
    with pytest.raises(TypeError, match=r"^bands\[2\]"):
        wfb_rec(ll, [hi[0], hi[1], hi[2].double()])
