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

The backend table (:mod:`sstkd.ops.backends`): ``lp_dec``, ``lp_rec``, the DFB passes
  ``dfb_dec`` / ``dfb_rec`` / ``dfb_energy`` (whole-plane shared-memory kernel, ``csrc/dfb_plane.cuh``) and the
  ``quantize_count`` passes ``level_sums`` / ``soft_hist``. ``contourlet_energy`` runs a whole pyramid
  level per launch each way (:func:`level_energy_cuda`: the LP level in shared memory, then the DFB
  energies of its bandpass; the lowpass energy at the coarsest level), or, for levels too large
  for one block's shared memory, ``lp_dec`` and ``dfb_energy`` with the lowpass folded in.
  ``contourlet_dec`` likewise (:func:`level_dec_cuda`: the LP level and the DFB of its bandpass; the
  backward reads the sub-band cotangents where they lie, nothing saved), or ``lp_dec`` and ``dfb_dec``.

The whole-plane DFB holds two ``H × W`` planes of the accumulation dtype in one block's shared
  memory (128 KB for a 128 × 128 float32 plane; 227 KB per block on an H100/H200 with the opt-in
  attribute). Planes that do not fit (large images, or float64 at 128 × 128) are not run by it:
  :func:`dfb_dec_cuda` / :func:`dfb_rec_cuda` / :func:`dfb_energy_cuda` hand them to the Triton DFB through its backend
  table (the torch reference where Triton is unavailable), never to a wrong result.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import threading
import time

import torch

from sstkd._util import cache_dir, normalize_rows
from sstkd.geometry import check_dfb_bands, dfb_band_shapes
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
    return os.path.join(cache_dir(), f"ext-{h.hexdigest()[:16]}")


def build_dir() -> str | None:
    """Where the JIT build of this configuration lives (None when it cannot be built). Never builds."""
    ok, _ = jit_available()
    if not ok:
        return None
    sb = _build_module(csrc_dir())
    home = sb.cuda_home(_cpp_extension().CUDA_HOME)
    return _build_dir(sb, home, _arch_flags_and_key(torch)[1])


def _stage_sources(sb, bdir: str) -> str:
    """Copies of the build inputs in ``<bdir>/src``, which the build compiles: the build commands then
    name no checkout path, so every checkout (fresh clone, worktree) with these sources reuses one
    cached build instead of rebuilding it (ninja rebuilds when a command line changes)."""
    src = os.path.join(bdir, "src")
    os.makedirs(src, exist_ok=True)
    csrc = os.path.dirname(sb.__file__)
    for f in sb.build_inputs():
        dst = os.path.join(src, os.path.relpath(f, csrc))
        if not os.path.exists(dst):  # the directory is keyed by the sources' hash: present means equal
            tmp = f"{dst}.{os.getpid()}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst)  # atomic: a concurrent build never sees half a file
    return src


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
    src = _stage_sources(sb, bdir)
    # torch writes its include and library paths into the build commands as it was imported: through
    # a checkout's `.venv` symlink, a different path per checkout, and ninja rebuilds on a changed
    # command. Resolved, every checkout of the same sources and environment shares the cached build.
    for name in ("_TORCH_PATH", "TORCH_LIB_PATH"):
        if isinstance(getattr(ce, name, None), str):
            setattr(ce, name, os.path.realpath(getattr(ce, name)))
    mod = ce.load(
        name=_JIT_NAME,
        sources=[os.path.join(src, os.path.basename(f)) for f in sb.sources()],
        extra_cflags=sb.cxx_flags(),
        extra_cuda_cflags=sb.nvcc_flags() + arch_flags,
        extra_include_paths=[src] + sb.include_dirs(home)[1:],
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
    """``x`` (N, H, W) -> (low, band) in ``out_dtype`` (None: x's); the gradient in x's dtype."""

    @staticmethod
    def forward(ctx, x3, out_dtype):
        ctx.x_dtype = x3.dtype
        return tuple(torch.ops.sstkd.lp_dec(x3, out_dtype))

    @staticmethod
    def backward(ctx, g_low, g_band):
        od = None if g_band.dtype == ctx.x_dtype else ctx.x_dtype
        return torch.ops.sstkd.lp_dec_backward(g_low, g_band, od), None


class _LpRec(torch.autograd.Function):
    @staticmethod
    def forward(ctx, low3, band3):
        return torch.ops.sstkd.lp_rec(low3, band3)

    @staticmethod
    def backward(ctx, g_x):
        g_low, g_band = torch.ops.sstkd.lp_rec_backward(g_x)
        return g_low, g_band


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def lp_dec_cuda(x: torch.Tensor, filt: str = "9-7", out_dtype: torch.dtype | None = None):
    """:func:`sstkd.ops.lp_dec` on the CUDA extension: ``x`` (B, C, H, W), even H, W -> (low, band) in
    ``out_dtype`` (default ``x.dtype``). A float16/bfloat16 ``x`` with float32 ``out_dtype`` is read as
    it is (no conversion copy) and its gradient written in its dtype by the adjoint launch; other
    dtype pairs convert ``x`` first."""
    _check_filt(filt)
    _ops()
    od = x.dtype if out_dtype is None else out_dtype
    if od != x.dtype and not (x.dtype in _LOW_PRECISION and od == torch.float32):
        x = x.to(od)
    b, c, h, w = x.shape
    low, band = _LpDec.apply(x.reshape(b * c, h, w), None if od == x.dtype else od)
    return low.reshape(b, c, h // 2, w // 2), band.reshape(b, c, h, w)


lp_dec_cuda.takes_out_dtype = True  # the finest contourlet level reads a float16/bfloat16 input as it is


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


# ------------------------------------------------------------------------ directional filter bank
def _check_dfilt(filt: str) -> None:
    if filt != "pkva":
        raise ValueError(f"filt: the CUDA DFB implements the 'pkva' ladder filter only, got {filt!r}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pairs(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether the DFB kernel takes image dtype ``a`` with sub-band dtype ``b`` in one launch: both
    float64, or both among float32 / float16 / bfloat16 (one float32 accumulation)."""
    return (a == torch.float64) == (b == torch.float64)


def _smem_optin(device: torch.device) -> int:
    """Shared memory one block may use on ``device`` (the opt-in maximum), in bytes."""
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def dfb_plane_fits(dtype: torch.dtype, h: int, w: int, device) -> bool:
    """Whether the whole-plane DFB kernel takes ``h × w`` planes of ``dtype`` on ``device``: two planes
    of the accumulation dtype (float32; float64 for float64) in one block's shared memory."""
    return 2 * h * w * _acc_dtype(dtype).itemsize <= _smem_optin(torch.device(device))


def _plane_kernel_takes(device: torch.device, dtype: torch.dtype, h: int, w: int) -> bool:
    """Whether the whole-plane kernel runs ``h × w`` planes of ``dtype`` on ``device`` (a non-CUDA
    tensor goes to the op, which raises its clear "must be a CUDA tensor" error)."""
    return device.type != "cuda" or dfb_plane_fits(dtype, h, w, device)


def _fallback(name: str):
    """The Triton backend's pass ``name`` (the torch reference where Triton is unavailable)."""
    from sstkd.ops.backends import torch as _torch_backend
    from sstkd.ops.backends import triton as _triton_backend

    return (_triton_backend if _triton_backend.unavailable_reason(None) is None else _torch_backend).TABLE[name]


def _band_major(grads) -> torch.Tensor:
    """``(K, N, area)`` of the (N, area) cotangents: a view when they already are consecutive
    slices of one buffer (the forward's outputs, or made from them), else one stacking copy."""
    first = grads[0]
    size = first.numel()
    if all(g.dtype == first.dtype and g.is_contiguous() and g.shape == first.shape
           and g.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
           and g.storage_offset() == first.storage_offset() + k * size for k, g in enumerate(grads)):
        return first.as_strided((len(grads), *first.shape), (size, first.shape[1], 1))
    return torch.stack([g.to(first.dtype) for g in grads])


class _DfbDec(torch.autograd.Function):
    """``x`` (N, H, W) -> K sub-bands (N, h·w) in the final layout; backward: the adjoint (one kernel)."""

    @staticmethod
    def forward(ctx, x3, levels, out_dtype):
        ctx.levels, ctx.hw, ctx.x_dtype = levels, tuple(x3.shape[-2:]), x3.dtype
        return tuple(torch.ops.sstkd.dfb_dec(x3, levels, out_dtype).unbind(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        h, w = ctx.hw
        g = _band_major(grads)
        if _pairs(ctx.x_dtype, g.dtype):
            return torch.ops.sstkd.dfb_dec_backward(g, ctx.levels, h, w, ctx.x_dtype), None, None
        g = g.to(torch.float64)  # one side is float64: compute in float64, round once
        return torch.ops.sstkd.dfb_dec_backward(g, ctx.levels, h, w, torch.float64).to(ctx.x_dtype), None, None


class _DfbRec(torch.autograd.Function):
    """K sub-bands (each (B, C, h, w)) -> the image (N, H, W); backward: the adjoint (one kernel)."""

    @staticmethod
    def forward(ctx, levels, hw, out_dtype, *bands):
        ctx.levels, ctx.band_shapes, ctx.band_dtype = levels, [t.shape for t in bands], bands[0].dtype
        flat = _band_major([t.reshape(t.shape[0] * t.shape[1], -1) for t in bands])
        return torch.ops.sstkd.dfb_rec(flat, levels, hw[0], hw[1], out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx):
        bd = ctx.band_dtype
        if _pairs(gx.dtype, bd):
            g = torch.ops.sstkd.dfb_rec_backward(gx, ctx.levels, bd)
        else:  # one side is float64
            g = torch.ops.sstkd.dfb_rec_backward(gx.to(torch.float64), ctx.levels, torch.float64).to(bd)
        return (None, None, None, *(t.view(shape) for t, shape in zip(g.unbind(0), ctx.band_shapes)))


class _DfbEnergy(torch.autograd.Function):
    """(N, H, W) -> (N, K) sums of squares; saves x, the backward recomputes the tree from it."""

    @staticmethod
    def forward(ctx, x3, levels):
        ctx.save_for_backward(x3)
        ctx.levels = levels
        return torch.ops.sstkd.dfb_energy(x3, levels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x3,) = ctx.saved_tensors
        return torch.ops.sstkd.dfb_energy_backward(x3, g, ctx.levels), None


class _DfbEnergyLow(torch.autograd.Function):
    """(N, H, W) and a lowpass (N, h, w) -> (N, 1 + K), the lowpass energy first; one launch each way
    (the backward also writes the lowpass gradient ``2·g[:, 0]·low``)."""

    @staticmethod
    def forward(ctx, x3, low3, levels):
        ctx.save_for_backward(x3, low3)
        ctx.levels = levels
        return torch.ops.sstkd.dfb_energy_low(x3, low3, levels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x3, low3 = ctx.saved_tensors
        gx, g_low = torch.ops.sstkd.dfb_energy_low_backward(x3, low3, g, ctx.levels)
        return gx, g_low, None


def _check_dfb_input(x, levels) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 0:
        raise ValueError(f"levels: expected an int >= 0, got {levels!r}")


def dfb_dec_cuda(x: torch.Tensor, levels: int, filt: str = "pkva", out_dtype: torch.dtype | None = None):
    """:func:`sstkd.ops.dfb_dec` on the whole-plane CUDA kernel: ``x`` (B, C, H, W) -> the ``2**levels``
    sub-bands (B, C, h, w) in toolbox order, computed in float32 (float64 for float64) and stored in
    ``out_dtype`` (default ``x.dtype``) as views of one band-major buffer. One launch each way.
    Planes too large for shared memory (:func:`dfb_plane_fits`) go to the Triton DFB."""
    _check_dfilt(filt)
    _check_dfb_input(x, levels)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if levels == 0:
        return [x.to(out_dtype)]
    b, c, h, w = x.shape
    if not _plane_kernel_takes(x.device, x.dtype, h, w):
        return _fallback("dfb_dec")(x, levels, filt, out_dtype)
    _ops()
    kernel_dtype = out_dtype if _pairs(x.dtype, out_dtype) else x.dtype  # else: round once after
    bands = _DfbDec.apply(x.reshape(b * c, h, w), levels, kernel_dtype)
    out = [t.view(b, c, *hw) for t, hw in zip(bands, dfb_band_shapes(h, w, levels))]
    return out if kernel_dtype == out_dtype else [t.to(out_dtype) for t in out]


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def dfb_rec_cuda(bands, filt: str = "pkva", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`sstkd.ops.dfb_rec` on the whole-plane CUDA kernel: the ``2**levels`` sub-bands of
    :func:`dfb_dec_cuda` (B, C, h, w) -> the image (B, C, H, W) in ``out_dtype`` (default: the
    sub-bands' dtype), computed in float32 (float64 for float64). One launch each way (plus one
    stacking copy unless the sub-bands are consecutive planes of one buffer). Planes too large
    for shared memory go to the Triton DFB."""
    _check_dfilt(filt)
    bands, levels, size = check_dfb_bands(bands)  # the kernel trusts these shapes
    out_dtype = bands[0].dtype if out_dtype is None else out_dtype
    if levels == 0:
        return bands[0].to(out_dtype)
    b, c = bands[0].shape[:2]
    H, W = size
    kernel_dtype = out_dtype if _pairs(out_dtype, bands[0].dtype) else _acc_dtype(bands[0].dtype)
    if not _plane_kernel_takes(bands[0].device, kernel_dtype, H, W):
        return _fallback("dfb_rec")(bands, filt, out_dtype)
    _ops()
    x = _DfbRec.apply(levels, (H, W), kernel_dtype, *bands).view(b, c, H, W)
    return x if kernel_dtype == out_dtype else x.to(out_dtype)


def _sum_squares_torch(t: torch.Tensor) -> torch.Tensor:
    tc = t.to(_acc_dtype(t.dtype))
    return (tc * tc).sum(dim=(-2, -1)).unsqueeze(-1)


def dfb_energy_cuda(x: torch.Tensor, levels: int, filt: str = "pkva", low: torch.Tensor | None = None) -> torch.Tensor:
    """Sums of squares of the ``2**levels`` DFB sub-bands of ``x`` (B, C, H, W): (B, C, 2**levels) in
    float32 (float64 for float64), one launch, no sub-band stored. Differentiable: the forward saves
    ``x`` and the backward (one launch) recomputes the tree in shared memory, scales each sub-band
    by ``2·g`` and runs the adjoint tree. Planes too large for shared memory go to the Triton DFB.

    ``low`` (B, C, h, w) of ``x``'s dtype, ``h·w <= H·W`` (a contourlet's coarsest lowpass): its sum of
    squares comes first, (B, C, 1 + 2**levels), computed in the same launch each way."""
    _check_dfilt(filt)
    _check_dfb_input(x, levels)
    if low is not None and (not isinstance(low, torch.Tensor) or low.dim() != 4 or low.shape[:2] != x.shape[:2]
                            or low.dtype != x.dtype or low.device != x.device
                            or low.shape[2] * low.shape[3] > x.shape[2] * x.shape[3]):
        raise ValueError(f"low: expected a {x.dtype} (B, C, h, w) = ({x.shape[0]}, {x.shape[1]}, h, w) tensor on "
                         f"{x.device} with h*w <= H*W, got {getattr(low, 'dtype', type(low).__name__)} "
                         f"{tuple(getattr(low, 'shape', ()))}")
    b, c, h, w = x.shape
    if levels == 0 or not _plane_kernel_takes(x.device, x.dtype, h, w):
        e = _sum_squares_torch(x) if levels == 0 else _fallback("dfb_energy")(x, levels, filt)
        return e if low is None else torch.cat([_sum_squares_torch(low), e], dim=-1)
    _ops()
    if low is None:
        return _DfbEnergy.apply(x.reshape(b * c, h, w), levels).view(b, c, 2**levels)
    low3 = low.reshape(b * c, *low.shape[2:])
    return _DfbEnergyLow.apply(x.reshape(b * c, h, w), low3, levels).view(b, c, 1 + 2**levels)


def dfb_level_fits(dtype: torch.dtype, h: int, w: int, device) -> bool:
    """Whether the pyramid-level kernel takes ``h × w`` levels of ``dtype`` on ``device``: the plane, the
    DFB's second buffer and the coarse plane (2.25 planes of the accumulation dtype) in one block's
    shared memory (144 KB for a 128 × 128 float32 level)."""
    return (2 * h * w + h * w // 4) * _acc_dtype(dtype).itemsize <= _smem_optin(torch.device(device))


def _level_kernel_takes(device: torch.device, dtype: torch.dtype, h: int, w: int) -> bool:
    """Whether the pyramid-level kernel runs ``h × w`` levels of ``dtype`` on ``device`` (a non-CUDA
    tensor goes to the op, which raises its clear "must be a CUDA tensor" error)."""
    return device.type != "cuda" or dfb_level_fits(dtype, h, w, device)


class _LevelEnergy(torch.autograd.Function):
    """A pyramid level ``x`` (N, H, W) -> (low (N, H/2, W/2), energies (N, [1 +] K)); saves x, the
    backward (one launch) recomputes the level and applies the DFB and LP adjoints."""

    @staticmethod
    def forward(ctx, x3, levels, last):
        ctx.save_for_backward(x3)
        ctx.levels, ctx.last = levels, last
        ctx.set_materialize_grads(False)
        low, en = torch.ops.sstkd.level_energy(x3, levels, last)
        if last:  # the coarsest level's lowpass only enters through its energy
            ctx.mark_non_differentiable(low)
        return low, en

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_low, g_en):
        (x3,) = ctx.saved_tensors
        n, h, w = x3.shape
        acc = _acc_dtype(x3.dtype)
        if g_en is None:  # the energies unused: only the lowpass carries a gradient
            g_en = torch.zeros(n, int(ctx.last) + 2**ctx.levels, dtype=acc, device=x3.device)
        if g_low is None and not ctx.last:
            g_low = torch.zeros(n, h // 2, w // 2, dtype=acc, device=x3.device)
        return torch.ops.sstkd.level_energy_backward(x3, g_en, None if ctx.last else g_low, ctx.levels,
                                                     ctx.last), None, None


def _check_level_input(x: torch.Tensor, levels: int, pfilt: str, dfilt: str) -> None:
    """The checks of a pyramid-level launch: filters, a DFB input, ``levels >= 1`` and even H, W."""
    _check_filt(pfilt)
    _check_dfilt(dfilt)
    _check_dfb_input(x, levels)
    h, w = x.shape[-2:]
    if levels < 1 or h % 2 or w % 2:
        raise ValueError(f"x, levels: expected levels >= 1 and even H, W, got levels={levels} and {tuple(x.shape)}")


def level_energy_cuda(x: torch.Tensor, levels: int, pfilt: str = "9-7", dfilt: str = "pkva", last: bool = False):
    """One contourlet pyramid level in one launch each way: ``lp_dec`` of ``x`` (B, C, H, W) and the
    energies of the ``levels``-level DFB of its bandpass. Returns ``(low, energies)``: ``low``
    (B, C, H/2, W/2), the next level's input, and energies (B, C, 2**levels); with ``last`` (the
    coarsest level) ``(None, energies)`` with the lowpass energy first, (B, C, 1 + 2**levels). Both in
    float32 (float64 for float64; a float16/bfloat16 ``x`` is read as it is and its gradient stored
    in its dtype). Differentiable: the backward recomputes the level from ``x`` in shared memory.
    Levels too large for shared memory (:func:`dfb_level_fits`) run ``lp_dec`` and ``dfb_energy``."""
    _check_level_input(x, levels, pfilt, dfilt)
    b, c, h, w = x.shape
    if not _level_kernel_takes(x.device, x.dtype, h, w):
        low, band = lp_dec_cuda(x, pfilt, out_dtype=_acc_dtype(x.dtype))
        if last:
            return None, dfb_energy_cuda(band, levels, dfilt, low=low)
        return low, dfb_energy_cuda(band, levels, dfilt)
    _ops()
    low, en = _LevelEnergy.apply(x.reshape(b * c, h, w), levels, bool(last))
    en = en.view(b, c, en.shape[-1])
    return (None, en) if last else (low.view(b, c, h // 2, w // 2), en)


class _LevelDec(torch.autograd.Function):
    """A pyramid level ``x`` (N, H, W) -> (low (N, H/2, W/2), the K sub-bands (N, h·w) as views of one
    band-major buffer). Nothing saved: the backward (one launch) runs the DFB adjoint, then the LP
    adjoint, reading each sub-band cotangent where it lies (no stacking copy; an unused output: zeros)."""

    @staticmethod
    def forward(ctx, x3, levels, band_dtype, low_dtype):
        ctx.levels, ctx.shape, ctx.x_dtype = levels, tuple(x3.shape), x3.dtype
        ctx.set_materialize_grads(False)
        low, bands = torch.ops.sstkd.level_dec(x3, levels, band_dtype, low_dtype)
        return (low, *bands.unbind(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_low, *g_bands):
        if g_low is None and all(g is None for g in g_bands):
            return None, None, None, None
        n, h, w = ctx.shape
        return torch.ops.sstkd.level_dec_backward(list(g_bands), g_low, ctx.levels, n, h, w, ctx.x_dtype), None, None, None


_LEVEL_DEC_MAX_LEVELS = 5  # the backward reads at most 32 sub-band cotangents where they lie (csrc/sstkd_kernels.h)


def level_dec_cuda(x: torch.Tensor, levels: int, pfilt: str = "9-7", dfilt: str = "pkva",
                   out_dtype: torch.dtype | None = None, low_dtype: torch.dtype | None = None):
    """One contourlet pyramid level in one launch each way: ``lp_dec`` of ``x`` (B, C, H, W) and the
    ``levels``-level ``dfb_dec`` of its bandpass. Returns ``(low, bands)``: ``low`` (B, C, H/2, W/2) in
    ``low_dtype`` (default: float32, float64 for float64 ``x``), the next level's input, and the
    ``2**levels`` sub-bands (B, C, h, w) in toolbox order in ``out_dtype`` (default ``x.dtype``), views of
    one band-major buffer. Computed in float32 (float64 for float64); a float16/bfloat16 ``x`` is read
    as it is and its gradient stored in its dtype. The backward is the adjoint (one launch, no saved
    input). Levels too large for shared memory (:func:`dfb_level_fits`) or ``levels > 5`` run
    ``lp_dec`` and ``dfb_dec``."""
    _check_level_input(x, levels, pfilt, dfilt)
    b, c, h, w = x.shape
    acc = _acc_dtype(x.dtype)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    low_dtype = acc if low_dtype is None else low_dtype
    for name, d in (("out_dtype", out_dtype), ("low_dtype", low_dtype)):
        if d not in _FLOATS:
            raise ValueError(f"{name}: expected float16, bfloat16, float32 or float64, got {d!r}")
    if levels > _LEVEL_DEC_MAX_LEVELS or not _level_kernel_takes(x.device, x.dtype, h, w):
        low, band = lp_dec_cuda(x, pfilt, out_dtype=acc)
        return low.to(low_dtype), dfb_dec_cuda(band, levels, dfilt, out_dtype)
    _ops()
    bd = out_dtype if _pairs(x.dtype, out_dtype) else acc  # else: round once after
    ld = low_dtype if _pairs(x.dtype, low_dtype) else acc
    low, *bands = _LevelDec.apply(x.reshape(b * c, h, w), levels, bd, ld)
    low = low.view(b, c, h // 2, w // 2)
    out = [t.view(b, c, *hw) for t, hw in zip(bands, dfb_band_shapes(h, w, levels))]
    return low.to(low_dtype), (out if bd == out_dtype else [t.to(out_dtype) for t in out])


dfb_dec_cuda.level = level_dec_cuda  # contourlet_dec: a whole pyramid level per launch
dfb_energy_cuda.keeps_for_backward = True  # differentiable itself (saves x): contourlet_energy recomputes nothing
dfb_energy_cuda.takes_low = True  # the coarsest level's energy launch adds the lowpass energy
dfb_energy_cuda.level = level_energy_cuda  # contourlet_energy: a whole pyramid level per launch


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
    "dfb_dec": dfb_dec_cuda,
    "dfb_rec": dfb_rec_cuda,
    "dfb_energy": dfb_energy_cuda,
    "level_sums": level_sums_cuda,
    "soft_hist": soft_hist_cuda,
}
