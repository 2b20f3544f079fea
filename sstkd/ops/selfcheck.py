"""First-use self-check of a fast backend on a device, before ``backend="auto"`` trusts it.

``auto`` sends an op to a Triton or CUDA kernel on a device only after
:func:`trusted` has run that kernel there on a few small shapes against the
PyTorch reference, forward and every gradient (``sstkd verify`` remains the
full check). The verdict is cached per device name + torch / triton /
extension versions in ``selfcheck.json`` under ``$SSTKD_CACHE_DIR``, else
``$XDG_CACHE_HOME/sstkd``, else ``~/.cache/sstkd``. A pass logs one line
(logger ``sstkd``); a failure warns once, naming the op, and ``auto`` falls
back to the reference.

Importing this module registers :func:`trusted` with
:func:`sstkd.ops.dispatch.set_auto_check` (``sstkd.ops`` imports it), so
dispatch, which must not import it, consults it for ``auto``.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import warnings

import torch

from sstkd._util import cache_dir, tensor_leaves  # cache_dir: where verdicts are cached
from sstkd.ops import dispatch
from sstkd.ops.dispatch import PASSES

log = logging.getLogger("sstkd")
CACHE_ENV = "SSTKD_CACHE_DIR"
_FILE = "selfcheck.json"
_warned: set[tuple[str, str, str]] = set()
_memo: dict[tuple[str, str, str], bool] = {}
_running: set[tuple[str, str, str]] = set()


def device_key(device) -> str:
    """Device name + torch / triton / sstkd versions: a new stack re-checks."""
    return _device_key(str(torch.device(device)), os.environ.get("TRITON_INTERPRET", "0") == "1")


@functools.lru_cache(maxsize=None)
def _device_key(device: str, interpreted: bool) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = dev.type
    try:
        import triton

        tv = triton.__version__
    except Exception:  # pragma: no cover - triton missing
        tv = "none"
    from sstkd import __version__

    interp = " interpreted" if interpreted else ""
    return f"{name}{interp} | torch {torch.__version__} | triton {tv} | sstkd {__version__}"


def _load() -> dict:
    path = os.path.join(cache_dir(), _FILE)
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(key: str, op: str, backend: str, verdict: str) -> None:
    data = _load()
    data.setdefault(key, {})[f"{op}/{backend}"] = verdict
    d = cache_dir()
    try:
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{_FILE}.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(d, _FILE))
    except OSError as e:  # a read-only home must not break the op
        log.debug("sstkd: could not write the self-check cache in %s: %s", d, e)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.double(), b.double()
    if a.shape != b.shape or not torch.isfinite(a).all():
        return False
    scale = b.abs().max().clamp_min(1e-6)
    return bool(((a - b).abs().max() / scale) < 1e-3)


def _fresh(a, grad: bool):
    if isinstance(a, torch.Tensor):
        return a.detach().clone().requires_grad_(grad)
    if isinstance(a, (list, tuple)):
        return type(a)(_fresh(v, grad) for v in a)
    return a


def _run(spec, args, kwargs, backend):
    args = [_fresh(a, i in spec.grad_inputs) for i, a in enumerate(args)]
    out = spec.op(*args, **kwargs, backend=backend)
    outs = [o for o in tensor_leaves(out) if o.requires_grad]
    inputs = [t for i in spec.grad_inputs for t in tensor_leaves(args[i])]
    g = torch.Generator().manual_seed(1)
    cots = [torch.randn(o.shape, generator=g).to(o) for o in outs]
    grads = torch.autograd.grad(outs, inputs, cots, allow_unused=True) if outs else ()
    return tensor_leaves(out), [torch.zeros_like(t) if gr is None else gr for t, gr in zip(inputs, grads)]


def checked_op(name: str) -> str:
    """The op whose self-check vouches for ``name``: itself, or for a pass of a composed op
    (``dfb_energy``, ``level_sums``, ...) the first composed op built from it."""
    from sstkd.ops.specs import op_names

    if name in op_names():
        return name
    for op, names in PASSES.items():
        if name in names:
            return op
    raise ValueError(f"op: unknown op or pass {name!r}")


def check(op: str, backend: str, device) -> str:
    """Run ``op`` on ``backend`` at its spec's test shapes on ``device`` against the reference,
    forward and every gradient, in float32. ``"pass"`` or ``"fail: <why>"`` (never raises)."""
    from sstkd.ops.specs import get_spec

    spec = get_spec(op)
    cases = spec.cases("test")[:2] or spec.cases("verify")[:2]
    try:
        for case in cases:
            args, kwargs = case.inputs(torch.float32, device)
            ref_out, ref_grads = _run(spec, args, kwargs, "torch")
            out, grads = _run(spec, args, kwargs, backend)
            for what, a, b in [("output", o, r) for o, r in zip(out, ref_out)] + \
                               [("gradient", o, r) for o, r in zip(grads, ref_grads)]:
                if not _close(a, b):
                    return f"fail: {what} differs from the reference at {case.label} {case.params_str}".rstrip()
            if len(out) != len(ref_out):
                return f"fail: {len(out)} outputs, the reference has {len(ref_out)}"
    except Exception as e:  # a crashing kernel is a failed check, not a crashed training
        return f"fail: {type(e).__name__}: {e}"
    return "pass"


def trusted(op: str, backend: str, device) -> bool:
    """Whether ``auto`` may run ``op`` on ``backend`` on ``device``: its cached verdict, or the
    verdict of :func:`check` run now (logged on a pass, warned once on a failure)."""
    if backend == "torch":
        return True
    op = checked_op(op)
    key = device_key(device)
    memo = (key, op, backend)
    if memo in _memo:
        return _memo[memo]
    if memo in _running:  # a pass resolved while its op is being checked: the reference meanwhile
        return False
    verdict = _load().get(key, {}).get(f"{op}/{backend}")
    if verdict is None:
        _running.add(memo)
        try:
            verdict = check(op, backend, device)
        finally:
            _running.discard(memo)
        _store(key, op, backend, verdict)
        if verdict == "pass":
            log.info("sstkd: %s on %s passed its self-check on %s; backend='auto' uses it", op, backend, key)
    ok = verdict == "pass"
    if not ok and memo not in _warned:
        _warned.add(memo)
        warnings.warn(f"sstkd: {op} on backend {backend!r} failed its self-check on {key} ({verdict}); "
                      f"backend='auto' uses the PyTorch reference for {op}. Run `sstkd verify` for details.",
                      RuntimeWarning, stacklevel=3)
    _memo[memo] = ok
    return ok


def forget() -> None:
    """Drop the in-process verdicts (the cache file stays)."""
    _memo.clear()
    _warned.clear()


dispatch.set_auto_check(trusted)
