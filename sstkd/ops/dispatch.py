"""Backend selection for the texture ops: ``(op, backend, tensors) -> callable`` from the backend tables.

Backends (one module each in :mod:`sstkd.ops.backends`, each a plain ``TABLE``):
  ``"torch"``  plain PyTorch reference (any device, every dtype); the oracle.
  ``"triton"`` fused Triton kernels (``sstkd.kernels``): CUDA tensors, or any
               tensor when ``TRITON_INTERPRET=1`` (Triton's CPU interpreter).
  ``"cuda"``   the C++/CUDA extension ``sstkd._C``: CUDA tensors.
  ``"auto"``   on CUDA tensors the fastest available backend that implements the op
               and passed its first-use self-check on the device
               (:mod:`sstkd.ops.selfcheck`); ``"torch"`` otherwise.

A backend that is requested explicitly but unavailable raises ``RuntimeError``
saying why; only ``"auto"`` falls back.

Composed ops (:data:`PASSES`: the contourlet ops, ``quantize_count``) are written once in
:mod:`sstkd.ops.algorithms` and take passes: a backend implements such an op when its table
has any of them, and a pass it lacks comes from the best available backend (so
``contourlet_dec(backend="cuda")`` runs the CUDA LP with the best DFB there is).
"""
from __future__ import annotations

import functools
import glob
import json
import os
from typing import Callable

import torch

from sstkd._util import FLOAT_DTYPES, triton_interpreted  # noqa: F401  (re-exported)
from sstkd.ops.backends import cuda as _cuda
from sstkd.ops.backends import torch as _torch
from sstkd.ops.backends import triton as _triton

# name -> backend module (TABLE, DTYPES, unavailable_reason, available_reason, ready_for_auto)
BACKEND_MODULES: dict = {"torch": _torch, "triton": _triton, "cuda": _cuda}
BACKENDS = ("torch", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)

# The passes each composed op is built from (sstkd.ops.algorithms).
PASSES: dict[str, tuple[str, ...]] = {
    "contourlet_dec": ("lp_dec", "dfb_dec", "wfb_dec"),
    "contourlet_rec": ("lp_rec", "dfb_rec", "wfb_rec"),
    "contourlet_energy": ("lp_dec", "dfb_energy", "dfb_dec", "wfb_dec"),
    "quantize_count": ("minmax", "level_sums", "soft_hist", "start_centers"),
}
# Per-op preference of "auto" on CUDA tensors, fastest first (from bench/results/).
AUTO_ORDER: dict[str, tuple[str, ...]] = {}
DEFAULT_AUTO_ORDER = ("triton", "cuda", "torch")
FAST_BACKENDS = ("triton", "cuda")


def _choices() -> tuple[str, ...]:
    return tuple(BACKEND_MODULES) + ("auto",)


def check_backend_name(backend) -> str:
    """``backend`` if it is a backend name or ``"auto"``; ValueError naming ``backend`` otherwise.

    Availability is checked per call by :func:`resolve_backend`.
    """
    if not isinstance(backend, str) or backend not in _choices():
        raise ValueError(f"backend: unknown backend {backend!r}; choose from {_choices()}")
    return backend


def _module(backend: str):
    if not isinstance(backend, str) or backend not in BACKEND_MODULES:
        raise ValueError(f"backend: unknown backend {backend!r}; choose from {_choices()}")
    return BACKEND_MODULES[backend]


def table(backend: str) -> dict[str, Callable]:
    """The table ``{op or pass: callable}`` of ``backend``."""
    return _module(backend).TABLE


def backend_status(backend: str, device: torch.device | str | None = None) -> tuple[bool, str]:
    """``(available, reason)`` of ``backend`` for tensors on ``device`` (None: this machine)."""
    mod = _module(backend)
    why = mod.unavailable_reason(device)
    return (False, why) if why else (True, mod.available_reason())


def implements(backend: str, op: str) -> bool:
    """Whether ``backend``'s table has ``op``, or (a composed op) any of its passes."""
    t = table(backend)
    return op in t or any(p in t for p in PASSES.get(op, ()))


def implemented_ops(backend: str, ops) -> list[str]:
    """The names of ``ops`` that ``backend`` implements."""
    return [op for op in ops if implements(backend, op)]


# --------------------------------------------------------------------------- auto
def _results_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "bench", "results")


@functools.lru_cache(maxsize=None)
def _gpu_timings(results_dir: str) -> tuple[dict, str]:
    """``({op: {backend: summed median ms}}, file)`` of the newest committed ``sstkd bench`` run
    on a CUDA device that timed more than one fast backend of an op."""
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json")), reverse=True):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        if "cuda" not in str(meta.get("device", "")).lower():
            continue
        sums: dict = {}
        for r in data.get("ops", []) if isinstance(data.get("ops"), list) else []:
            if r.get("status") == "ok" and r.get("backend") in FAST_BACKENDS and r.get("median_ms"):
                per = sums.setdefault(r["op"], {})
                per[r["backend"]] = per.get(r["backend"], 0.0) + float(r["median_ms"])
        if any(len(v) > 1 for v in sums.values()):
            return sums, os.path.basename(path)
    return {}, ""


# Written by ``sstkd cost --compare`` (sstkd.benchmarks.cost.write_prediction): per op, the order the
# static cost report predicts (Triton or CUDA first).
PREDICTION_FILE = "backend-prediction.json"


@functools.lru_cache(maxsize=None)
def _prediction(results_dir: str) -> tuple[dict, str]:
    """``({op: (order, why)}, file name)`` of the static prediction in ``results_dir``; entries that are
    not a valid order of fast backends are left out (``sstkd info`` then shows the fallback)."""
    try:
        with open(os.path.join(results_dir, PREDICTION_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}, ""
    ops = data.get("ops") if isinstance(data, dict) else None
    out = {}
    for op, v in (ops.items() if isinstance(ops, dict) else ()):
        order = v.get("order") if isinstance(v, dict) else None
        if (not isinstance(order, list) or not order or len(set(order)) != len(order)
                or not all(b in FAST_BACKENDS for b in order)):
            continue
        ms = v.get("ms") if isinstance(v.get("ms"), dict) else {}
        times = ", ".join(f"{b} {t:.3f} ms" for b, t in ms.items() if isinstance(t, (int, float)))
        verdict = f"{v['faster']} predicted faster" if v.get("faster") in order else "a tie: Triton first"
        out[op] = (tuple(order), verdict + (f"; {times}" if times else ""))
    return out, PREDICTION_FILE


def reload_preferences() -> None:
    """Re-read ``bench/results`` (GPU timings, static prediction): they are read once per process."""
    _gpu_timings.cache_clear()
    _prediction.cache_clear()


def preference_sources() -> dict:
    """Where :func:`auto_order` can read preferences from here: ``{"gpu_results": file or None,
    "static_prediction": file or None}`` (``bench/results``)."""
    results = _results_dir()
    _, gpu = _gpu_timings(results)
    pred, name = _prediction(results)
    return {"gpu_results": gpu or None, "static_prediction": os.path.join(results, name) if pred else None}


def auto_order(op: str) -> tuple[tuple[str, ...], str]:
    """``auto``'s preference for ``op`` on CUDA tensors (fastest first) and where it comes from:
    :data:`AUTO_ORDER`, else the fastest in committed GPU timings (``bench/results``), else the
    static cost report's prediction (``bench/results/backend-prediction.json``, written by
    ``sstkd cost --compare``), else :data:`DEFAULT_AUTO_ORDER` (Triton first)."""
    if op in AUTO_ORDER:
        return AUTO_ORDER[op], "AUTO_ORDER"
    results = _results_dir()
    timings, path = _gpu_timings(results)
    per = timings.get(op, {})
    if len(per) >= 2:
        fast = tuple(sorted(per, key=per.get))
        return fast + tuple(b for b in DEFAULT_AUTO_ORDER if b not in fast), f"GPU results {path}"
    prediction, name = _prediction(results)
    if op in prediction:
        order, why = prediction[op]
        return (order + tuple(b for b in DEFAULT_AUTO_ORDER if b not in order),
                f"static cost report {name} (no GPU timings committed; {why})")
    fast = [b for b in FAST_BACKENDS if implements(b, op)]
    if len(fast) < 2:
        return DEFAULT_AUTO_ORDER, f"default order (only {' and '.join(fast) or 'no fast backend'} implements it)"
    return DEFAULT_AUTO_ORDER, ("default order (no GPU timings, no static cost report prediction: "
                                "`sstkd cost --compare` writes one)")


def _trust_all(op: str, backend: str, device) -> bool:
    return True


_auto_check: Callable = _trust_all


def set_auto_check(fn: Callable) -> None:
    """Install ``fn(op, backend, device) -> bool``, asked before ``auto`` uses a fast backend
    (``sstkd.ops.selfcheck`` installs its first-use self-check on import)."""
    global _auto_check
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    _auto_check = fn


def _dtype_refusal(backend: str, op: str, tensors) -> str | None:
    """Why ``backend``'s kernels of ``op`` cannot take these tensors' dtypes (None: they can)."""
    mod = BACKEND_MODULES[backend]
    names = [op] if op in mod.TABLE else [p for p in PASSES.get(op, ()) if p in mod.TABLE]
    for name in names:
        allowed = mod.DTYPES.get(name, FLOAT_DTYPES)
        for t in tensors:
            if t.dtype not in allowed:
                names_ = "/".join(str(d).replace("torch.", "") for d in allowed)
                return f"the kernels take {names_}, got {str(t.dtype).replace('torch.', '')} (use backend='torch')"
    return None


def _auto(op: str, tensors) -> str:
    """What ``backend="auto"`` runs ``op`` on for ``tensors``: the first backend of the op's
    preference order that is ready, available on their device, implements the op and takes
    their dtypes; ``"torch"`` for non-CUDA tensors and when none is."""
    device = tensors[0].device if tensors else None
    if device is None or device.type != "cuda":
        return "torch"
    return auto_backend(op, device, tensors)


def auto_backend(op: str, device: torch.device, tensors=()) -> str:
    """The first backend of :func:`auto_order` that is ready, available on ``device``, implements
    ``op``, takes the ``tensors``' dtypes and has passed its first-use self-check on ``device``
    (:mod:`sstkd.ops.selfcheck`); ``"torch"`` when none is."""
    for cand in auto_order(op)[0]:
        if cand == "torch":
            return "torch"
        mod = BACKEND_MODULES.get(cand)
        if mod is None or not mod.ready_for_auto():  # "auto" never triggers a first-use JIT build
            continue
        if (implements(cand, op) and mod.unavailable_reason(device) is None
                and _dtype_refusal(cand, op, tensors) is None and _auto_check(op, cand, device)):
            return cand
    return "torch"


def resolve_backend(op: str, backend: str, *tensors: torch.Tensor) -> str:
    """The concrete backend that runs ``op`` on ``tensors``.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when an
    explicitly requested backend cannot run (not built, no GPU, op missing,
    a dtype its kernels do not take).
    """
    check_backend_name(backend)
    if backend == "auto":
        return _auto(op, tensors)
    ok, why = backend_status(backend, tensors[0].device if tensors else None)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is unavailable for {op}: {why}")
    if not implements(backend, op):
        raise RuntimeError(f"backend={backend!r} does not implement {op}")
    why = _dtype_refusal(backend, op, tensors)
    if why:
        raise RuntimeError(f"backend={backend!r} is unavailable for {op}: {why}")
    return backend


def resolve(op: str, backend: str, *tensors: torch.Tensor) -> Callable:
    """The callable of ``op`` that ``backend`` (or ``"auto"``) runs on ``tensors`` (errors: :func:`resolve_backend`)."""
    return table(resolve_backend(op, backend, *tensors))[op]


def own_entry(op: str, backend: str, *tensors: torch.Tensor) -> Callable | None:
    """The resolved backend's own entry for composed ``op`` (a fused whole), or None to compose it."""
    return table(resolve_backend(op, backend, *tensors)).get(op)


def passes(op: str, backend: str, *tensors: torch.Tensor) -> dict[str, Callable]:
    """The passes of composed ``op`` (:data:`PASSES`): the resolved backend's own, each one it lacks
    (or whose kernels do not take these dtypes) from the best available backend."""
    b = resolve_backend(op, backend, *tensors)
    own = table(b)
    out = {}
    for name in PASSES[op]:
        if name in own and _dtype_refusal(b, name, tensors) is None:
            out[name] = own[name]
        else:
            out[name] = table(_auto(name, tensors))[name]
    return out
