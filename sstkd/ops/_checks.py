"""Input validation shared by every public op: clear errors that name the argument."""
from __future__ import annotations

import torch

from sstkd._util import FLOAT_DTYPES, check_int, compute_dtype  # noqa: F401  (re-exported)


def check_tensor(x, name: str, ndim: int | tuple[int, ...] | None = None, finite: bool = False) -> torch.Tensor:
    """Check that ``x`` is a non-empty floating tensor (of rank ``ndim``).

    Raises ``TypeError`` for non-tensors, integer/bool/complex dtypes and
    ``ValueError`` for a wrong rank, an empty tensor or (``finite=True``)
    NaN/Inf values. Every message starts with the argument name.
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
    if finite and not bool(torch.isfinite(x).all()):
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
