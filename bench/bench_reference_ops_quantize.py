"""Peer comparison: sstkd's reference quantize_count + reproject vs a dense STLNet-style QCO.

CPU, ``torch.set_num_threads(2)``, float32, forward + backward of

* ``sstkd``: ``quantize_count(s, 128, kernel="stlnet", backend="torch")`` and
  ``reproject(table, s, centers, kernel="stlnet", backend="torch")`` (≤ 2 taps
  per pixel, no pixels × levels tensor);
* ``dense``: STLNet's public QCO code path — the encoding ``E`` built as a
  dense ``(B, N, L)`` tensor, the histogram as its sum over pixels and the
  reprojection as the batched matmul ``table @ Eᵀ``.

Both compute the same numbers (checked before timing). Time: median of
``--repeats`` runs after warm-up, the variants alternating. Peak memory: the increase of the resident
set size's high-water mark over the post-setup baseline, measured in a fresh
subprocess per variant with glibc's mmap threshold pinned low
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the RSS at once.

    python bench/bench_reference_ops_quantize.py [--repeats 15] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

B, N, L, D = 4, 128 * 128, 128, 64


def make_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(B, N, generator=g) * 2 - 1  # cosine-similarity-like intensities in [-1, 1]
    table = torch.randn(B, D, L, generator=g)
    r = torch.randn(B, L, generator=g)
    return s, table, r


def run_sstkd(s, table, r):
    from sstkd.ops.quantize import quantize_count, reproject

    s = s.detach().requires_grad_()
    table = table.detach().requires_grad_()
    c, h = quantize_count(s, L, kernel="stlnet", backend="torch")
    out = reproject(table, s, c, kernel="stlnet", backend="torch")
    loss = out.sum() + (h * r).sum()
    loss.backward()
    return h.detach(), out.detach(), s.grad, table.grad


def run_dense(s, table, r):
    """STLNet's QCO as in its public model code (dense N × L encoding)."""
    s = s.detach().requires_grad_()
    table = table.detach().requires_grad_()
    smin = s.detach().min(1, keepdim=True).values
    smax = s.detach().max(1, keepdim=True).values
    q = torch.arange(L, dtype=s.dtype)[None, None, :]
    levels = smin[:, :, None] + (2 * q + 1) / (2 * L) * (smax - smin)[:, :, None]  # (B, 1, L)
    inter = ((smax - smin) / L)[:, :, None]
    x = 1 - (levels - s[:, :, None]).abs()  # (B, N, L)
    E = x * (x > 1 - inter)
    sta = E.sum(1)
    h = sta / sta.sum(-1, keepdim=True)
    out = table @ E.transpose(1, 2)  # (B, D, N)
    loss = out.sum() + (h * r).sum()
    loss.backward()
    return h.detach(), out.detach(), s.grad, table.grad


VARIANTS = {"sstkd": run_sstkd, "dense": run_dense}


def time_variants(inputs, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time per variant; the variants alternate so that load on a shared
    machine hits them alike."""
    times = {name: [] for name in VARIANTS}
    for it in range(warmup + repeats):
        for name, fn in VARIANTS.items():
            t0 = time.perf_counter()
            fn(*inputs)
            if it >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (VmHWM; ru_maxrss where /proc is missing).

    ru_maxrss survives exec, so a child would inherit its parent's peak; VmHWM
    belongs to the process image and can be reset (see _reset_peak_rss).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets the high-water mark to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child_peak(name: str, threads: int = 2) -> None:
    """Run one variant once in this (fresh) process and print its peak RSS increase in bytes."""
    torch.set_num_threads(threads)
    inputs = make_inputs()
    s, table, r = inputs
    VARIANTS[name](s[:1, :64], table[:1], r[:1])  # load the code paths on a tiny input
    _reset_peak_rss()
    base = _peak_rss_bytes()
    VARIANTS[name](*inputs)
    print(_peak_rss_bytes() - base)


def peak_memory(name: str, threads: int = 2) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(threads)], env=env, check=True,
                         capture_output=True, text=True)
    return int(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child_peak(a.child, a.threads)
        return {}
    torch.set_num_threads(a.threads)
    inputs = make_inputs()
    ours, ref = run_sstkd(*inputs), run_dense(*inputs)
    for name, x, y in zip(("hist", "out", "grad s", "grad table"), ours, ref):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
    med = time_variants(inputs, a.repeats)
    res = {name: {"median_s": med[name], "peak_bytes": peak_memory(name, a.threads)} for name in VARIANTS}
    speed = res["dense"]["median_s"] / res["sstkd"]["median_s"]
    mem = res["dense"]["peak_bytes"] / max(res["sstkd"]["peak_bytes"], 1)
    print(f"quantize_count + reproject, forward + backward, CPU float32, {torch.get_num_threads()} threads, "
          f"s ({B}, {N}), L = {L}, table ({B}, {D}, {L})\n")
    print("| variant | median time (ms) | peak memory (MiB) |")
    print("|---|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {r['median_s'] * 1e3:.1f} | {r['peak_bytes'] / 2**20:.1f} |")
    print(f"\nsstkd vs dense: {speed:.1f}x faster, {mem:.1f}x less peak memory")
    out = {"shape": {"B": B, "N": N, "L": L, "D": D}, "threads": torch.get_num_threads(),
           "results": res, "speedup": speed, "memory_ratio": mem, "torch": torch.__version__}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
