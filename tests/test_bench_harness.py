"""The benchmark harness (sstkd.benchmarks, `sstkd bench`): timing stats, roofline bytes, reports, the CLI."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from sstkd.benchmarks import op_suite, peers, report, roofline, timing, train_step


# ----------------------------------------------------------------------------- timing


def test_summarize_quantiles():
    st = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0], "perf_counter")
    assert (st.median_ms, st.q1_ms, st.q3_ms, st.min_ms, st.max_ms) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert st.iqr_ms == 2.0 and st.mean_ms == 3.0 and st.repeats == 5
    assert timing.summarize([1.0, 2.0], "x").median_ms == 1.5  # interpolated like numpy
    with pytest.raises(ValueError, match="samples_ms"):
        timing.summarize([], "x")
    with pytest.raises(ValueError, match="samples_ms"):
        timing.summarize([1.0, float("nan")], "x")


def test_time_fn_measures_and_rotates_inputs():
    seen = []

    def fn(i):
        seen.append(i)
        time.sleep(0.002)

    st = timing.time_fn(fn, [0, 1, 2], warmup=2, repeat=6)
    assert st.repeats == 6 and st.method == "perf_counter"
    assert 2.0 <= st.median_ms < 100.0
    assert st.q1_ms <= st.median_ms <= st.q3_ms and st.min_ms <= st.q1_ms
    assert seen == [0, 1, 2, 0, 1, 2, 0, 1]  # warm-up and timed calls walk the copies in turn
    # warm-up continues for warmup_seconds of wall time, then timing starts
    seen.clear()
    timing.time_fn(fn, [0], warmup=1, repeat=2, warmup_seconds=0.02)
    assert len(seen) >= 2 + 1 + 2  # >= 0.02 s of 2 ms calls would be ~10; be lenient with slow clocks
    # the time cap stops early, but never below min_repeat samples
    capped = timing.time_fn(fn, [0], warmup=0, repeat=1000, max_seconds=0.0, min_repeat=3)
    assert capped.repeats == 3


def test_time_fn_rejects_bad_arguments():
    with pytest.raises(TypeError, match="fn"):
        timing.time_fn(3, [0])
    with pytest.raises(ValueError, match="inputs"):
        timing.time_fn(print, [])
    with pytest.raises(ValueError, match="repeat"):
        timing.time_fn(print, [0], repeat=0)
    with pytest.raises(ValueError, match="method"):
        timing.time_fn(print, [0], method="stopwatch")
    with pytest.raises(ValueError, match="method"):
        timing.time_fn(print, [0], device="cpu", method="events")


def test_cpu_peak_memory_sees_temporaries():
    n = 1 << 20  # 4 MiB of float32

    def work():
        a = torch.ones(n)
        b = a * 2  # 8 MiB alive at the peak
        return b.sum()

    peak = timing.measure_peak_memory(work, "cpu")
    assert peak is not None
    assert 8 * 2**20 <= peak < 64 * 2**20
    small = timing.measure_peak_memory(lambda: torch.ones(16).sum(), "cpu")
    assert small is not None and small < peak


# ----------------------------------------------------------------------------- roofline


def test_op_bytes_formulas():
    f4 = torch.float32
    # lp_dec: x (16) -> low (4) + band (16); backward moves the same
    assert roofline.op_bytes("lp_dec", "fwd", (1, 1, 4, 4), f4) == 36 * 4
    assert roofline.op_bytes("lp_dec", "bwd", (1, 1, 4, 4), f4) == 36 * 4
    assert roofline.op_bytes("lp_dec", "fwd+bwd", (1, 1, 4, 4), torch.bfloat16) == 72 * 2
    assert roofline.op_bytes("dfb_dec", "fwd", (2, 3, 8, 8), f4, levels=3) == 2 * 384 * 4
    # contourlet [3, 3] of 32x32: bands 1024 (fine) + 256 (coarse) + lowpass 64
    assert roofline.op_bytes("contourlet_dec", "fwd", (1, 1, 32, 32), f4, nlevs=[3, 3]) == (1024 + 1344) * 4
    # a 0 in nlevs is a wavelet level: 3 sub-bands of a quarter size
    assert roofline.op_bytes("contourlet_dec", "fwd", (1, 1, 32, 32), f4, nlevs=[0]) == (1024 + 768 + 256) * 4
    # energies: K = 1 + 8 + 8 values per image; backward re-reads x
    assert roofline.op_bytes("contourlet_energy", "fwd", (2, 1, 32, 32), f4, nlevs=[3, 3]) == (2048 + 34) * 4
    assert roofline.op_bytes("contourlet_energy", "bwd", (2, 1, 32, 32), f4, nlevs=[3, 3]) == (34 + 4096) * 4
    assert roofline.op_bytes("quantize_count", "fwd", (4, 100), f4, levels=8) == (400 + 64) * 4
    assert roofline.op_bytes("reproject", "fwd", (2, 10), f4, levels=4, channels=3) == (24 + 20 + 8 + 60) * 4
    assert roofline.op_bytes("cooccurrence", "fwd", (1, 4, 4), f4, levels=2) == (16 + 2 + 4) * 4


def test_op_bytes_rejects_bad_input():
    with pytest.raises(ValueError, match="op"):
        roofline.op_bytes("fft", "fwd", (1, 1, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        roofline.op_bytes("lp_dec", "sideways", (1, 1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        roofline.op_bytes("lp_dec", "fwd", (4, 4))
    with pytest.raises(ValueError, match="nlevs"):
        roofline.op_bytes("contourlet_dec", "fwd", (1, 1, 32, 32))
    with pytest.raises(ValueError, match="levels"):
        roofline.op_bytes("quantize_count", "fwd", (1, 8))


def test_copy_bandwidth_and_achieved():
    bw = roofline.copy_bandwidth("cpu", 4 * 2**20, repeat=3, warmup=1)
    assert bw["nbytes"] == 4 * 2**20 and 0.05 < bw["gbps"] < 10_000
    assert roofline.achieved_gbps(2_000_000, 1.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="ms"):
        roofline.achieved_gbps(1, 0.0)


# ----------------------------------------------------------------------------- suite, peers


def _tiny_case(op):
    """lp_dec's spec with ``op(x, backend=...)`` in place of the public op."""
    from sstkd.ops.specs import Case, get_spec

    return Case(dataclasses.replace(get_spec("lp_dec"), op=op), "tiny", (1, 1, 8, 8), {})


def test_failing_op_becomes_error_row_and_missing_backend_is_skipped():
    def broken(x, backend):
        raise RuntimeError("kernel exploded")

    case = _tiny_case(broken)
    copies = [op_suite.make_inputs(case, torch.device("cpu"), torch.float32)]
    row = op_suite.run_cell(case, "torch", "fp32", "fwd", copies, torch.device("cpu"),
                            op_suite.TimingConfig(warmup=0, repeat=1), None)
    assert row["status"] == "error" and "kernel exploded" in row["reason"]

    ok = _tiny_case(lambda x, backend: (x * 2, x.sum()))
    row = op_suite.run_cell(ok, "torch", "fp32", "fwd+bwd", copies, torch.device("cpu"),
                            op_suite.TimingConfig(warmup=1, repeat=3), copy_gbps=10.0)
    assert row["status"] == "ok" and row["median_ms"] > 0 and row["min_bytes"] == 2 * 144 * 4
    assert row["pct_copy_bw"] == pytest.approx(100 * row["gbps"] / 10.0)

    ok_, why = op_suite.backend_availability("cuda", "lp_dec", torch.device("cpu"), quick=True)
    assert not ok_ and why
    ok_, why = op_suite.backend_availability("compile", "lp_dec", torch.device("cpu"), quick=True)
    assert not ok_ and "quick" in why


def test_run_suite_validates_names():
    with pytest.raises(ValueError, match="ops"):
        op_suite.run_suite(torch.device("cpu"), quick=True, ops=["fft"])
    with pytest.raises(ValueError, match="backends"):
        op_suite.run_suite(torch.device("cpu"), quick=True, backends=["numpy"])


def test_speedups_pair_rows_of_the_same_cell():
    base = {"op": "lp_dec", "params": "", "shape": "1x1x8x8", "dtype": "fp32", "mode": "fwd", "status": "ok"}
    rows = [dict(base, backend="torch", median_ms=4.0), dict(base, backend="triton", median_ms=1.0),
            dict(base, backend="cuda", mode="bwd", median_ms=1.0)]
    op_suite.add_speedups(rows)
    assert rows[1]["speedup_vs_torch"] == 4.0 and "speedup_vs_torch" not in rows[2]


def test_dense_stlnet_qco_matches_ours():
    ops = pytest.importorskip("sstkd.ops")
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 300, generator=g, dtype=torch.float64)
    table = torch.randn(2, 3, 16, generator=g, dtype=torch.float64)
    dense = peers.stlnet_dense_qco(s, 16, table)
    ours = peers.ours_qco(ops, s, 16, table)
    for a, b in zip(ours, dense):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- train step, report, CLI


def test_overheads_from_variant_times():
    res = {"variants": [{"name": "student", "status": "ok", "median_ms": 100.0},
                        {"name": "kd", "status": "ok", "median_ms": 150.0},
                        {"name": "sstkd_reference", "status": "ok", "median_ms": 250.0},
                        {"name": "sstkd_fused", "status": "ok", "median_ms": 160.0}]}
    train_step.summarize_overheads(res)
    assert [v["overhead"] for v in res["variants"]] == [0.0, 0.5, 1.5, pytest.approx(0.6)]
    assert res["texture_ms_reference"] == 100.0 and res["texture_ms_fused"] == pytest.approx(10.0)
    assert res["fused_texture_speedup"] == pytest.approx(10.0)
    assert res["texture_overhead_fused"] == pytest.approx(0.1)


def _fake_result():
    row = {"op": "lp_dec", "params": "", "shape_name": "tiny", "shape": "1x1x8x8", "backend": "torch",
           "dtype": "fp32", "mode": "fwd", "status": "ok", "reason": "", **timing.summarize([1.0, 2.0, 3.0], "p").to_dict(),
           "peak_mem_bytes": 2**20, "min_bytes": 144, "gbps": 0.5, "pct_copy_bw": 5.0, "speedup_vs_torch": 1.0}
    skipped = dict(row, backend="triton", status="skipped", reason="no GPU")
    ts = {"status": "ok", "reason": "", "config": dataclass_dict(), "fused_backends": {"quantize_count": "torch"},
          "variants": [{"name": "student", "status": "ok", **timing.summarize([10.0, 11.0], "p").to_dict()},
                       {"name": "sstkd_fused", "status": "skipped", "reason": "no fused backend"}]}
    train_step.summarize_overheads(ts)
    return {"meta": {"device": "cpu", "device_name": "Test CPU", "date": "2030-01-02", "copy_bandwidth":
                     {"gbps": 10.0, "nbytes": 2**20}}, "ops": [row, skipped], "peers": [], "train_step": ts}


def dataclass_dict():
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(train_step.TrainStepConfig()).items()}


def test_write_report_files(tmp_path):
    res = _fake_result()
    paths = report.write_report(res, tmp_path / "out", "test-cpu-20300102")
    data = json.loads(paths["json"].read_text())
    assert data["ops"][0]["median_ms"] == 2.0 and data["ops"][1]["status"] == "skipped"
    md = paths["md"].read_text()
    assert "| lp_dec |" in md and "no GPU" in md and "Test CPU" in md and "sstkd_fused" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="stem"):
        report.write_report(res, tmp_path, "../escape")
    with pytest.raises(TypeError, match="result"):
        report.write_report([], tmp_path, "x")
    assert report.result_stem("cpu").startswith("cpu")
    assert report._slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_cli_quick_lp_dec_writes_files(tmp_path, capsys):
    pytest.importorskip("sstkd.ops")
    from sstkd import cli

    rc = cli.main(["bench", "--quick", "--ops", "lp_dec", "--out", str(tmp_path)])
    assert rc == 0
    stem = report.result_stem("cpu")
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    ok = [r for r in data["ops"] if r["status"] == "ok"]
    assert {r["op"] for r in data["ops"]} == {"lp_dec"}
    assert {(r["dtype"], r["mode"]) for r in ok if r["backend"] == "torch"} == {
        (d, m) for d in ("fp32", "bf16") for m in ("fwd", "bwd", "fwd+bwd")}
    assert all(r["median_ms"] > 0 and r["gbps"] > 0 for r in ok)
    assert {r["backend"] for r in data["ops"] if r["status"] == "skipped"} >= {"compile", "cuda"}
    assert data["train_step"] is None and data["meta"]["copy_bandwidth"]["gbps"] > 0
    md = (tmp_path / f"{stem}.md").read_text()
    ops_section = md.split("## Ops")[1].split("###")[0]
    assert ops_section.count("| lp_dec |") == len(ok)
    assert "kornia" in md  # the peer of lp_dec ran in the same run
    assert "wrote" in capsys.readouterr().out


def test_count_kernels_skips_views():
    x = torch.randn(4, 4)
    n, per_op = roofline.count_kernels(lambda: (x.view(16) * 2).t().sum())
    assert per_op == {"mul": 1, "sum": 1} and n == 2
    assert roofline.count_launches(lambda: x + 1, "cpu") == 1
    assert roofline.count_launches(lambda: x + 1, "cpu", allow_aten_count=False) is None


def test_time_interleaved_alternates():
    order = []
    stats = timing.time_interleaved({"a": (lambda i: order.append(("a", i)), [0, 1]),
                                     "b": (lambda i: order.append(("b", i)), [7])}, warmup=1, rounds=3)
    assert order == [("a", 0), ("b", 7), ("a", 1), ("b", 7), ("a", 0), ("b", 7), ("a", 1), ("b", 7)]
    assert stats["a"].repeats == stats["b"].repeats == 3
    with pytest.raises(ValueError, match="fns"):
        timing.time_interleaved({})
