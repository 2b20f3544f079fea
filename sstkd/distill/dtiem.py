"""Denoised Texture Intensity Equalization Module (DTIEM): the statistical texture loss ``L_sta``.

Our reconstruction (the paper's body is not available; see docs/method.md).
Per image, with ``F`` the aligned low-level features:

1. intensity map ``s_i = cos(GAP(F), F_i)``                      (``intensity``)
2. robust range: ``smin, smax`` = quantiles of ``s``              (``robust_range``, ``quantiles``)
3. heuristic iterative quantization: ``L`` levels, ``K`` Lloyd steps (``levels``, ``iters``, ``kernel``)
4. intensity-limited denoising: clip the histogram at ``τ/L`` and
   redistribute the excess uniformly (CLAHE)                      (``clip``, ``tau``, ``redistribute``)
5. equalization: ``cdf = cumsum(hist)``; equalized per-pixel map
   ``m_i = Σ_n E_in cdf_n``                                       (``equalize``)

The student is quantized with the teacher's refined centers (``shared_centers``),
so both histograms share their bins, and

``L_sta = w_hist·MSE(L·G(hist_s), L·G(hist_t)) + w_cdf·MSE(cdf_s, cdf_t) + w_map·MSE(m_s, m_t)
        + w_range·MSE(o_s, o_t)``

* the histograms are compared as densities relative to uniform (``L·hist``),
  after a Gaussian smoothing ``G`` of bandwidth ``hist_bandwidth`` (a fraction
  of the level range, i.e. ``σ = hist_bandwidth·L`` bins): the loss then
  compares kernel density estimates whose bandwidth does not depend on ``L``,
  so neither the term's value nor its gradient grows with ``L`` (with the raw
  ``L·hist`` the gradient per pixel grows like ``L²/N`` and jumps from bin to
  bin). ``hist_bandwidth = 0`` compares the raw clipped histograms;
* ``o(s) = s − clamp(s, c_0, c_{L−1})`` is the part of an intensity beyond the
  teacher's outermost centers. Quantized with the teacher's levels, such a
  pixel sits on the flat outer part of the encoding and gets no gradient from
  the other terms (a plateau: at initialization most of an aligned student's
  pixels can be there); the range term pulls it back. It is 0 for equal
  features. ``w_range = 0`` switches it off.

Gradients reach the student through ``s`` (the encoding ``E`` is
differentiable in ``s``; centers are constants). Nothing of size
pixels × levels is ever built: ``quantize_count`` and ``reproject`` work on
the ≤2 active levels of each pixel.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sstkd.ops._checks import check_image, check_int, check_tensor, compute_dtype, debug_checks_enabled
from sstkd.ops.quantize import quantize_count, reproject

INTENSITIES = ("cosine", "norm")
KERNELS = ("triangular", "stlnet")
REDISTRIBUTE = ("iterate", "single")


def intensity_map(f: torch.Tensor, kind: str = "cosine", eps: float = 1e-8) -> torch.Tensor:
    """Per-pixel texture intensity ``(B, C, H, W) -> (B, H, W)`` (float32, float64 for float64).

    * ``"cosine"``: ``s_i = <g, F_i> / (‖g‖ ‖F_i‖)`` with ``g = GAP(F)`` (STLNet's QCO);
      in ``[-1, 1]``; a zero vector gives 0.
    * ``"norm"``: ``s_i = ‖F_i‖ / mean_j ‖F_j‖`` (feature magnitude relative to the image).

    Only ``F`` itself is saved for backward (no feature-sized temporaries).
    """
    check_image(f, "features")
    if kind not in INTENSITIES:
        raise ValueError(f"intensity: unknown kind {kind!r}; choose from {INTENSITIES}")
    f = f.to(compute_dtype(f))
    norm = torch.linalg.vector_norm(f, dim=1)  # (B, H, W)
    if kind == "norm":
        return norm / norm.mean(dim=(1, 2), keepdim=True).clamp_min(eps)
    g = f.mean(dim=(2, 3))  # (B, C)
    dot = torch.einsum("bchw,bc->bhw", f, g)
    return dot / (norm * torch.linalg.vector_norm(g, dim=1)[:, None, None]).clamp_min(eps)


def clip_histogram(hist: torch.Tensor, limit: float, redistribute: str = "iterate") -> torch.Tensor:
    """Clip ``hist`` (B, L) at ``limit`` and spread the excess uniformly, preserving each row's total.

    * ``"iterate"`` (default): CLAHE's clip-and-redistribute repeated to its
      fixed point, computed exactly in closed form: ``h' = min(h + a, limit)``
      with the per-row ``a ≥ 0`` that preserves the total. Every bin ends
      ≤ ``limit`` (needs ``limit · L ≥ total``; otherwise every bin becomes
      ``total / L``).
    * ``"single"``: one pass, ``h' = min(h, limit) + excess / L`` (classic
      CLAHE; bins may end up to ``excess / L`` above ``limit``).

    Differentiable (piecewise linear in ``hist``).
    """
    check_tensor(hist, "hist", ndim=2)
    if redistribute not in REDISTRIBUTE:
        raise ValueError(f"redistribute: unknown mode {redistribute!r}; choose from {REDISTRIBUTE}")
    if not limit > 0:
        raise ValueError(f"limit: must be positive, got {limit}")
    n = hist.shape[1]
    if redistribute == "single":
        clipped = hist.clamp_max(limit)
        excess = (hist - clipped).sum(dim=1, keepdim=True)
        return clipped + excess / n
    total = hist.sum(dim=1, keepdim=True)
    # A limit that cannot hold the total (limit·L < total) is raised to total/L: all bins equal.
    lim = torch.clamp_min(total / n, limit)
    # Water filling: with h sorted ascending, if the k smallest bins stay below the
    # limit, a_k = (total - (L-k)·limit - Σ_{j<k} h_j) / k; the right k is the one
    # for which h_(k-1) + a_k <= limit (largest such k, a_k >= 0 then holds).
    h_sorted, _ = hist.sort(dim=1)
    k = torch.arange(1, n + 1, device=hist.device, dtype=hist.dtype)
    a = (total - (n - k) * lim - h_sorted.cumsum(dim=1)) / k  # (B, L)
    fits = h_sorted + a <= lim * (1 + 1e-6)
    # Largest k whose a_k keeps its k-th smallest bin under the limit.
    idx = (fits * k).argmax(dim=1, keepdim=True)
    a_star = a.gather(1, idx).clamp_min(0)
    return torch.minimum(hist + a_star, lim)


def smooth_histogram(hist: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of ``hist`` (B, L) across bins, ``σ = sigma`` bins; mass-preserving.

    Bin ``k``'s mass is spread over the bins with weights
    ``exp(−(n−k)²/2σ²)`` normalized over ``n`` (so every row keeps its total;
    near the ends the spread is one-sided). ``sigma = 0`` returns ``hist``.
    This is a kernel density estimate with bandwidth ``σ`` bins: its gradient
    in the intensities varies slowly from bin to bin, unlike the raw
    histogram's (which with ``L`` levels over ``N`` pixels changes by
    ``~L²/N`` per bin).
    """
    check_tensor(hist, "hist", ndim=2)
    if not float(sigma) >= 0.0:
        raise ValueError(f"sigma: must be >= 0, got {sigma}")
    if sigma == 0:
        return hist
    n = torch.arange(hist.shape[1], device=hist.device, dtype=hist.dtype)
    kernel = torch.exp(-0.5 * ((n[:, None] - n[None, :]) / float(sigma)) ** 2)  # (n, k)
    kernel = kernel / kernel.sum(dim=0, keepdim=True)
    return hist @ kernel.T


def overflow(s: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``s − clamp(s, c_0, c_{L−1})`` per image: how far each intensity lies beyond the outermost centers.

    ``s`` (B, H, W) or (B, N), ``centers`` (B, L) ascending; same shape as ``s``.
    """
    view = (-1,) + (1,) * (s.dim() - 1)
    lo, hi = centers[:, 0].reshape(view), centers[:, -1].reshape(view)
    return s - torch.minimum(torch.maximum(s, lo), hi)


class DTIEM(nn.Module):
    """Statistical texture loss between aligned student and teacher features.

    Args:
        levels: quantization levels ``L`` (default 128).
        iters: Lloyd refinement steps ``K`` of the teacher's centers (default 3).
        kernel: ``"triangular"`` (default) or ``"stlnet"`` encoding.
        intensity: ``"cosine"`` (default) or ``"norm"`` (see :func:`intensity_map`).
        robust_range: take ``smin/smax`` from ``quantiles`` instead of the raw extremes.
        quantiles: ``(q_lo, q_hi)``, default ``(0.01, 0.99)``.
        clip: intensity-limited denoising (histogram clipping) on/off.
        tau: clip limit ``τ / L`` (default τ = 4; must be ≥ 1 so the total is kept).
        redistribute: ``"iterate"`` or ``"single"`` (see :func:`clip_histogram`).
        equalize: add the CDF and equalized-map terms (off: histogram term only).
        shared_centers: quantize the student with the teacher's refined
            centers (default); off: the student gets its own range and refinement.
        hist_bandwidth: bandwidth of the Gaussian smoothing of the histograms
            compared by the histogram term, as a fraction of the level range
            (``σ = hist_bandwidth·L`` bins; default 1/16; 0 = raw histograms).
            Only the loss term is smoothed: ``describe`` and the CDF / map
            terms use the clipped histogram itself.
        w_hist, w_cdf, w_map, w_range: weights of the terms (defaults 1, 10, 1, 1).
        backend: passed to ``quantize_count`` / ``reproject``.

    ``forward(f_s, f_t)`` returns ``dict(sta=, sta_hist=, [sta_cdf=, sta_map=,] [sta_range=])``
    (float32 scalars); ``describe(f)`` returns the per-image descriptor.
    Non-finite features (NaN/Inf in the student's or the teacher's) give NaN
    terms, found on the device without waiting for it (so a trainer's
    non-finite check reports them). With debug checks on
    (:func:`sstkd.debug.set_debug_checks`), non-finite teacher features raise
    ``ValueError`` instead.
    """

    def __init__(
        self,
        levels: int = 128,
        iters: int = 3,
        kernel: str = "triangular",
        intensity: str = "cosine",
        robust_range: bool = True,
        quantiles: Sequence[float] = (0.01, 0.99),
        clip: bool = True,
        tau: float = 4.0,
        redistribute: str = "iterate",
        equalize: bool = True,
        shared_centers: bool = True,
        hist_bandwidth: float = 1.0 / 16,
        w_hist: float = 1.0,
        w_cdf: float = 10.0,
        w_map: float = 1.0,
        w_range: float = 1.0,
        backend: str = "auto",
    ):
        super().__init__()
        self.levels = check_int(levels, "sta_levels", minimum=2)
        self.iters = check_int(iters, "sta_iters", minimum=0)
        if kernel not in KERNELS:
            raise ValueError(f"sta_kernel: unknown kernel {kernel!r}; choose from {KERNELS}")
        if intensity not in INTENSITIES:
            raise ValueError(f"sta_intensity: unknown kind {intensity!r}; choose from {INTENSITIES}")
        q = tuple(float(v) for v in quantiles)
        if len(q) != 2 or not 0.0 <= q[0] < q[1] <= 1.0:
            raise ValueError(f"sta_quantiles: expected (q_lo, q_hi) with 0 <= q_lo < q_hi <= 1, got {quantiles!r}")
        if not float(tau) >= 1.0:
            raise ValueError(f"sta_tau: must be >= 1 (the clip limit tau/L must hold the whole mass), got {tau}")
        if redistribute not in REDISTRIBUTE:
            raise ValueError(f"sta_redistribute: unknown mode {redistribute!r}; choose from {REDISTRIBUTE}")
        if not 0.0 <= float(hist_bandwidth) < float("inf"):
            raise ValueError(f"sta_hist_bandwidth: must be finite and >= 0, got {hist_bandwidth}")
        self.hist_bandwidth = float(hist_bandwidth)
        for name, w in (("sta_w_hist", w_hist), ("sta_w_cdf", w_cdf), ("sta_w_map", w_map),
                        ("sta_w_range", w_range)):
            if not float(w) >= 0.0:
                raise ValueError(f"{name}: must be >= 0, got {w}")
        self.kernel, self.intensity = kernel, intensity
        self.robust_range, self.quantiles = bool(robust_range), q
        self.clip, self.tau, self.redistribute = bool(clip), float(tau), redistribute
        self.equalize, self.shared_centers = bool(equalize), bool(shared_centers)
        self.w_hist, self.w_cdf, self.w_map, self.w_range = float(w_hist), float(w_cdf), float(w_map), float(w_range)
        self.backend = backend

    def describe(self, f: torch.Tensor, centers: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Statistical descriptor of features ``f`` (B, C, H, W).

        With ``centers`` (B, L) the intensities are quantized with those
        levels as given; otherwise the range (robust or plain) and ``iters``
        Lloyd steps determine them. Returns ``dict(s (B,H,W), centers (B,L),
        hist (B,L) raw, clipped (B,L), cdf (B,L) [, map (B,H,W)])``; ``cdf``
        and ``map`` only when ``equalize`` is on, and ``clipped is hist``
        when ``clip`` is off.
        """
        s = intensity_map(f, self.intensity)
        if centers is None:
            centers, hist = quantize_count(
                s, self.levels, iters=self.iters, kernel=self.kernel,
                quantiles=self.quantiles if self.robust_range else None, backend=self.backend,
            )
        else:
            centers, hist = quantize_count(s, self.levels, kernel=self.kernel, centers=centers, backend=self.backend)
        hist = hist.to(s.dtype)
        clipped = clip_histogram(hist, self.tau / self.levels, self.redistribute) if self.clip else hist
        out = {"s": s, "centers": centers, "hist": hist, "clipped": clipped}
        if self.equalize:
            cdf = clipped.cumsum(dim=1)
            out["cdf"] = cdf
            out["map"] = reproject(cdf[:, None, :], s, centers, kernel=self.kernel, backend=self.backend)[:, 0]
        return out

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> dict[str, torch.Tensor]:
        check_image(f_s, "s_low")
        check_image(f_t, "t_low")
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"s_low: aligned student features {tuple(f_s.shape)} must match t_low {tuple(f_t.shape)}"
            )
        if debug_checks_enabled():  # value checks copy to the host: a sync each
            if not bool(torch.isfinite(f_t).all()):
                raise ValueError("t_low: contains NaN or Inf")
            if not bool(torch.isfinite(f_s).all()):
                # A diverged student: report NaN terms (the trainer's non-finite handling
                # names the term) instead of failing inside the quantizer.
                nan = f_s.float().sum() * float("nan")
                return {"sta": nan, **{k: nan for k in self._term_names()}}
        with torch.no_grad():
            t = self.describe(f_t.detach())
        s = self.describe(f_s, centers=t["centers"] if self.shared_centers else None)
        mse = nn.functional.mse_loss
        sigma = self.hist_bandwidth * self.levels
        terms = {"sta_hist": mse(self.levels * smooth_histogram(s["clipped"], sigma),
                                 self.levels * smooth_histogram(t["clipped"], sigma))}
        loss = self.w_hist * terms["sta_hist"]
        if self.equalize:
            terms["sta_cdf"] = mse(s["cdf"], t["cdf"])
            terms["sta_map"] = mse(s["map"], t["map"])
            loss = loss + self.w_cdf * terms["sta_cdf"] + self.w_map * terms["sta_map"]
        if self.w_range > 0:
            c = t["centers"].to(s["s"].dtype)
            terms["sta_range"] = mse(overflow(s["s"], c), overflow(t["s"], c))
            loss = loss + self.w_range * terms["sta_range"]
        # Non-finite features make non-finite intensities (a NaN/Inf in any channel
        # reaches its pixel's cosine or norm); the quantizer's clamped taps could hide
        # them, so every term is set to NaN on the device instead of asking the host.
        finite = torch.isfinite(s["s"]).all() & torch.isfinite(t["s"]).all()
        nan = torch.full((), float("nan"), dtype=loss.dtype, device=loss.device)
        return {k: torch.where(finite, v, nan) for k, v in {"sta": loss, **terms}.items()}

    def _term_names(self) -> list[str]:
        return ["sta_hist"] + (["sta_cdf", "sta_map"] if self.equalize else []) + (
            ["sta_range"] if self.w_range > 0 else [])

    def extra_repr(self) -> str:
        return (
            f"levels={self.levels}, iters={self.iters}, kernel={self.kernel!r}, intensity={self.intensity!r}, "
            f"robust_range={self.robust_range}, quantiles={self.quantiles}, clip={self.clip}, tau={self.tau}, "
            f"redistribute={self.redistribute!r}, equalize={self.equalize}, shared_centers={self.shared_centers}, "
            f"hist_bandwidth={self.hist_bandwidth}, w=({self.w_hist}, {self.w_cdf}, {self.w_map}, {self.w_range}), "
            f"backend={self.backend!r}"
        )
