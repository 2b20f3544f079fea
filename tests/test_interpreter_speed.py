"""The suite's lighter Triton interpreter (tests/interpreter_speed.py) computes what the stock one does.

Every Triton kernel — reached through the ops of ``sstkd.ops.specs`` at tiny shapes, forward and
every gradient, in the default mode and, where a kernel has one, the deterministic mode — gives the
same bits in the light interpreter as in the stock one with Triton's debug checks on, which also
puts every kernel through a real int32 overflow check. (``contourlet_dec`` / ``_rec`` launch only
the LP and DFB kernels covered here.)
"""
from __future__ import annotations

import pytest
import torch

import interpreter_speed
from sstkd.ops.specs import SPECS, Case, get_spec
from sstkd.verify import _forward_backward

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels run on the GPU here, not in the interpreter")

# (op, shape, params, deterministic modes to run): every Triton kernel at least once
_IMAGE, _DFB, _MAPS = (1, 2, 8, 8), (1, 1, 16, 16), (2, 5, 7)
_BOTH = (False, True)  # ops with a deterministic path of their own (partials instead of atomics)
_PLAN = [("lp_dec", _IMAGE, {}, (False,)), ("lp_rec", _IMAGE, {}, (False,)),
         ("dfb_dec", _DFB, {"levels": 3}, (False,)), ("dfb_rec", _DFB, {"levels": 3}, (False,)),
         ("contourlet_energy", (1, 1, 24, 24), {"nlevs": [1, 2]}, _BOTH), ("reproject", _MAPS, {}, _BOTH),
         ("cooccurrence", _MAPS, {}, _BOTH)]
_PLAN += [("quantize_count", _MAPS, v, _BOTH) for v in get_spec("quantize_count").variants]
CASES = [(name, shape, params, det) for name, shape, params, modes in _PLAN for det in modes]


def test_the_suite_runs_the_light_interpreter():
    # a Triton whose interpreter has other internals leaves it stock: correct, but the suite is slower
    assert interpreter_speed.is_light()


def test_the_plan_reaches_every_op_with_triton_kernels_and_each_variant():
    from sstkd.ops.backends import triton as triton_backend

    planned = {name for name, *_ in _PLAN}
    composed = {"contourlet_dec", "contourlet_rec"}  # only LP and DFB kernels, planned above
    assert {s.name for s in SPECS} - composed == planned
    assert {"lp_dec", "lp_rec", "dfb_dec", "dfb_rec", "dfb_energy", "reproject", "cooccurrence", "minmax",
            "level_sums", "soft_hist", "start_centers"} == set(triton_backend.TABLE)


@pytest.mark.parametrize("name,shape,params,deterministic", CASES,
                         ids=[f"{n}{p or ''}{'-det' if d else ''}" for n, _, p, d in CASES])
def test_light_and_stock_interpreters_agree_bitwise(name, shape, params, deterministic):
    spec = get_spec(name)
    case = Case(spec, "x".join(map(str, shape)), shape, dict(params))
    args, kwargs = case.inputs(torch.float32, torch.device("cpu"), seed=3)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        light = _forward_backward(case, args, kwargs, "triton", torch.float32, "contiguous", 4)
        with interpreter_speed.stock(debug=True):
            stock = _forward_backward(case, args, kwargs, "triton", torch.float32, "contiguous", 4)
    finally:
        torch.use_deterministic_algorithms(was)
    light_t, stock_t = light[0] + light[1], stock[0] + stock[1]
    assert light[1] and len(light_t) == len(stock_t)  # outputs and every gradient, both ways
    for i, (a, b) in enumerate(zip(light_t, stock_t)):
        assert a.shape == b.shape and torch.equal(a, b), f"{case.name}: tensor {i} differs"


def test_the_stock_debug_interpreter_catches_int32_overflow_and_the_light_one_does_not_check():
    import triton
    import triton.language as tl

    @triton.jit
    def _scaled(x_ptr, y_ptr, k):
        x = tl.load(x_ptr + tl.arange(0, 4))
        tl.store(y_ptr + tl.arange(0, 4), x * k)

    x = torch.tensor([1, 2, 3, 1 << 20], dtype=torch.int32)
    y = torch.empty_like(x)
    _scaled[(1,)](x, y, 4096)  # (1 << 20) * 4096 wraps: nobody checks
    assert y[3].item() == ((1 << 32) - (1 << 32)) and y[:3].tolist() == [4096, 8192, 12288]
    with interpreter_speed.stock(debug=True), pytest.raises(Exception, match="overflow"):
        _scaled[(1,)](x, y, 4096)
    _scaled[(1,)](x, y, 2)  # light again after the block
    assert y.tolist() == [2, 4, 6, 1 << 21]
