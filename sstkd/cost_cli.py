"""``sstkd cost``: the static GPU cost report (launches, bytes, host syncs, JIT variants,
sm_90 compile facts, predicted H200 times), computed on the CPU. See
:mod:`sstkd.benchmarks.cost` and ``bench/README.md``."""
from __future__ import annotations

import os


def add_arguments(parser) -> None:
    from sstkd.benchmarks import cost

    ops = [c[0] for c in cost.TRAINING_CASES]
    parser.add_argument("--ops", default=None, help=f"comma-separated ops (default: all): {', '.join(ops)}")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated dtypes of {list(cost.DTYPES)}")
    parser.add_argument("--backend", default=None, choices=cost.MEASURABLE,
                        help="the backend to measure (default triton); cuda: the extension's ops on meta tensors, "
                             "JIT-built here on first use (needs the CUDA toolkit, not a GPU)")
    parser.add_argument("--compare", action="store_true",
                        help="measure every op both Triton and CUDA implement with both, say which is predicted "
                             "faster, and write backend-prediction.{json,md} (what backend='auto' follows until GPU "
                             "timings are committed); no compile facts")
    parser.add_argument("--no-facts", action="store_true",
                        help="skip the sm_90 compilation (registers, spills, SASS; minutes for every variant)")
    parser.add_argument("--out", default=os.path.join("bench", "results"),
                        help="folder of static-<date>[-<tag>].{md,json} (cuda-static-... for --backend cuda; "
                             "default bench/results)")
    parser.add_argument("--tag", default=None, help="suffix of the file names, e.g. 'after' (letters, digits, -)")
    parser.add_argument("--force", action="store_true", help="replace report files that exist already")
    parser.add_argument("--print-only", action="store_true", help="print the table, write nothing")


def _csv(text: str, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name}: empty list")
    return items


def main(args) -> int:
    # the kernels must be interpreter objects (launches are recorded, never run): set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from sstkd.benchmarks import cost

    try:
        if args.tag is not None and not (args.tag and all(c.isalnum() or c == "-" for c in args.tag)):
            raise ValueError(f"--tag: letters, digits and '-' only, got {args.tag!r}")
        if args.compare and (args.backend is not None or args.tag is not None):
            raise ValueError("--compare measures both backends into backend-prediction.{json,md}: "
                             "drop --backend and --tag")
        if not args.print_only and not args.force:
            paths = ([os.path.join(args.out, cost.PREDICTION_FILE)] if args.compare
                     else cost.result_paths(args.out, tag=args.tag, backend=args.backend or "triton"))
            taken = [p for p in paths if os.path.exists(p)]
            if taken:
                hint = "--force" if args.compare else "--tag NAME for a new report or --force"
                raise ValueError(f"--out: {taken[0]} exists; pass {hint}")
        ops = _csv(args.ops, "--ops") if args.ops else None
        dtypes = _csv(args.dtypes, "--dtypes")
        if args.compare:
            comparison = cost.compare_backends(ops, dtypes)
        else:
            report = cost.cost_report(ops, dtypes, backend=args.backend or "triton", with_facts=not args.no_facts)
    except (ValueError, RuntimeError) as e:  # RuntimeError: a backend that cannot be measured here, and why
        print(f"sstkd cost: {e}")
        return 2
    if args.compare:
        print(cost.format_comparison(comparison))
        written = () if args.print_only else cost.write_prediction(comparison, args.out)
    else:
        print(cost.format_markdown(report))
        written = () if args.print_only else cost.write_results(report, args.out, tag=args.tag)
    for p in written:
        print(f"wrote {p}")
    return 0
