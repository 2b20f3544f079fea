"""``sstkd bench``: time every texture op × backend, peers, and the training-step overhead.

Results go to ``<out>/<device-slug>-<YYYYMMDD>.{json,md,png}`` (default
``bench/results``). The harness lives in :mod:`sstkd.benchmarks`; see
``bench/README.md`` for what is measured and how to read it.
"""
from __future__ import annotations

import os


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            import argparse

            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(choices)}")
        return items

    return parse


def add_arguments(parser) -> None:
    from sstkd.benchmarks import op_suite, runner

    parser.add_argument("--quick", action="store_true",
                        help="reduced suite (small shapes, few repeats): a few minutes on a 2-core CPU")
    parser.add_argument("--ops", type=_csv(op_suite.OPS), default=None,
                        help=f"comma-separated ops (default: all): {', '.join(op_suite.OPS)}")
    parser.add_argument("--backends", type=_csv(op_suite.BACKENDS), default=list(op_suite.BACKENDS),
                        help="comma-separated backends (default: all; unavailable ones are reported as skipped)")
    parser.add_argument("--dtypes", type=_csv(tuple(op_suite.DTYPES)), default=["fp32", "bf16"],
                        help="comma-separated dtypes (default: fp32,bf16)")
    parser.add_argument("--modes", type=_csv(op_suite.MODES), default=list(op_suite.MODES),
                        help="comma-separated modes (default: fwd,bwd,fwd+bwd)")
    parser.add_argument("--train-step", nargs="?", const="yes", choices=["yes", "no", "only"], default=None,
                        help="training-step overhead: yes (default without --ops), no, or only (skip the ops)")
    parser.add_argument("--no-peers", action="store_true", help="skip the kornia / dense-QCO comparisons")
    parser.add_argument("--out", default=os.path.join("bench", "results"), help="output folder (default bench/results)")
    parser.add_argument("--tag", default=None,
                        help="suffix of the result files (<device>-<date>-<tag>.*), e.g. to keep split runs apart")
    parser.add_argument("--profile", metavar="OP", choices=list(runner.PROFILE_TARGETS), default=None,
                        help="instead of timing, write a PyTorch profiler Chrome trace of one op (fwd+bwd) "
                             "or of 'train_step' into --out")
    parser.add_argument("--device", default=None, help="device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def main(args) -> int:
    import torch

    from sstkd.benchmarks import runner

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        runner.profile_target(args.profile, device, quick=args.quick or device.type == "cpu", out_dir=args.out)
        return 0
    ts = args.train_step or ("no" if args.ops else "yes")
    _, paths = runner.run_benchmarks(
        device, quick=args.quick, out_dir=args.out, ops=args.ops, backends=args.backends, dtypes=args.dtypes,
        modes=args.modes, run_ops=ts != "only", run_train_step=ts != "no",
        run_peers=not args.no_peers and ts != "only", tag=args.tag)
    for kind, path in paths.items():
        print(f"wrote {path}")
    return 0
