"""Issue 2's CPU benchmark of the reference texture ops, with peers side by side in the same run.

CPU, ``torch.set_num_threads(2)``, float32, ``backend="torch"``:

* every reference op at ``(2, 64, 128, 128)``: ``lp_dec``, ``lp_rec``,
  ``dfb_dec`` (3 levels), ``contourlet_dec`` / ``contourlet_energy``
  (``nlevs = [3, 3]``); the quantization ops on ``(4, 128·128)`` intensities
  with 128 levels (``quantize_count`` with ``iters`` 0 and 3, ``reproject``
  with a ``(4, 64, 128)`` table, ``cooccurrence`` on ``(4, 128, 128)``);
  forward and forward+backward; median and IQR of per-call times, achieved
  GB/s against the copy bandwidth measured in the same run, peak memory
  (CPU allocator events seen by ``torch.profiler``).
* peers: one ``lp_dec`` level vs kornia's ``build_laplacian_pyramid(x, 2)``
  (target: ours ≤ 1.5× kornia's time, forward); ``quantize_count`` +
  ``reproject`` vs a dense STLNet-style QCO (target: ≥ 3× faster, ≥ 4× less
  peak memory) — forward+backward by ``bench/bench_reference_ops_quantize.py``
  (alternating timing, peak RSS in a fresh process) and forward only by
  :mod:`sstkd.benchmarks.peers` (allocator peak).

    python bench/bench_reference_ops.py [--repeats 15] [--out bench/results] [--no-write]

Writes ``<out>/reference-ops-<device-slug>-<YYYYMMDD>.{json,md}``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
IMAGE = (2, 64, 128, 128)
QCO = (4, 128 * 128)
LEVELS, TABLE_D = 128, 64


def _quantize_helper():
    """``bench/bench_reference_ops_quantize.py`` as a module, or None when it is not there."""
    path = HERE / "bench_reference_ops_quantize.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("bench_reference_ops_quantize", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(repeats: int, log=print) -> dict:
    from sstkd.benchmarks import op_suite, peers, report, roofline, runner

    device = torch.device("cpu")
    meta = runner.collect_meta(device, quick=False, command=" ".join(["python"] + sys.argv))  # load at start
    cfg = op_suite.TimingConfig(warmup=2, repeat=repeats, max_seconds=15.0, warmup_seconds=0.5)
    bw = roofline.copy_bandwidth(device, 128 * 2**20, repeat=10)
    log(f"CPU {report.cpu_name()}, {torch.get_num_threads()} threads, float32; copy bandwidth {bw['gbps']:.1f} GB/s")
    b, n = QCO
    side = int(n**0.5)
    cases = op_suite.build_cases(False, images=[("issue-2", IMAGE)], intensities=[("issue-2", (b, side, n // side))],
                                 table_channels=[TABLE_D])
    rows = []
    for case in cases:
        copies = [op_suite.make_inputs(case, device, torch.float32, seed=i) for i in range(2)]
        for mode in ("fwd", "fwd+bwd"):
            row = op_suite.run_cell(case, "torch", "fp32", mode, copies, device, cfg, bw["gbps"])
            rows.append(row)
            log(op_suite.format_row(row))

    peer_rows = []
    cases_p, skipped = peers.peer_cases(IMAGE, QCO, levels=LEVELS, table_channels=TABLE_D)
    for why in skipped:
        log(f"peer skipped: {why}")
    peer_rows += peers.run_peers(cases_p, device, warmup=2, repeat=repeats, copies=2, log=log,
                                 modes=("fwd", "fwd+bwd"))
    for r in peer_rows:  # the forward+backward QCO verdict comes from the quantize helper below
        if r.get("comparison", "").startswith("quantize_count") and r.get("mode") == "fwd":
            r["comparison"] += " (forward only)"

    helper = _quantize_helper()
    qco_fb = None
    if helper is None:
        log("bench/bench_reference_ops_quantize.py not found: forward+backward QCO comparison left out")
    else:
        log("\n--- bench/bench_reference_ops_quantize.py (forward + backward, peak RSS per fresh process) ---")
        qco_fb = helper.main(["--repeats", str(repeats)])
        qco_fb["meets_target"] = qco_fb["speedup"] >= peers.QCO_MIN_SPEEDUP and \
            qco_fb["memory_ratio"] >= peers.QCO_MIN_MEM_RATIO
    return {"meta": dict(meta, copy_bandwidth=bw, image_shape=list(IMAGE), qco_shape=list(QCO), levels=LEVELS,
                         table_channels=TABLE_D),
            "ops": rows, "peers": peer_rows, "qco_fwd_bwd": qco_fb, "load_average_at_end": runner.load_average()}


def to_markdown(res: dict) -> str:
    from sstkd.benchmarks import report

    m = res["meta"]
    lines = [f"# Reference ops on the CPU — {m['device_name']} ({m['date']})", "",
             f"* {m['threads']} threads, float32, `backend=\"torch\"`; torch {m['torch']}; "
             f"command: `{m['command']}`",
             f"* measured copy bandwidth: {m['copy_bandwidth']['gbps']:.1f} GB/s; load average (1/5/15 min) at start "
             f"{m.get('load_average_at_start')}, at end {res.get('load_average_at_end')} on {m.get('cpu_count')} CPUs",
             f"* image ops at {tuple(m['image_shape'])}; quantization ops on {tuple(m['qco_shape'])} intensities, "
             f"L = {m['levels']}, reproject table D = {m['table_channels']}", "", "## Ops", ""]
    lines += report.ops_table(res["ops"])
    bad = [r for r in res["ops"] if r["status"] != "ok"]
    if bad:
        lines += ["", "### Not run", ""] + report.skipped_table(res["ops"])
    lines += ["", "## Peers", ""] + report.peers_table(res["peers"])
    q = res.get("qco_fwd_bwd")
    if q:
        r = q["results"]
        lines += ["", "### quantize_count + reproject vs dense STLNet QCO, forward + backward "
                      "(bench/bench_reference_ops_quantize.py)", "",
                  "| variant | median ms | peak RSS increase MiB |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['median_s'] * 1e3:.1f} | {v['peak_bytes'] / 2**20:.1f} |" for k, v in r.items()]
        lines += ["", f"sstkd vs dense: {q['speedup']:.2f}× faster, {q['memory_ratio']:.2f}× less peak memory — "
                      f"target ≥ 3× and ≥ 4×: {'met' if q['meets_target'] else '**missed**'}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15, help="timed calls per cell (default 15)")
    p.add_argument("--out", default=str(HERE / "results"), help="output folder (default bench/results)")
    p.add_argument("--no-write", action="store_true", help="print only, write no files")
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    res = run(a.repeats)
    md = to_markdown(res)
    print("\n" + md)
    if not a.no_write:
        from sstkd.benchmarks import report

        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"reference-ops-{report.result_stem('cpu')}"
        (out / f"{stem}.json").write_text(json.dumps(report._jsonable(res), indent=1) + "\n")
        (out / f"{stem}.md").write_text(md)
        print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
