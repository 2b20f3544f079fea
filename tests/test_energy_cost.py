"""Issue 13's budgets of the composed contourlet ops, counted by the GPU cost report (kernels recorded,
not run, on meta tensors at the training shape), and the exactness of what made them: the fused
energy keeps its last DFB level for the backward and folds ``2·g·y`` into the first adjoint passes.

Measured numbers and the command: bench/README.md ("contourlet_energy after issue 13").
"""
from __future__ import annotations

import pytest
import torch

from sstkd.benchmarks import cost
from sstkd.ops import contourlet_energy

TRAIN = (8, 256, 128, 128)
NLEVS = {"nlevs": [3, 3]}
DT = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _row(op, params, dtype, shape=TRAIN, backend="triton"):
    return cost.case_row(op, shape, params, DT[dtype], backend=backend)




# measured after this change (before: 76 / 81 launches, 56.3X / 121.7X)
_ENERGY_REACHED = {"fp32": (44, 36.5), "bf16": (46, 71.0)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_energy_cost_reached(dtype):
    r = _row("contourlet_energy", NLEVS, dtype)
    launches, modeled_x = _ENERGY_REACHED[dtype]
    assert r["launches"] <= launches, r["launches"]
    assert r["modeled_x"] <= modeled_x, r["modeled_x"]
    assert r["host_syncs"] == 0
    # nothing recomputed: the backward launches no analysis pass, and no cotangent is built by aten
    rec, _, _ = cost.measure("contourlet_energy", TRAIN, NLEVS, DT[dtype])
    assert not [l for l in rec.triton("bwd") if l.kernel == "_lp_analysis_kernel"]
    assert not set(r["bwd"]["aten_ops"]) & {"stack", "mul_", "cat"}, r["bwd"]["aten_ops"]
    assert r["bwd"]["triton_launches"] == r["fwd"]["triton_launches"]
    # a bfloat16 input is read by the LP kernel as it is and its gradient stored as bfloat16 there
    assert "_to_copy" not in {a.name for a in rec.aten_ops() if a.bytes >= r["input_bytes"]}


def test_contourlet_dec_bf16_reads_its_input_as_is():
    r = _row("contourlet_dec", NLEVS, "bf16")
    assert r["launches"] <= 42 and r["modeled_x"] <= 68.5, (r["launches"], r["modeled_x"])  # before: 44, 76.4X


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="issue 13 budget not met by the Triton backend: contourlet_energy "
                   "fwd+bwd at (8, 256, 128, 128) takes 44 launches and 36.4X (fp32; bf16: 46, 70.8X); needs a pyramid level "
                   "per launch")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_energy_issue_budget_triton(dtype):
    r = _row("contourlet_energy", NLEVS, dtype)
    assert r["launches"] <= 12 and r["modeled_x"] <= 8


# a whole pyramid level per CUDA launch each way (the LP level and the DFB energies of its bandpass in one
# block's shared memory; the coarsest level adds the lowpass energy; a bfloat16 input read as it is, its
# gradient written as bfloat16). Before: LP and DFB launches apart, 14 / 10.1X (fp32), 18 / 26.3X (bf16)
_ENERGY_CUDA_REACHED = {"fp32": (5, 4.4), "bf16": (6, 5.7)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_energy_cost_reached_on_cuda(dtype, cuda_ext):
    r = _row("contourlet_energy", NLEVS, dtype, backend="cuda")
    launches, modeled_x = _ENERGY_CUDA_REACHED[dtype]
    assert r["launches"] <= launches and r["modeled_x"] <= modeled_x, (r["launches"], r["modeled_x"])
    assert r["fwd"]["cuda_ops"] == {"level_energy": 2}
    assert r["bwd"]["cuda_ops"] == {"level_energy_backward": 2}
    assert r["fwd"]["triton_launches"] == r["bwd"]["triton_launches"] == 0 and r["host_syncs"] == 0
    # aten: one assembly of the energies forward (cat, stored in the input dtype), nothing backward in float32
    assert r["fwd"]["aten_ops"].get("cat") == 1 and not {"mul", "sum", "add"} & set(r["fwd"]["aten_ops"])
    assert not {"mul", "sum", "add", "cat"} & set(r["bwd"]["aten_ops"]), r["bwd"]["aten_ops"]
    # no conversion copy of an image-sized tensor, not even of the coarsest level's lowpass (1/16 of the input):
    # only the (B, C, K) energy cotangent is converted in bf16
    rec, _, _ = cost.measure("contourlet_energy", TRAIN, NLEVS, DT[dtype], backend="cuda")
    assert not [a for a in rec.aten_ops() if a.name == "_to_copy" and a.bytes >= r["input_bytes"] // 16]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_energy_issue_budget_cuda(dtype, cuda_ext):
    r = _row("contourlet_energy", NLEVS, dtype, backend="cuda")
    assert r["launches"] <= 12 and r["modeled_x"] <= 8


def _within_twice_compulsory(r):
    assert r["launches"] <= 2 * 2 and r["modeled_x"] <= 2 * r["compulsory_x"], (r["launches"], r["modeled_x"])


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="issue 13 budget not met by the Triton backend: fwd+bwd launches / "
                   "modeled traffic vs compulsory (2 launches): contourlet_dec 40 / 38.1X vs 4.6X (fp32), dfb_dec(3) 18 / "
                   "26.0X vs 4.0X")
@pytest.mark.parametrize("op,params", [("contourlet_dec", NLEVS), ("dfb_dec", {"levels": 3})])
def test_decompositions_within_twice_compulsory_triton(op, params):
    _within_twice_compulsory(_row(op, params, "fp32"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dfb_dec_within_twice_compulsory_on_cuda(dtype, cuda_ext):
    # one whole-plane launch each way (3 with the stack of the sub-band cotangents): 6.0X vs 4.0X
    r = _row("dfb_dec", {"levels": 3}, dtype, backend="cuda")
    _within_twice_compulsory(r)
    assert r["fwd"]["cuda_ops"] == {"dfb_dec": 1} and r["bwd"]["cuda_ops"] == {"dfb_dec_backward": 1}


# a whole pyramid level per CUDA launch each way (level_dec / level_dec_backward: the LP level and the DFB of its
# bandpass; the backward reads the sub-band cotangents where they lie, nothing saved). Before: LP and DFB launches
# apart, 10 launches / 13.1X vs 4.6X compulsory (fp32)
_DEC_CUDA_REACHED = {"fp32": (4, 5.625), "bf16": (4, 6.625)}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_dec_within_twice_compulsory_on_cuda(dtype, cuda_ext):
    r = _row("contourlet_dec", NLEVS, dtype, backend="cuda")
    _within_twice_compulsory(r)
    launches, modeled_x = _DEC_CUDA_REACHED[dtype]
    assert r["launches"] <= launches and r["modeled_x"] <= modeled_x, (r["launches"], r["modeled_x"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_contourlet_dec_on_the_cuda_backend(dtype, cuda_ext):
    # backend="cuda" composes the extension's pyramid-level launch (one op per level and direction), as "auto"
    # would pick it on a GPU; recorded on meta tensors through the ops' Meta implementations
    r = _row("contourlet_dec", NLEVS, dtype, backend="cuda")
    assert r["fwd"]["cuda_ops"] == {"level_dec": 2} and r["bwd"]["cuda_ops"] == {"level_dec_backward": 2}
    # no aten launch: no stacking of the sub-band cotangents, no conversion of the coarsest lowpass
    assert r["fwd"]["aten_launches"] == r["bwd"]["aten_launches"] == 0
    assert r["fwd"]["triton_launches"] == r["bwd"]["triton_launches"] == 0
    assert r["host_syncs"] == 0 and r["predicted"]["issue_known"] is False
    # every tensor once: per level its input, lowpass and sub-bands each way (relative to x: 1 + 1/4 + 1 at
    # the finest level, 1/4 + 1/16 + 1/4 at the coarser one; bfloat16: the finer lowpass and its cotangent
    # are float32, the coarser level's input and gradient too)
    want = {"fp32": 2 * (1 + 0.25 + 1 + 0.25 + 0.0625 + 0.25), "bf16": 2 * (1 + 0.5 + 1 + 0.5 + 0.0625 + 0.25)}
    assert r["modeled_x"] == want[dtype], r["modeled_x"]


# --------------------------------------------------------------------------- exactness of the kept level
def _grad(x, nlevs, cot, backend):
    x = x.detach().requires_grad_(True)
    e = contourlet_energy(x, nlevs, backend=backend)
    (gx,) = torch.autograd.grad(e, x, cot)
    return e.detach(), gx


def test_energy_gradient_deterministic_and_exact_when_halves_tile_differently():
    # H != W: the two halves of the 3-level DFB tile differently (per-half partials)
    x = torch.randn(1, 2, 32, 64, dtype=torch.float64)
    cot = torch.randn(1, 2, 1 + 8, dtype=torch.float64)
    torch.use_deterministic_algorithms(True)
    try:
        a = _grad(x, [3], cot, "triton")
        b = _grad(x, [3], cot, "triton")
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ref = _grad(x, [3], cot, "torch")
    for got, want in zip(a, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_energy_under_no_grad_matches_the_reference():
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    with torch.no_grad():
        e = contourlet_energy(x, [2], backend="triton")
    assert e.grad_fn is None
    torch.testing.assert_close(e, contourlet_energy(x.detach(), [2], backend="torch"), rtol=1e-5, atol=0)


def test_energy_gradient_of_an_expanded_cotangent():
    # e.sum().backward() hands the DFB a stride-0 cotangent: read through its strides, not copied
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    contourlet_energy(x, [2], backend="triton").sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    contourlet_energy(xr, [2], backend="torch").sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)
