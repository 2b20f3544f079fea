"""``sstkd train CONFIG [key=value ...]``: train a baseline, KD or SSTKD model.

One process: ``sstkd train configs/demo/sstkd.yaml``. Several GPUs or nodes:
``torchrun --nproc_per_node=8 -m sstkd train CONFIG`` (the same command on
every node, with ``--nnodes``/``--node_rank``/``--master_addr``).

A run directory that already holds a run is never reused silently: continue
it with ``--resume auto`` or replace it with ``--overwrite``. See
docs/failure-modes.md.

Exit status: 0 on success, 2 for a bad config / override / missing file or
dataset / occupied run directory, 1 for a failed run (e.g. a non-finite loss).
"""
from __future__ import annotations

import argparse
import os
import sys

__all__ = ["add_arguments", "main", "default_work_dir"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML experiment config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.iterations=1000 data.root=/data/cityscapes")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="'auto': continue from WORK_DIR/last.pt when it exists; or a checkpoint path")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="run directory (default: the config's work_dir, else runs/<config path under configs/>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in the run directory (its checkpoints, exports and log)")
    parser.add_argument("--allow-changes", action="store_true",
                        help="on resume, apply config changes that alter the run (lr, loss weights, iterations, "
                             "...); they are recorded in WORK_DIR/config_changes.jsonl")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def default_work_dir(config_path: str) -> str:
    """``runs/<path below the nearest 'configs' directory, without .yaml>``, else ``runs/<stem>``."""
    parts = os.path.normpath(os.path.abspath(config_path)).split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    if "configs" in parts[:-1]:
        i = len(parts) - 1 - parts[::-1].index("configs")
        return os.path.join("runs", *parts[i + 1:-1], stem)
    return os.path.join("runs", stem)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _error(msg: str) -> None:
    if _is_main_process():
        print(f"sstkd train: error: {msg}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from sstkd.engine.checkpoint import CheckpointError
    from sstkd.engine.config import ConfigError, config_to_yaml, load_config

    overrides = list(args.overrides or [])
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    if args.work_dir is not None:
        overrides.append(f"work_dir={args.work_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        _error(str(e))
        return 2
    if cfg.work_dir is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0

    from sstkd.engine.trainer import NonFiniteLossError, Trainer

    trainer = None
    try:
        trainer = Trainer(cfg, log=print, overwrite=args.overwrite, allow_changes=args.allow_changes)
        summary = trainer.train()
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        _error(str(e))
        return 2
    except ValueError as e:  # dataset / model argument errors name the argument
        _error(f"{type(e).__name__}: {e}")
        return 2
    except NonFiniteLossError as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        _error("interrupted; resume with --resume auto")
        return 130
    finally:
        if trainer is not None:
            trainer.close()
        else:  # failed while building: leave the process group all the same
            from sstkd.engine.distributed import cleanup_distributed

            cleanup_distributed()
    if _is_main_process():
        best = summary["best_miou"]
        best_s = f"{100 * best:.2f}" if best is not None else "n/a"
        print(f"done: {summary['iterations']} iterations, {summary['sec_per_iter']:.3f} s/it, "
              f"best mIoU {best_s}; run directory {summary['work_dir']}")
    return 0
