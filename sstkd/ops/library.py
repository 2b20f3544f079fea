"""The Triton texture ops as PyTorch custom ops, so ``torch.compile`` traces around them.

``import sstkd.ops.library`` registers ``torch.ops.sstkd_triton.*``:
``lp_dec``, ``contourlet_energy``, ``quantize_count`` and ``reproject``, each
with a fake (shape-only) implementation and an autograd formula. Inside a
compiled graph each one stays a single opaque node that launches the Triton
kernels as they are (Dynamo does not trace into the kernels' Python
launchers). The wrappers below take the same arguments as the public ops
minus ``backend``; validation happens in the public ops, which these call
with ``backend="triton"``.

Backward is a second custom op that recomputes the forward with autograd on
and takes its vector-Jacobian product (the Triton ops' own backward kernels),
so only the inputs are saved between the passes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from sstkd.ops.contourlet import contourlet_band_shapes
from sstkd.ops import contourlet as _contourlet
from sstkd.ops import laplacian as _laplacian
from sstkd.ops import quantize as _quantize

__all__ = ["contourlet_energy", "lp_dec", "quantize_count", "reproject"]

NS = "sstkd_triton"


def _autograd_on():
    """A custom op's implementation runs below the autograd dispatch keys; the backward ops
    recompute with autograd, so they put those keys back for their own body."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        key = getattr(torch._C.DispatchKey, name, None)
        if key is not None:
            exclude = exclude.remove(key)
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


def _vjp(fn, inputs: list[Tensor], diff: list[int], grads: list[Tensor | None]) -> list[Tensor]:
    """Gradients of ``fn(*inputs)``'s outputs (cotangents ``grads``) w.r.t. ``inputs[i]`` for ``i in diff``."""
    with _autograd_on(), torch.enable_grad():
        xs = [t.detach().requires_grad_(i in diff) for i, t in enumerate(inputs)]
        outs = fn(*xs)
        outs = [outs] if isinstance(outs, Tensor) else list(outs)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wrt = [xs[i] for i in diff]
        if not pairs:
            return [torch.zeros_like(x) for x in wrt]
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, got)]


# ----------------------------------------------------------------------------- lp_dec


@torch.library.custom_op(f"{NS}::lp_dec", mutates_args=())
def _lp_dec(x: Tensor, filt: str) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        low, band = _laplacian.lp_dec(x, filt, backend="triton")
    return low, band


@_lp_dec.register_fake
def _(x, filt):
    b, c, h, w = x.shape
    return x.new_empty(b, c, h // 2, w // 2), x.new_empty(b, c, h, w)


@torch.library.custom_op(f"{NS}::lp_dec_backward", mutates_args=())
def _lp_dec_backward(x: Tensor, filt: str, g_low: Tensor, g_band: Tensor) -> Tensor:
    return _vjp(lambda a: _laplacian.lp_dec(a, filt, backend="triton"), [x], [0], [g_low, g_band])[0]


@_lp_dec_backward.register_fake
def _(x, filt, g_low, g_band):
    return torch.empty_like(x)


def _lp_dec_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.filt = inputs[1]


def _lp_dec_grad(ctx, g_low, g_band):
    (x,) = ctx.saved_tensors
    b, c, h, w = x.shape
    g_low = x.new_zeros(b, c, h // 2, w // 2) if g_low is None else g_low
    g_band = torch.zeros_like(x) if g_band is None else g_band
    return _lp_dec_backward(x, ctx.filt, g_low, g_band), None


_lp_dec.register_autograd(_lp_dec_grad, setup_context=_lp_dec_setup)


def lp_dec(x: Tensor, filt: str = "9-7") -> tuple[Tensor, Tensor]:
    """:func:`sstkd.ops.lp_dec` on the Triton kernels, as one custom op: ``(B, C, H, W) -> (low, band)``."""
    return _lp_dec(x, filt)


# ----------------------------------------------------------------------------- contourlet_energy


@torch.library.custom_op(f"{NS}::contourlet_energy", mutates_args=())
def _energy(x: Tensor, nlevs: list[int], pfilt: str, dfilt: str) -> Tensor:
    with torch.no_grad():
        return _contourlet.contourlet_energy(x, list(nlevs), pfilt, dfilt, backend="triton")


@_energy.register_fake
def _(x, nlevs, pfilt, dfilt):
    low, levels = contourlet_band_shapes(x.shape[-2], x.shape[-1], list(nlevs))
    k = 1 + sum(len(level) for level in levels)
    return x.new_empty(x.shape[0], x.shape[1], k)


@torch.library.custom_op(f"{NS}::contourlet_energy_backward", mutates_args=())
def _energy_backward(x: Tensor, nlevs: list[int], pfilt: str, dfilt: str, grad: Tensor) -> Tensor:
    return _vjp(lambda a: _contourlet.contourlet_energy(a, list(nlevs), pfilt, dfilt, backend="triton"),
                [x], [0], [grad])[0]


@_energy_backward.register_fake
def _(x, nlevs, pfilt, dfilt, grad):
    return torch.empty_like(x)


def _energy_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _energy_grad(ctx, grad):
    (x,) = ctx.saved_tensors
    return _energy_backward(x, *ctx.args, grad), None, None, None


_energy.register_autograd(_energy_grad, setup_context=_energy_setup)


def contourlet_energy(x: Tensor, nlevs, pfilt: str = "9-7", dfilt: str = "pkva") -> Tensor:
    """:func:`sstkd.ops.contourlet_energy` on the Triton kernels, as one custom op: ``(B, C, H, W) -> (B, C, K)``."""
    return _energy(x, [int(n) for n in nlevs], pfilt, dfilt)


# ----------------------------------------------------------------------------- quantize_count


@torch.library.custom_op(f"{NS}::quantize_count", mutates_args=())
def _quantize_count(s: Tensor, levels: int, iters: int, kernel: str, centers: Optional[Tensor],
                    quantiles: Optional[list[float]]) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        c, h = _quantize.quantize_count(s, levels, iters, kernel, centers=centers,
                                        quantiles=None if quantiles is None else tuple(quantiles), backend="triton")
    return c, h


@_quantize_count.register_fake
def _(s, levels, iters, kernel, centers, quantiles):
    return s.new_empty(s.shape[0], levels), s.new_empty(s.shape[0], levels)


@torch.library.custom_op(f"{NS}::quantize_count_backward", mutates_args=())
def _quantize_count_backward(s: Tensor, centers: Tensor, kernel: str, grad_hist: Tensor) -> Tensor:
    # the histogram depends on s through the encoding at the (constant) final centers
    fn = lambda a: _quantize.quantize_count(a, centers.shape[1], 0, kernel, centers=centers,  # noqa: E731
                                            backend="triton")[1]
    return _vjp(fn, [s], [0], [grad_hist])[0]


@_quantize_count_backward.register_fake
def _(s, centers, kernel, grad_hist):
    return torch.empty_like(s)


def _quantize_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[0])
    ctx.kernel = inputs[3]


def _quantize_grad(ctx, grad_centers, grad_hist):
    s, centers = ctx.saved_tensors
    if grad_hist is None:
        return None, None, None, None, None, None
    return _quantize_count_backward(s, centers, ctx.kernel, grad_hist), None, None, None, None, None


_quantize_count.register_autograd(_quantize_grad, setup_context=_quantize_setup)


def quantize_count(s: Tensor, levels: int, iters: int = 0, kernel: str = "triangular",
                   centers: Tensor | None = None, quantiles=None) -> tuple[Tensor, Tensor]:
    """:func:`sstkd.ops.quantize_count` on the Triton kernels, as one custom op: ``(centers, hist)``, each (B, L)."""
    return _quantize_count(s, int(levels), int(iters), kernel, None if centers is None else centers.detach(),
                           None if quantiles is None else [float(q) for q in quantiles])


# ----------------------------------------------------------------------------- reproject


@torch.library.custom_op(f"{NS}::reproject", mutates_args=())
def _reproject(table: Tensor, s: Tensor, centers: Tensor, kernel: str) -> Tensor:
    with torch.no_grad():
        return _quantize.reproject(table, s, centers, kernel, backend="triton")


@_reproject.register_fake
def _(table, s, centers, kernel):
    return table.new_empty(s.shape[0], table.shape[1], *s.shape[1:])


@torch.library.custom_op(f"{NS}::reproject_backward", mutates_args=())
def _reproject_backward(table: Tensor, s: Tensor, centers: Tensor, kernel: str,
                        grad: Tensor) -> tuple[Tensor, Tensor]:
    g_table, g_s = _vjp(lambda t, a: _quantize.reproject(t, a, centers, kernel, backend="triton"),
                        [table, s], [0, 1], [grad])
    return g_table, g_s


@_reproject_backward.register_fake
def _(table, s, centers, kernel, grad):
    return torch.empty_like(table), torch.empty_like(s)


def _reproject_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[2])
    ctx.kernel = inputs[3]


def _reproject_grad(ctx, grad):
    table, s, centers = ctx.saved_tensors
    g_table, g_s = _reproject_backward(table, s, centers, ctx.kernel, grad)
    return g_table, g_s, None, None


_reproject.register_autograd(_reproject_grad, setup_context=_reproject_setup)


def reproject(table: Tensor, s: Tensor, centers: Tensor, kernel: str = "triangular") -> Tensor:
    """:func:`sstkd.ops.reproject` on the Triton kernels, as one custom op: ``(B, D, *s.shape[1:])``."""
    return _reproject(table, s, centers.detach(), kernel)
