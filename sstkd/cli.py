"""``sstkd`` command line: ``sstkd train|eval|demo|convert|verify|bench|cost|info|gpu-check``.

Each subcommand lives in its own module exposing ``add_arguments(parser)``
and ``main(args) -> int``; modules are imported only when their command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("sstkd.engine.train_cli", "train a segmentation model (baseline, KD or SSTKD) from a YAML config"),
    "eval": ("sstkd.engine.eval_cli", "evaluate a checkpoint (mIoU, per-class IoU)"),
    "demo": ("sstkd.engine.demo", "teacher -> student SSTKD distillation on synthetic textures, on the CPU"),
    "convert": ("sstkd.convert_cli", "convert a torchvision / CIRKD / SKD-IFVD / mmseg checkpoint to sstkd's layout"),
    "verify": ("sstkd.verify", "check every backend of every op against the reference"),
    "bench": ("sstkd.bench", "time every op x backend; training-step overhead"),
    "cost": ("sstkd.cost_cli", "static GPU cost report on the CPU: launches, bytes, syncs, compiles, sm_90 facts"),
    "info": ("sstkd.info", "versions, devices, backends and why they are (un)available"),
    "gpu-check": ("sstkd.gpucheck.run", "the whole GPU acceptance in one run (make gpu-check; --dry-run on a CPU)"),
}


def build_parser(argv_cmd: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sstkd", description="sstkd: structural and statistical texture knowledge distillation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen command's module is imported (keeps `sstkd info` light).
        if argv_cmd is None or argv_cmd == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(cmd if cmd is not None else "__none__")
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow options (`sstkd train C --work-dir D train.iterations=1`).
    strays = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
