"""sm_90 compile facts (registers, spills, SASS per output element) of the DFB ladder and LP
kernels at their GPU launch configurations, measured on a machine without a GPU.

    python bench/bench_compile_facts.py [--tag before] [--out bench/results] [--arch 90] [--no-write] [--cuda-only]

``--cuda-only``: the CUDA whole-plane DFB only (nvcc from the CUDA toolkit; no Triton compiles).

Writes ``<out>/compile-facts-<YYYYMMDD>[-<tag>].md`` (see sstkd.benchmarks.kernel_facts).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", default="", help="file name suffix, e.g. 'before'")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--arch", type=int, default=90, choices=(80, 90), help="compute capability")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--cuda-only", action="store_true", help="only the CUDA whole-plane DFB (nvcc)")
    args = ap.parse_args(argv)
    from sstkd.benchmarks.kernel_facts import cuda_dfb_jobs, dfb_ladder_jobs, lp_jobs, markdown, measure

    shape = (8, 256, 128, 128)
    parts = [f"# Compile facts of the DFB ladder and LP kernels (sm_{args.arch}, input {shape})", ""]
    if not args.cuda_only:
        jobs = dfb_ladder_jobs("fp32", shape, args.arch) + dfb_ladder_jobs("bf16", shape, args.arch)[:1]
        parts.append(markdown(measure(jobs), "DFB ladder kernel (per output = per sub-band pixel of the pass)"))
        parts.append(markdown(measure(lp_jobs("fp32", shape, args.arch) + lp_jobs("bf16", shape, args.arch)),
                              "LP kernels (per output = per full-res pixel, steady-state loop body)"))
    parts.append(markdown(measure(cuda_dfb_jobs(shape, args.arch)),
                          "CUDA whole-plane DFB (backend='cuda'; ladder block per output = per sub-band pixel; "
                          "256-thread blocks)"))
    text = "\n".join(parts)
    print(text)
    if not args.no_write:
        os.makedirs(args.out, exist_ok=True)
        tag = f"-{args.tag}" if args.tag else ""
        path = os.path.join(args.out, f"compile-facts-{datetime.date.today():%Y%m%d}{tag}.md")
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
