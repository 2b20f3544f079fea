"""The op benchmark matrix: op × backend × shape × dtype × mode.

Backends:
  ``torch``    the eager reference (``backend="torch"``);
  ``compile``  ``torch.compile`` of the reference (compile time excluded);
  ``triton``   the fused Triton kernels (compiled, never the interpreter);
  ``cuda``     the ``sstkd._C`` extension.
Modes: ``fwd`` (under ``no_grad``), ``bwd`` (``autograd.grad`` of a retained
graph, so only the backward is timed), ``fwd+bwd``.

Shapes are those of real training (issue 7): the stride-4 features of a
ResNet-101 teacher (256 ch) and a ResNet-18 student (64 ch) on Cityscapes
512×1024 and VOC/ADE20K 512×512 crops (batch 8), their intensity maps for the
quantization ops (128 levels). ``quick=True`` uses small shapes for a CPU run
of a few minutes.

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
from typing import Any, Callable, Sequence

import torch

from sstkd.benchmarks import roofline
from sstkd.benchmarks.timing import measure_peak_memory, time_fn
from sstkd.verify import flatten_outputs

BACKENDS = ("torch", "compile", "triton", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
MODES = roofline.MODES
OPS = roofline.OPS
LEVELS = 128  # quantization levels of DTIEM


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
    if quick:
        return [("quick-student", (2, 16, 64, 128))]
    return [
        ("teacher-cityscapes", (8, 256, 128, 256)),
        ("teacher-voc-ade", (8, 256, 128, 128)),
        ("student-cityscapes", (8, 64, 128, 256)),
        ("student-voc-ade", (8, 64, 128, 128)),
    ]


def intensity_shapes(quick: bool) -> list[tuple[str, tuple[int, int, int]]]:
    """``(label, (B, H, W))`` intensity maps (one per image, from the features above)."""
    if quick:
        return [("quick", (2, 64, 128))]
    return [("cityscapes", (8, 128, 256)), ("voc-ade", (8, 128, 128))]


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass
class OpCase:
    """One op at one shape.

    ``make(device, dtype, gen)`` returns the input list; ``run(inputs, backend)``
    the op's output(s) for a dispatch backend (``"torch"``, ``"triton"``,
    ``"cuda"``); ``diff`` the indices of the inputs that get gradients.
    ``shape``/``params`` feed :func:`roofline.op_bytes`.
    """

    op: str
    label: str
    shape: tuple[int, ...]
    params: dict
    make: Callable[[torch.device, torch.dtype, torch.Generator], list]
    run: Callable[[list, str], Any]
    diff: tuple[int, ...]

    @property
    def params_str(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())

    def min_bytes(self, mode: str, dtype: torch.dtype) -> int:
        return roofline.op_bytes(self.op, mode, self.shape, dtype, **self.params)


def load_ops():
    """``(sstkd.ops, None)`` or ``(None, why it cannot be imported)``."""
    try:
        return importlib.import_module("sstkd.ops"), None
    except Exception as e:  # an op module still missing or broken: every op row says so
        return None, f"sstkd.ops does not import: {type(e).__name__}: {e}"


def _randn(gen, shape, device, dtype):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def _intensity(gen, shape, device, dtype):
    # cosine similarities of features to their mean: mostly in (0, 1), a smooth bump plus noise
    s = 0.5 + 0.15 * torch.randn(*shape, generator=gen, dtype=torch.float32)
    return s.clamp(-1, 1).to(device=device, dtype=dtype)


def _centers_for(ops, s):
    with torch.no_grad():
        return ops.quantize_count(s.detach(), LEVELS, backend="torch")[0]


def build_cases(quick: bool, ops_filter: Sequence[str] | None = None, *,
                images: Sequence[tuple[str, tuple[int, int, int, int]]] | None = None,
                intensities: Sequence[tuple[str, tuple[int, int, int]]] | None = None,
                table_channels: Sequence[int] | None = None) -> list[OpCase]:
    """The benchmark cases (ops in :data:`OPS` order) for a quick or full run.

    ``images`` / ``intensities`` / ``table_channels`` replace the run's
    default shapes (``(label, shape)`` pairs; ``D`` of the ``reproject`` table).
    """
    ops_mod, _ = load_ops()
    want = set(ops_filter) if ops_filter else set(OPS)
    res: list[OpCase] = []
    nlevs = [3, 3]
    for label, shp in (images if images is not None else image_shapes(quick)):
        if "lp_dec" in want:
            res.append(OpCase("lp_dec", label, shp, {}, lambda d, t, g, s=shp: [_randn(g, s, d, t)],
                              lambda xs, b: ops_mod.lp_dec(xs[0], backend=b), (0,)))
        if "lp_rec" in want:
            res.append(OpCase(
                "lp_rec", label, shp, {},
                lambda d, t, g, s=shp: [_randn(g, (s[0], s[1], s[2] // 2, s[3] // 2), d, t), _randn(g, s, d, t)],
                lambda xs, b: ops_mod.lp_rec(xs[0], xs[1], backend=b), (0, 1)))
        if "dfb_dec" in want:
            res.append(OpCase("dfb_dec", label, shp, {"levels": 3}, lambda d, t, g, s=shp: [_randn(g, s, d, t)],
                              lambda xs, b: ops_mod.dfb_dec(xs[0], 3, backend=b), (0,)))
        for op in ("contourlet_dec", "contourlet_energy"):
            if op in want:
                fn = getattr(ops_mod, op, None) if ops_mod is not None else None
                res.append(OpCase(op, label, shp, {"nlevs": nlevs}, lambda d, t, g, s=shp: [_randn(g, s, d, t)],
                                  lambda xs, b, f=fn: f(xs[0], nlevs, backend=b), (0,)))
    for label, (B, H, W) in (intensities if intensities is not None else intensity_shapes(quick)):
        flat = (B, H * W)
        if "quantize_count" in want:
            for iters in (0, 3):
                res.append(OpCase(
                    "quantize_count", label, flat, {"levels": LEVELS, "iters": iters},
                    lambda d, t, g, s=flat: [_intensity(g, s, d, t)],
                    lambda xs, b, it=iters: ops_mod.quantize_count(xs[0], LEVELS, iters=it, backend=b), (0,)))
        if "reproject" in want:
            for D in (table_channels or ((64,) if quick else (1, 64))):
                def make_rep(d, t, g, s=flat, D=D):
                    sv = _intensity(g, s, d, t)
                    return [_randn(g, (s[0], D, LEVELS), d, t), sv, _centers_for(ops_mod, sv)]

                res.append(OpCase("reproject", label, flat, {"levels": LEVELS, "channels": D}, make_rep,
                                  lambda xs, b: ops_mod.reproject(xs[0], xs[1], xs[2], backend=b), (0, 1)))
        if "cooccurrence" in want:
            def make_co(d, t, g, s=(B, H, W)):
                sv = _intensity(g, s, d, t)
                return [sv, _centers_for(ops_mod, sv)]

            res.append(OpCase("cooccurrence", label, (B, H, W), {"levels": LEVELS}, make_co,
                              lambda xs, b: ops_mod.cooccurrence(xs[0], xs[1], backend=b), (0,)))
    return res


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
    if backend not in ("triton", "cuda"):
        return False, f"unknown backend {backend!r}"
    from sstkd.ops import dispatch

    ok, why = dispatch.backend_status(backend, device)
    if not ok:
        return False, why
    if backend == "triton" and dispatch.triton_interpreted():
        return False, "Triton runs in its interpreter here (TRITON_INTERPRET=1): timings would be meaningless"
    if not dispatch._implements(backend, op):
        return False, f"no {backend} kernel for {op} yet (not in dispatch.{backend.upper()}_OPS)"
    return True, why


def callable_for(case: OpCase, backend: str) -> Callable[[list], list[torch.Tensor]]:
    """``inputs -> flat list of outputs`` running ``case`` on ``backend`` (``"compile"``: a fresh
    ``torch.compile`` of the reference; compilation happens on the first call)."""
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
        compiled = torch.compile(lambda *xs: case.run(list(xs), "torch"), dynamic=False)
        return lambda xs: flatten_outputs(compiled(*xs))
    return lambda xs: flatten_outputs(case.run(xs, backend))


@dataclasses.dataclass
class _Prepared:
    xs: list
    diff: list
    cots: list | None = None
    outs: list | None = None


def mode_fn(case: OpCase, fn, mode: str, copies: list[list], gen: torch.Generator):
    """``(call, prepared copies)`` timing one mode; builds grads/cotangents outside the timed region."""
    if mode == "fwd":
        def call_fwd(p: _Prepared):
            with torch.no_grad():
                return fn(p.xs)

        return call_fwd, [_Prepared(xs, []) for xs in copies]

    prepared = []
    for xs in copies:
        xs = [x.detach().requires_grad_(i in case.diff) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
              for i, x in enumerate(xs)]
        diff = [xs[i] for i in case.diff]
        outs = [o for o in fn(xs) if o.requires_grad]
        if not outs:
            raise RuntimeError(f"{case.op}: no output requires grad")
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


def _row(case: OpCase, backend: str, dtype: str, mode: str, status: str, reason: str = "", **extra) -> dict:
    row = {"op": case.op, "params": case.params_str, "shape_name": case.label,
           "shape": "x".join(map(str, case.shape)), "backend": backend, "dtype": dtype, "mode": mode,
           "status": status, "reason": reason}
    row.update(extra)
    return row


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}"


def run_cell(case: OpCase, backend: str, dtype_name: str, mode: str, copies: list[list], device: torch.device,
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
    nbytes = case.min_bytes(mode, dtype)
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
) -> list[dict]:
    """Run the matrix; returns one row per cell (``status`` ``ok``/``skipped``/``error``).

    ``ok`` rows carry the :class:`~sstkd.benchmarks.timing.TimingStats`
    fields, ``peak_mem_bytes``, ``min_bytes``, ``gbps``, ``pct_copy_bw`` and
    (filled by :func:`add_speedups`) ``speedup_vs_torch``.

    Raises:
        ValueError: an unknown op, backend, dtype or mode name (the message names it).
    """
    for name, given, allowed in (("ops", ops or (), OPS), ("backends", backends, BACKENDS),
                                 ("dtypes", dtypes, tuple(DTYPES)), ("modes", modes, MODES)):
        bad = [g for g in given if g not in allowed]
        if bad:
            raise ValueError(f"{name}: unknown {bad}; choose from {list(allowed)}")
    cfg = cfg or TimingConfig.for_run(device, quick)
    ops_mod, import_error = load_ops()
    rows: list[dict] = []
    for case in build_cases(quick, ops):
        if import_error is not None:
            for b in backends:
                rows.append(_row(case, b, "-", "-", "skipped", import_error))
            continue
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            try:
                gen = torch.Generator(device="cpu").manual_seed(0)
                first = case.make(device, dtype, gen)
                size = sum(x.numel() * x.element_size() for x in first if isinstance(x, torch.Tensor))
                copies = [first] + [case.make(device, dtype, gen) for _ in range(n_copies(size, device) - 1)]
            except Exception as e:
                for b in backends:
                    rows.append(_row(case, b, dtype_name, "-", "error", f"making inputs: {_short(e)}"))
                continue
            for backend in backends:
                ok, why = backend_availability(backend, case.op, device, quick)
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
