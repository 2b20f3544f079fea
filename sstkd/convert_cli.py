"""``sstkd convert SRC DST [--format ...]``: a torchvision / CIRKD / SKD-IFVD / mmseg checkpoint as an sstkd export.

DST holds ``{"format": "sstkd-student", "model": ..., "model_args": ...}``: it loads with
``sstkd.models.from_pretrained(DST)`` and as ``teacher.checkpoint`` in a config.
"""
from __future__ import annotations

import argparse
import os
import sys

FORMAT_CHOICES = ("auto", "torchvision", "cirkd", "ifvd", "mmseg", "sstkd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="checkpoint to convert (path or http(s):// URL)")
    parser.add_argument("dst", metavar="DST", help="where to write the sstkd checkpoint")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                        help="layout of SRC (default: recognized from its keys)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def _error(msg: str) -> int:
    print(f"sstkd convert: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    from sstkd.models.convert import convert_checkpoint

    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        return _error("DST: must differ from SRC (the source is never overwritten)")
    if os.path.exists(args.dst) and not args.force:
        return _error(f"DST: {args.dst} exists; pass --force to overwrite it")
    try:
        conv = convert_checkpoint(args.src, args.dst, format=args.format)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        return _error(str(e))
    a = conv.model_args
    how = "recognized" if args.format == "auto" else "given"
    print(f"{args.src}: {conv.format} ({how}) -> {a['name']}, flavor {a.get('flavor')}, "
          f"{a['num_classes']} classes; wrote {args.dst}")
    return 0
