"""pytest-benchmark entry points: ``pytest bench/ --benchmark-only``.

Every texture op (eager reference, plus the Triton / CUDA backends where they
can run here) forward and forward+backward at the quick shapes of
``sstkd bench --quick`` (small enough for a CPU), and the two peers of issue 2.
The full matrix with training shapes, roofline and memory is ``sstkd bench``;
this file exists so the usual pytest-benchmark tooling (``--benchmark-compare``,
``--benchmark-json``) works on the same cases.
"""
from __future__ import annotations

import pytest
import torch

ops = pytest.importorskip("sstkd.ops", reason="the texture ops do not import")

from sstkd.benchmarks import op_suite, peers  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = op_suite.build_cases(quick=DEVICE.type == "cpu")


def _case_id(case) -> str:
    extra = "-".join(f"{k}{v}" for k, v in case.params.items() if k in ("iters", "channels"))
    return f"{case.spec.name}{'-' + extra if extra else ''}-{case.label}"


def _bench_cell(benchmark, case, backend, mode):
    ok, why = op_suite.backend_availability(backend, case.spec.name, DEVICE, quick=True)
    if not ok:
        pytest.skip(why)
    gen = torch.Generator(device="cpu").manual_seed(0)
    copies = [op_suite.make_inputs(case, DEVICE, torch.float32, seed=i) for i in range(2)]
    call, prepared = op_suite.mode_fn(case, op_suite.callable_for(case, backend), mode, copies, gen)
    state = {"i": 0}

    def run():
        out = call(prepared[state["i"] % len(prepared)])
        state["i"] += 1
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(op=case.spec.name, params=case.params_str, backend=backend, mode=mode,
                                min_bytes=case.bytes(mode, torch.float32))
    out = benchmark(run)
    assert out is not None


@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_op(benchmark, case, mode, backend):
    _bench_cell(benchmark, case, backend, mode)


@pytest.mark.parametrize("side", ["ours", "peer"])
@pytest.mark.parametrize("which", ["lp", "qco"])
def test_peer(benchmark, which, side):
    cases, skipped = peers.peer_cases((2, 16, 64, 128), (2, 64 * 128), ops=ops)
    case = next((c for c in cases if c.name.startswith("lp_dec") == (which == "lp")), None)
    if case is None:
        pytest.skip("; ".join(skipped))
    xs = case.make(DEVICE, torch.float32, torch.Generator(device="cpu").manual_seed(0))
    fn = case.ours if side == "ours" else case.peer
    benchmark.extra_info.update(comparison=case.name, side=side)

    def run():
        with torch.no_grad():
            return fn(xs)

    assert benchmark(run) is not None
