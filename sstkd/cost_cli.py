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
    parser.add_argument("--no-facts", action="store_true",
                        help="skip the sm_90 compilation (registers, spills, SASS; minutes for every variant)")
    parser.add_argument("--out", default=os.path.join("bench", "results"),
                        help="folder of static-<date>[-<tag>].{md,json} (default bench/results)")
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
        if not args.print_only and not args.force:
            taken = [p for p in cost.result_paths(args.out, tag=args.tag) if os.path.exists(p)]
            if taken:
                raise ValueError(f"--out: {taken[0]} exists; pass --tag NAME for a new report or --force")
        ops = _csv(args.ops, "--ops") if args.ops else None
        report = cost.cost_report(ops, _csv(args.dtypes, "--dtypes"), with_facts=not args.no_facts)
    except ValueError as e:
        print(f"sstkd cost: {e}")
        return 2
    print(cost.format_markdown(report))
    if not args.print_only:
        for p in cost.write_results(report, args.out, tag=args.tag):
            print(f"wrote {p}")
    return 0
