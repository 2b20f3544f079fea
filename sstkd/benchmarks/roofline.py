"""Memory roofline: measured device copy bandwidth and the bytes each op must move.

Every texture op does O(1) arithmetic per byte, so on a GPU it is bound by
memory traffic; its ceiling is the device's copy bandwidth, measured in the
same run by timing a large ``dst.copy_(src)`` (bytes moved = read + write).

The *compulsory* traffic of each op (every input it needs read once, every
output written once, nothing else) is part of its :class:`~sstkd.ops.specs.OpSpec`
(``fwd_bytes`` / ``bwd_bytes``; conventions in :mod:`sstkd.ops.specs`);
``fwd+bwd`` is the sum (autograd runs them as two passes).
"""
from __future__ import annotations

from typing import Sequence

import torch

from sstkd.benchmarks.timing import TimingStats, time_fn
from sstkd.ops import specs as _specs

MODES = _specs.MODES
OPS = _specs.op_names()


def op_bytes(op: str, mode: str, shape: Sequence[int], dtype: torch.dtype = torch.float32, **params) -> int:
    """Minimal bytes ``op`` moves in ``mode`` at ``shape`` (:func:`sstkd.ops.specs.shape_bytes`).

    Args:
        op: one of :data:`OPS`.
        mode: ``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``.
        shape: the spec's shape: ``(B, C, H, W)`` for the image ops (``lp_rec``:
            the full-size ``band``), ``(B, N)`` or ``(B, H, W)`` intensities for
            the quantization ops.
        dtype: element type of every tensor.
        params: the spec's ``size_params``: ``nlevs`` (contourlet ops),
            ``levels`` (``L``, quantization ops), ``channels`` (``D`` of the
            ``reproject`` table).

    Raises:
        ValueError: unknown ``op``/``mode``, a shape of the wrong rank or a
            missing parameter (the message names it).
    """
    return _specs.shape_bytes(op, mode, shape, dtype, **params)


def achieved_gbps(nbytes: int, ms: float) -> float:
    """Bytes per millisecond as GB/s (1 GB = 1e9 bytes)."""
    if ms <= 0:
        raise ValueError(f"ms: must be > 0, got {ms}")
    return nbytes / (ms * 1e-3) / 1e9


def copy_bandwidth(
    device: torch.device | str | None = None,
    nbytes: int | None = None,
    *,
    repeat: int = 20,
    warmup: int = 3,
) -> dict:
    """Measured copy bandwidth of ``device``: time ``dst.copy_(src)`` of ``nbytes``.

    ``nbytes`` defaults to 512 MiB on a GPU (far beyond any L2) and 128 MiB on
    the CPU. The copy reads and writes ``nbytes`` each, so
    ``GB/s = 2 * nbytes / median time``.

    Returns:
        ``{"gbps", "nbytes", "timing": TimingStats.to_dict()}``.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if nbytes is None:
        nbytes = (512 if dev.type == "cuda" else 128) * 2**20
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 4:
        raise ValueError(f"nbytes: expected an int >= 4, got {nbytes!r}")
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    stats: TimingStats = time_fn(lambda s: dst.copy_(s), [src], device=dev, warmup=warmup, repeat=repeat)
    moved = 2 * n * 4
    return {"gbps": achieved_gbps(moved, stats.median_ms), "nbytes": n * 4, "timing": stats.to_dict()}


def count_kernels(fn, *args, **kwargs) -> tuple[int, dict[str, int]]:
    """How many aten ops that launch a kernel ``fn(*args, **kwargs)`` dispatches (forward and any
    backward it runs), and the count per op name.

    Views, reshapes and metadata ops are left out: on a GPU each counted op is
    (at least) one kernel launch of the eager reference. Counting happens in a
    ``TorchDispatchMode`` on the calling thread (CPU tensors run their backward
    there too).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    free = {"view", "_unsafe_view", "reshape", "expand", "as_strided", "t", "transpose", "permute", "squeeze",
            "unsqueeze", "slice", "select", "narrow", "alias", "detach", "split", "split_with_sizes", "unbind",
            "chunk", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
            "_reshape_alias", "unfold", "diagonal", "view_as_real", "view_as_complex", "_to_copy_noop",
            "is_nonzero", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "set_",
            "resize_", "_has_compatible_shallow_copy_type", "result_type"}

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in free and name.rstrip("_") not in free:  # in-place variants of metadata ops too
                self.counts[name] = self.counts.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    with _Count() as mode:
        fn(*args, **kwargs)
    return sum(mode.counts.values()), dict(sorted(mode.counts.items(), key=lambda kv: -kv[1]))


def count_launches(fn, device: torch.device | str | None = None, *, allow_aten_count: bool = True) -> int | None:
    """Kernel launches of one ``fn()`` call.

    GPU: the CUDA kernels ``torch.profiler`` records (memcpy/memset excluded),
    so fused Triton / CUDA kernels and ``torch.compile`` graphs count as what
    they launch. CPU: :func:`count_kernels` (aten ops = the launches the same
    eager code makes on a GPU) when ``allow_aten_count``, else ``None``.
    ``None`` too when counting fails.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        if dev.type == "cuda":
            from torch.profiler import ProfilerActivity, profile

            from sstkd.benchmarks.timing import _quiet_stderr

            torch.cuda.synchronize(dev)
            with _quiet_stderr():
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    fn()
                    torch.cuda.synchronize(dev)
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                       and not e.name.startswith(("Memcpy", "Memset"))]
            return len(kernels)
        if allow_aten_count:
            return count_kernels(fn)[0]
    except Exception:  # counting is informative only
        return None
    return None
