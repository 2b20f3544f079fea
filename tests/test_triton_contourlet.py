"""Triton contourlet (the composition of sstkd.ops.algorithms with the Triton LP + Triton DFB
passes) and the fused sub-band energy vs the toolbox vectors and the PyTorch reference
(sstkd.ops.contourlet).

Runs in Triton's interpreter without a GPU (conftest sets TRITON_INTERPRET=1).
Tolerances: DESIGN §6 (tests/triton_utils.py); gradients against autograd of the
reference, i.e. the exact adjoints.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from triton_utils import assert_close_to_reference  # noqa: E402

triton = pytest.importorskip("triton")

from sstkd.ops.contourlet import (  # noqa: E402
    contourlet_dec,
    contourlet_dec_ref,
    contourlet_energy,
    contourlet_rec,
    contourlet_rec_ref,
)

pytest.importorskip("sstkd.kernels.dfb")
dec_triton = functools.partial(contourlet_dec, backend="triton")
rec_triton = functools.partial(contourlet_rec, backend="triton")
energy_triton = functools.partial(contourlet_energy, backend="triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DATA = Path(__file__).parent / "data" / "contourlet"


def _flat(low, bands):
    return [low] + [t for level in bands for t in level]


def _nest(flat, like):
    out, i = [], 1
    for level in like:
        out.append(flat[i : i + len(level)])
        i += len(level)
    return flat[0], out


def _check(actual, exact, reference, what):
    assert len(actual) == len(exact) == len(reference)
    for k, (a, e, r) in enumerate(zip(actual, exact, reference)):
        assert a.dtype == r.dtype, f"{what}[{k}]: dtype {a.dtype} != {r.dtype}"
        assert_close_to_reference(a, e, r, name=f"{what}[{k}]")


def _dec_and_grad(fn, x, nlevs, cots):
    x = x.detach().requires_grad_(True)
    flat = _flat(*fn(x, nlevs))
    (gx,) = torch.autograd.grad(flat, x, cots)
    return [t.detach() for t in flat] + [gx]


def _rec_and_grad(fn, flat, like, cot):
    flat = [t.detach().requires_grad_(True) for t in flat]
    x = fn(*_nest(flat, like))
    return [x.detach()] + list(torch.autograd.grad(x, flat, cot))


def _verify(x, nlevs, rec=True):
    low, bands = contourlet_dec_ref(x.double(), nlevs)
    shapes = [t.shape for t in _flat(low, bands)]
    cots = [torch.randn(s, device=x.device).to(x.dtype) for s in shapes]
    got = _dec_and_grad(dec_triton, x, nlevs, cots)
    ref = _dec_and_grad(contourlet_dec_ref, x, nlevs, cots)
    exact = _dec_and_grad(contourlet_dec_ref, x.double(), nlevs, [c.double() for c in cots])
    _check(got, exact, ref, f"dec{nlevs}")
    if rec:
        coeffs = [torch.randn(s, device=x.device).to(x.dtype) for s in shapes]
        cot = torch.randn(x.shape, device=x.device).to(x.dtype)
        got = _rec_and_grad(rec_triton, coeffs, bands, cot)
        ref = _rec_and_grad(contourlet_rec_ref, coeffs, bands, cot)
        exact = _rec_and_grad(contourlet_rec_ref, [t.double() for t in coeffs], bands, cot.double())
        _check(got, exact, ref, f"rec{nlevs}")


# --------------------------------------------------------------------------- toolbox vectors
@pytest.mark.parametrize("name", ["case1_rand32x32_n2", "case4_rand64x64_n0-2"])
def test_matches_toolbox_vectors(name):
    z = np.load(DATA / f"{name}.npz")
    x = torch.from_numpy(z["x"]).to(DEVICE)[None, None]
    nlevs = [int(n) for n in z["nlevs"]]
    low, bands = dec_triton(x, nlevs)
    np.testing.assert_allclose(low[0, 0].cpu().numpy(), z["low"], rtol=0, atol=1e-10)
    for l, level in enumerate(bands):
        assert len(level) == int(z["band_counts"][l])
        for k, t in enumerate(level):
            np.testing.assert_allclose(t[0, 0].cpu().numpy(), z[f"band_{l + 1}_{k}"], rtol=0, atol=1e-10)
    rnd_low = torch.from_numpy(z["rnd_low"]).to(DEVICE)[None, None]
    rnd = [[torch.from_numpy(z[f"rnd_band_{l + 1}_{k}"]).to(DEVICE)[None, None] for k in range(len(level))]
           for l, level in enumerate(bands)]
    np.testing.assert_allclose(rec_triton(rnd_low, rnd)[0, 0].cpu().numpy(), z["rnd_rec"],
                               rtol=0, atol=1e-10)
    energy = energy_triton(x, nlevs)[0, 0].cpu().numpy()
    want = [np.square(z["low"]).sum()] + [np.square(z[f"band_{l + 1}_{k}"]).sum()
                                          for l, level in enumerate(bands) for k in range(len(level))]
    np.testing.assert_allclose(energy, want, rtol=1e-12)


# --------------------------------------------------------------------------- against the reference
def test_float32_dec_rec_and_gradients():
    _verify(torch.randn(1, 2, 24, 16, device=DEVICE), [1, 2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_dec_rec_and_gradients(dtype):
    _verify(torch.randn(2, 1, 24, 16, device=DEVICE).to(dtype), [0, 2], rec=dtype == torch.bfloat16)


def test_non_contiguous_and_channels_last_inputs():
    wide = torch.randn(1, 2, 24, 20, device=DEVICE)
    for x in (wide[..., 2:18], torch.randn(1, 3, 24, 16, device=DEVICE).to(memory_format=torch.channels_last)):
        assert not x.is_contiguous()
        _verify(x, [2], rec=False)
        torch.testing.assert_close(energy_triton(x, [2]), contourlet_energy(x, [2], backend="torch"),
                                   rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- fused energy
def _energy_and_grad(fn, x, nlevs, cot):
    x = x.detach().requires_grad_(True)
    e = fn(x, nlevs)
    (gx,) = torch.autograd.grad(e, x, cot)
    return [e.detach(), gx]


@pytest.mark.parametrize("nlevs, shape", [([1, 3], (2, 1, 32, 32)), ([0, 2], (1, 3, 16, 16))], ids=str)
def test_energy_and_gradient_match_reference(nlevs, shape):
    ref_fn = lambda t, n: contourlet_energy(t, n, backend="torch")  # noqa: E731
    x = torch.randn(*shape, device=DEVICE)
    cot = torch.randn(*shape[:2], 1 + sum(3 if n == 0 else 2**n for n in nlevs), device=DEVICE)
    got = _energy_and_grad(energy_triton, x, nlevs, cot)
    ref = _energy_and_grad(ref_fn, x, nlevs, cot)
    exact = _energy_and_grad(ref_fn, x.double(), nlevs, cot.double())
    _check(got, exact, ref, f"energy{nlevs}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_energy_low_precision(dtype):
    x = torch.randn(1, 2, 24, 16, device=DEVICE).to(dtype)
    cot = torch.randn(1, 2, 5, device=DEVICE).to(dtype)
    ref_fn = lambda t, n: contourlet_energy(t, n, backend="torch")  # noqa: E731
    got = _energy_and_grad(energy_triton, x, [2], cot)
    ref = _energy_and_grad(ref_fn, x, [2], cot)
    exact = _energy_and_grad(ref_fn, x.double(), [2], cot.double())
    _check(got, exact, ref, "energy")


def test_energy_deterministic_mode_is_reproducible():
    x = torch.randn(2, 2, 24, 16, device=DEVICE)
    torch.use_deterministic_algorithms(True)
    try:
        a = energy_triton(x, [1, 2])
        b = energy_triton(x, [1, 2])
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, contourlet_energy(x, [1, 2], backend="torch"), rtol=1e-5, atol=0)
    torch.testing.assert_close(energy_triton(x, [1, 2]), a, rtol=1e-6, atol=0)


def test_entry_points_reject_bad_input():
    with pytest.raises(ValueError, match="^x.*height"):
        dec_triton(torch.zeros(1, 1, 18, 16), [3])
    with pytest.raises(TypeError, match="^nlevs"):
        energy_triton(torch.zeros(1, 1, 24, 16), 2)
    with pytest.raises(ValueError, match=r"^nlevs\[0\]"):
        dec_triton(torch.zeros(1, 1, 24, 16), [-1])
    with pytest.raises(TypeError, match="^x"):
        energy_triton(torch.zeros(1, 1, 24, 16, dtype=torch.int32), [2])


# --------------------------------------------------------------------------- GPU (compiled kernels)
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_compiled_kernels(dtype):
    x = torch.randn(2, 4, 64, 96, device="cuda").to(dtype)
    _verify(x, [2, 3])
    cot = torch.randn(2, 4, 13, device="cuda").to(dtype)
    ref_fn = lambda t, n: contourlet_energy(t, n, backend="torch")  # noqa: E731
    got = _energy_and_grad(energy_triton, x, [2, 3], cot)
    ref = _energy_and_grad(ref_fn, x, [2, 3], cot)
    exact = _energy_and_grad(ref_fn, x.double(), [2, 3], cot.double())
    _check(got, exact, ref, "energy")
