"""Debug switches and host-sync accounting.

* :func:`set_debug_checks` / ``SSTKD_DEBUG_CHECKS=1``: turn on the checks that
  need tensor *values* (finiteness, sortedness). They are off by default
  because each one copies a device value to the host (a sync that drains the
  GPU queue and prevents CUDA-graph capture). Checks of shapes, dtypes and
  devices are always on. With the value checks off, a NaN/Inf input is not
  refused: it propagates to NaN results (see docs/method.md, "Non-finite
  inputs").
* :class:`HostSyncCounter`: a ``TorchDispatchMode`` that records every aten op
  that makes the host wait for a device value (``.item()``, ``bool(t)``,
  ``.tolist()``, data-dependent shapes, host copies). On the CPU it is a
  faithful proxy for the syncs the same code makes on a GPU.
"""
from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from sstkd.ops._checks import debug_checks_enabled, set_debug_checks

__all__ = ["HostSyncCounter", "SYNC_OPS", "debug_checks", "debug_checks_enabled", "set_debug_checks"]


@contextlib.contextmanager
def debug_checks(enabled: bool = True):
    """``with debug_checks(): ...`` runs the block with value checks on (or off), then restores the setting."""
    from sstkd.ops import _checks

    before = _checks._debug_checks
    set_debug_checks(enabled)
    try:
        yield
    finally:
        _checks._debug_checks = before

# aten ops whose result on a device tensor needs the device's data on the host.
SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), bool(t), float(t), int(t), .tolist()
    "aten.item",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",  # data-dependent output shape
    "aten.nonzero_static",
    "aten.unique",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.masked_select",
    "aten.repeat_interleave",  # with a tensor of repeats
    "aten._assert_async",  # a device assert does not sync; kept apart below
})
# Ops that create a tensor from host data: on a CUDA device this is a
# host-to-device copy (torch.tensor(list, device=...)), which blocks the host.
HOST_DATA_OPS = frozenset({"aten.lift_fresh", "aten.lift_fresh_copy", "aten.lift"})


def _name(func) -> str:
    return f"{func.namespace}.{func._schema.name.split('::')[-1]}" if hasattr(func, "_schema") else str(func)


class _HostReads(TorchFunctionMode):
    """Tensor methods that read a tensor's data on the host without an aten op
    on the CPU (on a GPU they copy to the host)."""

    METHODS = ("tolist", "numpy", "__array__")

    def __init__(self, ops: Counter):
        super().__init__()
        self.ops = ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.METHODS:
            self.ops[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter(TorchDispatchMode):
    """Count host syncs and host-data tensor creations of the code run inside it.

    ``with HostSyncCounter() as c: ...`` then ``c.syncs`` (total), ``c.ops``
    (a Counter by op name) and ``c.host_copies`` (tensors built from host
    data, or copied between a device and the CPU). Counts ops of every device:
    on the CPU the same ops would sync a GPU.
    """

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self._reads = _HostReads(self.ops)

    def __enter__(self):
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in SYNC_OPS and name != "aten._assert_async":
            self.ops[name] += 1
        elif name in HOST_DATA_OPS:
            self.ops[name] += 1
        elif name == "aten.index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())):
            self.ops["aten.index(bool mask)"] += 1  # x[mask]: a data-dependent shape
        elif name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            dst_dev = kwargs.get("device") if name == "aten._to_copy" else args[0].device
            if dst_dev is not None and isinstance(src, torch.Tensor):
                if torch.device(dst_dev).type != src.device.type:
                    self.ops[f"{name}(host<->device)"] += 1
        return func(*args, **kwargs)

    @property
    def syncs(self) -> int:
        return sum(v for k, v in self.ops.items()
                   if k.split("(")[0] in SYNC_OPS or k.startswith(("Tensor.", "aten.index(")))

    @property
    def host_copies(self) -> int:
        return sum(v for k, v in self.ops.items() if k in HOST_DATA_OPS or "host<->device" in k)

    def report(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.items())) or "none"
