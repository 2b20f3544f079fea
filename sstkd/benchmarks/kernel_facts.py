"""sm_90 compile facts of the DFB ladder and LP kernels at their GPU launch configurations.

The variants are the passes ``contourlet_energy`` runs at a training shape (default
(8, 256, 128, 128), ``nlevs=[3, 3]``): the ladder passes of the first DFB stage ('1r'
split, 'qper_col' extension), of a second-level stage ('2c') and of the last level
(energy mode, final layouts), forward and adjoint; the LP analysis and synthesis kernels.
Each row normalises the static SASS by the outputs it produces: a ladder program (no
loops) writes a TR × TC tile, one iteration of an LP program's row loop 4·BLOCK full-res
outputs. ``useful_fma`` is the multiply-adds per output of separable filtering (each
input row filtered horizontally once, each output vertically once).

The CUDA whole-plane DFB (``csrc/dfb_plane.cuh``, ``backend="cuda"``): :func:`cuda_dfb_jobs`.
Its ladder pass is measured on ``csrc/tests/dfb_ladder_probe.cu``, whose kernels each run
exactly one ``ladder_block`` -- the fully unrolled body every ladder pass of the plane kernel
runs per thread for RB × CB outputs (float32: 16 × 4, float64: 8 × 2) -- so "SASS per output"
is the probe's static SASS / (RB·CB) (an upper bound of the dynamic count: both sides of the
block's few branches are counted). "heavy" is the level-1 block ('1r' passes, 'qper_col'
extension: a select per window column and row), "light" every other level's. The polyphase
splits, final-layout writes and energy sums are separate phases of the plane kernel (not in
these counts); its own row gives registers and spills at the launch configuration (256
threads, two H × W planes of dynamic shared memory).
"""
from __future__ import annotations

import dataclasses
import datetime
import os

import torch

from sstkd.benchmarks.compile_facts import CompileFacts, compile_facts_many

__all__ = ["KernelJob", "CudaKernelJob", "dfb_ladder_jobs", "cuda_dfb_jobs", "lp_jobs", "measure", "markdown"]


@dataclasses.dataclass
class KernelJob:
    name: str  # row label
    kernel: object  # the @triton.jit function
    signature: dict
    constexprs: dict
    num_warps: int
    outputs: int  # per program (straight-line kernel) or per loop iteration (loop=True)
    loop: bool
    useful_fma: float  # per output element
    arch: int = 90
    maxnreg: int | None = None  # register cap passed at launch (None: ptxas's choice)

    def compile_job(self):
        return (self.kernel, self.signature, self.constexprs, self.arch, self.num_warps, 3, self.maxnreg)


@dataclasses.dataclass
class CudaKernelJob:
    """A kernel of a CUDA C++ file compiled with nvcc (:func:`sstkd.benchmarks.compile_facts.nvcc_compile_facts`)."""

    name: str  # row label
    source: str  # the .cu file
    symbol: str  # a part of the kernel's mangled name
    dtype: str  # row label of the element type
    threads: int  # per block at launch
    outputs: int | None  # per block (straight-line kernel); None: no per-output figures
    useful_fma: float
    shared: int = 0  # dynamic shared memory per block at launch
    arch: int = 90
    maxnreg: int | None = None  # the __launch_bounds__ cap


_DTYPES = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16", "fp64": "*fp64"}
# (label, constexprs of the pass) — kinds: P0 0, P1 1, Y0 2, Y1 3, scratch 4, none 5
_LADDER_PASSES = [
    ("1r dec A (p1 window, qper)", dict(SPLIT=0, BF=6, QPER=True, WIN_KIND=1, CEN_KIND=0, OUT_KIND=2,
                                        OUT2_KIND=5, LAYOUT=0, Y0POS=0, ENERGY=0, EN_SLOT=0)),
    ("1r dec B (y0 window, qper)", dict(SPLIT=0, BF=5, QPER=True, WIN_KIND=2, CEN_KIND=1, OUT_KIND=3,
                                        OUT2_KIND=5, LAYOUT=0, Y0POS=0, ENERGY=0, EN_SLOT=0)),
    ("2c dec A", dict(SPLIT=1, BF=6, QPER=False, WIN_KIND=1, CEN_KIND=0, OUT_KIND=2,
                      OUT2_KIND=5, LAYOUT=0, Y0POS=1, ENERGY=0, EN_SLOT=0)),
    ("rows dec A, energy level", dict(SPLIT=2, BF=6, QPER=False, WIN_KIND=1, CEN_KIND=0, OUT_KIND=4,
                                      OUT2_KIND=5, LAYOUT=3, Y0POS=1, ENERGY=1, EN_SLOT=0)),
    ("cols dec B, energy only", dict(SPLIT=3, BF=5, QPER=False, WIN_KIND=4, CEN_KIND=1, OUT_KIND=5,
                                     OUT2_KIND=5, LAYOUT=4, Y0POS=1, ENERGY=1, EN_SLOT=1)),
    ("cols adjoint B^T (final layout)", dict(SPLIT=3, BF=6, QPER=False, WIN_KIND=3, CEN_KIND=2, OUT_KIND=4,
                                             OUT2_KIND=5, LAYOUT=4, Y0POS=1, ENERGY=0, EN_SLOT=0)),
    ("1r adjoint A^T (two outputs)", dict(SPLIT=0, BF=5, QPER=True, WIN_KIND=4, CEN_KIND=3, OUT_KIND=1,
                                          OUT2_KIND=0, LAYOUT=0, Y0POS=0, ENERGY=0, EN_SLOT=0)),
]
def dfb_ladder_jobs(dtype: str = "fp32", shape=(8, 256, 128, 128), arch: int = 90, passes=None) -> list[KernelJob]:
    """The ladder passes (all, or the labels in ``passes``) at the GPU tile configuration of the
    first DFB stage of a (B, C, H, W) input's first pyramid band."""
    from sstkd.kernels import dfb

    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    b, c, H, W = shape
    cfg = dfb.tile_config(b * c, H // 4, W // 2, interpreted=False)  # the '1r' children of the LP band
    jobs = []
    for label, ce in _LADDER_PASSES:
        if passes is not None and label not in passes:
            continue
        sig = {name: "i32" for name in dfb.LADDER_INT_ARGS}
        ptr = _DTYPES[dtype]
        sig.update(WIN=ptr, CEN=ptr, OUT=ptr, OUT2=ptr, TAPS="*fp64" if dtype == "fp64" else "*fp32",
                   EN="*fp64" if dtype == "fp64" else "*fp32", G=ptr)
        ce = dict(dict(MAP=0, SCALED=False), **ce, TR=cfg.TR, TC=cfg.TC, P=cfg.P)
        jobs.append(KernelJob(f"dfb ladder: {label}", dfb._ladder_kernel, sig, ce, cfg.num_warps,
                              cfg.TR * cfg.TC, False, 24.0, arch))
    return jobs


def cuda_dfb_jobs(shape=(8, 256, 128, 128), arch: int = 90) -> list[CudaKernelJob]:
    """The CUDA DFB ladder blocks (heavy / light, float32 / float64) and the whole-plane kernel at
    its launch configuration for the finest pyramid band of a (B, C, H, W) input (an H × W plane,
    float32) and for the next band (H/2 × W/2, float32 and float64: H × W float64 planes need more
    than the 227 KB a block may have and go to the Triton DFB)."""
    from sstkd.ops.backends import cuda as cuda_backend

    d = cuda_backend.csrc_dir()
    if d is None:
        raise RuntimeError("the CUDA sources (csrc/) are not next to the package")
    probe = os.path.join(d, "tests", "dfb_ladder_probe.cu")
    kernels = {"fp32": os.path.join(d, "dfb_kernels.cu"), "fp64": os.path.join(d, "dfb_kernels_f64.cu")}
    H, W = shape[2], shape[3]  # the finest LP band (the DFB runs on it) is full size
    jobs = []
    # outputs per thread (csrc/dfb_plane.cuh BlockShape): float32 16 x 4, float64 8 x 2
    for dt, sym, heavy, light in (("fp32", "f", 16 * 4, 16 * 4), ("fp64", "d", 8 * 2, 8 * 2)):
        jobs += [
            CudaKernelJob("cuda dfb ladder block: heavy (level 1, '1r', qper_col)", probe,
                          f"dfb_ladder_probeI{sym}Lb1E", dt, 256, 256 * heavy, 24.0, 0, arch, 128),
            CudaKernelJob("cuda dfb ladder block: light (levels >= 2)", probe, f"dfb_ladder_probeI{sym}Lb0E", dt,
                          256, 256 * light, 24.0, 0, arch, 128),
        ]
    for dt, sym, h, w in (("fp32", "f", H, W), ("fp32", "f", H // 2, W // 2), ("fp64", "d", H // 2, W // 2)):
        size = 8 if dt == "fp64" else 4
        jobs.append(CudaKernelJob(f"cuda dfb plane kernel ({h}x{w} planes)", kernels[dt], f"dfb_plane_kernelI{sym}E", dt,
                                  256, None, 24.0, 2 * h * w * size, arch, 128))
    return jobs


def _measure_cuda(jobs: list[CudaKernelJob]) -> list[CompileFacts]:
    from sstkd.benchmarks.compile_facts import nvcc_compile_facts
    from sstkd.ops.backends import cuda as cuda_backend

    sb = cuda_backend.build_flags()
    home = sb.cuda_home() if sb is not None else None
    if home is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found: set CUDA_HOME (see csrc/sstkd_build.py)")
    nvcc = os.path.join(home, "bin", "nvcc")
    out = {}
    for source in dict.fromkeys(j.source for j in jobs):
        mine = [j for j in jobs if j.source == source]
        facts = nvcc_compile_facts(source, [(j.name, j.symbol, j.threads, j.shared) for j in mine], nvcc=nvcc,
                                   arch=mine[0].arch, include_dirs=sb.include_dirs(home))
        out.update({id(j): f for j, f in zip(mine, facts)})
    return [out[id(j)] for j in jobs]


def lp_jobs(dtype: str = "fp32", shape=(8, 256, 128, 128), arch: int = 90) -> list[KernelJob]:
    """The LP analysis and synthesis kernels at the GPU launch configuration of ``shape``."""
    from sstkd.kernels import laplacian as lp

    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
    b, c, H, W = shape
    cfg = lp.launch_config(b * c, H // 2, W // 2, interpreted=False)
    cap = lp.maxnreg_for(torch.float64 if dtype == "fp64" else torch.float32)
    ptr = _DTYPES[dtype]
    taps = "*fp64" if dtype == "fp64" else "*fp32"
    ints = {a: "i32" for a in ("N", "H", "W", "HL", "WL", "ROWS")}
    ce = {"SW": cfg.SW, "BLOCK": cfg.BLOCK}
    # useful separable multiply-adds per iteration and lane (4 full-res outputs):
    # analysis: rows 2 × (2·16 band + 9 low), columns 2·2·16 + 9; synthesis: rows 2 × 2·16 + 2·5, columns 2·2·(16 + 5)
    return [
        KernelJob("lp analysis", lp.KERNELS["analysis"], dict(X=ptr, LOW=ptr, OUT=ptr, TAPS=taps, **ints), ce,
                  cfg.num_warps, 4 * cfg.BLOCK, True, (2 * (32 + 9) + 64 + 9) / 4, arch, cap),
        KernelJob("lp synthesis", lp.KERNELS["synthesis"], dict(LOW=ptr, BAND=ptr, OUT=ptr, TAPS=taps, **ints), ce,
                  cfg.num_warps, 4 * cfg.BLOCK, True, (2 * 32 + 10 + 4 * 21) / 4, arch, cap),
    ]


def measure(jobs) -> list[tuple[object, CompileFacts, dict | None]]:
    """Compile every job (Triton :class:`KernelJob` or nvcc :class:`CudaKernelJob`); returns
    (job, facts, per-output summary) rows (summary None for a CUDA job without outputs)."""
    triton_jobs = [j for j in jobs if isinstance(j, KernelJob)]
    cuda_jobs = [j for j in jobs if isinstance(j, CudaKernelJob)]
    facts = dict(zip(map(id, triton_jobs), compile_facts_many([j.compile_job() for j in triton_jobs])))
    if cuda_jobs:
        facts.update(zip(map(id, cuda_jobs), _measure_cuda(cuda_jobs)))
    rows = []
    for j in jobs:
        f = facts[id(j)]
        if not f.complete:
            raise RuntimeError(f"{j.name}: compile facts incomplete: {f.missing}")
        if isinstance(j, CudaKernelJob):
            per = None if j.outputs is None else f.per_output(j.outputs)
        else:
            per = f.loop_per_output(j.outputs) if j.loop else f.per_output(j.outputs)
        rows.append((j, f, per))
    return rows


def markdown(rows, title: str) -> str:
    """A Markdown table of :func:`measure` rows."""
    lines = [f"## {title}", "",
             "| kernel | dtype | warps | maxnreg | regs | blocks/SM (128 thr) | spill B | stack B | shared B | "
             "SASS/output | FMA/output (useful) | int/output | LDG/output | shared ld+st/output | BAR/output |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for j, f, p in rows:
        if isinstance(j, CudaKernelJob):
            dt = j.dtype
        else:
            dt = j.signature.get("WIN", j.signature.get("X", j.signature.get("LOW")))[1:]
        head = (f"| {j.name} | {dt} | {f.num_warps} | {j.maxnreg or '-'} | {f.registers} | {f.blocks_per_sm()} | "
                f"{f.spills} | {f.stack} | {f.shared} |")
        if p is None:
            lines.append(head + " - | - | - | - | - | - |")
            continue
        fma = p["fma"] + p["fmul"] + p["fadd"]
        lines.append(
            f"{head} {p['total']:.0f} | {fma:.0f} ({j.useful_fma:.0f}) | {p['int']:.0f} | {p['ldg']:.1f} | "
            f"{p['shared_mem']:.1f} | {p['bar']:.2f} |")
    lines.append("")
    tools = ("nvcc -cubin, cuobjdump bundled with triton" if all(isinstance(j, CudaKernelJob) for j, _, _ in rows)
             else "ptxas/cuobjdump bundled with triton")
    lines.append(f"Measured {datetime.date.today().isoformat()} with sstkd.benchmarks.compile_facts (sm_{rows[0][1].arch}, "
                 f"{tools}). FMA counts FFMA/DFMA + FMUL + FADD (fp64 tl.dot runs on DMMA).")
    return "\n".join(lines) + "\n"
