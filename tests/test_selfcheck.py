"""backend="auto" trusts a fast backend on a device only after its first-use self-check."""
import json
import logging
import os
import warnings

import pytest
import torch

from sstkd.ops import dispatch, selfcheck

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(selfcheck.CACHE_ENV, str(tmp_path))
    selfcheck.forget()
    yield tmp_path
    selfcheck.forget()


def _entries(tmp_path):
    with open(os.path.join(tmp_path, "selfcheck.json")) as f:
        return next(iter(json.load(f).values()))


def test_cache_dir_respects_overrides(monkeypatch, tmp_path):
    assert selfcheck.cache_dir() == str(tmp_path)
    monkeypatch.delenv(selfcheck.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert selfcheck.cache_dir() == os.path.join("/xdg", "sstkd")


def test_triton_passes_on_cpu_interpreter_and_is_logged_and_cached(_cache, caplog):
    assert selfcheck.check("lp_dec", "triton", CPU) == "pass"
    with caplog.at_level(logging.INFO, logger="sstkd"):
        assert dispatch.auto_backend("lp_dec", CPU) == "triton"
    assert sum("passed its self-check" in r.message for r in caplog.records) == 1
    assert _entries(_cache) == {"lp_dec/triton": "pass"}


def test_cached_verdict_is_reused(_cache, monkeypatch):
    assert selfcheck.trusted("lp_dec", "triton", CPU)
    selfcheck.forget()  # a new process: only the file remains

    def boom(*a, **k):
        raise AssertionError("the cached verdict must be used")

    monkeypatch.setattr(selfcheck, "check", boom)
    assert selfcheck.trusted("lp_dec", "triton", CPU)


def test_wrong_kernel_warns_once_names_the_op_and_falls_back(_cache, monkeypatch):
    real = dispatch.table("triton")["lp_dec"]

    def wrong(*args, **kwargs):
        low, band = real(*args, **kwargs)
        return low * 1.5, band

    monkeypatch.setitem(dispatch.table("triton"), "lp_dec", wrong)
    with pytest.warns(RuntimeWarning, match="lp_dec.*failed its self-check"):
        assert dispatch.auto_backend("lp_dec", CPU) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.auto_backend("lp_dec", CPU) == "torch"  # no second warning
    assert _entries(_cache)["lp_dec/triton"].startswith("fail: output differs")


def test_wrong_gradient_fails_the_check(monkeypatch):
    import sstkd.kernels.laplacian as K

    right = K._LPAnalysis.backward

    class Wrong(K._LPAnalysis):
        @staticmethod
        def backward(ctx, g_low, g_out):
            gx, *rest = right(ctx, g_low, g_out)
            return (-gx, *rest)

    monkeypatch.setattr(K, "_LPAnalysis", Wrong)
    assert selfcheck.check("lp_dec", "triton", CPU).startswith("fail: gradient differs")


def test_auto_on_cpu_tensors_never_runs_a_check(monkeypatch):
    monkeypatch.setattr(selfcheck, "check", lambda *a: pytest.fail("no self-check for CPU tensors"))
    assert dispatch.resolve_backend("lp_dec", "auto", torch.zeros(1, 1, 8, 8)) == "torch"


def test_a_pass_is_vouched_for_by_its_composed_op(_cache):
    assert selfcheck.checked_op("dfb_energy") == "contourlet_energy"
    assert selfcheck.checked_op("level_sums") == "quantize_count"
    assert selfcheck.checked_op("lp_dec") == "lp_dec"
    with pytest.raises(ValueError, match="nope"):
        selfcheck.checked_op("nope")


def test_auto_order_says_where_it_comes_from():
    order, source = dispatch.auto_order("quantize_count")
    assert order[0] == "triton" and "static cost report" in source


def test_info_says_where_autos_preference_comes_from():
    from sstkd import info

    text = info.format_info(info.collect())
    assert "self-check" in text
    assert "contourlet_energy" in text and "static cost report" in text


def test_dispatch_hook_is_installed_and_checked():
    assert dispatch._auto_check is selfcheck.trusted
    with pytest.raises(TypeError, match="fn"):
        dispatch.set_auto_check("not callable")
