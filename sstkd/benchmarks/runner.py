"""One benchmark run end to end (what ``sstkd bench`` does), and ``--profile``.

``run_benchmarks`` measures the copy bandwidth, runs the op matrix, the peers
and the training step, and writes the report; ``profile_target`` writes a
PyTorch profiler Chrome trace of one op or one training step.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from sstkd.benchmarks import op_suite, peers, report, roofline, train_step

PROFILE_TARGETS = roofline.OPS + ("train_step",)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_meta(device: torch.device, quick: bool, command: str | None = None) -> dict:
    """Device, versions and backend availability of this run."""
    from sstkd.ops import dispatch

    backends = {}
    for b in dispatch.BACKENDS:
        ok, why = dispatch.backend_status(b, device)
        backends[b] = {"available": ok, "reason": why}
    return {
        "device": str(device), "device_name": report.device_name(device), "device_slug": report.device_slug(device),
        "date": _dt.date.today().isoformat(), "quick": quick, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "triton": _version("triton"), "cuda": torch.version.cuda,
        "command": command if command is not None else " ".join(["sstkd"] + sys.argv[1:]),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0"),
        **{f"{b}_ops": dispatch.implemented_ops(b, op_suite.OPS) for b in dispatch.BACKENDS if b != "torch"},
        "backends": backends,
        "cpu_count": os.cpu_count(), "load_average_at_start": load_average(),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load averages (other work on a shared CPU inflates the times), None where unknown."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _peer_shapes(quick: bool):
    if quick:
        (_, img), = op_suite.image_shapes(True)
        (_, (b, h, w)), = op_suite.intensity_shapes(True)
        return img, (b, h * w)
    return (8, 64, 128, 256), (8, 128 * 256)


def run_peers_for(device: torch.device, quick: bool, ops: Sequence[str] | None, dtypes: Sequence[str],
                  log: Callable[[str], None]) -> list[dict]:
    """The peer comparisons relevant to ``ops`` (all when ``None``)."""
    img, qco = _peer_shapes(quick)
    cases, skipped = peers.peer_cases(img, qco)
    want = set(ops) if ops else None
    if want is not None:
        cases = [c for c in cases if ("lp_dec" in want if c.name.startswith("lp_dec")
                                      else bool(want & {"quantize_count", "reproject"}))]
    for why in skipped:
        log(f"peer skipped: {why}")
    cfg = op_suite.TimingConfig.for_run(device, quick)
    return peers.run_peers(cases, device, dtypes=[op_suite.DTYPES[d] for d in dtypes if d == "fp32"] or
                           [torch.float32], warmup=cfg.warmup, repeat=cfg.repeat, max_seconds=cfg.max_seconds,
                           log=log) + [{"comparison": w, "shape": "-", "dtype": "-", "mode": "-", "status": "skipped",
                                        "reason": w} for w in skipped]


def run_benchmarks(
    device: torch.device,
    *,
    quick: bool,
    out_dir: str | Path,
    ops: Sequence[str] | None = None,
    backends: Sequence[str] = op_suite.BACKENDS,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    modes: Sequence[str] = op_suite.MODES,
    run_ops: bool = True,
    run_train_step: bool = True,
    run_peers: bool = True,
    command: str | None = None,
    tag: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict, dict[str, Path]]:
    """Run the benchmark and write ``<out_dir>/<device-slug>-<YYYYMMDD>[-<tag>].{json,md,png}``.

    Returns ``(result, paths written)``.
    """
    result: dict = {"meta": collect_meta(device, quick, command), "ops": [], "peers": [], "train_step": None}
    log(f"device: {result['meta']['device_name']} ({device}), threads {torch.get_num_threads()}, "
        f"{'quick' if quick else 'full'} run")
    bw = roofline.copy_bandwidth(device, None if not quick else 64 * 2**20, repeat=5 if quick else 20)
    result["meta"]["copy_bandwidth"] = bw
    log(f"copy bandwidth: {bw['gbps']:.1f} GB/s")
    if run_ops:
        result["ops"] = op_suite.run_suite(device, quick=quick, ops=ops, backends=backends, dtypes=dtypes,
                                           modes=modes, copy_gbps=bw["gbps"], log=log)
    if run_peers:
        result["peers"] = run_peers_for(device, quick, ops, dtypes, log)
    if run_train_step:
        result["train_step"] = train_step.run_train_step(device, train_step.TrainStepConfig.for_run(device, quick),
                                                         log=log)
    result["meta"]["tag"] = tag
    result["meta"]["load_average_at_end"] = load_average()
    stem = report.result_stem(device) + (f"-{report._slugify(tag)}" if tag else "")
    paths = report.write_report(result, out_dir, stem)
    return result, paths


# ----------------------------------------------------------------------------- profiling


def _activities(device: torch.device):
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    return acts


def _op_workload(target: str, device: torch.device, quick: bool):
    """``(callable, description)`` running fwd+bwd of ``target`` on its first benchmark shape, fp32,
    with the fastest backend that implements it here."""
    from sstkd.ops import dispatch

    cases = op_suite.build_cases(quick, [target])
    if not cases:
        raise ValueError(f"--profile: no benchmark case for {target!r}")
    case = cases[0]
    fast = [b for b in dispatch.BACKENDS if b != "torch"]
    backend = next((b for b in fast if op_suite.backend_availability(b, target, device, quick)[0]), "torch")
    gen = torch.Generator(device="cpu").manual_seed(0)
    copies = [op_suite.make_inputs(case, device, torch.float32)]
    call, prepared = op_suite.mode_fn(case, op_suite.callable_for(case, backend), "fwd+bwd", copies, gen)
    return (lambda: call(prepared[0])), f"{target} {case.params_str} {'x'.join(map(str, case.shape))} fp32 " \
                                        f"fwd+bwd backend={backend}"


def _train_workload(device: torch.device, quick: bool):
    cfg = train_step.TrainStepConfig.for_run(device, quick)
    student, teacher, batches = train_step.build_pair(device, cfg)
    fused = train_step.fused_backends(device)
    variant = "sstkd_fused" if any(b != "torch" for b in fused.values()) else "sstkd_reference"
    step = train_step.TrainStep(variant, student, teacher, cfg, device)
    return (lambda: step(batches[0])), f"train step {variant} ({cfg.student} <- {cfg.teacher}, batch {cfg.batch}, " \
                                       f"crop {cfg.crop[0]}x{cfg.crop[1]})"


def profile_target(target: str, device: torch.device, *, quick: bool, out_dir: str | Path,
                   iters: int = 3, log: Callable[[str], None] = print) -> Path:
    """Write a Chrome trace of ``iters`` runs of ``target`` (an op name or ``"train_step"``).

    Returns the trace path ``<out_dir>/<device-slug>-<YYYYMMDD>-profile-<target>.json``.

    Raises:
        ValueError: unknown ``target`` (the message lists the choices).
    """
    from torch.profiler import profile, record_function

    if target not in PROFILE_TARGETS:
        raise ValueError(f"--profile: unknown target {target!r}; choose from {list(PROFILE_TARGETS)}")
    fn, what = _train_workload(device, quick) if target == "train_step" else _op_workload(target, device, quick)
    for _ in range(2):  # warm-up: caches, compilation, autotuning
        fn()
    op_suite_sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    op_suite_sync()
    with profile(activities=_activities(device), record_shapes=True, profile_memory=True) as prof:
        for i in range(iters):
            with record_function(f"{target}#{i}"):
                fn()
        op_suite_sync()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report.result_stem(device)}-profile-{target}.json"
    prof.export_chrome_trace(str(path))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    log(f"profiled {what}, {iters} iterations")
    log(prof.key_averages().table(sort_by=sort, row_limit=15))
    log(f"Chrome trace: {path} (open in chrome://tracing or https://ui.perfetto.dev)")
    return path
