"""Distributed helpers for runs launched by ``torchrun``.

``torchrun`` (single- or multi-node) sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed`
reads them, picks NCCL on GPUs and gloo on the CPU, and binds each process to
its local GPU. Without those variables everything runs in one process.

SyncBatchNorm on any device: :mod:`sstkd.models.sync` (re-exported here).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

# One SyncBN conversion and one gradient all-reduce, shared with distill: re-exported here.
from sstkd.models.sync import SyncBatchNormAnyDevice, all_reduce_gradients, convert_sync_batchnorm

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

