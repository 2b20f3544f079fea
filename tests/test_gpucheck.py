"""make gpu-check: its CPU dry run end to end, and the pieces that keep a GPU run inside its budget."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sstkd.gpucheck import run as gc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_passes_and_writes_one_small_results_folder(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "sstkd.gpucheck", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    files = sorted(os.listdir(out))
    assert len(files) <= gc.MAX_FILES and {"summary.md", "results.json", "matrix.txt"} <= set(files), files
    summary = (out / "summary.md").read_text()
    assert "Verdict: PASS" in summary and len(summary.splitlines()) <= 60
    res = json.loads((out / "results.json").read_text())
    st = res["stages"]
    for name in ("env", "matrix", "determinism", "timing", "train_step"):
        assert st[name]["status"] == "ok", (name, st[name].get("reason"), st[name].get("note"))
    for name in ("ext", "sanitizer"):  # GPU-only: skipped, saying why
        assert st[name]["status"] == "skipped" and "no CUDA device" in st[name]["reason"]
    rows = st["matrix"]["rows"]
    assert rows and all(r["ok"] for r in rows) and st["matrix"]["units_done"] == st["matrix"]["units"]
    assert any(r["op"] == "contourlet_energy[nlevs=[3, 3]]" for r in rows)  # the training-shape case
    assert st["determinism"]["rows"] and all(r["ok"] for r in st["determinism"]["rows"])
    assert res["workers_start"] == "forked from one fork server"
    assert any(r.get("status") == "ok" for r in st["timing"]["rows"])
    # a results folder is never mixed with an earlier run's
    p2 = subprocess.run([sys.executable, "-m", "sstkd.gpucheck", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
    assert p2.returncode == 2 and "not empty" in p2.stdout


def test_a_stage_past_its_budget_is_killed_and_recorded(tmp_path):
    r = gc.Runner(str(tmp_path), True, time.monotonic() + 60, fork=False)  # fresh processes, as on the GPU
    t0 = time.monotonic()
    res = r.worker("sleepy", "no-such-kind", {}, 30)  # an unknown worker fails, recorded
    assert res["status"] == "error" and "KIND: expected one of env, matrix" in res["reason"]
    assert r.server is None
    from sstkd.gpucheck import workers

    assert set(workers.KINDS) == set(workers.WORKERS)  # the command-line check knows every worker
    run = r.command("sleep", [sys.executable, "-c", "import time; time.sleep(30)"], 1.0)
    assert run["timed_out"] and time.monotonic() - t0 < 25


def test_forked_workers_fail_and_time_out_like_spawned_ones(tmp_path):
    """The dry run's fork server: a bad worker fails, recorded; one past its budget is killed; closing
    the runner stops the server."""
    r = gc.Runner(str(tmp_path), True, time.monotonic() + 120)
    assert r.fork
    res = r.worker("bad", "no-such-kind", {}, 30)
    assert res["status"] == "error" and "KIND: expected one of env, matrix" in res["reason"], res
    # 20 interpreted checks of the training-shape case: far more than the 1 s budget
    units = [{"cases": [2], "dtypes": ["fp32"], "layouts": ["contiguous"]}] * 20
    with open(tmp_path / "slow.spec.json", "w") as f:
        json.dump({"units": units, "backends": ["triton"], "dry_run": True}, f)
    t0 = time.monotonic()
    run = r.forked("slow", ["matrix", str(tmp_path / "slow.spec.json"), str(tmp_path / "slow.json")], 1.0)
    assert run["timed_out"] and run["rc"] == -signal.SIGKILL and time.monotonic() - t0 < 20, run
    assert not (tmp_path / "slow.json").exists()  # killed before it could write a result
    server = r.server
    r.close()
    assert server.proc.poll() == 0 and r.server is None


def test_the_gpu_plan_deals_every_unit_once_and_covers_the_training_shape():
    from sstkd.gpucheck.workers import matrix_cases

    shards, n_units = gc.plan_matrix(False, 12)
    units = [u for s in shards for u in s]
    assert len(units) == n_units and len(shards) == 12
    cases = matrix_cases(False)
    dealt = sorted((i, d) for u in units for i in u["cases"] for d in u["dtypes"])
    assert len(dealt) == len(set(dealt))
    assert {i for i, _ in dealt} == set(range(len(cases)))
    train = [c for c in cases if c.name == "contourlet_energy[nlevs=[3, 3]]"]
    assert [(c.label, c.shape) for c in train] == [("8x256x128x128", (8, 256, 128, 128))]


def test_static_prediction_is_read_from_the_newest_cost_report(tmp_path):
    assert gc.static_prediction(str(tmp_path)) == {"file": None, "by_op": {}}
    row = {"op": "contourlet_energy", "shape": [8, 256, 128, 128], "params": {"nlevs": [3, 3]}, "dtype": "float32",
           "predicted": {"predicted_ms": 5.25}}
    (tmp_path / "static-20261130.json").write_text(json.dumps({"rows": [dict(row, predicted={"predicted_ms": 9.0})]}))
    (tmp_path / "static-20261201.json").write_text(json.dumps({"rows": [row]}))
    got = gc.static_prediction(str(tmp_path))
    assert got["by_op"] == {gc.static_key("contourlet_energy", "nlevs=[3, 3]", "8x256x128x128"): 5.25}
    table = gc.timing_table([{"op": "contourlet_energy", "params": "nlevs=[3, 3]", "shape": "8x256x128x128",
                              "mode": "fwd+bwd", "backend": "triton", "status": "ok", "median_ms": 7.5,
                              "pct_copy_bw": 1.2}], got)
    assert "| 7.500 |" in table[-1] and table[-1].endswith("| 1.2 | 5.250 |")
    # a tagged report of the same day is newer when it says when it was written, whatever its name
    (tmp_path / "static-20261201-after.json").write_text(json.dumps(
        {"rows": [dict(row, predicted={"predicted_ms": 1.5})], "written": "2026-12-01T23:00:00"}))
    assert list(gc.static_prediction(str(tmp_path))["by_op"].values()) == [1.5]


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--budget", "-1"]])
def test_bad_options_are_refused(argv, capsys):
    import argparse

    p = argparse.ArgumentParser()
    gc.add_arguments(p)
    assert gc.main(p.parse_args(argv + ["--dry-run"])) == 2
    assert argv[0] in capsys.readouterr().out


def test_sanitizer_stage_runs_both_tools_and_reads_their_error_summaries(tmp_path, monkeypatch):
    """A stand-in compute-sanitizer (the real one needs a GPU) prints each tool's summary line."""
    tool = tmp_path / "bin" / "compute-sanitizer"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\necho "args: $*"\nif [ "$2" = racecheck ]; then n=3; else n=0; fi\n'
                    'echo "========= ERROR SUMMARY: $n errors"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    r = gc.Runner(str(tmp_path), False, time.monotonic() + 60)
    res = gc.stage_sanitizer(r, 30, cuda_ext=False)
    assert res["tool"] == str(tool)
    assert res["memcheck"]["status"] == "ok" and res["memcheck"]["errors"] == 0
    assert res["racecheck"]["status"] == "fail" and res["racecheck"]["errors"] == 3
    assert res["status"] == "fail"
    assert "--tool memcheck" in res["memcheck"]["tail"] and "sstkd.gpucheck.workers sanitize_target" in res["memcheck"]["tail"]


def test_ext_stage_reports_a_failed_build_with_its_reason(tmp_path):
    r = gc.Runner(str(tmp_path), False, time.monotonic() + 60)
    res = gc.stage_ext(r, {"status": "error", "reason": "RuntimeError: no nvcc"}, 10)
    assert res["status"] == "fail" and "no nvcc" in res["reason"]
