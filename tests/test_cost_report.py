"""The static GPU cost report: recorder faithfulness, budgets on today's counts, shape-agnostic compiles.

Budgets are upper bounds on deterministic counts at the training shape (meta tensors, kernels recorded
not run): they pin today's numbers so they cannot get worse; issue 13 tightens them.
"""
import os

import pytest
import torch

from sstkd.benchmarks import cost
from sstkd.benchmarks.recorder import record

TRAIN = (8, 256, 128, 128)
NLEVS = {"nlevs": [3, 3]}


def _row(op, shape, params, dtype=torch.float32, new_shapes=(), backend="triton"):
    return cost.case_row(op, shape, params, dtype, new_shapes=new_shapes, backend=backend)


def test_recording_on_meta_matches_real_cpu_tensors():
    # the meta shortcut counts what real (interpreted) tensors count, at a small shape
    shape = (1, 2, 32, 32)
    meta, _, _ = cost.measure("contourlet_energy", shape, {"nlevs": [2, 2]}, device="meta")
    cpu, _, _ = cost.measure("contourlet_energy", shape, {"nlevs": [2, 2]}, device="cpu")
    for ph in ("fwd", "bwd"):
        assert [l.kernel for l in meta.triton(ph)] == [l.kernel for l in cpu.triton(ph)]
        assert [l.grid for l in meta.triton(ph)] == [l.grid for l in cpu.triton(ph)]
        assert [l.bytes for l in meta.triton(ph)] == [l.bytes for l in cpu.triton(ph)]
        assert [a.name for a in meta.aten_ops(ph)] == [a.name for a in cpu.aten_ops(ph)]
    assert len(meta.triton()) > 0


def test_recorded_kernels_do_not_run_and_inputs_survive():
    x = torch.randn(4, 16, 32, 32)
    before = x.clone()
    with record(protect=[x]) as rec:
        from sstkd.ops import lp_dec

        low, band = lp_dec(x, backend="triton")
    assert torch.equal(x, before)
    assert len(rec.triton()) == 1 and rec.triton()[0].kernel == "_lp_analysis_kernel"
    assert torch.count_nonzero(band) == 0  # the kernel was recorded, not executed (output zero-filled)
    # GPU geometry, not the interpreter's (which puts 1024 lanes in a program)
    assert rec.triton()[0].constexprs["BLOCK"] == 128


def test_host_syncs_are_counted():
    x = torch.randn(4, 4)
    with record() as rec:
        bool((x > 0).any())
        float(x.sum())
    assert rec.host_syncs() == 2


def test_bytes_model_counts_each_distinct_tensor_once():
    x = torch.randn(2, 3, 16, 16)
    with record(protect=[x]) as rec:
        from sstkd.ops import lp_dec

        lp_dec(x, backend="triton")
    esize = 4
    n = x.numel()
    taps = rec.triton()[0].bytes - (n + n // 4 + n) * esize
    assert 0 < taps < 1024  # x, low, band and the small tap table


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_contourlet_energy_budget_today(dtype):
    r = _row("contourlet_energy", TRAIN, NLEVS, dtype)
    assert r["fwd"]["triton_launches"] + r["bwd"]["triton_launches"] <= 54
    assert r["fwd"]["aten_launches"] + r["bwd"]["aten_launches"] <= (23 if dtype == torch.float32 else 27)
    assert r["modeled_x"] <= (57 if dtype == torch.float32 else 122)
    assert r["host_syncs"] == 0
    assert r["compulsory_x"] == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("op,shape,params,launches,modeled_x", [
    ("contourlet_dec", TRAIN, NLEVS, 40, 39),
    ("dfb_dec", TRAIN, {"levels": 3}, 18, 27),
    ("lp_dec", TRAIN, {}, 2, 4.6),
    ("quantize_count", (8, 128 * 128), {"levels": 128, "iters": 3}, 60, 14),
    ("reproject", (8, 128 * 128), {"levels": 128, "channels": 64}, 21, 207),
    ("cooccurrence", (8, 128, 128), {"levels": 128}, 27, 27),
])
def test_op_budgets_today(op, shape, params, launches, modeled_x):
    r = _row(op, shape, params)
    assert r["launches"] <= launches
    assert r["modeled_x"] <= modeled_x
    assert r["modeled_bytes"] >= r["fwd"]["triton_bytes"] > 0


def test_quantization_host_syncs_today():
    # quantize_count: 1 (finite input check); reproject: 4; cooccurrence: 3 (issue 12 §2 takes them to 0)
    assert _row("quantize_count", (8, 128 * 128), {"levels": 128, "iters": 3})["host_syncs"] <= 1
    assert _row("reproject", (8, 128 * 128), {"levels": 128, "channels": 64})["host_syncs"] <= 4
    assert _row("cooccurrence", (8, 128, 128), {"levels": 128})["host_syncs"] <= 3


def test_new_training_shapes_add_at_most_a_quarter_more_compiles():
    base, added = set(), set()
    for op, shape, params in cost.TRAINING_CASES:
        rec, _, _ = cost.measure(op, shape, params)
        variants = rec.variants()
        base |= variants
        for s in cost.NEW_SHAPES[len(shape)]:
            r2, _, _ = cost.measure(op, s, params, warm=False)
            added |= r2.variants() - variants
    added -= base
    assert len(base) > 20
    assert len(added) <= 0.25 * len(base), (len(base), len(added))


def test_sizes_are_not_specialized():
    # the same kernel variant serves B, C, H, W that differ (but keep the launch geometry)
    a, _, _ = cost.measure("dfb_dec", (8, 256, 128, 128), {"levels": 3})
    b, _, _ = cost.measure("dfb_dec", (3, 17, 160, 96), {"levels": 3}, warm=False)
    assert b.variants() <= a.variants()


def test_report_rejects_unknown_names_and_formats(tmp_path):
    with pytest.raises(ValueError, match="ops"):
        cost.cost_report(["nope"], with_facts=False)
    with pytest.raises(ValueError, match="dtypes"):
        cost.cost_report(["lp_dec"], ("fp8",), with_facts=False)
    rep = cost.cost_report(["lp_dec"], ("fp32",), with_facts=False, new_shapes=False)
    md, js = cost.write_results(rep, str(tmp_path), date="20000101")
    text = open(md).read()
    assert "| lp_dec | (8, 256, 128, 128) | float32 | 1+0 | 1+0 |" in text
    assert js.endswith("static-20000101.json")


def test_loop_trips_follow_the_launch_arguments():
    rec, _, _ = cost.measure("lp_dec", TRAIN, {})
    lp = rec.triton("fwd")[0]
    assert cost.loop_trips(lp) == lp.scalars["ROWS"] + 7 > 7
    rec, _, _ = cost.measure("quantize_count", (8, 128 * 128), {"levels": 128, "iters": 3})
    count = next(l for l in rec.triton() if l.kernel == "_count_kernel")
    assert cost.loop_trips(count) == count.scalars["CHUNK"] // count.constexprs["BLOCK_N"]


def test_cli_writes_the_report_and_rejects_bad_names(tmp_path, capsys):
    from sstkd import cli

    assert cli.main(["cost", "--ops", "lp_dec", "--dtypes", "fp32", "--no-facts", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith("static-") and names[0].endswith(".json")
    assert cli.main(["cost", "--ops", "lp_dec", "--dtypes", "fp8", "--no-facts", "--print-only"]) == 2
    assert "dtypes" in capsys.readouterr().out
    # a report is never replaced silently: a second run needs --tag (a new file) or --force
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli.main(["cost", "--ops", "lp_dec", "--dtypes", "fp32", "--no-facts", "--out", str(tmp_path)]) == 2
    assert "--tag" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert cli.main(["cost", "--ops", "lp_dec", "--dtypes", "fp32", "--no-facts", "--out", str(tmp_path),
                     "--tag", "after"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if "-after." in p.name) == [
        names[0][:-len(".json")] + "-after.json", names[0][:-len(".json")] + "-after.md"]
    assert cli.main(["cost", "--ops", "lp_dec", "--no-facts", "--print-only", "--tag", "a b"]) == 2


def test_recording_leaves_cached_constants_alone():
    # the kernels' cached tap tables are launch arguments: a recording must not zero them
    from sstkd.ops import lp_dec

    x = torch.randn(2, 3, 16, 16)
    before = lp_dec(x, backend="triton")
    with record(protect=[x]):
        lp_dec(x, backend="triton")
    after = lp_dec(x, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert before[1].abs().sum() > 0


# --------------------------------------------------------------------------- the CUDA backend


def test_extension_ops_are_cuda_launches_not_aten_ops(cuda_ext):
    x = torch.empty(6, 16, 16, device="meta")
    with record() as rec:
        low, band = torch.ops.sstkd.lp_dec(x)
        (band * 2.0).sum()
    assert [(c.name, c.phase) for c in rec.cuda_ops()] == [("lp_dec", "fwd")]
    n = x.numel() * 4
    assert rec.cuda_ops()[0].bytes == n + n // 4 + n  # x, low, band: inputs and outputs, each once
    assert [a.name for a in rec.aten_ops()] == ["mul", "sum"]  # the aten ops around it, and not the op itself
    assert rec.triton() == [] and rec.host_syncs() == 0


def test_cuda_backend_measured_on_meta(cuda_ext):
    rec, args, _ = cost.measure("lp_dec", TRAIN, {}, backend="cuda")
    assert [c.name for c in rec.cuda_ops("fwd")] == ["lp_dec"]
    assert [c.name for c in rec.cuda_ops("bwd")] == ["lp_dec_backward"]
    assert rec.triton() == [] and rec.aten_ops() == []
    r = _row("lp_dec", TRAIN, {}, backend="cuda")
    assert (r["fwd"]["cuda_launches"], r["bwd"]["cuda_launches"], r["launches"]) == (1, 1, 2)
    # x, low, band each way: the compulsory traffic (Triton adds its small tap table)
    assert r["modeled_bytes"] == r["compulsory_bytes"]
    t = _row("lp_dec", TRAIN, {})
    assert 0 < t["modeled_bytes"] - r["modeled_bytes"] < 4096
    assert r["predicted"]["issue_known"] is False and r["predicted"]["issue_ms"] is None
    assert r["predicted"]["predicted_ms"] == pytest.approx(r["modeled_bytes"] / cost.H200_COPY_BW * 1e3)


def test_cuda_backend_errors_name_why(cuda_ext, monkeypatch):
    from sstkd.ops.backends import cuda

    with pytest.raises(ValueError, match="does not implement.*reproject"):
        cost.cost_report(["reproject"], ("fp32",), backend="cuda", with_facts=False)
    with pytest.raises(ValueError, match="backend"):
        cost.cost_report(["lp_dec"], ("fp32",), backend="torch", with_facts=False)
    with pytest.raises(RuntimeError, match="meta tensors only"):
        cost.measure("lp_dec", (1, 1, 16, 16), device="cpu", backend="cuda")
    # a composed op's passes the extension lacks come from Triton: no interpreter, no measurement
    with monkeypatch.context() as m:
        m.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match=r"passes \[.*'minmax'.*\] come from triton.*TRITON_INTERPRET=1"):
            cost.measure("quantize_count", (2, 64), {"iters": 3}, backend="cuda")
        assert cost.measure("lp_dec", (1, 1, 32, 32), backend="cuda")[0].cuda_ops()  # needs no Triton
    # an extension that cannot be loaded: the reason comes through
    monkeypatch.setitem(cuda._state, "module", None)
    monkeypatch.setattr(cuda, "_import_built", lambda: (None, "sstkd._C is not built"))
    monkeypatch.setenv("SSTKD_JIT", "0")
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot be measured here: .*SSTKD_JIT=0"):
        cost.cost_report(["lp_dec"], ("fp32",), backend="cuda", with_facts=False)


def test_cuda_report_and_cli(cuda_ext, capsys):
    from sstkd import cli

    rep = cost.cost_report(None, ("fp32",), backend="cuda", with_facts=False, new_shapes=False)
    assert [r["op"] for r in rep["rows"]] == cost.implemented("cuda", [c[0] for c in cost.TRAINING_CASES])
    assert "reproject" not in [r["op"] for r in rep["rows"]] and "lp_dec" in [r["op"] for r in rep["rows"]]
    text = cost.format_markdown(rep)
    assert "| lp_dec | (8, 256, 128, 128) | float32 | 1+0+0 | 1+0+0 |" in text
    assert cli.main(["cost", "--backend", "cuda", "--ops", "reproject", "--no-facts", "--print-only"]) == 2
    assert "does not implement" in capsys.readouterr().out


def _fake_row(launches, bandwidth_ms, predicted_ms, issue_known):
    return {"launches": launches, "predicted": {"bandwidth_ms": bandwidth_ms, "predicted_ms": predicted_ms,
                                                "issue_known": issue_known}}


def test_predicted_faster_compares_like_with_like():
    gap = cost.LAUNCH_GAP_S * 1e3
    # CUDA's issue time is not modeled: bytes against bytes, not against Triton's issue-bound time
    v = cost.predicted_faster({"triton": _fake_row(2, 0.14, 0.234, True), "cuda": _fake_row(2, 0.14, 0.14, False)})
    assert v["faster"] is None and v["basis"] == "bytes"
    assert v["ms"] == {"triton": pytest.approx(0.14 + 2 * gap), "cuda": pytest.approx(0.14 + 2 * gap)}
    # fewer bytes win ...
    v = cost.predicted_faster({"triton": _fake_row(4, 1.0, 3.0, True), "cuda": _fake_row(4, 0.2, 0.2, False)})
    assert v["faster"] == "cuda"
    # ... unless many more launches eat the saving
    v = cost.predicted_faster({"triton": _fake_row(11, 0.001, 0.2, True), "cuda": _fake_row(24, 0.0008, 0.0008, False)})
    assert v["faster"] == "triton"
    # both fully modeled: the whole prediction decides
    v = cost.predicted_faster({"triton": _fake_row(2, 0.1, 0.5, True), "cuda": _fake_row(2, 0.1, 0.2, True)})
    assert (v["faster"], v["basis"]) == ("cuda", "bytes+issue")


def test_compare_backends_and_the_prediction_file(cuda_ext, tmp_path, capsys):
    from sstkd import cli

    comp = cost.compare_backends(["lp_dec", "quantize_count"], ("fp32",))
    assert [(r["op"], r["dtype"]) for r in comp["rows"]] == [("lp_dec", "fp32"), ("quantize_count", "fp32")]
    lp = comp["ops"]["lp_dec"]
    assert lp["basis"] == "bytes" and lp["faster"] is None and lp["order"] == ["triton", "cuda"]  # same bytes
    q = comp["rows"][1]["backends"]
    assert q["cuda"]["launches"] > q["triton"]["launches"]
    with pytest.raises(ValueError, match="does not implement"):
        cost.compare_backends(["reproject"], ("fp32",))
    import fnmatch

    assert not fnmatch.fnmatch(cost.PREDICTION_FILE, "static-*.json")  # gpu-check reads those as cost reports
    js, md = cost.write_prediction(comp, str(tmp_path))
    assert js.endswith(cost.PREDICTION_FILE) and "| lp_dec | (8, 256, 128, 128) | fp32 |" in open(md).read()
    # the CLI: refuses to replace the prediction silently, and --compare measures both backends
    assert cli.main(["cost", "--compare", "--ops", "lp_dec", "--dtypes", "fp32", "--out", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().out
    assert cli.main(["cost", "--compare", "--backend", "cuda", "--print-only"]) == 2
    assert cli.main(["cost", "--compare", "--ops", "lp_rec", "--dtypes", "fp32", "--out", str(tmp_path),
                     "--force"]) == 0
    assert "| lp_rec | (8, 256, 128, 128) | fp32 |" in open(md).read()


def test_cuda_kernels_do_not_spill_on_sm90(cuda_ext):
    # issue 13: no register spills in any kernel on sm_90 -- the extension's kernels, read from its library
    rows, note = cost.cuda_kernel_facts(90)
    assert rows, note
    names = {r["kernel"] for r in rows}
    assert {"lp_level_kernel", "quantize_count_kernel"} <= names, names
    for r in rows:
        assert r["local"] == 0 and r["stack"] == 0, r
        assert 0 < r["registers"][0] <= r["registers"][1] <= 255, r
        assert r["sass"] and r["sass"][0] > 0, r
    text = "\n".join(cost._format_cuda_kernels(rows, note))
    assert "| lp_level_kernel |" in text


def test_cuda_report_files_are_not_read_as_triton_reports(cuda_ext, tmp_path):
    rep = cost.cost_report(["lp_dec"], ("fp32",), backend="cuda", with_facts=False, new_shapes=False)
    md, js = cost.write_results(rep, str(tmp_path), date="20000101")
    assert os.path.basename(js) == "cuda-static-20000101.json"
    assert open(md).read().startswith("# Static GPU cost report (20000101, backend cuda)")
    with pytest.raises(ValueError, match="backend"):
        cost.result_paths(str(tmp_path), backend="torch")
    from sstkd.gpucheck import run

    assert run.static_prediction(str(tmp_path))["file"] is None  # gpu-check's static-*.json: Triton reports only
