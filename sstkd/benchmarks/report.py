"""Benchmark results as files: ``<out>/<device-slug>-<YYYYMMDD>.{json,md,png}``.

The result is one dict::

    {"meta": {...device, versions, copy bandwidth, arguments...},
     "ops": [op_suite rows], "peers": [peers rows], "train_step": {...} | None}

The JSON holds everything; the Markdown has the tables a README can quote;
the PNG (matplotlib, Agg backend) plots time per backend and % of copy
bandwidth of the op rows, and the training-step times.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import re
from pathlib import Path

import torch



def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


def device_slug(device: torch.device | str) -> str:
    """File-name slug of the device: ``nvidia-h100-80gb-hbm3``, ``cpu-amd-epyc``."""
    dev = torch.device(device)
    name = _slugify(device_name(dev))
    return name if dev.type == "cuda" else f"cpu-{name}".replace("cpu-cpu", "cpu")


def result_stem(device: torch.device | str, date: _dt.date | None = None) -> str:
    """``<device-slug>-<YYYYMMDD>``."""
    date = date or _dt.date.today()
    return f"{device_slug(device)}-{date.strftime('%Y%m%d')}"


# ----------------------------------------------------------------------------- markdown


def _fmt(v, spec: str = ".3f", none: str = "—") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def ops_table(rows: list[dict]) -> list[str]:
    ok = [r for r in rows if r.get("status") == "ok"]
    body = [[r["op"], r["params"] or "", r["shape"], r["dtype"], r["mode"], r["backend"],
             _fmt(r["median_ms"]), _fmt(r["iqr_ms"]), _fmt(r.get("min_ms")), _fmt(r.get("gbps"), ".1f"), _fmt(r.get("pct_copy_bw"), ".1f"),
             _mib(r.get("peak_mem_bytes")), _fmt(r.get("launches"), "d"), _fmt(r.get("speedup_vs_torch"), ".2f")]
            for r in ok]
    return _table(["op", "params", "shape", "dtype", "mode", "backend", "median ms", "IQR ms", "min ms", "GB/s",
                   "% copy BW", "peak MiB", "launches", "× vs torch"], body)


def skipped_table(rows: list[dict]) -> list[str]:
    """Non-ok rows grouped by (backend, status, reason): the ops concerned and the number of cells."""
    groups: dict[tuple, dict[str, int]] = {}
    for r in rows:
        if r.get("status") != "ok":
            ops = groups.setdefault((r["backend"], r["status"], r["reason"]), {})
            ops[r["op"]] = ops.get(r["op"], 0) + 1
    return _table(["backend", "status", "reason", "ops", "cells"],
                  [[b, st, why, ", ".join(ops), sum(ops.values())] for (b, st, why), ops in groups.items()])


def peers_table(rows: list[dict]) -> list[str]:
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append([r["comparison"], r["shape"], r["dtype"], r["mode"], "—", "—", "—", "—", "—", "—",
                         f"{r.get('status')}: {r.get('reason')}"])
            continue
        verdict = "(info)" if r["meets_target"] is None else ("met" if r["meets_target"] else "**missed**")
        body.append([r["comparison"], r["shape"], r["dtype"], r["mode"], _fmt(r["ours_ms"]), _fmt(r["peer_ms"]),
                     _fmt(r["time_ratio"], ".2f"), _mib(r["ours_peak_bytes"]), _mib(r["peer_peak_bytes"]),
                     _fmt(r.get("mem_ratio"), ".2f"), f"{r['target']}: {verdict}"])
    return _table(["comparison", "shape", "dtype", "mode", "ours ms", "peer ms", "ours/peer time", "ours peak MiB",
                   "peer peak MiB", "peer/ours memory", "target"], body)


def train_step_table(ts: dict) -> list[str]:
    if ts.get("status") != "ok":
        return [f"Training step: {ts.get('status')}: {ts.get('reason')}"]
    c = ts["config"]
    lines = [f"{c['teacher']} (width {c['teacher_width']}) → {c['student']} (width {c['student_width']}), "
             f"batch {c['batch']}, crop {c['crop'][0]}×{c['crop'][1]}, {c['num_classes']} classes; "
             f"fused backends: {ts.get('fused_backends')}", ""]
    body = []
    for v in ts["variants"]:
        if v.get("status") != "ok":
            body.append([v["name"], "—", "—", "—", "—", f"{v['status']}: {v['reason']}"])
        else:
            body.append([v["name"], _fmt(v["median_ms"], ".1f"), _fmt(v["iqr_ms"], ".1f"),
                         _mib(v.get("peak_mem_bytes")), _fmt(100 * v["overhead"] if "overhead" in v else None, "+.1f"),
                         ""])
    lines += _table(["variant", "median ms", "IQR ms", "peak MiB", "overhead %", "note"], body)
    extra = []
    for key, label in (("texture_ms_reference", "texture part (sstkd − kd), reference ops"),
                       ("texture_ms_fused", "texture part (sstkd − kd), fused ops")):
        if key in ts:
            ov = ts.get(key.replace("_ms_", "_overhead_"))
            extra.append(f"* {label}: {ts[key]:.1f} ms" + ("" if ov is None else f" ({100 * ov:+.1f}% of the student step)"))
    if "fused_texture_speedup" in ts:
        extra.append(f"* fused-over-reference speedup of the texture part: {ts['fused_texture_speedup']:.2f}×")
    return lines + ([""] + extra if extra else [])


def to_markdown(result: dict) -> str:
    m = result.get("meta", {})
    bw = m.get("copy_bandwidth") or {}
    lines = [f"# sstkd bench — {m.get('device_name', '?')} ({m.get('date', '?')})", ""]
    lines.append(f"* device: `{m.get('device', '?')}` {m.get('device_name', '')}; threads: {m.get('threads', '?')}; "
                 f"run: {'quick' if m.get('quick') else 'full'}")
    lines.append(f"* torch {m.get('torch')}, triton {m.get('triton')}, CUDA {m.get('cuda')}; "
                 f"command: `{m.get('command', '')}`")
    if m.get("load_average_at_start") is not None:
        lines.append(f"* load average (1/5/15 min) at start {m['load_average_at_start']}, at end "
                     f"{m.get('load_average_at_end')} on {m.get('cpu_count')} CPUs — other work on a shared machine "
                     "inflates CPU times")
    if bw:
        lines.append(f"* measured copy bandwidth: **{bw['gbps']:.1f} GB/s** "
                     f"({bw['nbytes'] / 2**20:.0f} MiB tensor copy, read + write)")
    lines.append("* times: median, interquartile range and minimum of per-call times; GB/s = the op's compulsory "
                 "bytes / median time; peak = memory allocated during one call beyond its inputs; launches = "
                 "kernels of one call (CPU: aten ops of the eager reference)")
    ops_rows = result.get("ops") or []
    if ops_rows:
        lines += ["", "## Ops", ""] + ops_table(ops_rows)
        if any(r.get("status") != "ok" for r in ops_rows):
            lines += ["", "### Not run", ""] + skipped_table(ops_rows)
    if result.get("peers"):
        lines += ["", "## Peers (same run, same inputs)", ""] + peers_table(result["peers"])
    if result.get("train_step"):
        lines += ["", "## Training-step overhead", ""] + train_step_table(result["train_step"])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plot


def plot(result: dict, path: Path) -> Path | None:
    """PNG of op times per backend (log scale), % of copy bandwidth, and training-step times.

    Returns the path, or ``None`` when there is nothing to plot or matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    ok = [r for r in result.get("ops") or [] if r.get("status") == "ok"]
    ts = result.get("train_step") or {}
    ts_ok = [v for v in ts.get("variants", []) if v.get("status") == "ok"]
    if not ok and not ts_ok:
        return None
    # One (dtype, mode) slice keeps the op plot readable: fp32 fwd+bwd when present.
    pick = next(((d, m) for d, m in (("fp32", "fwd+bwd"), ("fp32", "fwd")) if any(
        r["dtype"] == d and r["mode"] == m for r in ok)), (ok[0]["dtype"], ok[0]["mode"]) if ok else (None, None))
    sel = [r for r in ok if (r["dtype"], r["mode"]) == pick]
    cases = list(dict.fromkeys(f"{r['op']} {r['params']} {r['shape']}".replace("  ", " ") for r in sel))
    backends = list(dict.fromkeys(r["backend"] for r in sel))
    n_plots = (2 if sel else 0) + (1 if ts_ok else 0)
    fig, axes = plt.subplots(1, n_plots, figsize=(7 * n_plots, max(4, 0.35 * len(cases) + 2)), squeeze=False)
    axes = list(axes[0])
    if sel:
        height = 0.8 / max(len(backends), 1)
        for j, b in enumerate(backends):
            by_case = {f"{r['op']} {r['params']} {r['shape']}".replace("  ", " "): r for r in sel if r["backend"] == b}
            ys = [i + j * height for i, c in enumerate(cases) if c in by_case]
            axes[0].barh(ys, [by_case[c]["median_ms"] for c in cases if c in by_case], height, label=b)
            axes[1].barh(ys, [by_case[c].get("pct_copy_bw") or 0.0 for c in cases if c in by_case], height, label=b)
        for ax, title in ((axes[0], f"median time, ms ({pick[0]}, {pick[1]})"),
                          (axes[1], "% of measured copy bandwidth")):
            ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))])
            ax.set_yticklabels(cases, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(title)
            ax.legend(fontsize=7)
        axes[0].set_xscale("log")
    if ts_ok:
        ax = axes[-1]
        ax.bar([v["name"] for v in ts_ok], [v["median_ms"] for v in ts_ok],
               yerr=[[v["median_ms"] - v["q1_ms"] for v in ts_ok], [v["q3_ms"] - v["median_ms"] for v in ts_ok]])
        ax.set_title("training step, ms (median, IQR)")
        ax.tick_params(axis="x", labelsize=8)
    m = result.get("meta", {})
    fig.suptitle(f"sstkd bench: {m.get('device_name', '')} {m.get('date', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- files


def _jsonable(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (str, int, float, bool)) or o is None:
        return o
    return str(o)


def write_report(result: dict, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``<out_dir>/<stem>.json``, ``.md`` and (when plottable) ``.png``; returns the paths written.

    Raises:
        TypeError: ``result`` is not a dict.
        ValueError: ``stem`` is empty or contains a path separator.
    """
    if not isinstance(result, dict):
        raise TypeError(f"result: expected a dict, got {type(result).__name__}")
    if not isinstance(stem, str) or not stem or "/" in stem or "\\" in stem:
        raise ValueError(f"stem: expected a file-name stem, got {stem!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(to_markdown(result))
    png = plot(result, out / f"{stem}.png")
    if png is not None:
        paths["png"] = png
    return paths
