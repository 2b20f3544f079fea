"""Keeping replicas in sync: SyncBatchNorm on any device, the one ``convert_sync_batchnorm``
and the one gradient all-reduce (for modules outside a DDP wrapper).

PyTorch's ``nn.SyncBatchNorm`` only runs on accelerators; :class:`SyncBatchNormAnyDevice`
does the same job on any device (the CPU with gloo included) through
differentiable all-reduces, so CPU DDP runs keep BatchNorm statistics global.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["SyncBatchNormAnyDevice", "all_reduce_gradients", "convert_sync_batchnorm"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_gradients(params) -> None:
    """Average the gradients of parameters that are not inside a DDP wrapper (distillation heads,
    the critic) over all processes, in one all-reduce; a no-op in a single process."""
    if not _distributed() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients too (each process's statistics
    feed every process's loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class SyncBatchNormAnyDevice(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are reduced over all processes, on any
    device (gloo on the CPU included). Same parameters and buffers (and state
    dict keys) as ``nn.BatchNorm2d``; outside a process group or in eval mode
    it is plain BatchNorm.

    The statistics (sum, sum of squares, count) go through one all-reduce
    whose backward all-reduces the gradient, so the gradient matches one
    process holding the whole batch (given equal per-process batches).
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"input: expected at least 2-D input, got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and _distributed()):
            return super().forward(input)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.momentum is None and self.num_batches_tracked is not None:
            momentum = 1.0 / float(self.num_batches_tracked.item())
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device, dtype=x.dtype)
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        total = _DifferentiableAllReduce.apply(local)
        c = x.shape[1]
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach() * momentum)
        shape = [1, c] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str | None = None, force: bool = False) -> nn.Module:
    """Swap every BatchNorm for a synchronised one when ``torch.distributed`` is initialized (or ``force``):
    ``nn.SyncBatchNorm`` on CUDA (and when ``device`` is None), :class:`SyncBatchNormAnyDevice` on other
    devices. Weights and buffers are kept (same state dict keys). Returns the (possibly new) module;
    unchanged in a single process.
    """
    if not (force or _distributed()):
        return model
    if device is None or torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_any(model)


def _convert_any(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNormAnyDevice):
        out = SyncBatchNormAnyDevice(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_any(child))
    return out
