"""Contourlet Decomposition Module (CDM): the structural texture loss ``L_str``.

``L_str = Σ_k w_k · MSE_k / Σ_k w_k`` over the K sub-bands of a contourlet
decomposition (the final lowpass first, then every directional sub-band of
every pyramid level, coarse to fine), where ``MSE_k`` is the mean squared
difference between the student's and the teacher's coefficients in sub-band k.

The decomposition is linear, so ``dec(F_s) − dec(F_t) = dec(F_s − F_t)``: it
is computed once, on the difference, and only the per-sub-band sum of squares
is needed (``contourlet_energy``), which a fused backend computes without
materializing the sub-bands.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sstkd._util import pad_index as _pad_index
from sstkd.ops._checks import check_image, check_int, compute_dtype
from sstkd.ops.dispatch import resolve_backend
from sstkd.ops.contourlet import (
    check_contourlet_size,
    contourlet_band_shapes,
    contourlet_energy,
    contourlet_required_multiple,
)

PAD_MODES = ("symmetric", "reflect", "replicate", "circular", "zeros")
# With recompute on the reference backend, the decomposition runs on channel chunks
# of about this many elements (32 MiB in float32).
RECOMPUTE_CHUNK_ELEMENTS = 1 << 23


def pad_to_size(x: torch.Tensor, size: tuple[int, int], mode: str = "symmetric") -> torch.Tensor:
    """Pad ``x`` (..., H, W) at the bottom and right to ``size = (H', W')`` (``H' >= H``, ``W' >= W``).

    ``mode``: ``"symmetric"`` (mirror including the edge sample, the
    contourlet toolbox's ``symext`` convention; default), ``"reflect"``
    (mirror excluding it), ``"replicate"``, ``"circular"`` or ``"zeros"``.
    Pads larger than the map keep mirroring (periodically). Returns ``x``
    itself when no padding is needed.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad_mode: unknown mode {mode!r}; choose from {PAD_MODES}")
    h, w = x.shape[-2:]
    hp, wp = size
    if hp < h or wp < w:
        raise ValueError(f"size: {tuple(size)} is smaller than the input's {(h, w)}")
    if (hp, wp) == (h, w):
        return x
    if mode == "zeros":
        return nn.functional.pad(x, (0, wp - w, 0, hp - h))
    if hp != h:
        x = x.index_select(-2, _pad_index(h, hp, mode, x.device))
    if wp != w:
        x = x.index_select(-1, _pad_index(w, wp, mode, x.device))
    return x


class ContourletDecompositionModule(nn.Module):
    """``L_str`` between aligned student and teacher low-level features.

    Args:
        nlevs: DFB levels per pyramid level, coarse to fine (default ``(3, 3)``:
            two pyramid levels with 8 directions each; 0 = a wavelet level).
        band_weights: ``None`` (uniform), K weights (one per sub-band, lowpass
            first, then levels coarse to fine, directions in order), or
            ``len(nlevs) + 1`` weights (lowpass, then one per pyramid level,
            shared by that level's sub-bands). Non-negative, not all zero.
        pad_mode: how feature maps are padded to a valid contourlet size
            (see :func:`pad_to_size`); maps are padded at the bottom/right to
            the smallest valid size (:meth:`padded_size`).
        pfilt, dfilt: pyramid / directional filters.
        backend: passed to ``contourlet_energy``.
        recompute: when the reference (``"torch"``) backend runs, do not keep
            the sub-bands for backward but recompute the decomposition there
            (activation checkpointing, in channel chunks of about
            ``RECOMPUTE_CHUNK_ELEMENTS``): only the feature difference is saved,
            and the op's intermediates exist for one chunk at a time. Fused
            backends manage their own memory and ignore it.

    ``forward(f_s, f_t)`` takes ``(B, C, H, W)`` maps of equal shape (``f_t``
    is detached) and returns ``(loss, band_mse)``: a scalar and the ``(K,)``
    per-sub-band MSEs, in float32 (float64 for float64 inputs).
    """

    def __init__(
        self,
        nlevs: Sequence[int] = (3, 3),
        band_weights: Sequence[float] | None = None,
        pad_mode: str = "symmetric",
        pfilt: str = "9-7",
        dfilt: str = "pkva",
        backend: str = "auto",
        recompute: bool = True,
    ):
        super().__init__()
        if isinstance(nlevs, (str, bytes)) or not isinstance(nlevs, Sequence) or len(nlevs) == 0:
            raise ValueError(f"nlevs: expected a non-empty sequence of ints, got {nlevs!r}")
        self.nlevs = tuple(check_int(n, "nlevs", minimum=0) for n in nlevs)
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode: unknown mode {pad_mode!r}; choose from {PAD_MODES}")
        self.pad_mode = pad_mode
        self.pfilt, self.dfilt, self.backend = pfilt, dfilt, backend
        self.recompute = bool(recompute)
        self.multiple = tuple(contourlet_required_multiple(list(self.nlevs)))
        self._size_cache: dict[tuple[int, int], tuple[int, int]] = {}
        counts = [3 if n == 0 else 2**n for n in self.nlevs]
        self.num_bands = 1 + sum(counts)
        self.register_buffer("band_weights", self._expand_weights(band_weights, counts), persistent=False)

    def _expand_weights(self, weights, counts) -> torch.Tensor:
        k = self.num_bands
        if weights is None:
            return torch.ones(k, dtype=torch.float64)
        w = [float(v) for v in weights]
        if len(w) == len(counts) + 1:  # lowpass + one weight per pyramid level
            w = [w[0]] + [v for v, c in zip(w[1:], counts) for _ in range(c)]
        if len(w) != k:
            raise ValueError(
                f"band_weights: expected {k} weights (one per sub-band) or {len(counts) + 1} "
                f"(lowpass + one per level) for nlevs={list(self.nlevs)}, got {len(weights)}"
            )
        t = torch.tensor(w, dtype=torch.float64)
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or float(t.sum()) <= 0:
            raise ValueError(f"band_weights: must be finite, non-negative and not all zero, got {w}")
        return t

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """Smallest valid contourlet size ``>= (height, width)``: multiples of
        ``contourlet_required_multiple(nlevs)`` that also meet the minimum sizes
        (the first DFB stage of every level needs at least 12 rows)."""
        key = (height, width)
        if key not in self._size_cache:
            mh, mw = self.multiple
            hp, wp = -(-height // mh) * mh, -(-width // mw) * mw
            for _ in range(4096):
                try:
                    check_contourlet_size(hp, wp, list(self.nlevs))
                    break
                except ValueError:
                    # Grow the failing dimension: if the height passes with a large
                    # valid width, the width is what is too small.
                    try:
                        check_contourlet_size(hp, wp * 1024, list(self.nlevs))
                        wp += mw
                    except ValueError:
                        hp += mh
            else:  # pragma: no cover - the limits are a few dozen pixels
                raise ValueError(f"s_low: found no valid contourlet size for {height}x{width}")
            self._size_cache[key] = (hp, wp)
        return self._size_cache[key]

    def band_sizes(self, height: int, width: int) -> torch.Tensor:
        """Elements per sub-band (per channel) for a padded ``height × width`` map, as a (K,) tensor."""
        low, levels = contourlet_band_shapes(height, width, list(self.nlevs))
        sizes = [low[0] * low[1]] + [h * w for level in levels for (h, w) in level]
        return torch.tensor(sizes, dtype=torch.float64)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_image(f_s, "s_low")
        check_image(f_t, "t_low")
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"s_low: aligned student features {tuple(f_s.shape)} must match t_low {tuple(f_t.shape)}"
            )
        dtype = compute_dtype(f_s)
        diff = f_s.to(dtype) - f_t.detach().to(dtype)
        diff = pad_to_size(diff, self.padded_size(*diff.shape[-2:]), self.pad_mode)
        backend = resolve_backend("contourlet_energy", self.backend, diff)
        if self.recompute and diff.requires_grad and backend == "torch":
            # Channel chunks, each recomputed on its own in backward: the reference op's
            # intermediates then live for one chunk at a time, in forward and backward.
            per_channel = diff.shape[0] * diff.shape[2] * diff.shape[3]
            step = max(1, RECOMPUTE_CHUNK_ELEMENTS // per_channel)
            energy = torch.cat(
                [checkpoint(self._energy, part, use_reentrant=False) for part in diff.split(step, dim=1)], dim=1
            )
        else:
            energy = self._energy(diff)
        b, c = diff.shape[:2]
        counts = self.band_sizes(*diff.shape[-2:]).to(device=energy.device, dtype=energy.dtype) * (b * c)
        band_mse = energy.to(dtype).sum(dim=(0, 1)) / counts
        w = self.band_weights.to(device=band_mse.device, dtype=band_mse.dtype)
        return (band_mse * w).sum() / w.sum(), band_mse

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        return contourlet_energy(x, list(self.nlevs), pfilt=self.pfilt, dfilt=self.dfilt, backend=self.backend)

    def extra_repr(self) -> str:
        return f"nlevs={list(self.nlevs)}, bands={self.num_bands}, pad_mode={self.pad_mode!r}, backend={self.backend!r}"
