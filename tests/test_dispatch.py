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


def test_import_is_light_and_info_runs():
    # Importing sstkd must not import triton or the extension; `sstkd info` lists every backend.
    r = _run("-c", "import sys, sstkd, sstkd.ops; print('triton' in sys.modules, 'sstkd._C' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    r = _run("-m", "sstkd", "info")
    assert r.returncode == 0, r.stderr
    for word in ("torch", "triton", "backend", "cuda"):
        assert word in r.stdout
    r = _run("-m", "sstkd", "info", "--json")
    import json

    info = json.loads(r.stdout)
    assert set(info["backends"]) == {"torch", "triton", "cuda"}
    assert info["backends"]["torch"]["available"] is True


def test_cli_help_everywhere():
    from sstkd import cli

    for cmd in cli.COMMANDS:
        r = _run("-m", "sstkd", cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "usage" in r.stdout.lower()
