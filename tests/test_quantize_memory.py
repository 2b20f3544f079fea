"""Peak memory of the reference quantization path, counted from the CPU allocator's events
(``measure_peak_memory``: bytes allocated at the peak beyond those alive before; a count, not a
timing). Budgets of issue 13: ``quantize_count`` with quantiles and Lloyd steps grows memory by at
most 4× its input, and ``quantize_count`` + ``reproject`` forward + backward by at least 4× less than
a dense STLNet-style QCO."""
import math

import pytest
import torch

from sstkd.benchmarks.peers import stlnet_dense_qco
from sstkd.benchmarks.timing import measure_peak_memory
from sstkd.ops import algorithms
from sstkd.ops.quantize import quantize_count, reproject

MAX_INPUT_MULTIPLE = 4.0
MIN_DENSE_RATIO = 4.0


def _peak(fn) -> int:
    peak = measure_peak_memory(fn, "cpu")
    if peak is None:
        pytest.fail("the profiler recorded no CPU memory events: peak memory cannot be counted")
    return peak


def test_quantize_count_peak_is_a_few_inputs():
    # 2 × 512² pixels: several pixel chunks and row groups at the default budgets
    s = torch.randn(2, 512 * 512, generator=torch.Generator().manual_seed(0))
    for quantiles in ((0.01, 0.99), None):
        peak = _peak(lambda: quantize_count(s, 128, iters=3, quantiles=quantiles, backend="torch"))
        assert peak <= MAX_INPUT_MULTIPLE * s.nbytes, (quantiles, peak / s.nbytes)


def test_quantize_count_backward_peak_is_a_few_inputs():
    s = torch.randn(2, 512 * 512, generator=torch.Generator().manual_seed(1)).requires_grad_()
    r = torch.randn(2, 128)

    def step():
        _, h = quantize_count(s, 128, iters=1, backend="torch")
        (g,) = torch.autograd.grad((h * r).sum(), s)
        return g

    # the gradient itself is one input's worth
    assert _peak(step) <= MAX_INPUT_MULTIPLE * s.nbytes


def test_qco_fwd_bwd_needs_4x_less_than_dense():
    B, N, L, D = 4, 128 * 128, 128, 64
    g = torch.Generator().manual_seed(0)
    s0 = torch.rand(B, N, generator=g) * 2 - 1
    t0 = torch.randn(B, D, L, generator=g)
    r = torch.randn(B, L, generator=g)

    def ours():
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        c, h = quantize_count(s, L, kernel="stlnet", backend="torch")
        out = reproject(t, s, c, kernel="stlnet", backend="torch")
        return torch.autograd.grad(out.sum() + (h * r).sum(), (s, t))

    def dense():
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        _, h, out = stlnet_dense_qco(s, L, t)
        return torch.autograd.grad(out.sum() + (h * r).sum(), (s, t))

    a, b = ours(), dense()  # same numbers
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert _peak(dense) >= MIN_DENSE_RATIO * _peak(ours)


@pytest.mark.parametrize("budget", [1 << 19, 7])  # all rows at once; one row per group
def test_quantiles_by_selection_follow_torch_quantile(budget):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1001, generator=g)
    x[1, :500] = 0.25  # ties
    qs = (0.0, 0.01, 0.5, 0.99, 1.0, 0.1234)
    got = algorithms._quantile_rows(x, qs, budget=budget)
    ref = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64), dim=1)
    srt = x.sort(dim=1).values
    n = x.shape[1]
    for k, q in enumerate(qs):
        torch.testing.assert_close(got[k].double(), ref[k], rtol=1e-6, atol=1e-7)
        # the sorted rows' interpolation, bit for bit
        pos = q * (n - 1)
        i0 = min(int(math.floor(pos)), n - 1)
        i1 = min(i0 + 1, n - 1)
        frac = pos - i0
        exact = srt[:, i0] + (srt[:, i1] - srt[:, i0]) * frac if frac else srt[:, i0]
        assert torch.equal(got[k], exact), q
