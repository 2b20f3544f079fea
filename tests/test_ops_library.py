"""sstkd.ops.library: the Triton ops as custom ops (fake impls + autograd) that torch.compile traces around."""
from __future__ import annotations

import warnings

import pytest
import torch

from sstkd import ops
from sstkd.ops import library as lib

NLEVS = [0]  # a wavelet level: the custom-op plumbing at interpreter speed (the DFB kernels are tested elsewhere)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 16, 16, generator=g)
    s = torch.rand(2, 48, generator=g)
    table = torch.randn(2, 3, 8, generator=g)
    return x, s, table


def _loss(x, s, table, use_lib: bool, energy: bool):
    if use_lib:
        low, band = lib.lp_dec(x[..., :8, :8])
        centers, hist = lib.quantize_count(s, 8, iters=2, quantiles=(0.1, 0.9))
        mapped = lib.reproject(table, s, centers)
        e = lib.contourlet_energy(x, NLEVS) if energy else None
    else:
        low, band = ops.lp_dec(x[..., :8, :8], backend="triton")
        centers, hist = ops.quantize_count(s, 8, iters=2, quantiles=(0.1, 0.9), backend="triton")
        mapped = ops.reproject(table, s, centers, backend="triton")
        e = ops.contourlet_energy(x, NLEVS, backend="triton") if energy else None
    out = low.square().sum() + band.square().mean() + (hist * hist).sum() + mapped.square().sum()
    return out if e is None else out + e.sum()


def _value_and_grads(fn):
    x, s, table = (t.clone().requires_grad_(True) for t in _inputs())
    out = fn(x, s, table)
    out.backward()
    return out.detach(), [x.grad, s.grad, table.grad]


def _assert_same(got, ref):
    torch.testing.assert_close(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b)


def test_custom_ops_give_the_triton_ops_values_and_gradients():
    _assert_same(_value_and_grads(lambda *a: _loss(*a, use_lib=True, energy=True)),
                 _value_and_grads(lambda *a: _loss(*a, use_lib=False, energy=True)))


def test_custom_ops_compile_into_one_graph():
    """fullgraph=True: no graph break around the Triton ops (their launchers are not traced)."""
    eager = _value_and_grads(lambda *a: _loss(*a, use_lib=True, energy=False))
    torch._dynamo.reset()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = _value_and_grads(torch.compile(lambda *a: _loss(*a, use_lib=True, energy=False),
                                                      backend="eager", fullgraph=True))
    finally:
        torch._dynamo.reset()
    _assert_same(compiled, eager)


@pytest.mark.parametrize("name", ["quantize_count", "reproject", "lp_dec", "contourlet_energy"])
def test_opcheck(name):
    """Schema, fake implementation (shapes/dtypes without running) and autograd registration."""
    x, s, table = _inputs()
    centers = ops.quantize_count(s, 8, backend="torch")[0]
    args = {"quantize_count": (s.requires_grad_(True), 8, 2, "triangular", None, [0.1, 0.9]),
            "reproject": (table.requires_grad_(True), s.requires_grad_(True), centers, "triangular"),
            "lp_dec": (x[..., :8, :8].contiguous().requires_grad_(True), "9-7"),
            "contourlet_energy": (x.requires_grad_(True), [1], "9-7", "pkva")}[name]
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(getattr(torch.ops.sstkd_triton, name), args, test_utils=tests)
