"""The Triton backend: the fused kernels of ``sstkd.kernels`` (imported on first use only).

CUDA tensors, or any tensor when ``TRITON_INTERPRET=1`` (Triton's CPU interpreter). The
quantization kernels take float32 / float16 / bfloat16; the pyramid and DFB kernels every float
dtype. Composed ops (contourlet, quantize_count) take these passes through
:mod:`sstkd.ops.algorithms`.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from sstkd._util import triton_interpreted

_LOW_AND_SINGLE = (torch.float32, torch.float16, torch.bfloat16)
DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    name: _LOW_AND_SINGLE for name in ("minmax", "level_sums", "soft_hist", "start_centers", "reproject", "cooccurrence")
}


@functools.lru_cache(maxsize=None)
def _import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - broken installs
        return f"importing triton failed: {e}"
    return None


def unavailable_reason(device=None) -> str | None:
    err = _import_error()
    if err:
        return err
    if triton_interpreted():
        return None
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return f"Triton kernels need CUDA tensors (got {dev.type}); set TRITON_INTERPRET=1 to interpret on the CPU"
    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in the interpreter)"
    return None


def available_reason() -> str:
    if triton_interpreted():
        return "Triton interpreter (TRITON_INTERPRET=1), CPU or GPU tensors"
    return "compiled Triton kernels"


def ready_for_auto() -> bool:
    return True


def interpreted() -> bool:
    """Kernels run in Triton's CPU interpreter (correct, but timings are meaningless)."""
    return triton_interpreted()


# Each entry imports its kernel module on first call: importing sstkd.ops never imports triton.
def lp_dec(x, filt, out_dtype=None):
    from sstkd.kernels.laplacian import lp_dec_triton

    return lp_dec_triton(x, filt, out_dtype=out_dtype)


lp_dec.takes_out_dtype = True  # reads float16/bfloat16 x as it is, stores float32 (no conversion copy)


def lp_rec(low, band, filt):
    from sstkd.kernels.laplacian import lp_rec_triton

    return lp_rec_triton(low, band, filt)


def dfb_dec(x, levels, filt, out_dtype=None):
    from sstkd.kernels.dfb import dfb_dec_triton

    return dfb_dec_triton(x, levels, filt, out_dtype=out_dtype)


def dfb_rec(bands, filt, out_dtype=None):
    from sstkd.kernels.dfb import dfb_rec_triton

    return dfb_rec_triton(list(bands), filt, out_dtype=out_dtype)


def dfb_energy(x, levels, filt):
    from sstkd.kernels.dfb import dfb_energy_triton

    return dfb_energy_triton(x, levels, filt)


dfb_energy.keeps_for_backward = True  # differentiable: contourlet_energy's backward recomputes nothing


def minmax(s2):
    from sstkd.kernels.quantize import minmax_triton

    return minmax_triton(s2)


def level_sums(s2, centers, kernel):
    from sstkd.kernels.quantize import level_sums_triton

    return level_sums_triton(s2, centers, kernel)


def soft_hist(s2, centers, kernel):
    from sstkd.kernels.quantize import soft_hist_triton

    return soft_hist_triton(s2, centers, kernel)


def start_centers(s2, levels, ranks, kernel, iters):
    from sstkd.kernels.quantize import start_centers_triton

    return start_centers_triton(s2, levels, ranks, kernel, iters)


def reproject(table, s2, centers, kernel):
    from sstkd.kernels.quantize import reproject_triton

    return reproject_triton(table, s2, centers, kernel)


def cooccurrence(s3, centers, offsets, kernel):
    from sstkd.kernels.quantize import cooccurrence_triton

    return cooccurrence_triton(s3, centers, offsets, kernel)


TABLE = {
    "lp_dec": lp_dec,
    "lp_rec": lp_rec,
    "dfb_dec": dfb_dec,
    "dfb_rec": dfb_rec,
    "dfb_energy": dfb_energy,
    "minmax": minmax,
    "level_sums": level_sums,
    "soft_hist": soft_hist,
    "start_centers": start_centers,
    "reproject": reproject,
    "cooccurrence": cooccurrence,
}
