"""The test session's compile process (tests/triton_utils.CompileService): jobs sent ahead are
answered to the test that asks, a bad job's error reaches the test that asked for it and no other,
and a job is compiled once."""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, os.path.dirname(__file__))
import triton_utils  # noqa: E402
from test_compile_facts import _AXPB_SIG, _axpb_kernel  # noqa: E402

pytestmark = pytest.mark.skipif(not triton_utils._interpreted(_axpb_kernel),
                                reason="kernels compile in this process here (no compile process)")


def _spec(sig, block):
    return (triton_utils._kernel_ref(_axpb_kernel), dict(sig), {"BLOCK": block}, 90, 4)


def test_jobs_sent_ahead_are_answered_and_a_bad_job_fails_only_its_own_test():
    service = triton_utils.CompileService()  # its own process: the session's one stays untouched
    try:
        good, bad = _spec(_AXPB_SIG, 128), _spec(dict(_AXPB_SIG, nope="i32"), 128)
        service.submit("aot", [good, bad])  # one batch, failing as a whole in the child
        (result,) = service.run("aot", [good])  # sent again alone: this test's job compiles
        assert result["name"] == "_axpb_kernel" and len(result["asm"]["cubin"]) > 0
        with pytest.raises(RuntimeError, match=r"AOT compilation failed:[\s\S]*nope.*not arguments"):
            service.run("aot", [bad])
        sent = []
        real = service._proc.stdin.write
        service._proc.stdin.write = lambda b: sent.append(b) or real(b)
        assert service.run("aot", [good]) == [result] and not sent  # compiled once
    finally:
        service.close()
    assert service._proc is None
