"""Input validation shared by every public op: clear errors that name the argument."""
from __future__ import annotations

import contextlib
import os

import torch

from sstkd._util import FLOAT_DTYPES, check_int, compute_dtype  # noqa: F401  (re-exported)


# Value checks (finiteness, sortedness) copy a device value to the host: a sync
# per check. Off by default; on with SSTKD_DEBUG_CHECKS=1 or set_debug_checks(True).
_debug_checks: bool | None = None


def set_debug_checks(enabled: bool | None) -> None:
    """Turn the value checks (NaN/Inf, sorted centers) on or off for this process.

    ``None`` returns to the environment variable ``SSTKD_DEBUG_CHECKS`` (``"1"``
    = on; default off). With the checks off, the ops never wait for the device,
    and a NaN/Inf input propagates to NaN results instead of raising.
    """
    global _debug_checks
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool or None, got {type(enabled).__name__}")
    _debug_checks = enabled


# Meta tensors (sizes, no values) are refused from users: most results would be
# meaningless. The static cost report records launches on them, inside this switch.
_meta_inputs_allowed = False


@contextlib.contextmanager
def meta_inputs_allowed():
    """Let the ops take meta tensors within this block (for recording launches; value checks stay off)."""
    global _meta_inputs_allowed
    saved, _meta_inputs_allowed = _meta_inputs_allowed, True
    try:
        yield
    finally:
        _meta_inputs_allowed = saved


def debug_checks_enabled() -> bool:
    """Whether value checks run (see :func:`set_debug_checks`)."""
    if _debug_checks is not None:
        return _debug_checks
    v = os.environ.get("SSTKD_DEBUG_CHECKS", "0").strip().lower()
    if v in ("", "0", "false", "off", "no"):
        return False
    if v in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"SSTKD_DEBUG_CHECKS: expected 0 or 1, got {v!r}")


def check_tensor(x, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = False) -> torch.Tensor:
    """Check that ``x`` is a non-empty floating tensor (of rank ``ndim``).

    Raises ``TypeError`` for non-tensors, integer/bool/complex dtypes and
    ``ValueError`` for a wrong rank, an empty tensor or (``finite=True`` and
    debug checks on, :func:`set_debug_checks`) NaN/Inf values. Every message
    starts with the argument name.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    if ndim is not None:
        ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in ndims:
            want = " or ".join(str(n) for n in ndims)
            raise ValueError(f"{name}: expected a {want}-D tensor, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty tensor of shape {tuple(x.shape)}")
    if x.device.type == "meta" and not _meta_inputs_allowed:  # (before any check that reads values)
        raise ValueError(f"{name}: a meta tensor has no values; pass a tensor on the CPU or a GPU")
    if finite and debug_checks_enabled() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def check_image(x, name: str = "x") -> torch.Tensor:
    """A ``(B, C, H, W)`` floating, non-empty tensor."""
    return check_tensor(x, name, ndim=4)


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors on one device (names in the message)."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    dev0 = items[0][1].device
    for k, v in items[1:]:
        if v.device != dev0:
            raise ValueError(f"{k}: on device {v.device}, but {items[0][0]} is on {dev0}")
