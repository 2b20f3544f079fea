"""sm_90 compile facts of the DFB ladder and LP kernels at their GPU launch configurations.

The variants are the passes ``contourlet_energy`` runs at a training shape (default
(8, 256, 128, 128), ``nlevs=[3, 3]``): the ladder passes of the first DFB stage ('1r'
split, 'qper_col' extension), of a second-level stage ('2c') and of the last level
(energy mode, final layouts), forward and adjoint; the LP analysis and synthesis kernels.
Each row normalises the static SASS by the outputs it produces: a ladder program (no
loops) writes a TR × TC tile, one iteration of an LP program's row loop 4·BLOCK full-res
outputs. ``useful_fma`` is the multiply-adds per output of separable filtering (each
input row filtered horizontally once, each output vertically once).
"""
from __future__ import annotations

import dataclasses
import datetime

import torch

from sstkd.benchmarks.compile_facts import CompileFacts, compile_facts_many

__all__ = ["KernelJob", "dfb_ladder_jobs", "lp_jobs", "measure", "markdown"]


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
_LADDER_INTS = ("PLANES", "N", "H", "W", "h", "w", "QS", "NBC", "HALF4", "TILES_W", "NPART", "KOFF", "KTOT",
                "GSN", "GSK")


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
        sig = {name: "i32" for name in _LADDER_INTS}
        ptr = _DTYPES[dtype]
        sig.update(WIN=ptr, CEN=ptr, OUT=ptr, OUT2=ptr, TAPS="*fp64" if dtype == "fp64" else "*fp32",
                   EN="*fp64" if dtype == "fp64" else "*fp32", G=ptr)
        ce = dict(dict(MAP=0, SCALED=False), **ce, TR=cfg.TR, TC=cfg.TC, P=cfg.P)
        jobs.append(KernelJob(f"dfb ladder: {label}", dfb._ladder_kernel, sig, ce, cfg.num_warps,
                              cfg.TR * cfg.TC, False, 24.0, arch))
    return jobs


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


def measure(jobs: list[KernelJob]) -> list[tuple[KernelJob, CompileFacts, dict]]:
    """Compile every job; returns (job, facts, per-output summary) rows."""
    facts = compile_facts_many([j.compile_job() for j in jobs])
    rows = []
    for j, f in zip(jobs, facts):
        if not f.complete:
            raise RuntimeError(f"{j.name}: compile facts incomplete: {f.missing}")
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
        dt = j.signature.get("WIN", j.signature.get("X", j.signature.get("LOW")))[1:]
        fma = p["fma"] + p["fmul"] + p["fadd"]
        lines.append(
            f"| {j.name} | {dt} | {f.num_warps} | {j.maxnreg or '-'} | {f.registers} | {f.blocks_per_sm()} | {f.spills} | {f.stack} | "
            f"{f.shared} | {p['total']:.0f} | {fma:.0f} ({j.useful_fma:.0f}) | {p['int']:.0f} | {p['ldg']:.1f} | "
            f"{p['shared_mem']:.1f} | {p['bar']:.2f} |")
    lines.append("")
    lines.append(f"Measured {datetime.date.today().isoformat()} with sstkd.benchmarks.compile_facts (sm_{rows[0][1].arch}, "
                 "ptxas/cuobjdump bundled with triton). FMA counts FFMA/DFMA + FMUL + FADD (fp64 tl.dot runs on DMMA).")
    return "\n".join(lines) + "\n"
