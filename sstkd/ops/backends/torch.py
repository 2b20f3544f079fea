"""The PyTorch reference backend: every op and pass, any device, every float dtype; the oracle.

Its entries are the reference implementations of :mod:`sstkd.ops.reference` on validated
inputs; autograd through them is the exact adjoint every other backend must reproduce.
"""
from __future__ import annotations

import torch

from sstkd._util import compute_dtype
from sstkd.ops import algorithms
from sstkd.ops.reference import dfb as _dfb
from sstkd.ops.reference import laplacian as _lp
from sstkd.ops.reference import quantize as _q
from sstkd.ops.reference import wavelet as _wfb

DTYPES: dict[str, tuple[torch.dtype, ...]] = {}  # every float dtype everywhere


def unavailable_reason(device=None) -> str | None:
    return None


def available_reason() -> str:
    return "PyTorch reference ops"


def ready_for_auto() -> bool:
    return True


def dfb_dec(x: torch.Tensor, levels: int, filt: str, out_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    out_dtype = x.dtype if out_dtype is None else out_dtype
    return [y.to(out_dtype) for y in _dfb._dfb_dec_torch(x, levels, filt)]


def dfb_rec(bands, filt: str, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    out_dtype = bands[0].dtype if out_dtype is None else out_dtype
    return _dfb._dfb_rec_torch(list(bands), filt).to(out_dtype)


def dfb_energy(x: torch.Tensor, levels: int, filt: str) -> torch.Tensor:
    """(B, C, 2**levels) sums of squares of the sub-bands, in the compute dtype."""
    return torch.stack([(y * y).sum(dim=(-2, -1)) for y in _dfb._dfb_dec_torch(x, levels, filt)], dim=-1)


def contourlet_energy(x: torch.Tensor, nlevs, pfilt: str, dfilt: str) -> torch.Tensor:
    """Sums of squares of the reference coefficients (plain autograd: the oracle), in ``x.dtype``."""
    low, bands = algorithms.contourlet_dec(x, nlevs, pfilt, dfilt, TABLE, out_dtype=compute_dtype(x))
    coeffs = [low] + [t for level in bands for t in level]
    return torch.stack([t.square().sum(dim=(-2, -1)) for t in coeffs], dim=-1).to(x.dtype)


def minmax(s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.aminmax(s2, dim=1)


def reproject(table: torch.Tensor, s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    cdt = centers.dtype
    return _q.reproject_ref(table.to(cdt), s2.to(cdt), centers, kernel)


def cooccurrence(s3: torch.Tensor, centers: torch.Tensor, offsets, kernel: str) -> torch.Tensor:
    return _q.cooccurrence_ref(s3.to(centers.dtype), centers, offsets, kernel)


TABLE = {
    "lp_dec": _lp._lp_dec_torch,
    "lp_rec": _lp._lp_rec_torch,
    "dfb_dec": dfb_dec,
    "dfb_rec": dfb_rec,
    "dfb_energy": dfb_energy,
    "wfb_dec": _wfb._wfb_dec_torch,
    "wfb_rec": _wfb._wfb_rec_torch,
    "contourlet_energy": contourlet_energy,
    "minmax": minmax,
    "level_sums": _q.level_sums_ref,
    "soft_hist": _q.soft_hist_ref,
    "start_centers": algorithms.no_fused_start,
    "reproject": reproject,
    "cooccurrence": cooccurrence,
}
