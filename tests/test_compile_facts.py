"""sstkd.benchmarks.compile_facts: sm_90 compile facts of tiny kernels whose SASS is known.

The tools (ptxas, cuobjdump) ship inside the pinned triton wheel: a missing
tool is a failure here, not a skip.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from sstkd.benchmarks import compile_facts as cf  # noqa: E402


@triton.jit
def _axpb_kernel(X, Y, a, b, n, BLOCK: tl.constexpr):
    """y = a·x + b on BLOCK elements per program: one FFMA per element."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(X + offs, mask=m)
    tl.store(Y + offs, a * x + b, mask=m)


@triton.jit
def _row_sum_kernel(X, Y, rows, W: tl.constexpr):
    """Y[j] = sum over a runtime number of rows of X[r, j]: one loop of W/threads FADDs per row."""
    cols = tl.arange(0, W)
    acc = tl.zeros((W,), tl.float32)
    for r in range(rows):
        acc += tl.load(X + r * W + cols)
    tl.store(Y + cols, acc)


_AXPB_SIG = {"X": "*fp32", "Y": "*fp32", "a": "fp32", "b": "fp32", "n": "i32"}
_ROWS_SIG = {"X": "*fp32", "Y": "*fp32", "rows": "i32"}


@pytest.fixture(scope="module")
def facts():
    """One child compile for all tests: axpb at sm_90 and sm_80, the row sum at sm_90."""
    return cf.compile_facts_many([
        (_axpb_kernel, _AXPB_SIG, {"BLOCK": 1024}, 90, 4),
        (_axpb_kernel, _AXPB_SIG, {"BLOCK": 1024}, 80, 4),
        (_row_sum_kernel, _ROWS_SIG, {"W": 512}, 90, 4, 1),
    ])


def test_tools_are_bundled_with_triton():
    for tool in ("ptxas", "cuobjdump"):
        path, why = cf.tool_path(tool)
        assert path is not None, why


def test_straight_line_kernel(facts):
    for f in facts[:2]:
        assert f.complete, f.missing
        assert f.kernel == "_axpb_kernel" and f.threads == 128
        assert 4 <= f.registers <= 32
        assert f.spill_stores == f.spill_loads == f.stack == f.local == 0
        s = f.summary()
        # 1024 elements / 128 threads = 8 per thread: 8 FFMA, vectorized 128-bit loads and stores
        assert s["fma"] == 8 and s["fmul"] == 0 and s["fadd"] == 0
        assert 1 <= s["ldg"] <= 8 and 1 <= s["stg"] <= 8
        assert s["bar"] == 0 and s["local_mem"] == 0
        assert s["total"] < 80
        per = f.per_output(1024)
        assert per["fma"] == 1.0
        assert per["total"] == s["total"] * 128 / 1024
        assert f.loops == []
        assert f.blocks_per_sm() == 16  # 2048 threads / 128, registers are not the limit
    assert facts[0].arch == 90 and facts[1].arch == 80


def test_loop_kernel(facts):
    f = facts[2]
    assert f.complete, f.missing
    assert f.num_stages == 1
    body = f.main_loop()
    s = f.summary(body.mix)
    # one row of 512 columns / 128 threads = 4 FADD and 4 loads (or one 128-bit load) per thread
    # and iteration (ptxas may unroll the loop: a multiple of that)
    assert s["fadd"] >= 4 and s["fadd"] % 4 == 0
    unroll = s["fadd"] // 4
    assert s["ldg"] in (unroll, 4 * unroll)
    assert s["stg"] == 0  # the store is after the loop
    assert s["bra"] >= 1
    per = f.loop_per_output(512 * unroll)
    assert per["fadd"] == 1.0


def test_parse_sass_counts_families_and_loops():
    listing = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   NOP ;
.L_x_0:
        /*0020*/                   FFMA R2, R3, R4, R2 ;
        /*0030*/              @!P0 IMAD.WIDE R4, R5, 0x4, R6 ;
        /*0040*/                   ISETP.GE.AND P0, PT, R7, 0x10, PT ;
        /*0050*/               @P0 BRA `(.L_x_0) ;
        /*0060*/                   EXIT ;
.L_x_1:
        /*0070*/                   BRA `(.L_x_1);
        /*0080*/                   FADD R1, R1, R2 ;
        /*0090*/                   BRA 0x80 ;
        /*00a0*/                   BRA 0x40 ;
"""
    mix, loops = cf.parse_sass(listing)
    assert mix == {"MOV": 1, "FFMA": 1, "IMAD": 1, "ISETP": 1, "BRA": 4, "EXIT": 1, "FADD": 1}
    # label loops (nvdisasm style) and address loops (cuobjdump style); forward branches are no loops
    assert [(lp.start, lp.end, lp.instructions) for lp in loops] == [(1, 4, 4), (3, 9, 7), (7, 8, 2)]
    assert loops[1].mix == {"ISETP": 1, "BRA": 4, "EXIT": 1, "FADD": 1}


def test_missing_tool_is_reported(monkeypatch):
    from triton_utils import aot_compile

    r = aot_compile(_axpb_kernel, _AXPB_SIG, {"BLOCK": 256}, 90, 2)
    real = cf.tool_path

    def fake(name):
        return (None, f"{name} is not bundled (test)") if name == "cuobjdump" else real(name)

    monkeypatch.setattr(cf, "tool_path", fake)
    f = cf.facts_from_asm("_axpb_kernel", r.asm, 90, 2)
    assert not f.complete
    assert f.missing == {"cuobjdump": "cuobjdump is not bundled (test)"}
    assert f.registers is not None and f.spill_stores == 0  # ptxas still ran
    assert f.sass is None and f.loops is None
    with pytest.raises(RuntimeError, match="cuobjdump is not bundled"):
        f.summary()


def test_tool_readings_are_cached_by_the_bytes_they_read(monkeypatch, tmp_path):
    from triton_utils import aot_compile

    monkeypatch.setenv("SSTKD_CACHE_DIR", str(tmp_path))
    r = aot_compile(_axpb_kernel, _AXPB_SIG, {"BLOCK": 256}, 90, 2)
    runs = []
    real_run = cf._run
    monkeypatch.setattr(cf, "_run", lambda cmd, timeout=300: runs.append(os.path.basename(cmd[0])) or real_run(cmd))
    first = cf.facts_from_asm("_axpb_kernel", r.asm, 90, 2)
    assert sorted(runs) == ["cuobjdump", "cuobjdump", "ptxas"] and first.complete
    again = cf.facts_from_asm("_axpb_kernel", r.asm, 90, 2)
    assert len(runs) == 3 and (again.registers, again.sass, again.loops) == (first.registers, first.sass, first.loops)
    assert len(os.listdir(tmp_path / "tool-runs")) == 3
    # other bytes are another reading: a cubin whose code changed is read again
    other = aot_compile(_axpb_kernel, _AXPB_SIG, {"BLOCK": 512}, 90, 2)
    cf.facts_from_asm("_axpb_kernel", other.asm, 90, 2)
    assert len(runs) == 6
    # a failed run is not cached
    monkeypatch.setattr(cf, "_run", lambda cmd, timeout=300: runs.append("x") or (1, "boom"))
    bad = cf.facts_from_asm("_axpb_kernel", dict(r.asm, ptx=r.asm["ptx"] + "\n// changed"), 90, 2)
    assert not bad.complete and "ptxas" in bad.missing and len(os.listdir(tmp_path / "tool-runs")) == 6


def test_the_compile_child_imports_from_this_process_working_directory(monkeypatch, tmp_path):
    # "" on sys.path (python -c, a REPL) is the working directory: the child gets it as an absolute path,
    # or it would import whichever checkout an editable install points at
    seen = {}

    def fake_run(cmd, env, **kw):
        seen["path"] = env["PYTHONPATH"].split(os.pathsep)
        raise RuntimeError("stop here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    monkeypatch.setattr(cf.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop here"):
        cf.compile_facts_many([(_axpb_kernel, _AXPB_SIG, {"BLOCK": 64})])
    assert seen["path"][0] == str(tmp_path) and "" not in seen["path"]


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="^arch: "):
        cf.compile_facts(_axpb_kernel, _AXPB_SIG, {"BLOCK": 64}, arch=75)
    with pytest.raises(ValueError, match="^num_warps: "):
        cf.compile_facts(_axpb_kernel, _AXPB_SIG, {"BLOCK": 64}, num_warps=3)
    with pytest.raises(TypeError, match="^signature: "):
        cf.compile_facts(_axpb_kernel, ["*fp32"], {"BLOCK": 64})
    with pytest.raises(ValueError, match="^asm: "):
        cf.facts_from_asm("k", {"ptx": ""}, 90, 4)
    with pytest.raises(ValueError, match="^registers"):
        cf.blocks_per_sm(0, 128)
    assert cf.blocks_per_sm(178, 128) == 2 and cf.blocks_per_sm(128, 128) == 4 and cf.blocks_per_sm(64, 128) == 8
