"""Sizes the toolbox transforms need and produce (DFB, contourlet): a leaf, imported by the
reference ops, the kernels' launchers and the CDM module alike.

Every check raises ``TypeError`` / ``ValueError`` naming the argument and the size needed.
"""
from __future__ import annotations

import numbers

import torch

from sstkd._util import check_int

__all__ = [
    "check_dfb_size",
    "check_nlevs",
    "check_contourlet_size",
    "contourlet_band_shapes",
    "contourlet_required_multiple",
    "dfb_band_shapes",
    "dfb_required_multiple",
]

_MIN_HALF_HEIGHT = 6  # 'qper_col' takes the last 6 rows of the first stage's polyphase component


# --------------------------------------------------------------------------- DFB
def dfb_required_multiple(levels: int) -> tuple[int, int]:
    """``(mh, mw)``: an ``levels``-level DFB needs ``H % mh == 0`` and ``W % mw == 0``."""
    levels = check_int(levels, "levels", minimum=0)
    if levels == 0:
        return 1, 1
    if levels == 1:
        return 2, 1
    m = 2 ** (levels - 1)
    return m, m


def _dfb_min_height(levels: int) -> int:
    """Smallest height the first ladder stage accepts (``H/2 >= 6``), 1 for ``levels == 0``."""
    return 1 if levels == 0 else 2 * _MIN_HALF_HEIGHT


def check_dfb_size(h: int, w: int, levels: int, name: str = "x") -> None:
    """Raise ``ValueError`` (naming ``name`` and the size needed) if ``(h, w)`` cannot take ``levels``."""
    levels = check_int(levels, "levels", minimum=0)
    mh, mw = dfb_required_multiple(levels)
    min_h = max(mh, _dfb_min_height(levels))
    if h % mh or h < min_h:
        raise ValueError(
            f"{name}: height {h} is not valid for levels={levels}: need a multiple of {mh} (and >= {min_h})"
        )
    min_w = 1 if levels == 0 else max(mw, 2)
    if w % mw or w < min_w:
        raise ValueError(
            f"{name}: width {w} is not valid for levels={levels}: need a multiple of {mw} (and >= {min_w})"
        )


def dfb_band_shapes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """Sub-band sizes ``[(h_k, w_k)]`` of an ``levels``-level DFB of an ``h × w`` image (toolbox order)."""
    check_dfb_size(h, w, levels)
    if levels == 0:
        return [(h, w)]
    if levels == 1:
        return [(h // 2, w)] * 2
    half = 2 ** (levels - 1)
    return [(h // half, w // 2)] * half + [(h // 2, w // half)] * half



def dfb_image_size(band_hw: tuple[int, int], levels: int) -> tuple[int, int]:
    """``(H, W)`` of the image whose ``levels``-level DFB (``levels >= 1``) has first sub-band ``band_hw``."""
    h0, w0 = band_hw
    if levels == 1:
        return 2 * h0, w0
    return h0 * 2 ** (levels - 1), 2 * w0


_DFB_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_dfb_bands(bands) -> tuple[list[torch.Tensor], int, tuple[int, int] | None]:
    """The sub-band list of a DFB reconstruction, checked (kernels trust its shapes):
    ``(bands, levels, (H, W))``, ``(H, W)`` None for ``levels == 0``. Every band a (B, C, h_k, w_k)
    float tensor of the first band's dtype and device, ``2**levels`` of them in toolbox sizes."""
    bands = list(bands)
    for k, t in enumerate(bands):
        if not isinstance(t, torch.Tensor) or t.dtype not in _DFB_DTYPES or t.dim() != 4:
            raise TypeError(f"bands[{k}]: expected a (B, C, h, w) float16/bfloat16/float32/float64 tensor")
    levels = len(bands).bit_length() - 1
    if len(bands) == 0 or 2**levels != len(bands):
        raise ValueError(f"bands: expected a list of 2**levels sub-bands, got {len(bands)}")
    if levels == 0:
        return bands, 0, None
    b, c = bands[0].shape[:2]
    H, W = dfb_image_size(bands[0].shape[-2:], levels)
    for k, (t, hw) in enumerate(zip(bands, dfb_band_shapes(H, W, levels))):
        if tuple(t.shape) != (b, c, *hw) or t.dtype != bands[0].dtype or t.device != bands[0].device:
            raise ValueError(f"bands[{k}]: expected a {bands[0].dtype} tensor of shape {(b, c, *hw)} on "
                             f"{bands[0].device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return bands, levels, (H, W)


# --------------------------------------------------------------------------- contourlet
_MIN_DFB_HEIGHT = 12  # the first DFB stage needs H/2 >= 6 at its level


# --------------------------------------------------------------------------- sizes
MAX_DFB_LEVELS = 8  # 256 directions per level; more needs images of 2^(n-1) rows and exhausts memory


def check_nlevs(nlevs, name: str = "nlevs") -> list[int]:
    if isinstance(nlevs, (str, bytes, torch.Tensor)) or not isinstance(nlevs, (list, tuple)):
        raise TypeError(f"{name}: expected a non-empty list of ints (DFB levels per pyramid level), "
                        f"got {type(nlevs).__name__}")
    if len(nlevs) == 0:
        raise ValueError(f"{name}: expected a non-empty list of DFB levels per pyramid level, got {list(nlevs)}")
    out = []
    for i, n in enumerate(nlevs):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{name}[{i}]: expected an int, got {type(n).__name__}")
        if not 0 <= n <= MAX_DFB_LEVELS:
            raise ValueError(f"{name}[{i}]: must be in [0, {MAX_DFB_LEVELS}], got {n}")
        out.append(int(n))
    return out


def contourlet_required_multiple(nlevs) -> tuple[int, int]:
    """``(mh, mw)``: ``contourlet_dec(x, nlevs)`` needs ``H % mh == 0`` and ``W % mw == 0``.

    Level ``L`` (coarse -> fine) sees the input scaled down by ``2**(J-1-L)``
    and needs its sides divisible by ``max(2, 2**(n_L - 1))``.
    """
    nlevs = check_nlevs(nlevs)
    j = len(nlevs)
    m = max(2 ** (j - 1 - l) * 2 ** max(1, n - 1) for l, n in enumerate(nlevs))
    return m, m


def _min_height(nlevs: list[int], mh: int) -> int:
    j = len(nlevs)
    raw = max([mh] + [_MIN_DFB_HEIGHT * 2 ** (j - 1 - l) for l, n in enumerate(nlevs) if n >= 1])
    return -(-raw // mh) * mh  # the smallest valid height: a multiple of mh


def check_contourlet_size(h: int, w: int, nlevs, name: str = "x") -> None:
    """Raise ``ValueError`` (naming ``name`` and the size needed) if an ``h × w`` image cannot take ``nlevs``.

    Example message: ``"x: height 30 is not valid for nlevs=[3, 3]: need a
    multiple of 8 (and >= 24)"``.
    """
    nlevs = check_nlevs(nlevs)
    for v, what in ((h, "height"), (w, "width")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: {what} must be an int, got {type(v).__name__}")
    mh, mw = contourlet_required_multiple(nlevs)
    min_h = _min_height(nlevs, mh)
    if h % mh or h < min_h:
        raise ValueError(f"{name}: height {h} is not valid for nlevs={nlevs}: need a multiple of {mh} (and >= {min_h})")
    if w % mw or w < mw:
        raise ValueError(f"{name}: width {w} is not valid for nlevs={nlevs}: need a multiple of {mw} (and >= {mw})")


def contourlet_band_shapes(h: int, w: int, nlevs):
    """``(low_shape, [[(h, w), ...] per level])`` of ``contourlet_dec`` of an ``h × w`` image (coarse -> fine)."""
    nlevs = check_nlevs(nlevs)
    check_contourlet_size(h, w, nlevs)
    j = len(nlevs)
    shapes = []
    for l, n in enumerate(nlevs):
        hl, wl = h >> (j - 1 - l), w >> (j - 1 - l)
        shapes.append([(hl // 2, wl // 2)] * 3 if n == 0 else dfb_band_shapes(hl, wl, n))
    return (h >> j, w >> j), shapes


