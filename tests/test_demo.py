"""`sstkd demo --quick`: the whole demo pipeline at smoke sizes writes the report and the figure."""
import os
import re

from sstkd.engine.demo import RUNS, demo_config_dir, run_demo


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


def test_quick_demo_writes_report_and_figure(tmp_path):
    out = tmp_path / "demo"
    logs = []
    result = run_demo(str(out), quick=True, log=logs.append)
    report = (out / "report.md").read_text()
    # One table row per model, with a parsed mIoU in [0, 100] and a positive time per iteration.
    for run, label in (("teacher", "teacher"), ("baseline", "student (baseline)"),
                       ("kd", "student + KD"), ("sstkd", "student + SSTKD")):
        row = next(line for line in report.splitlines() if line.startswith(f"| {label}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        miou, spi = float(cells[2]), float(cells[4])
        assert 0.0 <= miou <= 100.0 and spi > 0
        assert abs(miou - 100 * result["results"][run]["mIoU"]) < 0.006
        assert os.path.isfile(out / run / "final_student.pt")
    assert re.search(r"\| student \+ SSTKD.*\| [+-]\d+\.\d+ s \([+-]\d+%\) \|", report)
    assert "What this shows and what it does not" in report
    png = (out / "figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert any("| model |" in line for line in logs)  # the table was printed
