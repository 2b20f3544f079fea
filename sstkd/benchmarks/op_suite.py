"""The op benchmark matrix: op × backend × shape × dtype × mode.

Backends:
  ``torch``    the eager reference (``backend="torch"``);
  ``compile``  ``torch.compile`` of the reference (compile time excluded);
  ``triton``   the fused Triton kernels (compiled, never the interpreter);
  ``cuda``     the ``sstkd._C`` extension.
Modes: ``fwd`` (under ``no_grad``), ``bwd`` (``autograd.grad`` of a retained
graph, so only the backward is timed), ``fwd+bwd``.

The cases are those of every :class:`~sstkd.ops.specs.OpSpec` in
:data:`sstkd.ops.specs.SPECS` (``bench_shapes`` / ``bench_quick_shapes`` ×
``bench_variants``): the shapes of real training (issue 7), the stride-4 features
of a ResNet-101 teacher (256 ch) and a ResNet-18 student (64 ch) on Cityscapes
512×1024 and VOC/ADE20K 512×512 crops (batch 8) and their intensity maps for the
quantization ops (128 levels). ``quick=True`` uses small shapes for a CPU run of
a few minutes.

Every cell that cannot run (backend unavailable, op not implemented by it, op
module missing, out of memory, an error) becomes a row with ``status`` other
than ``"ok"`` and the reason; nothing here raises for those.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shutil
from typing import Callable, Sequence

import torch

from sstkd.benchmarks import roofline
from sstkd.benchmarks.timing import measure_peak_memory, time_fn
from sstkd.ops import specs as _specs
from sstkd.ops.dispatch import BACKENDS as _DISPATCH_BACKENDS
from sstkd.ops.specs import Case, OpSpec
from sstkd._util import tensor_leaves
from sstkd.verify import flatten_outputs

BACKENDS = ("torch", "compile") + tuple(b for b in _DISPATCH_BACKENDS if b != "torch")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
MODES = roofline.MODES
OPS = _specs.op_names()


# ----------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How hard to time each cell."""

    warmup: int = 3
    repeat: int = 20
    max_seconds: float | None = None  # per cell, once 3 samples exist
    measure_memory: bool = True
    count_launches: bool = True
    warmup_seconds: float = 0.1  # and at least this long

    @staticmethod
    def for_run(device: torch.device, quick: bool) -> "TimingConfig":
        # Cheap cells get many samples (a robust median on a shared machine), slow ones stop at the time cap.
        if quick:
            return TimingConfig(warmup=2, repeat=25, max_seconds=0.5, warmup_seconds=0.1)
        if device.type == "cuda":
            return TimingConfig(warmup=10, repeat=100, max_seconds=5.0, warmup_seconds=0.05)
        return TimingConfig(warmup=2, repeat=30, max_seconds=10.0, warmup_seconds=0.3)


def image_shapes(quick: bool) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``(label, (B, C, H, W))`` of the stride-4 features benchmarked."""
    return list(_specs.BENCH_IMAGES_QUICK if quick else _specs.BENCH_IMAGES)


def intensity_shapes(quick: bool) -> list[tuple[str, tuple[int, int, int]]]:
    """``(label, (B, H, W))`` intensity maps (one per image, from the features above)."""
    return list(_specs.BENCH_MAPS_QUICK if quick else _specs.BENCH_MAPS)


# ----------------------------------------------------------------------------- cases


def load_ops():
    """``(sstkd.ops, None)`` or ``(None, why it cannot be imported)``."""
    try:
        return importlib.import_module("sstkd.ops"), None
    except Exception as e:  # an op module still missing or broken: every op row says so
        return None, f"sstkd.ops does not import: {type(e).__name__}: {e}"


def _override(spec: OpSpec, images, intensities) -> list[tuple[str, tuple[int, ...]]] | None:
    """Replacement shapes for ``spec``, by the rank of its bench shapes: 4-D images, 2-D flattened
    or 3-D intensity maps."""
    rank = len(spec.bench_shapes[0][1]) if spec.bench_shapes else 0
    if rank == 4 and images is not None:
        return [(label, tuple(s)) for label, s in images]
    if rank in (2, 3) and intensities is not None:
        return [(label, (b, h * w) if rank == 2 else (b, h, w)) for label, (b, h, w) in intensities]
    return None


def build_cases(quick: bool, ops_filter: Sequence[str] | None = None, *,
                images: Sequence[tuple[str, tuple[int, int, int, int]]] | None = None,
                intensities: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
                table_channels: Sequence[int] | None = None, specs: Sequence[OpSpec] | None = None) -> list[Case]:
    """The benchmark cases (in ``specs`` order, default :data:`sstkd.ops.specs.SPECS`) for a quick or full run.

    ``images`` / ``intensities`` / ``table_channels`` replace the run's
    default shapes (``(label, shape)`` pairs; the ``channels`` of the ``reproject`` table).
    """
    res: list[Case] = []
    for spec in _specs.SPECS if specs is None else specs:
        if ops_filter and spec.name not in ops_filter:
            continue
        shapes = _override(spec, images, intensities)
        if shapes is None:
            shapes = spec.bench_quick_shapes if quick else spec.bench_shapes
        variants = [dict(p) for p in spec.bench_variants]
        if table_channels is not None and any("channels" in p for p in variants):
            base = {tuple((k, v) for k, v in p.items() if k != "channels") for p in variants}
            variants = [dict(b, channels=d) for b in sorted(base) for d in table_channels]
        res.extend(Case(spec, label, tuple(shp), p) for label, shp in shapes for p in variants)
    return res


def make_inputs(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[tuple, dict]:
    """One copy of the case's inputs (``seed`` tells copies apart)."""
    return case.inputs(dtype, device, seed=seed)


def input_bytes(inputs: tuple[tuple, dict]) -> int:
    return sum(t.numel() * t.element_size() for a in inputs[0] for t in tensor_leaves(a))


# ----------------------------------------------------------------------------- backends


def _compiler_error(device: torch.device) -> str | None:
    if not hasattr(torch, "compile"):
        return "torch.compile is not available in this torch"
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None and shutil.which("cc") is None:
            return "torch.compile on the CPU needs a C++ compiler (none found)"
    return None


def backend_availability(backend: str, op: str, device: torch.device, quick: bool) -> tuple[bool, str]:
    """``(runnable, reason)`` of ``backend`` for ``op`` on ``device`` in this run."""
    if backend == "torch":
        return True, "eager reference"
    if backend == "compile":
        if quick and device.type == "cpu":
            return False, "torch.compile skipped in --quick on the CPU (compile time dominates a short run)"
        err = _compiler_error(device)
        return (False, err) if err else (True, "torch.compile of the reference")
    from sstkd.ops import dispatch

    if backend not in dispatch.BACKEND_MODULES:
        return False, f"unknown backend {backend!r}"
    ok, why = dispatch.backend_status(backend, device)
    if not ok:
        return False, why
    interpreted = getattr(dispatch.BACKEND_MODULES[backend], "interpreted", None)
    if interpreted is not None and interpreted():
        return False, f"{backend} runs in an interpreter here (TRITON_INTERPRET=1): timings would be meaningless"
    if not dispatch.implements(backend, op):
        return False, f"no {backend} kernel for {op} yet (not in the {backend} backend table)"
    return True, why


def callable_for(case: Case, backend: str) -> Callable[[tuple], list[torch.Tensor]]:
    """``inputs -> flat list of outputs`` running ``case`` on ``backend`` (``"compile"``: a fresh
    ``torch.compile`` of the reference; compilation happens on the first call). ``inputs`` is
    ``(args, kwargs)`` as :func:`make_inputs` returns it."""
    if backend == "compile":
        import logging
        import warnings

        import torch._functorch.config as functorch_config

        # graph breaks at the ops' input checks are expected: keep the log readable
        torch._logging.set_logs(dynamo=logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._dynamo")
        # the "bwd" mode replays one retained graph; donated buffers forbid retain_graph=True
        functorch_config.donated_buffer = False
        torch._dynamo.reset()  # a fresh cache per case: never hits the recompile limit
        compiled = torch.compile(lambda args, kwargs: case.spec.run(args, kwargs, "torch"), dynamic=False)
        return lambda inputs: flatten_outputs(compiled(*inputs))
    return lambda inputs: flatten_outputs(case.spec.run(inputs[0], inputs[1], backend))


@dataclasses.dataclass
class _Prepared:
    xs: tuple  # (args, kwargs)
    diff: list
    cots: list | None = None
    outs: list | None = None


def _with_grad(args: tuple, grad_inputs) -> tuple[tuple, list]:
    """Detached copies of ``args``; the tensors of ``grad_inputs`` require grad (returned too)."""
    def detach(a, req):
        if isinstance(a, torch.Tensor):
            return a.detach().requires_grad_(req and a.is_floating_point())
        if isinstance(a, (list, tuple)):
            return type(a)(detach(x, req) for x in a)
        return a

    out = tuple(detach(a, i in grad_inputs) for i, a in enumerate(args))
    return out, [t for i in grad_inputs for t in tensor_leaves(out[i])]


def mode_fn(case: Case, fn, mode: str, copies: list[tuple], gen: torch.Generator):
    """``(call, prepared copies)`` timing one mode; builds grads/cotangents outside the timed region."""
    if mode == "fwd":
        def call_fwd(p: _Prepared):
            with torch.no_grad():
                return fn(p.xs)

        return call_fwd, [_Prepared(xs, []) for xs in copies]

    prepared = []
    for args, kwargs in copies:
        args, diff = _with_grad(args, case.spec.grad_inputs)
        xs = (args, kwargs)
        outs = [o for o in fn(xs) if o.requires_grad]
        if not outs:
            raise RuntimeError(f"{case.spec.name}: no output requires grad")
        cots = [torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o) for o in outs]
        prepared.append(_Prepared(xs, diff, cots, outs if mode == "bwd" else None))
    if mode == "bwd":
        def call_bwd(p: _Prepared):
            return torch.autograd.grad(p.outs, p.diff, p.cots, retain_graph=True, allow_unused=True)

        return call_bwd, prepared

    def call_fwdbwd(p: _Prepared):
        outs = [o for o in fn(p.xs) if o.requires_grad]
        return torch.autograd.grad(outs, p.diff, p.cots, allow_unused=True)

    return call_fwdbwd, prepared


def _cpu_llc_bytes() -> int:
    """Size of the CPU's last-level cache from sysfs (32 MiB when unknown)."""
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip().upper()
        unit = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * unit
    except (OSError, ValueError):
        return 32 * 2**20


def n_copies(input_bytes: int, device: torch.device) -> int:
    """How many input copies to rotate: enough to exceed twice the last-level cache, 2 to 8."""
    llc = _cpu_llc_bytes()
    if device.type == "cuda":
        llc = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", llc) or llc)
    n = math.ceil(2 * llc / max(input_bytes, 1)) + 1
    return int(min(8, max(2, n)))


# ----------------------------------------------------------------------------- the run


def _row(case: Case, backend: str, dtype: str, mode: str, status: str, reason: str = "", **extra) -> dict:
    row = {"op": case.spec.name, "params": case.params_str, "shape_name": case.label,
           "shape": "x".join(map(str, case.shape)), "backend": backend, "dtype": dtype, "mode": mode,
           "status": status, "reason": reason}
    row.update(extra)
    return row


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}"


def run_cell(case: Case, backend: str, dtype_name: str, mode: str, copies: list[tuple], device: torch.device,
             cfg: TimingConfig, copy_gbps: float | None, seed: int = 0, fn=None) -> dict:
    """Time one (case, backend, dtype, mode) cell; errors become rows, never exceptions.

    ``fn`` (from :func:`callable_for`) lets the modes of one case share a
    ``torch.compile`` wrapper, so each graph compiles once.
    """
    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        fn = fn if fn is not None else callable_for(case, backend)
        call, prepared = mode_fn(case, fn, mode, copies, gen)
        stats = time_fn(call, prepared, device=device, warmup=cfg.warmup, repeat=cfg.repeat,
                        max_seconds=cfg.max_seconds, warmup_seconds=cfg.warmup_seconds)
        peak = measure_peak_memory(lambda: call(prepared[0]), device) if cfg.measure_memory else None
        # aten-op counting only sees eager code; on a GPU the profiler counts every backend's kernels
        launches = (roofline.count_launches(lambda: call(prepared[0]), device, allow_aten_count=backend == "torch")
                    if cfg.count_launches else None)
    except torch.cuda.OutOfMemoryError as e:
        del e
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return _row(case, backend, dtype_name, mode, "skipped", "out of memory")
    except Exception as e:  # reported, the suite goes on
        return _row(case, backend, dtype_name, mode, "error", _short(e))
    nbytes = case.spec.bytes(mode, *copies[0])
    gbps = roofline.achieved_gbps(nbytes, stats.median_ms) if stats.median_ms > 0 else None
    return _row(case, backend, dtype_name, mode, "ok", "", **stats.to_dict(),
                peak_mem_bytes=peak, launches=launches, min_bytes=nbytes, gbps=gbps,
                pct_copy_bw=(100.0 * gbps / copy_gbps) if gbps is not None and copy_gbps else None)


def run_suite(
    device: torch.device,
    *,
    quick: bool,
    ops: Sequence[str] | None = None,
    backends: Sequence[str] = BACKENDS,
    dtypes: Sequence[str] = ("fp32", "bf16"),
    modes: Sequence[str] = MODES,
    cfg: TimingConfig | None = None,
    copy_gbps: float | None = None,
    log: Callable[[str], None] = print,
    specs: Sequence[OpSpec] | None = None,
) -> list[dict]:
    """Run the matrix; returns one row per cell (``status`` ``ok``/``skipped``/``error``).

    ``ok`` rows carry the :class:`~sstkd.benchmarks.timing.TimingStats`
    fields, ``peak_mem_bytes``, ``min_bytes``, ``gbps``, ``pct_copy_bw`` and
    (filled by :func:`add_speedups`) ``speedup_vs_torch``.

    Raises:
        ValueError: an unknown op, backend, dtype or mode name (the message names it).

    ``specs`` replaces :data:`sstkd.ops.specs.SPECS` (e.g. an op under development).
    """
    from sstkd.ops import dispatch

    all_backends = ("torch", "compile") + tuple(b for b in dispatch.BACKEND_MODULES if b != "torch")
    for name, given, allowed in (("ops", ops or (), _specs.op_names(specs)), ("backends", backends, all_backends),
                                 ("dtypes", dtypes, tuple(DTYPES)), ("modes", modes, MODES)):
        bad = [g for g in given if g not in allowed]
        if bad:
            raise ValueError(f"{name}: unknown {bad}; choose from {list(allowed)}")
    cfg = cfg or TimingConfig.for_run(device, quick)
    ops_mod, import_error = load_ops()
    rows: list[dict] = []
    for case in build_cases(quick, ops, specs=specs):
        if import_error is not None:
            for b in backends:
                rows.append(_row(case, b, "-", "-", "skipped", import_error))
            continue
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            try:
                first = make_inputs(case, device, dtype, seed=0)
                copies = [first] + [make_inputs(case, device, dtype, seed=i)
                                    for i in range(1, n_copies(input_bytes(first), device))]
            except Exception as e:
                for b in backends:
                    rows.append(_row(case, b, dtype_name, "-", "error", f"making inputs: {_short(e)}"))
                continue
            for backend in backends:
                ok, why = backend_availability(backend, case.spec.name, device, quick)
                if not ok:
                    rows.extend(_row(case, backend, dtype_name, m, "skipped", why) for m in modes)
                    continue
                fn = callable_for(case, backend)
                for mode in modes:
                    row = run_cell(case, backend, dtype_name, mode, copies, device, cfg, copy_gbps, fn=fn)
                    rows.append(row)
                    log(format_row(row))
            del copies, first
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_torch`` = eager-reference median / this row's median, for the same cell."""
    key = lambda r: (r["op"], r["params"], r["shape"], r["dtype"], r["mode"])  # noqa: E731
    ref = {key(r): r["median_ms"] for r in rows if r["backend"] == "torch" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and key(r) in ref and r["median_ms"] > 0:
            r["speedup_vs_torch"] = ref[key(r)] / r["median_ms"]


def format_row(r: dict) -> str:
    head = f"{r['op']:<18} {r['params']:<22} {r['shape']:<16} {r['dtype']:<5} {r['mode']:<8} {r['backend']:<8}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r['reason']}"
    peak = "n/a" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**20:.1f} MiB"
    bw = "" if r.get("gbps") is None else f"{r['gbps']:.1f} GB/s"
    return f"{head} {r['median_ms']:9.3f} ms ± {r['iqr_ms']:.3f} (IQR)  {bw:>12}  peak {peak}"
