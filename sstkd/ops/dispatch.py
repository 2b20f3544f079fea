"""Backend selection for the texture ops.

Backends:
  ``"torch"``  plain PyTorch reference (any device, every dtype); the oracle.
  ``"triton"`` fused Triton kernels (``sstkd.kernels``): CUDA tensors, or any
               tensor when ``TRITON_INTERPRET=1`` (Triton's CPU interpreter).
  ``"cuda"``   the C++/CUDA extension ``sstkd._C``: CUDA tensors.
  ``"auto"``   on CUDA tensors the fastest available backend that implements the op
               and passed its first-use self-check on the device
               (:mod:`sstkd.ops.selfcheck`); ``"torch"`` otherwise.

A backend that is requested explicitly but unavailable raises
``RuntimeError`` saying why; only ``"auto"`` falls back.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)

# Which ops each fast backend implements; filled in as kernels land.
TRITON_OPS: frozenset[str] = frozenset(
    {"lp_dec", "lp_rec", "dfb_dec", "dfb_rec", "contourlet_dec", "contourlet_rec", "contourlet_energy",
     "quantize_count", "reproject", "cooccurrence"}
)
CUDA_OPS: frozenset[str] = frozenset({"lp_dec", "lp_rec", "quantize_count"})
# Per-op preference of "auto" on CUDA tensors, fastest first (from bench/results/).
AUTO_ORDER: dict[str, tuple[str, ...]] = {}
DEFAULT_AUTO_ORDER = ("triton", "cuda", "torch")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as e:  # pragma: no cover - broken installs
        return f"importing triton failed: {e}"
    return None


def _cuda_ext_error() -> str | None:
    from sstkd import _ext

    return _ext.load_error()


def _cuda_ready() -> bool:
    from sstkd import _ext

    return _ext.is_loaded() or _ext._import_built()[0] is not None


def backend_status(backend: str, device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(available, reason)`` of ``backend`` for tensors on ``device`` (None: this machine)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; choose from {CHOICES}")
    if backend == "torch":
        return True, "PyTorch reference ops"
    dev = torch.device(device) if device is not None else None
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return False, err
        if triton_interpreted():
            return True, "Triton interpreter (TRITON_INTERPRET=1), CPU or GPU tensors"
        if dev is not None and dev.type != "cuda":
            return False, f"Triton kernels need CUDA tensors (got {dev.type}); set TRITON_INTERPRET=1 to interpret on the CPU"
        if not torch.cuda.is_available():
            return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        return True, "compiled Triton kernels"
    # cuda
    if dev is not None and dev.type != "cuda":
        return False, f"the CUDA extension needs CUDA tensors (got {dev.type})"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    err = _cuda_ext_error()
    if err:
        return False, err
    return True, "sstkd._C CUDA extension"


def _implements(backend: str, op: str) -> bool:
    return backend == "torch" or op in (TRITON_OPS if backend == "triton" else CUDA_OPS)


def auto_order(op: str) -> tuple[tuple[str, ...], str]:
    """``auto``'s preference for ``op`` (fastest first) and where it comes from."""
    if op in AUTO_ORDER:
        return AUTO_ORDER[op], "AUTO_ORDER"
    from sstkd.ops import selfcheck

    return selfcheck.auto_order(op, DEFAULT_AUTO_ORDER)


def auto_backend(op: str, device: torch.device) -> str:
    """The first backend of :func:`auto_order` that implements ``op``, runs on ``device`` and
    has passed its first-use self-check there (:mod:`sstkd.ops.selfcheck`); else ``"torch"``."""
    from sstkd.ops import selfcheck

    for cand in auto_order(op)[0]:
        if cand == "torch":
            return "torch"
        if cand == "cuda" and not _cuda_ready():
            continue  # "auto" never triggers a first-use JIT build of the extension
        if _implements(cand, op) and backend_status(cand, device)[0] and selfcheck.trusted(op, cand, device):
            return cand
    return "torch"


def check_backend_name(backend) -> str:
    """``backend`` if it is one of :data:`CHOICES`; ValueError naming ``backend`` otherwise.

    Availability is checked per call by :func:`resolve_backend`.
    """
    if not isinstance(backend, str) or backend not in CHOICES:
        raise ValueError(f"backend: unknown backend {backend!r}; choose from {CHOICES}")
    return backend


def resolve_backend(op: str, backend: str, *tensors: torch.Tensor) -> str:
    """The concrete backend that runs ``op`` on ``tensors``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when an
    explicitly requested backend cannot run (not built, no GPU, op missing).
    """
    check_backend_name(backend)
    device = tensors[0].device if tensors else None
    if backend == "auto":
        if device is None or device.type != "cuda":
            return "torch"
        return auto_backend(op, device)
    ok, why = backend_status(backend, device)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is unavailable for {op}: {why}")
    if not _implements(backend, op):
        raise RuntimeError(f"backend={backend!r} does not implement {op}")
    return backend
