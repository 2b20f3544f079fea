"""Issue 13's launch budgets of the quantization ops on the Triton backend, counted by the GPU
cost report (``sstkd.benchmarks.cost``: kernels recorded at their GPU launch geometry, aten ops
counted by a dispatch mode) at the training shape: 8 intensity maps of 128², 128 levels."""
from __future__ import annotations

import pytest

pytest.importorskip("triton")

from sstkd.benchmarks import cost  # noqa: E402

MAX_LAUNCHES = 12  # forward + backward, Triton + aten
S2 = (8, 128 * 128)


def _row(op, shape, params):
    # real CPU tensors (the kernels are recorded, not run; what they would write is zero-filled)
    return cost.case_row(op, shape, params, device="cpu")


@pytest.mark.parametrize("op,shape,params", [
    ("quantize_count", S2, {"levels": 128, "iters": 3}),
    ("quantize_count", S2, {"levels": 128, "iters": 3, "quantiles": (0.01, 0.99)}),
    ("quantize_count", S2, {"levels": 128, "iters": 3, "kernel": "stlnet"}),
    ("reproject", S2, {"levels": 128, "channels": 64}),
    ("cooccurrence", (8, 128, 128), {"levels": 128}),
])
def test_quantization_launches_fwd_bwd(op, shape, params):
    r = _row(op, shape, params)
    launches = {ph: (r[ph]["triton_launches"], r[ph]["aten_ops"]) for ph in ("fwd", "bwd")}
    assert r["launches"] <= MAX_LAUNCHES, launches
    assert r["host_syncs"] == 0
    assert r["fwd"]["triton_launches"] > 0


def test_lloyd_bookkeeping_is_one_small_launch_per_step():
    # range + initial centers: min/max pass + one launch; per step: one count pass + one update;
    # the final count + its normalization; no aten op at all
    r = _row("quantize_count", S2, {"levels": 128, "iters": 3})
    assert (r["fwd"]["triton_launches"], r["fwd"]["aten_launches"]) == (2 + 2 * 3 + 2, 0)
    assert (r["bwd"]["triton_launches"], r["bwd"]["aten_launches"]) == (2, 0)
