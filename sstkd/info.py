"""``sstkd info``: versions, devices, and each backend with why it is (un)available.

Like ``python -m xformers.info``: run it first when a backend does not do what
you expect.
"""
from __future__ import annotations

import os
import platform


def collect() -> dict:
    """Everything ``sstkd info`` prints, as a dict (used by bench/verify reports too)."""
    import torch

    import sstkd
    from sstkd.ops import dispatch

    info: dict = {
        "sstkd": sstkd.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch.version.cuda": torch.version.cuda,
        "cpu threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # not installed or broken
        info["triton"] = f"unavailable ({type(e).__name__}: {e})"
    info["TRITON_INTERPRET"] = os.environ.get("TRITON_INTERPRET", "0")
    info["CUDA_HOME"] = os.environ.get("CUDA_HOME", "(unset)")
    info["cuda available"] = torch.cuda.is_available()
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB)")
    info["devices"] = devices or ["cpu only"]
    from sstkd.ops.backends import cuda
    from sstkd.ops.specs import op_names

    info["extension sstkd._C"] = cuda.status_line()
    backends = {}
    for b in dispatch.BACKENDS:
        ok, why = dispatch.backend_status(b)
        ops = "all ops" if b == "torch" else dispatch.implemented_ops(b, op_names())
        backends[b] = {"available": ok, "reason": why, "ops": ops}
    info["backends"] = backends
    from sstkd.ops import selfcheck

    prefs = {}
    fast = set(dispatch.implemented_ops("triton", op_names())) | set(dispatch.implemented_ops("cuda", op_names()))
    for op in sorted(fast):
        order, source = dispatch.auto_order(op)
        prefs[op] = {"order": list(order), "source": source}
    info["auto"] = {"preference": prefs, "sources": dispatch.preference_sources(),
                    "self-check cache": selfcheck.cache_dir()}
    return info


def format_info(info: dict) -> str:
    lines = []
    for k, v in info.items():
        if k in ("backends", "auto"):
            continue
        if isinstance(v, list):
            v = "; ".join(v)
        lines.append(f"{k:<22} {v}")
    lines.append("")
    lines.append(f"{'backend':<10} {'available':<10} reason")
    for name, b in info["backends"].items():
        lines.append(f"{name:<10} {'yes' if b['available'] else 'no':<10} {b['reason']}")
        ops = b["ops"] if isinstance(b["ops"], str) else (", ".join(b["ops"]) or "(none yet)")
        lines.append(f"{'':<21} ops: {ops}")
    auto = info.get("auto")
    if auto:
        lines.append("")
        lines.append("backend='auto' on CUDA tensors: first backend of the order that passed its first-use")
        lines.append(f"self-check on the device (verdicts cached in {auto['self-check cache']})")
        src = auto.get("sources", {})
        lines.append(f"preference from: GPU timings {src.get('gpu_results') or '(none committed)'}; static cost "
                     f"report prediction {src.get('static_prediction') or '(none; sstkd cost --compare)'}")
        for op, p in auto["preference"].items():
            lines.append(f"  {op:<20} {' > '.join(p['order']):<24} from {p['source']}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:
    info = collect()
    if getattr(args, "json", False):
        import json

        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info))
    return 0
