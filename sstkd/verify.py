"""``sstkd verify``: every non-reference backend against the reference, forward and every gradient.

For each op × backend × dtype × shape the forward outputs and the gradients of
every differentiable input (for a fixed random cotangent) are compared with
the **float64 reference** (the truth). The oracle of DESIGN §6:

    error(backend, dtype) <= 2 * error(reference run in dtype) + floor(dtype)

with ``floor = rtol(dtype) * max|truth|`` (float32: 1e-5; float16/bfloat16:
the dtype's machine epsilon). Non-contiguous and channels-last inputs are
part of the matrix. Exit status is non-zero on any failure.

The matrix is every :class:`~sstkd.ops.specs.OpSpec` of :data:`sstkd.ops.specs.SPECS`
(``verify_shapes`` on the CPU, ``verify_full_shapes`` on a GPU, × its ``variants``) on every
backend whose table implements it.

On a machine without a GPU the Triton backend runs in Triton's interpreter
(``TRITON_INTERPRET=1`` is set before the kernels load) on small shapes.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import torch

from sstkd._util import tensor_leaves
from sstkd.ops.specs import TOLERANCES, Case, OpSpec, apply_layout

DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
RTOL = TOLERANCES["float64_reference"]


flatten_outputs = tensor_leaves  # an op's outputs (a tensor, or nested lists/tuples of them) as one flat list


def _map_float(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_float(o, fn) for o in obj)
    return obj


def _forward_backward(case: Case, args: tuple, kwargs: dict, backend: str, dtype: torch.dtype, layout: str,
                      cot_seed: int):
    spec = case.spec
    xs = [apply_layout(_map_float(a, lambda t: t.detach().to(dtype)), layout) for a in args]
    diff = [t for i in spec.grad_inputs for t in tensor_leaves(xs[i])]
    for t in diff:
        t.requires_grad_(True)
    outs = flatten_outputs(spec.run(tuple(xs), dict(kwargs), backend))
    g = torch.Generator(device="cpu").manual_seed(cot_seed)
    cots = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in outs]
    loss = sum((o.to(torch.float64) * c).sum() for o, c in zip(outs, cots) if o.requires_grad)
    grads = []
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        grads = torch.autograd.grad(loss, diff, allow_unused=True)
        grads = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(diff, grads)]
    return [o.detach().to(torch.float64) for o in outs], [gr.detach().to(torch.float64) for gr in grads]


def _max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    err = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            err = max(err, float((x - y).abs().max()))
    return err


def _scale(ts: list[torch.Tensor]) -> float:
    return max([float(t.abs().max()) for t in ts if t.numel()] + [1e-30])


@dataclasses.dataclass
class Row:
    op: str
    backend: str
    dtype: str
    shape: str
    layout: str
    fwd_err: float
    fwd_tol: float
    grad_err: float
    grad_tol: float

    @property
    def ok(self) -> bool:
        return self.fwd_err <= self.fwd_tol and self.grad_err <= self.grad_tol


def check(case: Case, backend: str, dtype: torch.dtype, layout: str, device: torch.device, seed: int = 0) -> Row:
    """One cell: ``case`` on ``backend`` in ``dtype`` / ``layout`` against the float64 reference."""
    args, kwargs = case.inputs(torch.float64, device, seed=seed)
    # Low-precision runs are judged on the rounded inputs: the truth is the
    # float64 reference of the same rounded values.
    rounded = [_map_float(a, lambda t: t.to(dtype).to(torch.float64)) for a in args]
    truth_o, truth_g = _forward_backward(case, rounded, kwargs, "torch", torch.float64, "contiguous", seed + 1)
    ref_o, ref_g = _forward_backward(case, rounded, kwargs, "torch", dtype, "contiguous", seed + 1)
    out_o, out_g = _forward_backward(case, rounded, kwargs, backend, dtype, layout, seed + 1)
    rtol = TOLERANCES[case.spec.tolerance][dtype]
    fwd_tol = 2 * _max_err(ref_o, truth_o) + rtol * _scale(truth_o)
    grad_tol = 2 * _max_err(ref_g, truth_g) + rtol * _scale(truth_g) if truth_g else 0.0
    return Row(
        case.name, backend, str(dtype).replace("torch.", ""), case.label, layout,
        _max_err(out_o, truth_o), fwd_tol, _max_err(out_g, truth_g) if truth_g else 0.0, grad_tol,
    )


# ----------------------------------------------------------------------------- the matrix
def run_matrix(backends, dtypes, device, small, layouts=("contiguous", "channels_last", "noncontig"), ops_filter=None,
               log=print, specs: list[OpSpec] | None = None) -> list[Row]:
    """Every case of ``specs`` (default :data:`sstkd.ops.specs.SPECS`) × backend that implements
    it × dtype × layout. ``small``: interpreter-sized shapes (CPU)."""
    from sstkd.ops import dispatch
    from sstkd.ops.specs import SPECS

    rows = []
    for spec in SPECS if specs is None else specs:
        if ops_filter and spec.name not in ops_filter:
            continue
        for case in spec.cases("verify" if small else "verify_full"):
            for backend in backends:
                if not dispatch.implements(backend, spec.name):
                    continue
                for dtype in dtypes:
                    for layout in layouts:
                        try:
                            row = check(case, backend, dtype, layout, device)
                        except Exception as e:  # a crash is a failure, reported as such
                            row = Row(case.name, backend, str(dtype).replace("torch.", ""), case.label, layout,
                                      float("inf"), 0.0, float("inf"), 0.0)
                            log(f"ERROR {case.name} {backend} {dtype} {case.label} {layout}: {type(e).__name__}: {e}")
                        rows.append(row)
    return rows


def format_rows(rows: list[Row]) -> str:
    head = f"{'op':<34} {'backend':<7} {'dtype':<9} {'shape':<16} {'layout':<13} {'fwd err':>9} {'fwd tol':>9} {'grad err':>9} {'grad tol':>9}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.op:<34} {r.backend:<7} {r.dtype:<9} {r.shape:<16} {r.layout:<13} {r.fwd_err:9.2e} {r.fwd_tol:9.2e} "
            f"{r.grad_err:9.2e} {r.grad_tol:9.2e}  {'PASS' if r.ok else 'FAIL'}"
        )
    n_fail = sum(not r.ok for r in rows)
    lines.append(f"{len(rows) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)


def _fast_backends() -> list[str]:
    from sstkd.ops.dispatch import BACKENDS

    return [b for b in BACKENDS if b != "torch"]


def add_arguments(parser) -> None:
    parser.add_argument("--backend", action="append", choices=_fast_backends(),
                        help="backend(s) to check (default: every available one)")
    parser.add_argument("--device", default=None, help="device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", action="append", choices=sorted(DTYPE_NAMES), help="dtypes (default fp32, fp16, bf16)")
    parser.add_argument("--op", action="append", help="only these ops (e.g. lp_dec)")
    parser.add_argument("--full", action="store_true", help="training-size shapes even on the CPU")


def _error(msg: str) -> int:
    print(f"sstkd verify: error: {msg}", file=sys.stderr)
    return 2


def main(args) -> int:
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        return _error(f"--device: {args.device!r} is not a device (cpu, cuda or cuda:N)")
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        return _error(f"--device: {args.device!r} is not available here (cpu{', cuda' if torch.cuda.is_available() else ''})")
    from sstkd.ops.specs import SPECS

    known = sorted(spec.name for spec in SPECS)
    unknown = sorted(set(args.op or []) - set(known))
    if unknown:
        return _error(f"--op: unknown op {unknown[0]!r}; choose from {known}")
    if device.type == "cpu" and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    from sstkd.ops import dispatch

    wanted = args.backend or _fast_backends()
    backends = []
    for b in wanted:
        ok, why = dispatch.backend_status(b, device)
        if ok:
            backends.append(b)
        else:
            print(f"skipping backend {b}: {why}")
            if args.backend:
                return 2
    if not backends:
        print("no backend to verify besides the reference")
        return 0
    dtypes = [DTYPE_NAMES[d] for d in (args.dtype or ["fp32", "fp16", "bf16"])]
    small = device.type == "cpu" and not args.full
    rows = run_matrix(backends, dtypes, device, small, ops_filter=set(args.op) if args.op else None)
    print(format_rows(rows))
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":  # pragma: no cover
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(main(p.parse_args()))
