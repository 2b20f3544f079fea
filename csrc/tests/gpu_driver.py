"""Drive every sstkd CUDA op on a GPU: for compute-sanitizer, and a quick timing.

    python csrc/tests/gpu_driver.py                 # every op, fwd + bwd, every dtype, test shapes
    compute-sanitizer --tool memcheck  python csrc/tests/gpu_driver.py
    compute-sanitizer --tool racecheck python csrc/tests/gpu_driver.py --small
    python csrc/tests/gpu_driver.py --bench         # median times vs the torch reference and Triton

Exits non-zero (with a message) if any op raises; prints ``ok`` at the end.
Results are not checked here (tests/test_cuda_gpu.py does that).
"""
from __future__ import annotations

import argparse
import sys

import torch

LP_SHAPES = [(1, 1, 2, 2), (2, 3, 4, 6), (2, 3, 38, 70), (1, 2, 64, 130), (1, 1, 6, 200)]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (levels, (B, C, H, W)) of the whole-plane DFB; 128 x 128 float64 does not fit (Triton fallback)
DFB_CASES = [(1, (2, 3, 12, 7)), (3, (2, 2, 24, 16)), (4, (1, 2, 64, 64)), (3, (2, 4, 128, 128))]


def run_all(small: bool) -> None:
    from sstkd.ops.backends import cuda as ops

    dev = torch.device("cuda")
    shapes = LP_SHAPES[:3] if small else LP_SHAPES
    dtypes = DTYPES[:1] + DTYPES[2:3] if small else DTYPES
    for dtype in dtypes:
        for shape in shapes:
            x = torch.randn(shape, device=dev).to(dtype).requires_grad_(True)
            low, band = ops.lp_dec_cuda(x)
            (low.sum() + band.square().sum()).backward()
            lo = low.detach().requires_grad_(True)
            ba = band.detach().requires_grad_(True)
            ops.lp_rec_cuda(lo, ba).square().sum().backward()
        for kernel in ("triangular", "stlnet"):
            for B, N, L in ((2, 1000, 2), (3, 5000, 128), (1, 70_000, 2048)):
                if small and L == 2048:
                    continue
                s = torch.rand(B, N, device=dev).to(dtype).requires_grad_(True)
                _, hist = ops.quantize_count_cuda(s, L, 2, kernel, None, None)
                (hist * torch.randn_like(hist)).sum().backward()
        ops.sum_squares_cuda(torch.randn(70_000 if not small else 5, 3, device=dev).to(dtype).requires_grad_(True)).sum().backward()
        ops.sum_squares_cuda(torch.randn(3, 70_001, device=dev).to(dtype))
        for levels, shape in DFB_CASES[:2] if small else DFB_CASES:
            x = torch.randn(shape, device=dev).to(dtype).requires_grad_(True)
            bands = ops.dfb_dec_cuda(x, levels)
            sum((t.float() * k).sum() for k, t in enumerate(bands)).backward()
            ops.dfb_rec_cuda([t.detach().requires_grad_(True) for t in bands]).square().sum().backward()
            (ops.dfb_energy_cuda(x, levels) * torch.arange(2.0**levels, device=dev)).sum().backward()
            if shape[-1] % 2 == 0:  # a pyramid level per launch (even sizes), and the lowpass energy fold
                low = torch.randn(*shape[:2], shape[-2] // 2, shape[-1] // 2, device=dev).to(dtype)
                low.requires_grad_(True)
                ops.dfb_energy_cuda(x, levels, low=low).square().sum().backward()
                lo, e = ops.level_energy_cuda(x, levels)
                (e.sum() + lo.square().sum()).backward()
                ops.level_energy_cuda(x, levels, last=True)[1].sum().backward()
                lo, bs = ops.level_dec_cuda(x, levels)
                (lo.square().sum() + sum(b.float().square().sum() for b in bs[::2])).backward()
    torch.cuda.synchronize()


def _time(fn, reps: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2] * 1e3  # microseconds


def bench() -> None:
    from sstkd.ops.backends import cuda as ops
    from sstkd.ops.laplacian import lp_dec_ref, lp_rec_ref
    from sstkd.ops.quantize import quantize_count_ref

    try:
        from sstkd.kernels.laplacian import lp_dec_triton, lp_rec_triton
        from sstkd.ops import algorithms, dispatch

        def quantize_count_triton(s, levels, iters, kernel, centers, quantiles):
            passes = dispatch.passes("quantize_count", "triton", s)
            return algorithms.quantize_count(s, levels, iters, kernel, centers, quantiles, passes)
    except Exception as e:  # pragma: no cover - triton missing
        print(f"(no Triton kernels: {e})")
        lp_dec_triton = lp_rec_triton = quantize_count_triton = None
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"{'op':34s} {'cuda us':>9s} {'triton us':>10s} {'torch us':>9s} {'cuda GB/s':>10s}")
    for shape in ((8, 256, 128, 128), (8, 64, 256, 256)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=dev, dtype=dtype)
            low, band = lp_dec_ref(x)
            nbytes = x.numel() * x.element_size() * 2.25  # read x, write band + low
            rows = [
                ("lp_dec", lambda: ops.lp_dec_cuda(x), lp_dec_triton and (lambda: lp_dec_triton(x)),
                 lambda: lp_dec_ref(x)),
                ("lp_rec", lambda: ops.lp_rec_cuda(low, band), lp_rec_triton and (lambda: lp_rec_triton(low, band)),
                 lambda: lp_rec_ref(low, band)),
            ]
            for name, fc, ft, fr in rows:
                tc, tr = _time(fc), _time(fr)
                tt = _time(ft) if ft else float("nan")
                label = f"{name} {tuple(shape)} {str(dtype)[6:]}"
                print(f"{label:34s} {tc:9.1f} {tt:10.1f} {tr:9.1f} {nbytes / tc / 1e3:10.0f}")
    try:
        from sstkd.kernels.dfb import dfb_dec_triton, dfb_energy_triton
    except Exception:  # pragma: no cover - triton missing
        dfb_dec_triton = dfb_energy_triton = None
    from sstkd.ops.dfb import dfb_dec_ref
    for shape in ((8, 256, 128, 128), (8, 256, 64, 64)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape, device=dev, dtype=dtype)
            nbytes = x.numel() * x.element_size() * 2  # read x, write the sub-bands
            rows = [
                ("dfb_dec(3)", lambda: ops.dfb_dec_cuda(x, 3), dfb_dec_triton and (lambda: dfb_dec_triton(x, 3)),
                 lambda: dfb_dec_ref(x, 3)),
                ("dfb_energy(3)", lambda: ops.dfb_energy_cuda(x, 3),
                 dfb_energy_triton and (lambda: dfb_energy_triton(x, 3)), lambda: dfb_dec_ref(x, 3)),
                ("level_energy(3) (LP + DFB energy)", lambda: ops.level_energy_cuda(x, 3), None,
                 lambda: dfb_dec_ref(x, 3)),
                ("level_dec(3) (LP + DFB)", lambda: ops.level_dec_cuda(x, 3), None, lambda: dfb_dec_ref(x, 3)),
            ]
            for name, fc, ft, fr in rows:
                tc, tr = _time(fc), _time(fr)
                tt = _time(ft) if ft else float("nan")
                label = f"{name} {tuple(shape)} {str(dtype)[6:]}"
                print(f"{label:34s} {tc:9.1f} {tt:10.1f} {tr:9.1f} {nbytes / tc / 1e3:10.0f}")
    for B, N, L in ((16, 128 * 128, 128), (8, 256 * 256, 128)):
        s = torch.rand(B, N, device=dev)
        rows = [
            ("quantize_count iters=3", lambda: ops.quantize_count_cuda(s, L, 3, "triangular", None, None),
             quantize_count_triton and (lambda: quantize_count_triton(s, L, 3, "triangular", None, None)),
             lambda: quantize_count_ref(s, L, 3, "triangular", None, None)),
        ]
        for name, fc, ft, fr in rows:
            tc, tr = _time(fc), _time(fr)
            tt = _time(ft) if ft else float("nan")
            label = f"{name} ({B},{N}) L={L}"
            print(f"{label:34s} {tc:9.1f} {tt:10.1f} {tr:9.1f} {4 * s.numel() * 5 / tc / 1e3:10.0f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="fewer shapes/dtypes (racecheck is slow)")
    p.add_argument("--bench", action="store_true", help="time the ops instead")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    if args.bench:
        bench()
    else:
        run_all(args.small)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
