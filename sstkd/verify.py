"""``sstkd verify``: every non-reference backend against the reference, forward and every gradient.

For each op × backend × dtype × shape the forward outputs and the gradients of
every differentiable input (for a fixed random cotangent) are compared with
the **float64 reference** (the truth). The oracle of DESIGN §6:

    error(backend, dtype) <= 2 * error(reference run in dtype) + floor(dtype)

with ``floor = rtol(dtype) * max|truth|`` (float32: 1e-5; float16/bfloat16:
the dtype's machine epsilon). Non-contiguous and channels-last inputs are
part of the matrix. Exit status is non-zero on any failure.

On a machine without a GPU the Triton backend runs in Triton's interpreter
(``TRITON_INTERPRET=1`` is set before the kernels load) on small shapes.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

import torch

RTOL = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float64: 1e-12}
DTYPE_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclasses.dataclass
class Case:
    """One op at one shape: ``make(device, gen)`` returns the float64 inputs, ``run(inputs, backend)`` the outputs.

    ``diff`` are the indices of the inputs that get gradients (the others are
    passed through unchanged, e.g. centers). ``layout`` is applied to 4-D inputs.
    """

    op: str
    shape: str
    make: Callable[[torch.device, torch.Generator], list]
    run: Callable[[list, str], object]
    diff: tuple[int, ...]


def flatten_outputs(out) -> list[torch.Tensor]:
    """An op's outputs (a tensor, or nested lists/tuples of them) as one flat list."""
    if isinstance(out, torch.Tensor):
        return [out]
    res: list[torch.Tensor] = []
    for o in out:
        res.extend(flatten_outputs(o))
    return res


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig" and t.dim() >= 2:
        # same values, transposed storage
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t


def _forward_backward(case: Case, inputs: list, backend: str, dtype: torch.dtype, layout: str, cot_seed: int):
    xs = []
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = _layout(t.detach().to(dtype), layout)
            if i in case.diff:
                t.requires_grad_(True)
        xs.append(t)
    outs = flatten_outputs(case.run(xs, backend))
    g = torch.Generator(device="cpu").manual_seed(cot_seed)
    cots = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in outs]
    loss = sum((o.to(torch.float64) * c).sum() for o, c in zip(outs, cots) if o.requires_grad)
    grads = []
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        grads = torch.autograd.grad(loss, [xs[i] for i in case.diff], allow_unused=True)
        grads = [torch.zeros_like(xs[i]) if gr is None else gr for i, gr in zip(case.diff, grads)]
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
    gen = torch.Generator(device="cpu").manual_seed(seed)
    inputs = case.make(device, gen)
    # Low-precision runs are judged on the rounded inputs: the truth is the
    # float64 reference of the same rounded values.
    rounded = [t.to(dtype).to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs]
    truth_o, truth_g = _forward_backward(case, rounded, "torch", torch.float64, "contiguous", seed + 1)
    ref_o, ref_g = _forward_backward(case, rounded, "torch", dtype, "contiguous", seed + 1)
    out_o, out_g = _forward_backward(case, rounded, backend, dtype, layout, seed + 1)
    rtol = RTOL[dtype]
    fwd_tol = 2 * _max_err(ref_o, truth_o) + rtol * _scale(truth_o)
    grad_tol = 2 * _max_err(ref_g, truth_g) + rtol * _scale(truth_g) if truth_g else 0.0
    return Row(
        case.op, backend, str(dtype).replace("torch.", ""), case.shape, layout,
        _max_err(out_o, truth_o), fwd_tol, _max_err(out_g, truth_g) if truth_g else 0.0, grad_tol,
    )


# ----------------------------------------------------------------------------- cases


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _rec_flipped(ops, x, backend):
    low, bands = ops.contourlet_dec(x, [2, 2], backend="torch")
    return ops.contourlet_rec(low.flip(-1), [[t.flip(-1) for t in lev] for lev in bands], backend=backend)


def cases(small: bool) -> list[Case]:
    """The check matrix. ``small``: interpreter-sized shapes (CPU)."""
    from sstkd import ops

    img_shapes = [(1, 1, 12, 8), (2, 3, 18, 34)] if small else [(2, 3, 66, 130), (8, 256, 128, 256)]
    ct_shapes = [(1, 2, 24, 24), (2, 1, 24, 40)] if small else [(2, 3, 64, 96), (8, 64, 128, 256)]
    q_shapes = [(1, 37), (3, 5, 7)] if small else [(8, 128 * 256), (4, 127, 131)]
    L = 8 if small else 128
    res: list[Case] = []

    def dev(device, t):
        return t.to(device)

    for shp in img_shapes:
        B, C, H, W = shp
        name = "x".join(map(str, shp))
        res.append(Case("lp_dec", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: ops.lp_dec(xs[0], backend=b), (0,)))
        res.append(Case("lp_rec", name,
                        lambda d, g, s=shp: [dev(d, _randn(g, s[0], s[1], s[2] // 2, s[3] // 2)), dev(d, _randn(g, *s))],
                        lambda xs, b: ops.lp_rec(xs[0], xs[1], backend=b), (0, 1)))
    for shp in ct_shapes:
        name = "x".join(map(str, shp))
        res.append(Case("dfb_dec", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: ops.dfb_dec(xs[0], 3, backend=b), (0,)))
        res.append(Case("contourlet_dec", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: ops.contourlet_dec(xs[0], [2, 2], backend=b), (0,)))
        # Synthesis ops on arbitrary coefficients (flipped sub-bands of a decomposition are not one).
        res.append(Case("dfb_rec", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: ops.dfb_rec([t.flip(-1) for t in ops.dfb_dec(xs[0], 3, backend="torch")],
                                                  backend=b), (0,)))
        res.append(Case("contourlet_rec", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: _rec_flipped(ops, xs[0], b), (0,)))
        res.append(Case("contourlet_energy", name, lambda d, g, s=shp: [dev(d, _randn(g, *s))],
                        lambda xs, b: ops.contourlet_energy(xs[0], [2, 2], backend=b), (0,)))
    for shp in q_shapes:
        name = "x".join(map(str, shp))
        for kernel in ("triangular", "stlnet"):
            for iters in (0, 3):
                res.append(Case(
                    f"quantize_count[{kernel},iters={iters}]", name,
                    lambda d, g, s=shp: [dev(d, torch.rand(*s, generator=g, dtype=torch.float64))],
                    lambda xs, b, k=kernel, it=iters: ops.quantize_count(xs[0], L, iters=it, kernel=k, backend=b),
                    (0,)))

        def make_rep(d, g, s=shp):
            sv = torch.rand(*s, generator=g, dtype=torch.float64)
            centers, _ = ops.quantize_count(sv, L, backend="torch")
            return [dev(d, _randn(g, s[0], 4, L)), dev(d, sv), dev(d, centers)]

        res.append(Case("reproject", name, make_rep,
                        lambda xs, b: ops.reproject(xs[0], xs[1], xs[2], backend=b), (0, 1)))
        if len(shp) == 3:
            def make_co(d, g, s=shp):
                sv = torch.rand(*s, generator=g, dtype=torch.float64)
                centers, _ = ops.quantize_count(sv, L, backend="torch")
                return [dev(d, sv), dev(d, centers)]

            res.append(Case("cooccurrence", name, make_co,
                            lambda xs, b: ops.cooccurrence(xs[0], xs[1], backend=b), (0,)))
    return res


def _op_base(op: str) -> str:
    return op.split("[")[0]


def run_matrix(backends, dtypes, device, small, layouts=("contiguous", "channels_last", "noncontig"), ops_filter=None,
               log=print) -> list[Row]:
    from sstkd.ops import dispatch

    rows = []
    for case in cases(small):
        if ops_filter and _op_base(case.op) not in ops_filter:
            continue
        for backend in backends:
            if not dispatch._implements(backend, _op_base(case.op)):
                continue
            for dtype in dtypes:
                for layout in layouts:
                    try:
                        row = check(case, backend, dtype, layout, device)
                    except Exception as e:  # a crash is a failure, reported as such
                        row = Row(case.op, backend, str(dtype).replace("torch.", ""), case.shape, layout,
                                  float("inf"), 0.0, float("inf"), 0.0)
                        log(f"ERROR {case.op} {backend} {dtype} {case.shape} {layout}: {type(e).__name__}: {e}")
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


def add_arguments(parser) -> None:
    parser.add_argument("--backend", action="append", choices=["triton", "cuda"],
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
    known = sorted({_op_base(c.op) for c in cases(True)})
    unknown = sorted(set(args.op or []) - set(known))
    if unknown:
        return _error(f"--op: unknown op {unknown[0]!r}; choose from {known}")
    if device.type == "cpu" and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    from sstkd.ops import dispatch

    wanted = args.backend or ["triton", "cuda"]
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
