"""Distributed helpers for runs launched by ``torchrun``.

``torchrun`` (single- or multi-node) sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed`
reads them, picks NCCL on GPUs and gloo on the CPU, and binds each process to
its local GPU. Without those variables everything runs in one process.

PyTorch's ``nn.SyncBatchNorm`` only runs on accelerators; :class:`SyncBatchNormAnyDevice`
does the same job on any device (the CPU with gloo included) through
differentiable all-reduces, so CPU DDP runs keep BatchNorm statistics global.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_gradients",
    "any_across_ranks",
    "all_gather_objects",
    "broadcast_object",
    "convert_sync_batchnorm",
    "SyncBatchNormAnyDevice",
    "resolve_device",
]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {raw!r}") from None


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU when CUDA is available, else the CPU.

    Raises:
        ValueError: ``device`` names CUDA but none is available, or is not a device.
    """
    if not isinstance(device, str):
        raise TypeError(f"device: expected a str, got {type(device).__name__}")
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group from torchrun's environment (no-op for one process).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` (each process takes ``cuda:LOCAL_RANK``).
        backend: override the backend (default: ``nccl`` for CUDA, ``gloo`` otherwise).
        timeout_s: collective timeout.

    Returns:
        A :class:`DistInfo` with rank, local rank, world size and this process's device.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"environment: RANK={rank} and WORLD_SIZE={world_size} are inconsistent")
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        import datetime

        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of parameters that are not inside a DDP wrapper
    (distillation heads, the discriminator) over all processes."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    world = dist.get_world_size()
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def any_across_ranks(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on any process (all processes agree)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------- SyncBN


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
        if not (self.training and is_distributed()):
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


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with a synchronised one: ``nn.SyncBatchNorm`` on
    CUDA, :class:`SyncBatchNormAnyDevice` elsewhere. Weights and buffers are
    kept (same state dict keys)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_any(module)


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
