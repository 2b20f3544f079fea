"""One level of the Laplacian pyramid (MATLAB Contourlet Toolbox ``lpdec``/``lprec``): the public ops.

The PyTorch reference (conventions, building blocks) is :mod:`sstkd.ops.reference.laplacian`;
the backends' passes are found through :mod:`sstkd.ops.dispatch`.
"""
from __future__ import annotations

import torch
from torch import nn

from sstkd.filters import check_pyramid_filter
from sstkd.ops import dispatch
from sstkd.ops._checks import check_image, check_int
from sstkd.ops.dispatch import check_backend_name
from sstkd.ops.reference.laplacian import check_even, check_pair, lp_dec_ref, lp_rec_ref  # noqa: F401  (re-exported)

__all__ = ["lp_dec", "lp_rec", "lp_dec_ref", "lp_rec_ref", "LaplacianPyramid"]


def lp_dec(x: torch.Tensor, filt: str = "9-7", backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One Laplacian pyramid level (toolbox ``lpdec``, periodic extension).

    Args:
        x: ``(B, C, H, W)`` floating tensor with even ``H`` and ``W``.
        filt: pyramid filter name (``"9-7"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(low, band)``: the decimated lowpass ``(B, C, H/2, W/2)`` and the
        full-size bandpass ``(B, C, H, W)``, both in ``x.dtype``
        (float16/bfloat16 compute in float32, float64 in float64).

    Raises:
        TypeError: ``x`` is not a floating tensor, ``filt`` not a string.
        ValueError: wrong rank, empty, odd ``H``/``W``, unknown ``filt`` or
            ``backend``.
        RuntimeError: an explicitly requested backend is unavailable.

    The backward is the adjoint of the decomposition (not the synthesis).
    """
    check_image(x, "x")
    check_even(x, "x")
    check_pyramid_filter(filt)
    return dispatch.resolve("lp_dec", backend, x)(x, filt)


def lp_rec(low: torch.Tensor, band: torch.Tensor, filt: str = "9-7", backend: str = "auto") -> torch.Tensor:
    """Dual-frame synthesis of one Laplacian pyramid level (toolbox ``lprec``).

    ``x = (up2(low − (band ⊛ h⊗h)[0::2, 0::2]) ⊛ g⊗g) + band``: exact inverse of
    :func:`lp_dec`, and the least-squares reconstruction for modified
    coefficients.

    Args:
        low: ``(B, C, H/2, W/2)`` lowpass.
        band: ``(B, C, H, W)`` bandpass, even ``H``/``W``, same dtype/device.
        filt: pyramid filter name (``"9-7"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(B, C, H, W)`` tensor in the input dtype.

    Raises:
        TypeError / ValueError naming ``low``, ``band``, ``filt`` or ``backend``.
    """
    check_pair(low, band)
    check_pyramid_filter(filt)
    return dispatch.resolve("lp_rec", backend, low, band)(low, band, filt)


class LaplacianPyramid(nn.Module):
    """``levels`` Laplacian pyramid levels.

    ``forward(x) -> (low, [band_1, ..., band_J])`` with bands fine -> coarse
    (``band_1`` is full size); ``inverse(low, bands) -> x``. ``H`` and ``W``
    must be divisible by ``2**levels`` (ValueError naming the size otherwise).
    """

    def __init__(self, levels: int = 1, filt: str = "9-7", backend: str = "auto"):
        super().__init__()
        self.levels = check_int(levels, "levels", minimum=1)
        self.filt = check_pyramid_filter(filt)
        self.backend = check_backend_name(backend)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, filt={self.filt!r}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        check_image(x, "x")
        m = 2**self.levels
        h, w = x.shape[-2:]
        if h % m or w % m:
            raise ValueError(
                f"x: height and width must be multiples of {m} for {self.levels} levels, got size {h}x{w}"
            )
        bands = []
        low = x
        for _ in range(self.levels):
            low, band = lp_dec(low, self.filt, self.backend)
            bands.append(band)
        return low, bands

    def inverse(self, low: torch.Tensor, bands: list[torch.Tensor]) -> torch.Tensor:
        if not isinstance(bands, (list, tuple)) or len(bands) != self.levels:
            n = len(bands) if isinstance(bands, (list, tuple)) else type(bands).__name__
            raise ValueError(f"bands: expected a list of {self.levels} tensors, got {n}")
        x = low
        for band in reversed(bands):
            x = lp_rec(x, band, self.filt, self.backend)
        return x
