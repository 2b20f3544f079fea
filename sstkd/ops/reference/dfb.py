"""Directional filter bank (MATLAB Contourlet Toolbox ``dfbdec_l``/``dfbrec_l``, ladder 'pkva').

An ``n``-level DFB splits an image into ``2**n`` critically sampled directional
sub-bands by a binary tree of two-channel ladder stages::

    (p0, p1) = polyphase split of x            # quincunx '1r'/'2c', parallelogram P1..P4
    y0 = (p0 − S1(p1)) / √2                    # S1: sefilter2(fm⊗fm, shift (1,1))
    y1 = −√2·p1 − S0(y0)                       # S0: sefilter2(fm⊗fm, shift 0)

followed by "backsampling" (a final shear per sub-band) and reversal of the
second half of the sub-band list. ``tests/data/contourlet/README.md`` spells
out every convention; the code follows it step by step.

Reference implementation (plain PyTorch, the oracle of every fast backend):

* ``B·C`` images are one batch axis; all sub-bands of one tree level that share
  a shape are processed together as a ``(N, nb, h, w)`` group (``N = B·C``).
* Every resampling step (shears R1..R4, polyphase splits, backsampling, the
  list reversal) is a permutation of pixels. Its flat index is built once per
  ``(shape, device)`` from an ``arange`` "index image" pushed through the
  toolbox's steps (``functools.lru_cache``), and applied to data by a single
  ``index_select``; the inverse permutation does the synthesis.
* Periodic / 'qper_col' extension is a modular index gather as well, so
  sub-bands smaller than the filter support wrap as in the toolbox.
* Filtering is separable depthwise ``conv2d`` on a ``(1, N·nb, h, w)`` view.

Autograd through these ops gives the exact adjoint of the decomposition,
which is the backward every backend must reproduce.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from sstkd._util import compute_dtype
from sstkd.filters import modulated_dfb_filter
from sstkd.geometry import check_dfb_size, dfb_band_shapes, dfb_required_multiple  # noqa: F401  (re-exported)

__all__ = ["dfb_required_multiple", "check_dfb_size", "dfb_band_shapes"]

_SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------- resampling on index images
# The functions below act on integer "index images" (..., h, w) at build time
# only; shifts may be ints or tensors broadcastable to (..., 1, 1).
def _shear(x: torch.Tensor, s, dim: int) -> torch.Tensor:
    """A cyclic shear along ``dim`` (-2: rows move, -1: columns move) by ``s`` per step of the other axis."""
    h, w = x.shape[-2:]
    i = torch.arange(h, device=x.device).view(h, 1)
    j = torch.arange(w, device=x.device).view(1, w)
    index = torch.remainder(i + s * j, h) if dim == -2 else torch.remainder(j + s * i, w)
    return torch.gather(x, dim, index.expand(x.shape))


def _shear_rows(x: torch.Tensor, s) -> torch.Tensor:
    """Toolbox R1 with shift ``s`` (R2 is ``-s``): ``y[i, j] = x[(i + s·j) % h, j]``."""
    return _shear(x, s, -2)


def _shear_cols(x: torch.Tensor, s) -> torch.Tensor:
    """Toolbox R3 with shift ``s`` (R4 is ``-s``): ``y[i, j] = x[i, (j + s·i) % w]``."""
    return _shear(x, s, -1)


def _split_1r(x):  # quincunx Q1 = R2·D1·R3
    y = _shear_rows(x, -1)
    return _shear_cols(y[..., 0::2, :], 1), _shear_cols(torch.roll(y[..., 1::2, :], -1, dims=-1), 1)


def _split_2c(x):  # quincunx Q2 = R1·D2·R4
    y = _shear_cols(x, -1)
    return _shear_rows(y[..., 0::2], 1), _shear_rows(torch.roll(y[..., 1::2], -1, dims=-2), 1)


def _split_p1(x):  # P1 = D1·R3
    return _shear_cols(x[..., 0::2, :], 1), _shear_cols(torch.roll(x[..., 1::2, :], -1, dims=-1), 1)


def _split_p2(x):  # P2 = D1·R4
    return _shear_cols(x[..., 0::2, :], -1), _shear_cols(x[..., 1::2, :], -1)


def _split_p3(x):  # P3 = D2·R1
    return _shear_rows(x[..., 0::2], 1), _shear_rows(torch.roll(x[..., 1::2], -1, dims=-2), 1)


def _split_p4(x):  # P4 = D2·R2
    return _shear_rows(x[..., 0::2], -1), _shear_rows(x[..., 1::2], -1)


def _split_alternating(x, even_split, odd_split):
    """Bands of even index (0-based) use ``even_split``, odd ones ``odd_split`` (P1/P2 or P3/P4)."""
    a0, a1 = even_split(x)
    b0, b1 = odd_split(x)
    even = (torch.arange(x.shape[0], device=x.device) % 2 == 0).view(-1, 1, 1)
    return torch.where(even, a0, b0), torch.where(even, a1, b1)


_SPLITS = {
    "1r": _split_1r,
    "2c": _split_2c,
    # rows halve: first half of the tree (P1, P2, P1, ...); columns halve: second half (P3, P4, ...)
    "rows": lambda x: _split_alternating(x, _split_p1, _split_p2),
    "cols": lambda x: _split_alternating(x, _split_p3, _split_p4),
}


def _inverse_permutation(idx: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(idx)
    inv[idx] = torch.arange(idx.numel(), device=idx.device)
    return inv


@functools.lru_cache(maxsize=256)
def _split_index(kind: str, nb: int, h: int, w: int, device: torch.device):
    """Flat gather index of one polyphase split of a ``(nb, h, w)`` group.

    Returns ``(fwd, inv, (h2, w2))``: ``fwd`` gathers ``[p0 of all bands, p1 of
    all bands]`` (laid out ``(2, nb, h2, w2)``) from the flattened group,
    ``inv`` is its inverse permutation.
    """
    img = torch.arange(nb * h * w, device=device).view(nb, h, w)
    p0, p1 = _SPLITS[kind](img)
    fwd = torch.stack([p0, p1]).reshape(-1)
    return fwd, _inverse_permutation(fwd), tuple(p0.shape[-2:])


@functools.lru_cache(maxsize=256)
def _backsample_index(levels: int, half: str, nb: int, h: int, w: int, device: torch.device):
    """Flat gather index of the final backsampling (and list reversal) of one group.

    ``half`` is ``"all"`` (``levels == 1``: both bands), ``"first"`` or
    ``"second"`` (``levels >= 2``: the first/second half of the sub-bands).
    Returns ``(fwd, inv)``.
    """
    img = torch.arange(nb * h * w, device=device).view(nb, h, w)
    if levels == 1:  # undo Q1r's last resampling: R4, then R1 on even and odd columns separately
        img = _shear_cols(img, -1).clone()
        img[..., 0::2] = _shear_rows(img[..., 0::2], 1)
        img[..., 1::2] = _shear_rows(img[..., 1::2], 1)
    elif levels >= 3:
        k = torch.arange(nb, device=device) // 2 + 1  # 1-based pair index
        shift = (2 * k - 2 ** (levels - 2) - 1).view(nb, 1, 1)
        img = _shear_cols(img, shift) if half == "first" else _shear_rows(img, shift)
    if half == "second":  # the toolbox reverses the second half of the list
        img = img.flip(0)
    fwd = img.reshape(-1)
    return fwd, _inverse_permutation(fwd)


@functools.lru_cache(maxsize=256)
def _extension_index(mode: str, h: int, w: int, top: int, bottom: int, left: int, right: int, device: torch.device):
    """Flat gather index extending an ``h × w`` image by the given margins.

    ``"per"``: periodic, indices modulo the size (any margin). ``"qper_col"``:
    the rows added above are the last rows, the rows added below the first
    rows, both circularly shifted by ``round(w/2)`` columns; then periodic
    columns.
    """
    r = torch.arange(-top, h + bottom, device=device)
    c = torch.arange(-left, w + right, device=device)
    shift = torch.zeros_like(r)
    if mode == "qper_col":
        shift = torch.where((r < 0) | (r >= h), (w + 1) // 2, 0)  # MATLAB round(w/2)
    rows = torch.remainder(r, h).view(-1, 1)
    cols = torch.remainder(c.view(1, -1) + shift.view(-1, 1), w)
    return (rows * w + cols).reshape(-1)


# --------------------------------------------------------------------------- ladder stages
@functools.lru_cache(maxsize=64)
def _ladder_weights(filt: str, device: torch.device, dtype: torch.dtype):
    """The modulated ladder filter fm as flipped (1,1,L,1) / (1,1,1,L) kernels (conv2d correlates)."""
    fm = modulated_dfb_filter(filt).flip(0).to(device=device, dtype=dtype)
    n = fm.numel()
    return fm.view(1, 1, n, 1).contiguous(), fm.view(1, 1, 1, n).contiguous()


def _sefilter(x: torch.Tensor, weights, mode: str, shift: int) -> torch.Tensor:
    """Toolbox ``sefilter2(x, fm, fm, mode, [shift, shift])`` of a ``(N, nb, h, w)`` group.

    Extends by ``floor(lf) + shift`` before and ``ceil(lf) - shift`` after
    (``lf = (L-1)/2``), then a 'valid' separable convolution: output size = input size.
    """
    n, nb, h, w = x.shape
    kv, kh = weights
    taps = kv.shape[2]
    before = (taps - 1) // 2 + shift
    after = taps // 2 - shift
    m = n * nb
    if mode == "per" and max(before, after) <= min(h, w):  # circular pad is the cheapest copy
        e = F.pad(x.reshape(1, m, h, w), (before, after, before, after), mode="circular")
    else:  # 'qper_col', or margins larger than the image: modular index gather
        idx = _extension_index(mode, h, w, before, after, before, after, x.device)
        e = x.reshape(m, h * w).index_select(1, idx).view(1, m, h + taps - 1, w + taps - 1)
    e = F.conv2d(e, kv.expand(m, 1, taps, 1), groups=m)
    e = F.conv2d(e, kh.expand(m, 1, 1, taps), groups=m)
    return e.view(n, nb, h, w)


def _stage_dec(x: torch.Tensor, kind: str, mode: str, weights):
    """Two-channel ladder analysis of every band of a ``(N, nb, h, w)`` group -> ``(y0, y1)``."""
    n, nb, h, w = x.shape
    fwd, _, (h2, w2) = _split_index(kind, nb, h, w, x.device)
    p = x.reshape(n, nb * h * w).index_select(1, fwd).view(n, 2, nb, h2, w2)
    p0, p1 = p[:, 0], p[:, 1]
    y0 = (p0 - _sefilter(p1, weights, mode, 1)) * (1 / _SQRT2)
    y1 = -_SQRT2 * p1 - _sefilter(y0, weights, mode, 0)
    return y0, y1


def _stage_rec(y0: torch.Tensor, y1: torch.Tensor, kind: str, mode: str, weights, h: int, w: int):
    """Inverse of :func:`_stage_dec`: ``(y0, y1)`` of shape ``(N, nb, h2, w2)`` -> ``(N, nb, h, w)``."""
    n, nb = y0.shape[:2]
    _, inv, _ = _split_index(kind, nb, h, w, y0.device)
    p1 = (-1 / _SQRT2) * (y1 + _sefilter(y0, weights, mode, 0))
    p0 = _SQRT2 * y0 + _sefilter(p1, weights, mode, 1)
    p = torch.stack([p0, p1], dim=1).reshape(n, -1)
    return p.index_select(1, inv).view(n, nb, h, w)


def _interleave(y0: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
    """Children of band k are bands ``2k ← y1`` and ``2k+1 ← y0`` (0-based)."""
    n, nb, h, w = y0.shape
    return torch.stack([y1, y0], dim=2).reshape(n, 2 * nb, h, w)


def _deinterleave(x: torch.Tensor):
    """Inverse of :func:`_interleave` -> ``(y0, y1)``."""
    n, nb2, h, w = x.shape
    x = x.view(n, nb2 // 2, 2, h, w)
    return x[:, :, 1], x[:, :, 0]


def _backsample(x: torch.Tensor, levels: int, half: str, inverse: bool = False) -> torch.Tensor:
    n, nb, h, w = x.shape
    fwd, inv = _backsample_index(levels, half, nb, h, w, x.device)
    return x.reshape(n, nb * h * w).index_select(1, inv if inverse else fwd).view(n, nb, h, w)


def _dfb_dec_groups(x: torch.Tensor, levels: int, filt: str) -> list[torch.Tensor]:
    """DFB analysis of ``(N, 1, H, W)`` (compute dtype) -> groups ``(N, nb, h, w)`` in toolbox order."""
    weights = _ladder_weights(filt, x.device, x.dtype)
    y0, y1 = _stage_dec(x, "1r", "qper_col", weights)
    level1 = torch.cat([y0, y1], dim=1)  # (N, 2, H/2, W)
    if levels == 1:
        return [_backsample(level1, 1, "all")]
    y0, y1 = _stage_dec(level1, "2c", "per", weights)
    bands = _interleave(y0, y1)  # (N, 4, H/2, W/2)
    first, second = bands[:, :2], bands[:, 2:]
    for _ in range(3, levels + 1):
        first = _interleave(*_stage_dec(first, "rows", "per", weights))
        second = _interleave(*_stage_dec(second, "cols", "per", weights))
    return [_backsample(first, levels, "first"), _backsample(second, levels, "second")]


def _dfb_rec_groups(groups: list[torch.Tensor], levels: int, filt: str) -> torch.Tensor:
    """Inverse of :func:`_dfb_dec_groups` -> ``(N, 1, H, W)``."""
    weights = _ladder_weights(filt, groups[0].device, groups[0].dtype)
    if levels == 1:
        level1 = _backsample(groups[0], 1, "all", inverse=True)
    else:
        first = _backsample(groups[0], levels, "first", inverse=True)
        second = _backsample(groups[1], levels, "second", inverse=True)
        for _ in range(levels, 2, -1):
            h, w = first.shape[-2:]
            first = _stage_rec(*_deinterleave(first), "rows", "per", weights, 2 * h, w)
            h, w = second.shape[-2:]
            second = _stage_rec(*_deinterleave(second), "cols", "per", weights, h, 2 * w)
        h, w = first.shape[-2:]
        level1 = _stage_rec(*_deinterleave(torch.cat([first, second], dim=1)), "2c", "per", weights, h, 2 * w)
    h, w = level1.shape[-2:]
    return _stage_rec(level1[:, :1], level1[:, 1:], "1r", "qper_col", weights, 2 * h, w)


# --------------------------------------------------------------------------- building blocks
def _levels_of(count: int, name: str) -> int:
    levels = count.bit_length() - 1
    if count < 1 or 2**levels != count:
        raise ValueError(f"{name}: expected a list of 2**levels sub-bands, got {count}")
    return levels


def _dfb_dec_torch(x: torch.Tensor, levels: int, filt: str) -> list[torch.Tensor]:
    """Reference DFB analysis, no validation; returns sub-bands in the compute dtype of ``x``."""
    b, c, h, w = x.shape
    xc = x.to(compute_dtype(x))
    if levels == 0:
        return [xc]
    groups = _dfb_dec_groups(xc.reshape(b * c, 1, h, w), levels, filt)
    return [g[:, k].reshape(b, c, *g.shape[-2:]).contiguous() for g in groups for k in range(g.shape[1])]


def _dfb_rec_torch(bands: list[torch.Tensor], filt: str) -> torch.Tensor:
    """Reference DFB synthesis, no validation; returns the image in the compute dtype."""
    dt = compute_dtype(bands[0])
    levels = _levels_of(len(bands), "bands")
    if levels == 0:
        return bands[0].to(dt)
    b, c = bands[0].shape[:2]
    flat = [band.to(dt).reshape(b * c, *band.shape[-2:]) for band in bands]
    groups = [torch.stack(flat, dim=1)] if levels == 1 else [
        torch.stack(flat[: len(flat) // 2], dim=1),
        torch.stack(flat[len(flat) // 2 :], dim=1),
    ]
    x = _dfb_rec_groups(groups, levels, filt)
    return x.reshape(b, c, *x.shape[-2:])
