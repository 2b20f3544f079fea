"""The CUDA backend, the whole Python side of the C++/CUDA extension ``sstkd._C`` (sources: ``csrc/``).

Loading: the extension is never imported at package import. Two ways to get it:

* built at install time (``SSTKD_BUILD_CUDA=1 pip install -e .``): ``sstkd._C``;
* otherwise JIT-built on first use with ``torch.utils.cpp_extension.load``
  (ninja) from the ``csrc/`` sources of a source checkout or editable install
  (``csrc/`` must sit next to the ``sstkd/`` package directory). The build is
  cached in ``$SSTKD_CACHE_DIR`` (default ``~/.cache/sstkd``) under
  ``ext-<hash>``, keyed by the sources, torch, CUDA, Python and the target
  architectures, so later processes just load it.

``SSTKD_JIT=0`` disables the JIT build. Architectures: ``TORCH_CUDA_ARCH_LIST``
when set, else the visible GPUs, else (no GPU: a compile-only build) sm_80 and
sm_90.

``load_error()`` and ``jit_available()`` are cheap and never build; ``get()``
may build (minutes, once). ``csrc/sstkd_build.py`` (build flags shared with ``setup.py``) is
loaded by path by both (:func:`build_flags`).

Autograd wrappers of its custom ops (``torch.ops.sstkd.*``): same semantics as the reference
  ops on validated inputs; ``(B, C, H, W)`` tensors with ``B·C`` folded into one image axis,
  float16/bfloat16/float32 computed in float32 and returned in the input dtype, float64 in
  float64; the backward of a decomposition is its adjoint. Every op also has a Meta
  implementation, so these trace under ``torch.compile`` and ``FakeTensor``; CPU tensors raise
  a ``RuntimeError`` saying they must be CUDA tensors.

The backend table (:mod:`sstkd.ops.backends`): ``lp_dec``, ``lp_rec`` and the
  ``quantize_count`` passes ``level_sums`` / ``soft_hist``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import sys
import threading
import time

import torch

from sstkd._util import normalize_rows
from sstkd.ops import algorithms

_JIT_NAME = "sstkd_C"
_NO_GPU_ARCHS = ("8.0", "9.0")  # compile-only default when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset
_lock = threading.Lock()
_state: dict = {"module": None, "error": None, "build_dir": None}


@functools.lru_cache(maxsize=None)
def _import_built():
    try:  # torch is imported: it loads libc10/libtorch, which _C links against
        from sstkd import _C
    except ImportError as e:
        return None, f"sstkd._C is not built ({e})"
    return _C, None


def csrc_dir() -> str | None:
    """The ``csrc/`` source directory next to the package (``$SSTKD_CSRC`` overrides), or None."""
    env = os.environ.get("SSTKD_CSRC")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    d = env or os.path.join(root, "csrc")
    return d if os.path.isfile(os.path.join(d, "sstkd_build.py")) else None


@functools.lru_cache(maxsize=None)
def _build_module(d: str):
    """``<d>/sstkd_build.py`` (build flags shared with setup.py), imported by path."""
    spec = importlib.util.spec_from_file_location("_sstkd_build", os.path.join(d, "sstkd_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_flags():
    """The build-flags module ``csrc/sstkd_build.py`` (sources, include dirs, compiler flags), or None
    when the sources are not next to the package."""
    d = csrc_dir()
    return None if d is None else _build_module(d)


def _cpp_extension():
    # Its import logs a warning when no GPU is visible; that is expected here.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def cache_root() -> str:
    base = os.environ.get("SSTKD_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "sstkd")
    return base


def jit_available() -> tuple[bool, str]:
    """``(ok, reason)``: whether ``get()`` could JIT-build the extension here. Cheap; never builds."""
    if os.environ.get("SSTKD_JIT", "1") == "0":
        return False, "the JIT build is disabled (SSTKD_JIT=0)"
    d = csrc_dir()
    if d is None:
        return False, ("the CUDA sources (csrc/) are not next to the installed package; "
                       "the JIT build needs a source checkout or an editable install (pip install -e .)")
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build (torch.version.cuda is None)"
    ce = _cpp_extension()
    if not ce.is_ninja_available():
        return False, "ninja is not installed (pip install ninja); torch's JIT build needs it"
    home = _build_module(d).cuda_home(ce.CUDA_HOME)
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and env:
        return False, (f"CUDA_HOME/CUDA_PATH={env} is not a CUDA toolkit root "
                       "(it needs bin/nvcc and include/cuda_runtime.h)")
    if home is None:
        return False, ("no CUDA toolkit found: CUDA_HOME is not set and no nvcc was found on PATH or in "
                       "/usr/local/cuda; set CUDA_HOME to the toolkit root (the directory holding bin/nvcc)")
    return True, f"JIT build from {d} with {os.path.join(home, 'bin', 'nvcc')}"


def _arch_flags_and_key(torch) -> tuple[list[str], str]:
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return [], f"env:{env}"
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return [], "gpus:" + ";".join(f"{a}.{b}" for a, b in caps)
    flags = []
    for arch in _NO_GPU_ARCHS:
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags, "default:" + ";".join(_NO_GPU_ARCHS)


def _build_dir(sb, home: str, arch_key: str) -> str:
    h = hashlib.sha256()
    for part in (sb.source_hash(), torch.__version__, str(torch.version.cuda), os.path.realpath(home),
                 sys.version.split()[0], arch_key):
        h.update(part.encode())
        h.update(b"\0")
    return os.path.join(cache_root(), f"ext-{h.hexdigest()[:16]}")


def build_dir() -> str | None:
    """Where the JIT build of this configuration lives (None when it cannot be built). Never builds."""
    ok, _ = jit_available()
    if not ok:
        return None
    sb = _build_module(csrc_dir())
    home = sb.cuda_home(_cpp_extension().CUDA_HOME)
    return _build_dir(sb, home, _arch_flags_and_key(torch)[1])


def _jit_build():
    ce = _cpp_extension()
    sb = _build_module(csrc_dir())
    home = sb.cuda_home(ce.CUDA_HOME)
    # torch guesses the toolkit from the nvcc on PATH; a wrapper script there
    # (e.g. /usr/local/bin/nvcc) makes that guess a directory without headers
    # or libcudart, so hand it the resolved root.
    ce.CUDA_HOME = home
    arch_flags, arch_key = _arch_flags_and_key(torch)
    bdir = _build_dir(sb, home, arch_key)
    _state["build_dir"] = bdir
    os.makedirs(bdir, exist_ok=True)
    cold = not os.path.exists(os.path.join(bdir, _JIT_NAME + getattr(ce, "LIB_EXT", ".so")))
    if cold:
        print("sstkd: building the CUDA extension (first use, ~2 min)...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    mod = ce.load(
        name=_JIT_NAME,
        sources=sb.sources(),
        extra_cflags=sb.cxx_flags(),
        extra_cuda_cflags=sb.nvcc_flags() + arch_flags,
        extra_include_paths=sb.include_dirs(home),
        build_directory=bdir,
        verbose=False,
    )
    if cold:
        print(f"sstkd: built the CUDA extension in {time.perf_counter() - t0:.0f} s (cached in {bdir})",
              file=sys.stderr, flush=True)
    return mod


def load_error() -> str | None:
    """None when the extension is loaded, importable, or can be JIT-built on first use; else why not.

    Cheap: never builds.
    """
    if _state["module"] is not None:
        return None
    if _state["error"] is not None:
        return _state["error"]
    mod, err = _import_built()
    if mod is not None:
        return None
    ok, why = jit_available()
    if ok:
        return None
    return f"{err}, and it cannot be JIT-built: {why}; or reinstall with SSTKD_BUILD_CUDA=1"


def is_loaded() -> bool:
    """True once the extension is in this process (``get()`` succeeded)."""
    return _state["module"] is not None


def get():
    """The extension module (its ops are ``torch.ops.sstkd.*``); JIT-builds it on first use if needed.

    Raises:
        RuntimeError: it is not built and cannot be built here (the message
            says why: no CUDA toolkit, CPU-only torch, no ninja, no sources),
            or the build failed (the compiler output is in the message).
    """
    if _state["module"] is not None:
        return _state["module"]
    with _lock:
        if _state["module"] is not None:
            return _state["module"]
        mod, err = _import_built()
        if mod is None:
            if _state["error"] is not None:
                raise RuntimeError(_state["error"])
            ok, why = jit_available()
            if not ok:
                raise RuntimeError(f"{err}, and it cannot be JIT-built: {why}; or reinstall with SSTKD_BUILD_CUDA=1")
            try:
                mod = _jit_build()
            except Exception as e:
                _state["error"] = f"the JIT build of the sstkd CUDA extension failed (in {_state['build_dir']}): {e}"
                raise RuntimeError(_state["error"]) from e
        _state["module"] = mod
        return mod


def status_line() -> str:
    """One line for ``sstkd info``: loaded / built / JIT-buildable (cached or not) / why not. Never builds."""
    mod = _state["module"]
    if mod is not None:
        where = "sstkd._C" if mod.__name__ == "sstkd._C" else f"JIT build in {os.path.dirname(mod.__file__)}"
        v = mod.cuda_runtime_version
        return f"loaded ({where}, CUDA runtime {v // 1000}.{v % 1000 // 10})"
    if _state["error"] is not None:
        return _state["error"]
    built, err = _import_built()
    if built is not None:
        return "built and importable (sstkd._C)"
    ok, why = jit_available()
    if not ok:
        return f"{err}, and it cannot be JIT-built: {why}"
    bdir = build_dir()
    if bdir and os.path.exists(os.path.join(bdir, _JIT_NAME + getattr(_cpp_extension(), "LIB_EXT", ".so"))):
        return f"not built; a cached JIT build is ready in {bdir}"
    return f"not built; JIT-built on first use (~2 min): {why}"


def info() -> dict:
    """What ``sstkd info`` shows about the extension. Cheap; never builds."""
    mod, err = _import_built()
    ok, why = jit_available()
    loaded = _state["module"]
    return {
        "built": mod is not None,
        "built_error": err,
        "loaded": loaded is not None,
        "cuda_runtime_version": getattr(loaded or mod, "cuda_runtime_version", None),
        "jit_available": ok,
        "jit_reason": why,
        "jit_error": _state["error"],
    }


# ============================================================================ autograd wrappers
def _ops():
    """``torch.ops.sstkd``, loading (or JIT-building) the extension first.

    Skipped while torch.compile traces: the ops are loaded by then (the
    tracer needs their Meta impls), and the loader is plain Python state.
    """
    if not torch.compiler.is_compiling():
        get()
    return torch.ops.sstkd


def _check_filt(filt: str) -> None:
    if filt != "9-7":
        raise ValueError(f"filt: the CUDA backend implements the '9-7' pyramid filters only, got {filt!r}")


# --------------------------------------------------------------------------------- Laplacian pyramid
class _LpDec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x3):
        return tuple(torch.ops.sstkd.lp_dec(x3))

    @staticmethod
    def backward(ctx, g_low, g_band):
        return torch.ops.sstkd.lp_dec_backward(g_low, g_band)


class _LpRec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, low3, band3):
        return torch.ops.sstkd.lp_rec(low3, band3)

    @staticmethod
    def backward(ctx, g_x):
        g_low, g_band = torch.ops.sstkd.lp_rec_backward(g_x)
        return g_low, g_band


def lp_dec_cuda(x: torch.Tensor, filt: str = "9-7") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sstkd.ops.lp_dec` on the CUDA extension: ``x`` (B, C, H, W), even H, W -> (low, band)."""
    _check_filt(filt)
    _ops()
    b, c, h, w = x.shape
    low, band = _LpDec.apply(x.reshape(b * c, h, w))
    return low.reshape(b, c, h // 2, w // 2), band.reshape(b, c, h, w)


def lp_rec_cuda(low: torch.Tensor, band: torch.Tensor, filt: str = "9-7") -> torch.Tensor:
    """:func:`sstkd.ops.lp_rec` (dual-frame synthesis) on the CUDA extension."""
    _check_filt(filt)
    _ops()
    b, c, h, w = band.shape
    x = _LpRec.apply(low.reshape(b * c, h // 2, w // 2), band.reshape(b * c, h, w))
    return x.reshape(b, c, h, w)


# ------------------------------------------------------------------------------------- quantization
class _SoftCount(torch.autograd.Function):
    """``counts[b, n] = Σ_i E_in`` (B, L) in the accumulation dtype; gradient to ``s`` only."""

    @staticmethod
    def forward(ctx, s2, centers, kernel):
        counts, _ = torch.ops.sstkd.quantize_count(s2, centers, kernel)
        ctx.save_for_backward(s2, centers)
        ctx.kernel = kernel
        return counts

    @staticmethod
    def backward(ctx, grad):
        s2, centers = ctx.saved_tensors
        grad_s = torch.ops.sstkd.quantize_count_backward(s2, centers, ctx.kernel, grad, None)
        return grad_s, None, None


def soft_count_cuda(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Unnormalized soft counts ``Σ_i E_in`` (B, L) of ``s2`` (B, N) at fixed ``centers``; differentiable in ``s2``."""
    _ops()
    return _SoftCount.apply(s2, centers.detach(), kernel)


def level_sums_cuda(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_i E_in, Σ_i E_in·s_i)`` (B, L) in the accumulation dtype: one pass over the pixels."""
    return tuple(_ops().quantize_count(s2.detach(), centers, kernel))


def soft_hist_cuda(s2: torch.Tensor, centers: torch.Tensor, kernel: str) -> torch.Tensor:
    """Normalized soft counts (B, L) at fixed ``centers``; differentiable in ``s2`` (one kernel each way)."""
    _ops()
    return normalize_rows(_SoftCount.apply(s2, centers.detach(), kernel))


def quantize_count_cuda(s2: torch.Tensor, levels: int, iters: int, kernel: str, centers: torch.Tensor | None,
                        quantiles) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sstkd.ops.quantize_count` on validated ``(B, N)`` input with this backend's passes only
    (the range by ``torch.aminmax``); ``(centers, hist)`` in the compute dtype."""
    passes = {"level_sums": level_sums_cuda, "soft_hist": soft_hist_cuda}
    return algorithms.quantize_count(s2, levels, iters, kernel, centers, quantiles, passes)


# --------------------------------------------------------------------------------------- reductions
class _SumSquares(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.ops.sstkd.sum_squares(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (2.0 * grad.reshape(shape) * x).to(x.dtype)


def sum_squares_cuda(x: torch.Tensor) -> torch.Tensor:
    """Per-row sum of squares ``out[r] = Σ x[r, ...]²`` of ``x`` (R, ...), deterministic.

    Returns ``(R,)`` in the accumulation dtype (float32, or float64 for float64
    input); differentiable.
    """
    _ops()
    return _SumSquares.apply(x)


# ============================================================================ the backend table
DTYPES: dict[str, tuple[torch.dtype, ...]] = {}  # every float dtype


def unavailable_reason(device=None) -> str | None:
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        return f"the CUDA extension needs CUDA tensors (got {dev.type})"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return load_error()


def available_reason() -> str:
    return "sstkd._C CUDA extension"


def ready_for_auto() -> bool:
    """Loaded or built: "auto" never triggers a first-use JIT build."""
    return is_loaded() or _import_built()[0] is not None


TABLE = {
    "lp_dec": lp_dec_cuda,
    "lp_rec": lp_rec_cuda,
    "level_sums": level_sums_cuda,
    "soft_hist": soft_hist_cuda,
}
