"""`sstkd demo --quick`: the whole multi-seed demo pipeline at smoke sizes writes the report and the figure."""
import os
import re

import pytest

from sstkd.engine.demo import RUNS, compare, demo_config_dir, parse_seeds, resolve_workers, run_demo


def test_demo_configs_are_the_documented_setup():
    from sstkd.engine.config import load_config

    cfgs = {run: load_config(os.path.join(demo_config_dir(), f"{run}.yaml")) for run in RUNS}
    students = [cfgs[r] for r in ("baseline", "kd", "sstkd")]
    # Same student, seed, schedule and data for the three students; only the method differs.
    for key in ("model", "seed", "train", "data"):
        assert all(c[key] == students[0][key] for c in students), key
    assert [c["method"] for c in students] == ["baseline", "kd", "sstkd"]
    assert cfgs["teacher"]["model"]["base_width"] > students[0]["model"]["base_width"]
    assert cfgs["kd"]["teacher"]["base_width"] == cfgs["teacher"]["model"]["base_width"]
    assert all(c["device"] == "cpu" for c in cfgs.values())


def test_quick_demo_over_two_seeds_in_two_processes_writes_report_and_figure(tmp_path):
    out = tmp_path / "demo"
    logs = []
    result = run_demo(str(out), quick=True, log=logs.append, seeds=(0, 1), workers=2)
    assert result["workers"] == 2 and result["seeds"] == (0, 1)
    report = (out / "report.md").read_text()
    # One table row per model: a parsed mIoU in [0, 100] per seed, the mean ± std, a positive time per iteration.
    for run, label in (("teacher", "teacher"), ("baseline", "student (baseline)"),
                       ("kd", "student + KD"), ("sstkd", "student + SSTKD")):
        row = next(line for line in report.splitlines() if line.startswith(f"| {label}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        seeds = (0,) if run == "teacher" else (0, 1)
        for i, seed in enumerate(seeds):
            miou = float(cells[2 + i])
            assert 0.0 <= miou <= 100.0
            assert abs(miou - 100 * result["results"][run][seed]["mIoU"]) < 0.006
            work_dir = out / run if run == "teacher" else out / run / f"seed{seed}"
            assert os.path.isfile(work_dir / "final_student.pt")
        if run != "teacher":
            mean = sum(result["results"][run][s]["mIoU"] for s in seeds) / 2
            assert cells[4].startswith(f"{100 * mean:.2f} ± ")
        assert float(cells[5]) > 0
    assert re.search(r"\| student \+ SSTKD.*\| [+-]\d+\.\d+ s \([+-]\d+%\) \|", report)
    assert "beyond the seed spread" in report and "What this shows and what it does not" in report
    # The students of one seed share the initialization: same seed, different seeds differ in the configs.
    import yaml
    seed_of = lambda run, s: yaml.safe_load((out / run / f"seed{s}" / "config.yaml").read_text())["seed"]
    assert [seed_of(r, s) for r in ("baseline", "kd", "sstkd") for s in (0, 1)] == [0, 1, 0, 1, 0, 1]
    png = (out / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert any("| model |" in line for line in logs)  # the table was printed


def _runs(values):
    return {seed: {"mIoU": v / 100} for seed, v in enumerate(values)}


def test_verdict_needs_the_mean_beyond_the_spread_and_every_seed_agreeing():
    kd = _runs([60.0, 62.0, 64.0])                       # std 2.0
    better = compare(kd, _runs([64.0, 64.5, 65.0]), "SSTKD", "KD")   # +2.5 > 2.0, every seed +
    assert better["verdict"] == "better" and better["diff"] == pytest.approx(2.5)
    assert better["spread"] == pytest.approx(2.0) and "beats KD beyond the seed spread" in better["text"]
    assert compare(kd, _runs([63.0, 64.0, 65.0]), "SSTKD", "KD")["verdict"] == "within spread"   # +2.0, not > 2.0
    wide = _runs([50.0, 62.0, 74.0])                     # std 12: +12.67 > 12, but seed 2 is worse (−1)
    assert compare(wide, _runs([75.0, 76.0, 73.0]), "SSTKD", "KD")["verdict"] == "within spread"
    worse = compare(kd, _runs([55.0, 57.0, 59.0]), "SSTKD", "KD")
    assert worse["verdict"] == "worse" and worse["paired"] == pytest.approx([-5.0, -5.0, -5.0])
    assert compare(_runs([60.0]), _runs([70.0]), "SSTKD", "KD")["verdict"] == "one seed"


def test_seed_and_worker_arguments_are_checked():
    assert parse_seeds("0, 1,2") == (0, 1, 2) and parse_seeds([3]) == (3,)
    for bad in ("a,b", "", "1,1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
    assert resolve_workers("auto", 1) == 1 and resolve_workers("3", 10) == 3
    with pytest.raises(ValueError, match="--workers"):
        resolve_workers("0", 4)
