"""Issue 13's launch budgets of the quantization ops on the Triton backend, counted by the GPU
cost report (``sstkd.benchmarks.cost``: kernels recorded at their GPU launch geometry, aten ops
counted by a dispatch mode) at the training shape: 8 intensity maps of 128², 128 levels."""
from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(__file__))
from triton_utils import compile_facts_many, prefetch  # noqa: E402  (the session's one compile process)

from sstkd.benchmarks import cost  # noqa: E402

MAX_LAUNCHES = 12  # forward + backward, Triton + aten
S2 = (8, 128 * 128)


def _row(op, shape, params, dtype=torch.float32):
    # real CPU tensors (the kernels are recorded, not run; what they would write is zero-filled)
    return cost.case_row(op, shape, params, dtype, device="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op,shape,params", [
    ("quantize_count", S2, {"levels": 128, "iters": 3}),
    ("quantize_count", S2, {"levels": 128, "iters": 3, "quantiles": (0.01, 0.99)}),
    ("quantize_count", S2, {"levels": 128, "iters": 3, "kernel": "stlnet"}),
    ("reproject", S2, {"levels": 128, "channels": 64}),
    ("cooccurrence", (8, 128, 128), {"levels": 128}),
])
def test_quantization_launches_fwd_bwd(op, shape, params, dtype):
    r = _row(op, shape, params, dtype)
    launches = {ph: (r[ph]["triton_launches"], r[ph]["aten_ops"]) for ph in ("fwd", "bwd")}
    assert r["launches"] <= MAX_LAUNCHES, launches
    assert r["host_syncs"] == 0
    assert r["fwd"]["triton_launches"] > 0


def test_lloyd_bookkeeping_is_one_small_launch_per_step():
    # range + initial centers: min/max pass + one launch; per step: one count pass + one update;
    # the final count + its normalization; backward: one pass; no aten op at all
    r = _row("quantize_count", S2, {"levels": 128, "iters": 3})
    assert (r["fwd"]["triton_launches"], r["fwd"]["aten_launches"]) == (2 + 2 * 3 + 2, 0)
    assert (r["bwd"]["triton_launches"], r["bwd"]["aten_launches"]) == (1, 0)


# --------------------------------------------------------------------------- spills (sm_90)
def _spill_jobs():
    """The kernels that spilled before issue 13, at their GPU launch configuration for
    (B, N, L, D) = (8, 128², 128, 64), float32 input, both merge modes."""
    import sstkd.kernels.quantize as K

    B, N, L, D = 8, 128 * 128, 128, 64
    cfg = K.launch_config(B, N, L, interpreted=False)
    gt, bd = K.grad_table_config(cfg, D, N, interpreted=False)
    co, bm = K.cooc_config(cfg, N, L, interpreted=False)
    f32, i32 = "*fp32", "i32"
    pix = dict(LOG_L=cfg.LOG_L, KERNEL=0)
    jobs = []
    for det in (False, True):
        jobs.append((K._count_kernel, dict(S=f32, CEN=f32, MASS=f32, MOMENT=f32, N=i32, L=i32, P=i32, CHUNK=i32),
                     dict(pix, WITH_MOMENT=True, DETERMINISTIC=det, BLOCK_N=cfg.BLOCK_N, BLOCK_L=cfg.BLOCK_L),
                     90, cfg.num_warps))
        jobs.append((K._reproject_grad_table_kernel,
                     dict(S=f32, CEN=f32, G=f32, GT=f32, N=i32, D=i32, L=i32, P=i32, sgb=i32, sgd=i32, sgn=i32,
                          CHUNK=i32),
                     dict(pix, DETERMINISTIC=det, BLOCK_N=gt.BLOCK_N, BLOCK_D=bd, BLOCK_L=gt.BLOCK_L,
                          ONE_L_TILE=L <= gt.BLOCK_L),
                     90, cfg.num_warps))
    jobs.append((K._cooc_partial_kernel, dict(S=f32, CEN=f32, OFF="*i32", PART=f32, H=i32, W=i32, L=i32, P=i32,
                                              NUM_OFF=i32, CHUNK=i32),
                 dict(pix, BLOCK_N=co.BLOCK_N, BLOCK_M=bm), 90, cfg.num_warps))
    return jobs


def test_quantize_kernels_do_not_spill_on_sm90():
    jobs = _spill_jobs()
    for job, f in zip(jobs, compile_facts_many(jobs)):
        name = f"{job[0].fn.__name__} {job[2].get('DETERMINISTIC', '')}"
        assert f.complete, f"{name}: {f.missing}"
        assert f.spill_stores == 0 and f.spill_loads == 0, f"{name}: spills {f.spill_stores}/{f.spill_loads} B"
        assert f.stack == 0 and f.local == 0, f"{name}: {f.stack} B stack, {f.local} B local memory"


def _grad_table_jobs(ptr):
    import sstkd.kernels.quantize as K

    B, N, L, D = 8, 128 * 128, 128, 64
    cfg = K.launch_config(B, N, L, interpreted=False)
    gt, bd = K.grad_table_config(cfg, D, N, interpreted=False)
    f32, i32 = "*fp32", "i32"
    sig = dict(S=ptr, CEN=f32, G=ptr, GT=f32, N=i32, D=i32, L=i32, P=i32, sgb=i32, sgd=i32, sgn=i32, CHUNK=i32)
    jobs = [(K._reproject_grad_table_kernel, sig,
             dict(LOG_L=cfg.LOG_L, KERNEL=0, DETERMINISTIC=det, BLOCK_N=gt.BLOCK_N, BLOCK_D=bd,
                  BLOCK_L=gt.BLOCK_L, ONE_L_TILE=L <= gt.BLOCK_L), 90, cfg.num_warps) for det in (False, True)]
    return jobs


# compiled in the session's compile process while other tests run
prefetch("facts", _spill_jobs() + _grad_table_jobs("*fp32") + _grad_table_jobs("*bf16"))


@pytest.mark.parametrize("ptr", ["*fp32", "*bf16"])
def test_reproject_grad_table_kernel_does_not_spill_for_either_pointer_dtype(ptr):
    # the bf16 variant of the register-tile product spilled 40 B where the fp32 one did not
    jobs = _grad_table_jobs(ptr)
    for job, f in zip(jobs, compile_facts_many(jobs)):
        name = f"{ptr} DETERMINISTIC={job[2]['DETERMINISTIC']}"
        assert f.complete, f"{name}: {f.missing}"
        assert f.spill_stores == 0 and f.spill_loads == 0, f"{name}: spills {f.spill_stores}/{f.spill_loads} B"
        assert f.stack == 0 and f.local == 0, f"{name}: {f.stack} B stack, {f.local} B local memory"


def test_reproject_predicted_fwd_bwd_time_is_no_worse_than_before_the_spill_fix(monkeypatch):
    # a count-derived prediction (static SASS × loop trips × programs / H200 issue rate, bytes /
    # copy bandwidth), deterministic: 1.49 ms was the tl.dot version's (bench/results/static-20261201)
    from sstkd.benchmarks import compile_facts as cf

    # the report's sm_90 compiles run in the session's compile process (the same compile_facts_many
    # there, interpreter off) instead of a process of their own
    monkeypatch.setattr(cf, "compile_facts_many", compile_facts_many)
    rep = cost.cost_report(["reproject"], ("fp32",), new_shapes=False)
    (row,) = rep["rows"]
    p = row["predicted"]
    assert p["issue_known"], rep["facts_note"]
    assert p["predicted_ms"] <= 1.49, p
