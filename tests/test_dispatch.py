"""Backend dispatch, `sstkd info` and import hygiene."""
import os
import subprocess
import sys

import pytest
import torch

from sstkd.ops import dispatch


def test_unknown_backend_names_argument():
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="backend"):
        dispatch.resolve_backend("lp_dec", "magic", x)
    with pytest.raises(ValueError, match="backend"):
        dispatch.backend_status("magic")


def test_auto_on_cpu_is_torch():
    assert dispatch.resolve_backend("lp_dec", "auto", torch.randn(1, 1, 8, 8)) == "torch"


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    x = torch.randn(1, 1, 8, 8)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            dispatch.resolve_backend("lp_dec", "cuda", x)
    # import triton under the suite's TRITON_INTERPRET=1 first: a first import under 0 would leave
    # the interpreter unusable for the kernels of later tests
    dispatch.backend_status("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            dispatch.resolve_backend("lp_dec", "triton", x)


def test_op_not_implemented_by_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch.BACKEND_MODULES["triton"], "TABLE", {})
    with pytest.raises(RuntimeError, match="does not implement"):
        dispatch.resolve_backend("lp_dec", "triton", torch.randn(1, 1, 8, 8))


def test_ops_raise_on_unknown_backend():
    from sstkd import ops

    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="backend"):
        ops.lp_dec(x, backend="nope")
    with pytest.raises(ValueError, match="backend"):
        ops.contourlet_dec(x, [2], backend="nope")
    with pytest.raises(ValueError, match="backend"):
        ops.quantize_count(torch.rand(1, 10), 4, backend="nope")


def _run(*args, env=None):
    e = dict(os.environ)
    e.pop("TRITON_INTERPRET", None)
    e.update(env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e, timeout=300)


def test_import_is_light_and_info_runs(capsys):
    # Importing sstkd must not import triton or the extension (a fresh process); `sstkd info` lists
    # every backend (its command, in this process).
    import json

    from sstkd import cli

    r = _run("-c", "import sys, sstkd, sstkd.ops; print('triton' in sys.modules, 'sstkd._C' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "triton", "backend", "cuda"):
        assert word in out
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["backends"]) == {"torch", "triton", "cuda"}
    assert info["backends"]["torch"]["available"] is True


def test_cli_help_everywhere(capsys):
    from sstkd import cli

    r = _run("-m", "sstkd", "--help")  # the entry point, once in a fresh process
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr
    for cmd in cli.COMMANDS:  # every command's parser, in this process (one torch import, not one each)
        with pytest.raises(SystemExit) as exit_:
            cli.main([cmd, "--help"])
        assert exit_.value.code == 0, cmd
        assert "usage" in capsys.readouterr().out.lower(), cmd


def test_composed_op_runs_the_backends_passes_and_the_best_available_for_the_rest(monkeypatch):
    # A backend with only an LP pass (like "cuda"): contourlet_dec composes its LP with the torch DFB.
    import types

    from sstkd import ops
    from sstkd.ops.backends import torch as torch_backend

    calls = []

    def lp_dec(x, filt):
        calls.append(tuple(x.shape))
        return torch_backend.TABLE["lp_dec"](x, filt)

    fake = types.SimpleNamespace(TABLE={"lp_dec": lp_dec}, DTYPES={}, unavailable_reason=lambda device=None: None,
                                 available_reason=lambda: "LP only", ready_for_auto=lambda: False)
    monkeypatch.setitem(dispatch.BACKEND_MODULES, "lp_only", fake)
    assert dispatch.implements("lp_only", "contourlet_dec") and not dispatch.implements("lp_only", "dfb_dec")
    x = torch.randn(1, 2, 24, 24, dtype=torch.float64)
    low, bands = ops.contourlet_dec(x, [2, 2], backend="lp_only")
    assert calls == [(1, 2, 24, 24), (1, 2, 12, 12)]  # both pyramid levels ran on the backend's LP
    ref_low, ref_bands = ops.contourlet_dec(x, [2, 2], backend="torch")
    torch.testing.assert_close(low, ref_low, rtol=0, atol=0)
    for a, b in zip([t for lv in bands for t in lv], [t for lv in ref_bands for t in lv]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="does not implement dfb_dec"):
        ops.dfb_dec(x, 2, backend="lp_only")
    # bad input: the same error whatever the backend
    for b in ("torch", "lp_only", "triton"):
        with pytest.raises(ValueError, match=r"^x: height 18 is not valid for nlevs=\[3\]"):
            ops.contourlet_dec(torch.zeros(1, 1, 18, 16), [3], backend=b)
        with pytest.raises(TypeError, match="^nlevs"):
            ops.contourlet_energy(torch.zeros(1, 1, 24, 16), 2, backend=b)


# --------------------------------------------------------------------------- auto's preference
def _prediction(tmp_path, ops):
    import json

    (tmp_path / dispatch.PREDICTION_FILE).write_text(json.dumps({"kind": "sstkd static prediction", "ops": ops}))
    dispatch.reload_preferences()


def test_auto_order_follows_the_static_prediction_until_gpu_timings_exist(tmp_path, monkeypatch):
    import json

    monkeypatch.setattr(dispatch, "_results_dir", lambda: str(tmp_path))
    assert dispatch.auto_order("lp_dec") == (dispatch.DEFAULT_AUTO_ORDER, dispatch.auto_order("lp_dec")[1])
    assert "no static cost report prediction" in dispatch.auto_order("lp_dec")[1]
    assert "only triton implements it" in dispatch.auto_order("reproject")[1]
    _prediction(tmp_path, {
        "lp_dec": {"faster": "cuda", "basis": "bytes", "ms": {"triton": 0.3, "cuda": 0.1}, "order": ["cuda", "triton"]},
        "lp_rec": {"faster": None, "basis": "bytes", "ms": {"triton": 0.1, "cuda": 0.1}, "order": ["triton", "cuda"]},
        "contourlet_dec": {"order": ["cuda", "magic"]},  # not an order of fast backends: ignored
    })
    order, source = dispatch.auto_order("lp_dec")
    assert order == ("cuda", "triton", "torch")
    assert "static cost report backend-prediction.json" in source and "cuda predicted faster" in source
    assert "cuda 0.100 ms" in source
    order, source = dispatch.auto_order("lp_rec")
    assert order == ("triton", "cuda", "torch") and "a tie" in source
    assert dispatch.auto_order("contourlet_dec")[0] == dispatch.DEFAULT_AUTO_ORDER
    assert dispatch.preference_sources() == {"gpu_results": None,
                                             "static_prediction": str(tmp_path / dispatch.PREDICTION_FILE)}
    # committed GPU timings of both fast backends win over the prediction
    run = {"meta": {"device": "cuda:0 NVIDIA H200"}, "ops": [
        {"op": "lp_dec", "backend": "triton", "status": "ok", "median_ms": 0.2},
        {"op": "lp_dec", "backend": "cuda", "status": "ok", "median_ms": 0.5}]}
    (tmp_path / "gpu-h200-20270101.json").write_text(json.dumps(run))
    dispatch.reload_preferences()
    order, source = dispatch.auto_order("lp_dec")
    assert order == ("triton", "cuda", "torch") and source == "GPU results gpu-h200-20270101.json"
    assert dispatch.auto_order("lp_rec")[0] == ("triton", "cuda", "torch")  # not timed: the prediction still


def test_info_names_the_preference_source(tmp_path, monkeypatch):
    from sstkd import info

    monkeypatch.setattr(dispatch, "_results_dir", lambda: str(tmp_path))
    _prediction(tmp_path, {"lp_dec": {"faster": "cuda", "ms": {}, "order": ["cuda", "triton"]}})
    collected = info.collect()
    assert collected["auto"]["preference"]["lp_dec"]["order"] == ["cuda", "triton", "torch"]
    text = info.format_info(collected)
    assert "static cost report prediction " + str(tmp_path / dispatch.PREDICTION_FILE) in text
    assert "cuda > triton > torch" in text
