"""The work of each ``make gpu-check`` stage, run in its own process.

``python -m sstkd.gpucheck.workers KIND SPEC_JSON RESULT_JSON`` runs one worker:
it reads its spec, does the work and writes its result; a worker that writes
rows appends them to ``RESULT_JSON + ".rows"`` as it goes (JSON lines), so a
worker killed at its time budget still leaves what it finished.

``python -m sstkd.gpucheck.workers --serve`` is the dry run's fork server: it
imports torch once, then forks each worker it is sent, so that an
interpreter-sized stage does not spend most of its time importing (see
:func:`serve`). The GPU run starts every worker afresh.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback

KINDS = ("env", "matrix", "warm_timing", "ext_build", "determinism", "sanitize_target", "timing", "train_step")
USAGE = "usage: python -m sstkd.gpucheck.workers {KIND SPEC_JSON RESULT_JSON | --serve}"


def argv_error(argv: list[str]) -> str | None:
    """Why ``argv`` is not ``KIND SPEC_JSON RESULT_JSON`` with a known KIND (None when it is)."""
    if len(argv) != 3:
        return f"{USAGE}: expected 3 arguments, got {len(argv)}: {argv}"
    if argv[0] not in KINDS:
        return f"{USAGE}: KIND: expected one of {', '.join(KINDS)}, got {argv[0]!r}"
    return None


# A wrong command line fails here, before the seconds of importing torch.
if __name__ == "__main__" and sys.argv[1:] != ["--serve"] and argv_error(sys.argv[1:]):
    sys.exit(argv_error(sys.argv[1:]))

# Triton's interpreter must be chosen before any kernel module is imported.
if os.environ.get("SSTKD_GPUCHECK_DRY_RUN") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from sstkd._util import tensor_leaves  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The texture ops that SSTKDLoss and verify exercise, with the fused backends to time.
TIMED_OPS = ("lp_dec", "lp_rec", "dfb_dec", "contourlet_dec", "contourlet_energy", "quantize_count", "reproject",
             "cooccurrence")


def device_for(dry_run: bool) -> torch.device:
    return torch.device("cpu" if dry_run else "cuda")


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}"


class Rows:
    """Append-only JSON-lines sink next to the result file."""

    def __init__(self, path: str):
        self.path = path

    def add(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()


# ----------------------------------------------------------------------------- check matrix


# The training-shape case: the contourlet energy SSTKDLoss takes of a ResNet-101 teacher's
# stride-4 features (VOC/ADE20K 512x512 crops, batch 8); a tiny image in the dry run.
TRAINING_NLEVS = [3, 3]
TRAINING_SHAPE = {False: (8, 256, 128, 128), True: (1, 1, 24, 24)}


def training_case(dry_run: bool):
    """The ``contourlet_energy`` ``nlevs=[3, 3]`` case at the training shape, from the op's spec."""
    from sstkd.ops.specs import Case, get_spec

    shape = TRAINING_SHAPE[bool(dry_run)]
    return Case(get_spec("contourlet_energy"), "x".join(map(str, shape)), shape, {"nlevs": list(TRAINING_NLEVS)})


def is_training(op: str, shape: str) -> bool:
    """Whether a matrix case / row (its ``op`` name and ``shape`` label) is the training-shape case
    (:func:`training_case`, GPU or dry run)."""
    return any(op == c.name and shape == c.label for c in (training_case(False), training_case(True)))


def matrix_cases(dry_run: bool):
    """verify's check matrix on this device (every spec's ``"verify_full"`` cases) plus the
    training-shape ``nlevs=[3, 3]`` case.

    Dry run: the first ``lp_dec`` and ``quantize_count`` (triangular, no Lloyd step) cases of
    ``"verify"`` (interpreter-sized). The list is rebuilt identically in every process, so a
    shard names its cases by index.
    """
    from sstkd.ops.specs import SPECS, get_spec

    if dry_run:
        lp = get_spec("lp_dec").cases("verify")[0]
        q = next(c for c in get_spec("quantize_count").cases("verify")
                 if c.params == {"kernel": "triangular", "iters": 0})
        return [lp, q, training_case(True)]
    return [c for spec in SPECS for c in spec.cases("verify_full")] + [training_case(False)]


def run_matrix(spec: dict, rows: Rows) -> dict:
    """Check each unit's cases on the spec's backends × the unit's dtypes × layouts against the float64
    reference; a ``{"kind": "unit_done"}`` row marks each finished unit."""
    from sstkd import verify
    from sstkd.ops import dispatch

    dry = spec["dry_run"]
    device = device_for(dry)
    cases = matrix_cases(dry)
    n = 0
    for u in spec["units"]:
        for i in u["cases"]:
            case = cases[i]
            for backend in spec["backends"]:
                if not dispatch.implements(backend, case.spec.name):
                    continue
                for dname in u["dtypes"]:
                    for layout in u["layouts"]:
                        t0 = time.perf_counter()
                        try:
                            r = verify.check(case, backend, DTYPES[dname], layout, device)
                            row = {**r.__dict__, "ok": r.ok, "error": ""}
                        except Exception as e:  # a crash is a failure, recorded
                            row = {"op": case.name, "backend": backend, "dtype": dname, "shape": case.label,
                                   "layout": layout, "ok": False, "error": _short(e)}
                        row["seconds"] = round(time.perf_counter() - t0, 3)
                        rows.add(row)
                        n += 1
        rows.add({"kind": "unit_done", "cases": u["cases"], "dtypes": u["dtypes"]})
    return {"rows_written": n}


# ----------------------------------------------------------------------------- timing-shape warm-up


def timing_cases(dry_run: bool):
    """The op benchmark cases timed by the timing stage: one training shape each (fp32)."""
    from sstkd.benchmarks import op_suite

    if dry_run:
        images, intens, tables = [("dry", (1, 2, 24, 24))], [("dry", (1, 16, 16))], (4,)
    else:
        images, intens, tables = [("teacher-voc-ade", (8, 256, 128, 128))], [("voc-ade", (8, 128, 128))], (64,)
    return op_suite.build_cases(False, TIMED_OPS, images=images, intensities=intens, table_channels=tables)


def run_warm_timing(spec: dict, rows: Rows) -> dict:
    """Run each fused backend of the spec's timing cases once (fwd and fwd+bwd): compiles their kernels.

    Warming needs the backend to run the op here, not to give meaningful timings (an interpreted
    backend warms too), so availability is dispatch's, not the timing stage's."""
    from sstkd.benchmarks import op_suite
    from sstkd.ops import dispatch

    device = device_for(spec["dry_run"])
    cases = timing_cases(spec["dry_run"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    for i in spec["cases"]:
        case = cases[i]
        for backend in spec["backends"]:
            if not (dispatch.backend_status(backend, device)[0] and dispatch.implements(backend, case.spec.name)):
                continue
            t0 = time.perf_counter()
            try:
                xs = op_suite.make_inputs(case, device, torch.float32)
                fn = op_suite.callable_for(case, backend)
                for mode in ("fwd", "fwd+bwd"):
                    call, prepared = op_suite.mode_fn(case, fn, mode, [xs], gen)
                    call(prepared[0])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rows.add({"op": case.name, "backend": backend, "ok": True,
                          "seconds": round(time.perf_counter() - t0, 3)})
            except Exception as e:
                rows.add({"op": case.name, "backend": backend, "ok": False, "error": _short(e)})
    return {}


# ----------------------------------------------------------------------------- environment


def run_env(spec: dict, rows: Rows) -> dict:
    """Versions, device, tools: what the results were measured on."""
    from sstkd.ops.backends import cuda as cuda_ext

    info: dict = {"python": platform.python_version(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "cpus": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:
        info["triton"] = f"not importable: {_short(e)}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    l2_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1))
    else:
        from sstkd.benchmarks.report import cpu_name

        info["device"] = f"CPU ({cpu_name()}), no CUDA device"
    info["compute_sanitizer"] = sanitizer_path()
    info["nvcc"] = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                            if os.environ.get("CUDA_HOME") else None)
    info["ext_jit"] = list(cuda_ext.jit_available())
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except Exception as e:
        info["nvidia_smi"] = f"unavailable: {_short(e)}"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except Exception:
        info["commit"] = None
    return info


def sanitizer_path() -> str | None:
    for cand in (shutil.which("compute-sanitizer"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer"),
                 "/usr/local/cuda/bin/compute-sanitizer"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


# ----------------------------------------------------------------------------- CUDA extension


def run_ext_build(spec: dict, rows: Rows) -> dict:
    """JIT-build (or load the cached build of) the CUDA extension; how long it took."""
    from sstkd.ops.backends import cuda as cuda_ext

    t0 = time.perf_counter()
    cuda_ext.get()
    return {"seconds": round(time.perf_counter() - t0, 1), "info": {k: str(v) for k, v in cuda_ext.info().items()}}


# ----------------------------------------------------------------------------- determinism


def _op_runs(dry: bool):
    """``[(name, fn)]``: each fused op fwd+bwd on fixed inputs, returning every output and gradient."""
    from sstkd import ops

    device = device_for(dry)
    g = torch.Generator(device="cpu").manual_seed(1)
    img = (1, 2, 16, 16) if dry else (8, 64, 128, 128)
    q = (1, 256) if dry else (8, 128 * 128)
    L = 16 if dry else 128
    x = torch.randn(*img, generator=g).to(device)
    s = (0.5 + 0.15 * torch.randn(*q, generator=g)).clamp(-1, 1).to(device)
    table = torch.randn(q[0], 4, L, generator=g).to(device)

    def grads(out_fn, *inputs):
        xs = [t.detach().clone().requires_grad_(True) for t in inputs]
        outs = out_fn(*xs)
        outs = [outs] if isinstance(outs, torch.Tensor) else [o for o in tensor_leaves(outs)]
        gen = torch.Generator(device="cpu").manual_seed(2)
        loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum() for o in outs
                   if o.requires_grad)
        gs = torch.autograd.grad(loss, xs, allow_unused=True)
        return [o.detach() for o in outs] + [t for t in gs if t is not None]

    backend = "triton"
    runs = [("quantize_count[iters=3]", lambda: grads(lambda a: ops.quantize_count(a, L, iters=3, backend=backend), s))]
    if not dry:
        runs.append(("lp_dec", lambda: grads(lambda a: ops.lp_dec(a, backend=backend), x)))
        centers = ops.quantize_count(s, L, backend="torch")[0]
        runs += [("contourlet_energy[3,3]", lambda: grads(lambda a: ops.contourlet_energy(a, [3, 3], backend=backend), x)),
                 ("reproject", lambda: grads(lambda t, a: ops.reproject(t, a, centers, backend=backend), table, s)),
                 ("cooccurrence", lambda: grads(lambda a: ops.cooccurrence(a.reshape(8, 128, 128), centers,
                                                                             backend=backend), s))]
    return runs


def _loss_run(dry: bool):
    """One SSTKDLoss forward + backward (default config, fused backends) at the training tap shape."""
    from sstkd.distill import SSTKDConfig, SSTKDLoss

    device = device_for(dry)
    b, k, cs, ct, h = (1, 3, 2, 3, 16) if dry else (8, 19, 64, 256, 128)
    torch.manual_seed(0)
    crit = SSTKDLoss(cs, ct, k, SSTKDConfig(backend="torch" if dry else "auto")).to(device)
    g = torch.Generator(device="cpu").manual_seed(3)
    s_log = torch.randn(b, k, 4 * h, 4 * h, generator=g).to(device)
    t_log = torch.randn(b, k, 4 * h, 4 * h, generator=g).to(device)
    s_low = torch.randn(b, cs, h, h, generator=g).to(device)
    t_low = torch.randn(b, ct, h, h, generator=g).to(device)

    def run():
        crit.zero_grad(set_to_none=True)
        sl, lo = s_log.clone().requires_grad_(True), s_low.clone().requires_grad_(True)
        out = crit(sl, t_log, lo, t_low)
        out["loss"].backward()
        return [v.detach() for v in out.values()] + [sl.grad, lo.grad] + [p.grad.clone() for p in crit.align.parameters()]

    return run


def run_determinism(spec: dict, rows: Rows) -> dict:
    """With ``torch.use_deterministic_algorithms(True)``, every fused op (fwd + bwd) and one SSTKDLoss step,
    run twice on the same inputs, must give bitwise-equal outputs and gradients."""
    dry = spec["dry_run"]
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    runs = _op_runs(dry) + [("SSTKDLoss step", _loss_run(dry))]
    for name, fn in runs:
        try:
            a, b = fn(), fn()
            same = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
            diff = 0.0 if same else max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b))
            rows.add({"name": name, "ok": bool(same), "max_abs_diff": diff})
        except Exception as e:
            rows.add({"name": name, "ok": False, "error": _short(e)})
    return {}


# ----------------------------------------------------------------------------- sanitizer target


def run_sanitize_target(spec: dict, rows: Rows) -> dict:
    """Every fused op on small shapes, fwd + bwd (the program compute-sanitizer watches)."""
    from sstkd import ops
    from sstkd.ops import dispatch
    from sstkd.ops.backends import cuda as cuda_ext

    device = device_for(spec["dry_run"])
    g = torch.Generator(device="cpu").manual_seed(4)
    x = torch.randn(2, 3, 24, 40, generator=g).to(device).requires_grad_(True)
    s = torch.rand(2, 12, 20, generator=g).to(device).requires_grad_(True)
    backends = ["triton"]
    if device.type == "cuda" and spec.get("cuda_ext"):
        cuda_ext.get()  # built by the ext stage: a cached load
        backends.append("cuda")
    for b in backends:
        for name, fn in (
            ("lp_dec", lambda: sum(t.square().sum() for t in ops.lp_dec(x, backend=b))),
            ("lp_rec", lambda: ops.lp_rec(x[..., ::2, ::2].contiguous(), x, backend=b).square().sum()),
            ("dfb_dec", lambda: sum(t.square().sum() for t in ops.dfb_dec(x, 3, backend=b))),
            ("contourlet_energy", lambda: ops.contourlet_energy(x, [2, 2], backend=b).sum()),
            ("quantize_count", lambda: ops.quantize_count(s, 16, iters=2, backend=b)[1].square().sum()),
            ("reproject", lambda: ops.reproject(torch.rand(2, 3, 16, device=device), s,
                                                ops.quantize_count(s.detach(), 16, backend="torch")[0],
                                                backend=b).square().sum()),
            ("cooccurrence", lambda: ops.cooccurrence(s, ops.quantize_count(s.detach(), 16, backend="torch")[0],
                                                      backend=b).square().sum()),
        ):
            if not dispatch.implements(b, name):
                continue
            try:
                fn().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rows.add({"name": f"{name}/{b}", "ok": True})
            except Exception as e:
                rows.add({"name": f"{name}/{b}", "ok": False, "error": _short(e)})
    return {}


# ----------------------------------------------------------------------------- timing


def run_timing(spec: dict, rows: Rows) -> dict:
    """Copy bandwidth, then every op × backend (fwd, fwd+bwd, fp32) at one training shape, timed with CUDA events."""
    from sstkd.benchmarks import op_suite, roofline

    dry = spec["dry_run"]
    device = device_for(dry)
    bw = roofline.copy_bandwidth(device, (8 if dry else 1024) * 2**20, repeat=5 if dry else 20)
    # launches and bytes are counted by `sstkd cost`; here only time, within the stage's budget
    cfg = op_suite.TimingConfig(warmup=1 if dry else 3, repeat=3 if dry else 15,
                                max_seconds=0.3 if dry else spec.get("cell_seconds", 0.6),
                                measure_memory=False, count_launches=False, warmup_seconds=0.0 if dry else 0.02)
    for case in timing_cases(dry):
        if dry and case.spec.name not in ("lp_dec", "contourlet_energy", "quantize_count", "reproject"):
            continue  # the dry run exercises the path, not every op
        try:
            first = op_suite.make_inputs(case, device, torch.float32, seed=0)
            copies = [first] + [op_suite.make_inputs(case, device, torch.float32, seed=k)
                                for k in range(1, op_suite.n_copies(op_suite.input_bytes(first), device))]
        except Exception as e:
            rows.add(op_suite._row(case, "-", "fp32", "-", "error", f"making inputs: {_short(e)}"))
            continue
        for backend in spec["backends"]:
            ok, why = op_suite.backend_availability(backend, case.spec.name, device, quick=dry)
            if not ok:
                for mode in ("fwd", "fwd+bwd"):
                    rows.add(op_suite._row(case, backend, "fp32", mode, "skipped", why))
                continue
            fn = op_suite.callable_for(case, backend)
            for mode in ("fwd", "fwd+bwd"):
                rows.add(op_suite.run_cell(case, backend, "fp32", mode, copies, device, cfg, bw["gbps"], fn=fn))
        del copies, first
    return {"copy_gbps": bw["gbps"], "copy_bytes": bw["nbytes"], "timer": "CUDA events" if device.type == "cuda"
            else "perf_counter (CPU: exercises the code path only)"}


def run_train_step(spec: dict, rows: Rows) -> dict:
    """One SSTKDLoss step's share of a PSPNet-ResNet18 student step (teacher PSPNet-ResNet101)."""
    from sstkd.benchmarks import train_step

    dry = spec["dry_run"]
    device = device_for(dry)
    if dry:
        cfg = train_step.TrainStepConfig(teacher_width=8, student_width=8, batch=2, crop=(64, 64), warmup=1,
                                         repeat=1, max_seconds=3.0)
        variants = ("student", "kd", "sstkd_reference")
    else:
        cfg = train_step.TrainStepConfig(warmup=2, repeat=6, max_seconds=spec.get("variant_seconds", 10.0))
        variants = ("student", "kd", "sstkd_reference", "sstkd_fused")
    return train_step.run_train_step(device, cfg, variants=variants, log=lambda m: print(m, flush=True),
                                     measure_memory=not dry)


WORKERS = {
    "env": run_env,
    "matrix": run_matrix,
    "warm_timing": run_warm_timing,
    "ext_build": run_ext_build,
    "determinism": run_determinism,
    "sanitize_target": run_sanitize_target,
    "timing": run_timing,
    "train_step": run_train_step,
}


def main(argv: list[str]) -> int:
    err = argv_error(argv)
    if err:
        print(err, file=sys.stderr)
        return 2
    kind, spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    rows = Rows(result_path + ".rows")
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **(WORKERS[kind](spec, rows) or {})}
    except Exception as e:
        traceback.print_exc()
        result = {"status": "error", "reason": _short(e)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    with open(result_path, "w") as f:
        json.dump(result, f, default=str)
    return 0 if result["status"] == "ok" else 1


# ----------------------------------------------------------------------------- fork server (dry run)


def _say(line: str) -> None:
    # one write(2) per line: the SIGCHLD handler below may write between two lines of the loop
    os.write(1, (line + "\n").encode())


def _run_forked(request: dict) -> None:
    """In the forked child: a worker in its own process group (as a spawned one: a timeout kills the
    group), its output in its log; never returns."""
    rc = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        rc = main(request["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(rc)


# Modules that more than one worker kind imports at a cost (torch._dynamo: over a second; torch's
# optimizers and its deterministic mode import it): the fork server imports them before forking
# the first worker of such a kind, and every later fork has them.
SHARED_IMPORTS = {"determinism": ("torch._dynamo",), "train_step": ("torch._dynamo",)}


def serve() -> None:
    """The dry run's fork server (``--serve``), driven by ``sstkd.gpucheck.run.ForkServer``.

    Reads one JSON request per line on stdin, ``{"id", "argv", "log"}``, forks a worker
    running :func:`main` on ``argv`` and answers ``started ID PID``; when a worker exits it
    answers ``exited PID RC`` (RC < 0: killed by signal -RC). Exits at the end of its input.
    Forking is safe here because this process only imported modules: it never ran a torch
    op (no thread pool), never touched CUDA, and runs one thread.
    """
    import importlib

    def reap(*_):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")

    signal.signal(signal.SIGCHLD, reap)
    _say("ready")
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        for module in SHARED_IMPORTS.get(next(iter(request["argv"]), ""), ()):
            try:
                importlib.import_module(module)
            except Exception:
                pass  # the worker meets the error itself, and reports it
        pid = os.fork()
        if pid == 0:
            _run_forked(request)
        _say(f"started {request['id']} {pid}")
    os._exit(0)  # nothing left to flush: no second of tearing down torch's modules


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main(sys.argv[1:]))
