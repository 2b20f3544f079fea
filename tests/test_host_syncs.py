"""Host syncs of a loss step: zero in SSTKDLoss forward + backward with the default config.

A sync (``.item()``, ``bool(t)``, ``.tolist()``, a data-dependent shape, a tensor
built from host data) makes the host wait for the GPU and prevents CUDA-graph
capture. ``HostSyncCounter`` sees the same aten ops on the CPU, so these counts
are the ones a CUDA step makes (the extension's C++ ops make none; see csrc/).
"""
from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from sstkd.debug import HostSyncCounter, debug_checks
from sstkd.distill import SSTKDConfig, SSTKDLoss


def test_the_counter_sees_every_kind_of_sync():
    x = torch.randn(4)
    with HostSyncCounter() as c:
        (x * 2 + 1).sum()
    assert c.syncs == 0 and c.host_copies == 0, c.report()
    with HostSyncCounter() as c:
        x.sum().item()
        bool(x.sum() > 0)
        x.tolist()
        torch.nonzero(x > 0)
        x[x > 0]
        torch.unique(x)
        torch.equal(x, x)
    assert c.syncs >= 7, c.report()
    with HostSyncCounter() as c:
        torch.tensor([1.0, 2.0])
    assert c.host_copies == 1 and c.syncs == 0, c.report()


@contextlib.contextmanager
def _kernels_recorded_not_run():
    """Triton launches in the interpreter are recorded instead of executed: the launchers'
    Python (where a sync would be) runs in full. The float tensors a quantization kernel gets
    are zero-filled, so the centers its kernels would compute hold defined (sorted) values for
    the debug checks; the other kernels' tensors are left alone (some are cached tap tables)."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(self.fn.__name__)
        if self.fn.__module__.endswith("kernels.quantize"):
            with torch.no_grad():
                for a in args:
                    if isinstance(a, torch.Tensor) and a.is_floating_point():
                        a.data.zero_()  # (.data: autograd does not see this write)

    with mock.patch.object(InterpretedFunction, "run", record):
        yield launches


def _loss_step(backend: str):
    """One SSTKDLoss forward + backward (default config) at the smallest contourlet size."""
    torch.manual_seed(0)
    b, k, cs, ct, h = 1, 3, 2, 3, 16
    crit = SSTKDLoss(cs, ct, k, SSTKDConfig(backend=backend))
    s_log = torch.randn(b, k, 2 * h, 2 * h, requires_grad=True)
    t_log = torch.randn(b, k, 2 * h, 2 * h)
    s_low = torch.randn(b, cs, h, h, requires_grad=True)
    t_low = torch.randn(b, ct, h, h)

    def step():
        out = crit(s_log, t_log, s_low, t_low)
        out["loss"].backward()
        return out

    return step


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sstkd_loss_step_never_waits_for_the_host(backend):
    ctx = _kernels_recorded_not_run() if backend == "triton" else contextlib.nullcontext([])
    with ctx as launches:
        step = _loss_step(backend)
        out = step()  # first call: per-shape caches (filters, band sizes) are built here, once
        assert set(out) >= {"pi", "ho", "str", "sta", "loss"}
        with HostSyncCounter() as c:
            step()
        assert c.syncs == 0, f"{backend}: host syncs in a loss step: {c.report()}"
        assert c.host_copies == 0, f"{backend}: host data copied every step: {c.report()}"
        if backend == "triton":
            assert len(launches) > 0, launches  # the Triton path was taken
        # the value checks are behind the debug switch: on, they sync (and are counted)
        with debug_checks(True), HostSyncCounter() as c:
            step()
        assert c.syncs > 0, c.report()


@pytest.mark.parametrize("where", ["s_low", "t_low"])
def test_a_nan_feature_without_debug_checks_gives_nan_terms_not_an_error(where, monkeypatch):
    """docs/method.md: with value checks off, NaN propagates (every statistical term is NaN)."""
    monkeypatch.delenv("SSTKD_DEBUG_CHECKS", raising=False)
    torch.manual_seed(0)
    crit = SSTKDLoss(2, 3, 3, SSTKDConfig(backend="torch"))
    args = {"s_logits": torch.randn(1, 3, 32, 32, requires_grad=True), "t_logits": torch.randn(1, 3, 32, 32),
            "s_low": torch.randn(1, 2, 16, 16, requires_grad=True), "t_low": torch.randn(1, 3, 16, 16)}
    with torch.no_grad():
        args[where][0, 0, 3, 5] = float("nan")
    out = crit(**args)
    for k in ("sta", "sta_hist", "sta_cdf", "sta_map", "sta_range", "str", "loss"):
        assert torch.isnan(out[k]), k
    assert torch.isfinite(out["pi"]) and torch.isfinite(out["ho"])
    out["loss"].backward()  # no error, no hang


def test_nan_intensities_through_the_triton_quantize_kernels_do_not_crash(monkeypatch):
    from sstkd import ops

    monkeypatch.delenv("SSTKD_DEBUG_CHECKS", raising=False)
    s = torch.rand(2, 40)
    s[0, 7] = float("nan")
    s.requires_grad_(True)
    centers, hist = ops.quantize_count(s, 8, iters=2, quantiles=(0.1, 0.9), backend="triton")
    mapped = ops.reproject(hist.cumsum(1)[:, None], s, centers, backend="triton")
    (hist.sum() + mapped.sum()).backward()
    assert torch.isnan(centers[0]).all() and torch.isfinite(centers[1]).all()
    assert torch.isfinite(hist[1]).all() and torch.isfinite(mapped[1]).all()
