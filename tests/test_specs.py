"""The op descriptions (sstkd.ops.specs): each spec agrees with its op and reference, and a new op
(spec + reference + a backend table, all defined here) is picked up by ``sstkd verify``, the
benchmark suite and these checks with no other file changed."""
from __future__ import annotations

import types

import pytest
import torch

from sstkd import verify
from sstkd._util import tensor_leaves
from sstkd.benchmarks import op_suite
from sstkd.ops import dispatch, specs
from sstkd.ops._checks import check_tensor
from sstkd.ops.backends import torch as torch_backend
from sstkd.ops.specs import LAYOUTS, SPECS, OpSpec, get_spec

CPU = torch.device("cpu")


def _leaves(obj):
    return tensor_leaves(obj)


def check_spec(spec: OpSpec, backend: str = "torch", tol: float = 1e-10) -> int:
    """The checks every spec passes; returns how many cases ran.

    For each test case: inputs in every layout hold the same values; meta inputs have the
    same shapes and the same byte counts; ``op`` on ``backend`` matches ``reference`` in the
    forward and in the gradient of every differentiable input (float64 inputs; ``tol``
    absolute and relative: a backend computing in float32 needs about 1e-6).
    """
    cases = spec.cases("test")
    assert cases, f"{spec.name}: no test shapes"
    for case in cases:
        args, kwargs = case.inputs(torch.float64, CPU, seed=3)
        meta_args, meta_kwargs = case.inputs(torch.float64, "meta", seed=3)
        assert [t.shape for t in _leaves(args)] == [t.shape for t in _leaves(meta_args)], case.name
        for mode in specs.MODES:
            n = spec.bytes(mode, args, kwargs)
            assert isinstance(n, int) and n > 0 and n == spec.bytes(mode, meta_args, meta_kwargs), (case.name, mode)
        assert spec.bytes("fwd+bwd", args, kwargs) == spec.fwd_bytes(args, kwargs) + spec.bwd_bytes(args, kwargs)
        for layout in LAYOUTS:
            laid, _ = case.inputs(torch.float64, CPU, layout=layout, seed=3)
            for a, b in zip(_leaves(args), _leaves(laid)):
                assert torch.equal(a, b), (case.name, layout)
        outs, grads = [], []
        for fn in (lambda a, k: spec.run(a, k, backend), lambda a, k: spec.reference(*a, **k)):
            xs = [verify._map_float(a, lambda t: t.detach().clone()) for a in args]
            diff = [t for i in spec.grad_inputs for t in _leaves(xs[i])]
            for t in diff:
                t.requires_grad_(True)
            out = verify.flatten_outputs(fn(tuple(xs), dict(kwargs)))
            g = torch.Generator().manual_seed(7)
            loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in out)
            outs.append(out)
            grads.append(torch.autograd.grad(loss, diff, allow_unused=True))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"{case.name}: forward")
        assert len(grads[0]) == len(grads[1]) > 0, case.name
        for a, b in zip(*grads):
            assert a is not None and b is not None, f"{case.name}: an input got no gradient"
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"{case.name}: gradient")
        assert any(float(g.abs().max()) > 0 for g in grads[1]), f"{case.name}: all gradients are zero"
    return len(cases)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec(spec):
    check_spec(spec)


def test_specs_cover_every_op_once():
    names = specs.op_names()
    assert len(set(names)) == len(names)
    from sstkd import ops

    for spec in SPECS:
        assert getattr(ops, spec.name) is spec.op
        assert spec.cases("verify") and spec.cases("verify_full") and spec.cases("bench") and spec.cases("bench_quick")
        assert spec.tolerance in specs.TOLERANCES
    with pytest.raises(ValueError, match="op: unknown op 'fft'"):
        get_spec("fft")
    with pytest.raises(ValueError, match="purpose"):
        SPECS[0].cases("nightly")
    with pytest.raises(ValueError, match="levels: required"):
        specs.shape_bytes("quantize_count", "fwd", (2, 10))


# ----------------------------------------------------------------------------- a new op, end to end
def toy_scale(x: torch.Tensor, alpha: float = 2.0, backend: str = "auto") -> torch.Tensor:
    """``alpha · x`` (B, C, H, W): the smallest op with a backend choice."""
    check_tensor(x, "x", ndim=4)
    return dispatch.resolve("toy_scale", backend, x)(x, alpha)


def toy_scale_ref(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return x * alpha


def _toy_inputs(shape, dtype, device, layout="contiguous", seed=0, alpha=2.0):
    if torch.device(device).type == "meta":
        x = torch.empty(shape, device="meta", dtype=dtype)
    else:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return (specs.apply_layout(x, layout),), {"alpha": alpha}


def _toy_bytes(args, kwargs):
    return 2 * args[0].numel() * args[0].element_size()


TOY = OpSpec("toy_scale", toy_scale_ref, toy_scale, _toy_inputs, (0,), _toy_bytes, _toy_bytes,
             test_shapes=((1, 2, 4, 4),), verify_shapes=((1, 2, 6, 4), (2, 1, 3, 5)),
             verify_full_shapes=((2, 3, 64, 64),), bench_shapes=(("toy", (2, 3, 64, 64)),),
             bench_quick_shapes=(("toy-quick", (1, 2, 8, 8)),), variants=({"alpha": 2.0}, {"alpha": -0.5}))


def _fake_backend(error: float = 0.0):
    """A backend module: its table computes in float32, like a kernel, off by ``error`` relative."""
    def scale(x, alpha):
        return (x.float() * (alpha * (1 + error))).to(x.dtype)

    return types.SimpleNamespace(TABLE={"toy_scale": scale}, DTYPES={}, unavailable_reason=lambda device=None: None,
                                 available_reason=lambda: "fake test backend", ready_for_auto=lambda: False)


@pytest.fixture()
def toy_op(monkeypatch):
    monkeypatch.setitem(torch_backend.TABLE, "toy_scale", toy_scale_ref)
    monkeypatch.setitem(dispatch.BACKEND_MODULES, "fake", _fake_backend())
    monkeypatch.setattr(specs, "SPECS", specs.SPECS + [TOY])
    return TOY


def test_a_new_op_is_picked_up_everywhere(toy_op, monkeypatch):
    # the parametrized checks
    assert check_spec(get_spec("toy_scale"), backend="fake", tol=1e-6) == 2
    assert dispatch.resolve_backend("toy_scale", "auto", torch.zeros(1, 1, 2, 2)) == "torch"
    # sstkd verify: every case x dtype x layout of the new op on the new backend passes ...
    rows = verify.run_matrix(["fake"], [torch.float32, torch.bfloat16], CPU, small=True, ops_filter={"toy_scale"})
    assert len(rows) == 2 * 2 * 2 * len(LAYOUTS) and all(r.ok for r in rows), verify.format_rows(rows)
    assert {r.op for r in rows} == {"toy_scale[alpha=2.0]", "toy_scale[alpha=-0.5]"}
    # ... and fails when its kernel is off by 1e-4
    monkeypatch.setitem(dispatch.BACKEND_MODULES, "fake", _fake_backend(error=1e-4))
    rows = verify.run_matrix(["fake"], [torch.float32], CPU, small=True, ops_filter={"toy_scale"})
    assert rows and not any(r.ok for r in rows)
    monkeypatch.setitem(dispatch.BACKEND_MODULES, "fake", _fake_backend())
    # the benchmark suite times it on both backends, with its compulsory bytes
    cfg = op_suite.TimingConfig(warmup=0, repeat=2, measure_memory=False, count_launches=False, warmup_seconds=0.0)
    bench = op_suite.run_suite(CPU, quick=True, ops=["toy_scale"], backends=["torch", "fake"], dtypes=["fp32"],
                               modes=["fwd", "fwd+bwd"], cfg=cfg, log=lambda s: None)
    ok = [r for r in bench if r["status"] == "ok"]
    assert {(r["backend"], r["mode"]) for r in ok} == {(b, m) for b in ("torch", "fake") for m in ("fwd", "fwd+bwd")}
    fwd = next(r for r in ok if r["mode"] == "fwd")
    assert fwd["min_bytes"] == 2 * 128 * 4 and fwd["op"] == "toy_scale"
