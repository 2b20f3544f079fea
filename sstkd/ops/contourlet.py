"""Contourlet transform: Laplacian pyramid + directional filter bank (toolbox ``pdfbdec``/``pdfbrec``).

``contourlet_dec(x, nlevs)`` follows ``pdfbdec(x, '9-7', 'pkva', nlevs)``:
``nlevs`` lists the DFB levels per pyramid level from coarse to fine; the
finest level is computed first, from ``x`` itself. At a level with ``n >= 1``
one LP level splits the image into a lowpass (the next, coarser input) and a
bandpass that an ``n``-level DFB splits into ``2**n`` directional sub-bands.
At a level with ``n == 0`` one separable wavelet level (:mod:`sstkd.ops.wavelet`)
is used instead: 3 sub-bands ``[LH, HL, HH]``, and ``LL`` goes on. Synthesis
(``contourlet_rec``) uses the LP's dual-frame reconstruction, so it equals the
toolbox's for arbitrary coefficients, not only for true decompositions.

Sizes: level ``L`` (0-based, coarse -> fine, ``J`` levels) works on an image
``2**(J-1-L)`` times smaller than ``x``; it needs even sides, ``n >= 2`` needs
sides divisible by ``2**(n-1)``, and ``n >= 1`` needs a height of at least 12
(the first DFB stage takes 6 rows of its half-height component).
:func:`contourlet_required_multiple` and :func:`check_contourlet_size` state
what an input needs; the CDM module pads feature maps to that.

The composition is written once (:mod:`sstkd.ops.algorithms`) and takes a backend's passes:
``backend=b`` runs ``b``'s LP and DFB, and the best available backend's for a pass ``b``
lacks (``"cuda"``: the CUDA LP with the Triton or torch DFB). The reference is the same
composition of the torch passes.
"""
from __future__ import annotations

import torch
from torch import nn

from sstkd.filters import check_pyramid_filter
from sstkd.geometry import (  # noqa: F401  (re-exported)
    check_contourlet_size,
    contourlet_band_shapes,
    contourlet_required_multiple,
)
from sstkd.geometry import check_nlevs as _check_nlevs
from sstkd.ops import algorithms, dispatch
from sstkd.ops._checks import check_image, check_same_device
from sstkd.ops.backends import torch as _torch_backend
from sstkd.ops.dispatch import check_backend_name
from sstkd.ops.dfb import _check_filt as _check_dfilt

__all__ = [
    "contourlet_dec",
    "contourlet_rec",
    "contourlet_dec_ref",
    "contourlet_rec_ref",
    "contourlet_energy",
    "contourlet_energy_ref",
    "contourlet_required_multiple",
    "check_contourlet_size",
    "contourlet_band_shapes",
    "Contourlet",
]



def _level_count(count: int, name: str) -> int:
    """DFB levels of one pyramid level from its sub-band count (3 means the wavelet level, 0)."""
    if count == 3:
        return 0
    n = count.bit_length() - 1
    if count < 2 or 2**n != count:
        raise ValueError(f"{name}: expected 3 (wavelet) or 2**n (n >= 1) sub-bands, got {count}")
    return n


def _check_coefficients(low, bands) -> list[int]:
    """Validate ``(low, bands)`` as produced by :func:`contourlet_dec`; returns ``nlevs``."""
    check_image(low, "low")
    if isinstance(bands, torch.Tensor) or not isinstance(bands, (list, tuple)):
        raise TypeError(f"bands: expected a list (per pyramid level) of lists of tensors, got {type(bands).__name__}")
    if len(bands) == 0:
        raise ValueError("bands: expected at least one pyramid level, got an empty list")
    nlevs = []
    for l, level in enumerate(bands):
        if isinstance(level, torch.Tensor) or not isinstance(level, (list, tuple)):
            raise TypeError(f"bands[{l}]: expected a list of tensors, got {type(level).__name__}")
        nlevs.append(_level_count(len(level), f"bands[{l}]"))
        for k, t in enumerate(level):
            check_image(t, f"bands[{l}][{k}]")
            if t.dtype != low.dtype:
                raise TypeError(f"bands[{l}][{k}]: dtype {t.dtype} differs from low dtype {low.dtype}")
    check_same_device(low=low, **{f"bands[{l}][{k}]": t for l, lv in enumerate(bands) for k, t in enumerate(lv)})
    b, c, hl, wl = low.shape
    h, w = hl << len(nlevs), wl << len(nlevs)
    try:
        _, shapes = contourlet_band_shapes(h, w, nlevs)
    except ValueError as e:
        raise ValueError(f"low: shape {tuple(low.shape)} does not come from a valid {h}x{w} image: {e}") from None
    for l, (level, level_shapes) in enumerate(zip(bands, shapes)):
        for k, (t, (hk, wk)) in enumerate(zip(level, level_shapes)):
            if tuple(t.shape) != (b, c, hk, wk):
                raise ValueError(
                    f"bands[{l}][{k}]: expected shape {(b, c, hk, wk)} for nlevs={nlevs} and low "
                    f"{tuple(low.shape)}, got {tuple(t.shape)}"
                )
    return nlevs


def _check_args(x, nlevs, pfilt, dfilt) -> list[int]:
    check_image(x, "x")
    nlevs = _check_nlevs(nlevs)
    check_contourlet_size(x.shape[-2], x.shape[-1], nlevs)
    check_pyramid_filter(pfilt, "pfilt")
    _check_dfilt(dfilt, "dfilt")
    return nlevs


# --------------------------------------------------------------------------- reference
# The reference is the composition of the torch backend's passes (sstkd.ops.algorithms).
_REF = _torch_backend.TABLE


def contourlet_dec_ref(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva"):
    """Plain-PyTorch reference of :func:`contourlet_dec` (same contract, no dispatch)."""
    nlevs = _check_args(x, nlevs, pfilt, dfilt)
    return algorithms.contourlet_dec(x, nlevs, pfilt, dfilt, _REF)


def contourlet_rec_ref(low: torch.Tensor, bands, pfilt: str = "9-7", dfilt: str = "pkva") -> torch.Tensor:
    """Plain-PyTorch reference of :func:`contourlet_rec` (same contract, no dispatch)."""
    _check_coefficients(low, bands)
    check_pyramid_filter(pfilt, "pfilt")
    _check_dfilt(dfilt, "dfilt")
    return algorithms.contourlet_rec(low, bands, pfilt, dfilt, _REF)


def contourlet_energy_ref(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva") -> torch.Tensor:
    """Plain-PyTorch reference of :func:`contourlet_energy` (same contract, no dispatch)."""
    nlevs = _check_args(x, nlevs, pfilt, dfilt)
    return _REF["contourlet_energy"](x, nlevs, pfilt, dfilt)


# --------------------------------------------------------------------------- public ops
def contourlet_dec(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva", backend: str = "auto"):
    """Contourlet decomposition (toolbox ``pdfbdec(x, pfilt, dfilt, nlevs)``).

    Args:
        x: ``(B, C, H, W)`` floating tensor; ``H``/``W`` as
            :func:`check_contourlet_size` requires.
        nlevs: non-empty list of DFB levels (ints ``>= 0``) per pyramid level,
            coarse -> fine; 0 means one separable wavelet level.
        pfilt: pyramid filter (``"9-7"``). dfilt: DFB ladder filter (``"pkva"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(low, bands)``: ``low`` is ``(B, C, H/2**J, W/2**J)``; ``bands[L]``
        (``L = 0`` coarsest) is the list of sub-bands of pyramid level ``L``:
        ``2**nlevs[L]`` directional sub-bands in toolbox order, or
        ``[LH, HL, HH]`` where ``nlevs[L] == 0``. Shapes:
        :func:`contourlet_band_shapes`. All in ``x.dtype`` (float16/bfloat16
        compute in float32).

    Raises:
        TypeError: ``x`` not a floating tensor, ``nlevs`` not a list of ints,
            filter names not strings.
        ValueError: wrong rank, empty, a size ``nlevs`` cannot take (naming
            the size needed), empty or negative ``nlevs``, unknown filter or backend.
        RuntimeError: an explicitly requested backend is unavailable.

    The backward is the adjoint of the decomposition (not :func:`contourlet_rec`).
    """
    nlevs = _check_args(x, nlevs, pfilt, dfilt)
    return algorithms.contourlet_dec(x, nlevs, pfilt, dfilt, dispatch.passes("contourlet_dec", backend, x))


def contourlet_rec(low: torch.Tensor, bands, pfilt: str = "9-7", dfilt: str = "pkva", backend: str = "auto"):
    """Contourlet reconstruction (toolbox ``pdfbrec``), exact inverse of :func:`contourlet_dec`.

    Args:
        low: ``(B, C, h, w)`` coarsest lowpass.
        bands: per pyramid level (coarse -> fine) the list of sub-bands, with
            the shapes :func:`contourlet_dec` produces (3 sub-bands: wavelet
            level, ``2**n``: LP + ``n``-level DFB); one dtype and device.
        pfilt, dfilt, backend: as in :func:`contourlet_dec`.

    Returns:
        ``(B, C, h·2**J, w·2**J)`` in ``low.dtype``.

    Raises:
        TypeError / ValueError naming ``low``, ``bands[L][K]``, the filter or ``backend``.
    """
    _check_coefficients(low, bands)
    check_pyramid_filter(pfilt, "pfilt")
    _check_dfilt(dfilt, "dfilt")
    return algorithms.contourlet_rec(low, bands, pfilt, dfilt, dispatch.passes("contourlet_rec", backend, low))


def contourlet_energy(x: torch.Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva", backend: str = "auto"):
    """Sum of squares of every contourlet sub-band over its pixels.

    Args: as :func:`contourlet_dec`.

    Returns:
        ``(B, C, K)`` with ``K = 1 + total sub-bands``, order: ``low`` first,
        then the levels coarse -> fine, directions ``0..``. Computed in float32
        (float64 for float64 input) and returned in ``x.dtype`` (large energies
        can overflow float16).

    Raises:
        As :func:`contourlet_dec`.
    """
    nlevs = _check_args(x, nlevs, pfilt, dfilt)
    own = dispatch.own_entry("contourlet_energy", backend, x)  # the reference keeps plain autograd
    if own is not None:
        return own(x, nlevs, pfilt, dfilt)
    return algorithms.contourlet_energy(x, nlevs, pfilt, dfilt, dispatch.passes("contourlet_energy", backend, x))


class Contourlet(nn.Module):
    """Contourlet transform with fixed ``nlevs``: ``forward(x) -> (low, bands)``,
    ``inverse(low, bands) -> x``, ``energy(x) -> (B, C, K)``
    (see :func:`contourlet_dec`, :func:`contourlet_rec`, :func:`contourlet_energy`)."""

    def __init__(self, nlevs=(3, 3), pfilt: str = "9-7", dfilt: str = "pkva", backend: str = "auto"):
        super().__init__()
        self.nlevs = _check_nlevs(nlevs)
        self.pfilt = check_pyramid_filter(pfilt, "pfilt")
        self.dfilt = _check_dfilt(dfilt, "dfilt")
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        return f"nlevs={self.nlevs}, pfilt={self.pfilt!r}, dfilt={self.dfilt!r}, backend={self.backend!r}"

    def required_multiple(self) -> tuple[int, int]:
        return contourlet_required_multiple(self.nlevs)

    def forward(self, x: torch.Tensor):
        return contourlet_dec(x, self.nlevs, self.pfilt, self.dfilt, self.backend)

    def inverse(self, low: torch.Tensor, bands) -> torch.Tensor:
        if isinstance(bands, (list, tuple)) and len(bands) != len(self.nlevs):
            raise ValueError(
                f"bands: expected {len(self.nlevs)} pyramid levels for nlevs={self.nlevs}, got {len(bands)}"
            )
        return contourlet_rec(low, bands, self.pfilt, self.dfilt, self.backend)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return contourlet_energy(x, self.nlevs, self.pfilt, self.dfilt, self.backend)
