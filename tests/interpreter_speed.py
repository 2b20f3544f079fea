"""Triton's CPU interpreter without two costs that buy the test suite nothing.

The stock interpreter (triton 3.x, ``triton/runtime/interpreter.py``)

* re-patches ``triton.language`` on every call of a ``@triton.jit`` helper from inside a kernel,
  although the launch of the calling kernel has already patched the very same module objects
  (and restores them when it ends) — ≈ 40 % of the interpreter time of the DFB tests, whose
  ladder calls its helpers per tap;
* redoes every int32 add, sub and mul in int64 and range-checks it (Triton's overflow sanitizer),
  only to drop the verdict: its ``device_assert`` asserts only under ``debug``, which the
  interpreter's options leave off (and which ``TRITON_DEBUG`` does not reach) — ≈ 30 % of the
  interpreter time, for no check at all.

:func:`lighten` drops both for the pytest process (tests/conftest.py calls it when the kernels
run in the interpreter); :func:`stock` restores the stock interpreter for a block, by default
with ``debug`` on so that the overflow check asserts. ``tests/test_interpreter_speed.py`` runs
every Triton kernel (through the ops of ``sstkd.ops.specs``, default and deterministic modes)
forward and backward both ways and requires identical bits — so the light interpreter computes what the stock one does, and every kernel passes a
real int32-overflow check once per session (more than the stock suite did). Neither change
reaches child processes (the gpu-check dry run, the demo, DDP): they run the stock interpreter.
"""
from __future__ import annotations

import contextlib
import dataclasses

_saved: dict | None = None  # the stock pieces while lightened
# per running kernel launch: the triton.language modules patched for it (a helper whose modules are
# all among them need not patch again; one that sees another, e.g. tl.standard's helpers seeing
# tl.core, patches as the stock call does)
_launches: list[set] = []


def _interpreter():
    from triton.runtime import interpreter

    needed = ("interpreter_builder", "GridExecutor", "InterpretedFunction", "_patch_lang", "InterpreterError")
    if not all(hasattr(interpreter, n) for n in needed) or not hasattr(interpreter.interpreter_builder, "options"):
        return None  # another Triton's interpreter: leave it stock (slower, equally correct)
    return interpreter


def _langs(fn) -> frozenset:
    """The triton.language modules ``_patch_lang(fn)`` patches: those visible in ``fn``'s globals."""
    import triton.language as tl

    return frozenset(id(v) for v in list(fn.__globals__.values()) if v is tl or v is tl.core)


def lighten() -> bool:
    """Drop the re-patching and the overflow sanitizer; True if this Triton's interpreter allows it."""
    global _saved
    ti = _interpreter()
    if ti is None or _saved is not None:
        return _saved is not None
    builder = ti.interpreter_builder
    stock_grid_call = ti.GridExecutor.__call__
    stock_helper_call = ti.InterpretedFunction.__call__
    langs_of: dict = {}  # function -> its modules (the globals of a module's functions do not change)

    def langs(fn) -> frozenset:
        got = langs_of.get(fn)
        if got is None:
            got = langs_of[fn] = _langs(fn)
        return got

    def grid_call(self, *args, **kwargs):  # a kernel launch: it patches triton.language itself
        _launches.append(set(langs(self.fn)))
        try:
            return stock_grid_call(self, *args, **kwargs)
        finally:
            _launches.pop()

    def helper_call(self, *args, **kwargs):  # a @triton.jit helper called from a kernel
        mine = langs(self.fn)
        if not _launches or not mine <= _launches[-1]:
            if _launches:
                _launches[-1] |= mine
            return stock_helper_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # as the stock call reports it
            raise ti.InterpreterError(repr(e)) from e

    _saved = {"options": builder.options, "grid": stock_grid_call, "helper": stock_helper_call}
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    ti.GridExecutor.__call__ = grid_call
    ti.InterpretedFunction.__call__ = helper_call
    return True


def _restore(ti, saved) -> None:
    ti.interpreter_builder.options = saved["options"]
    ti.GridExecutor.__call__ = saved["grid"]
    ti.InterpretedFunction.__call__ = saved["helper"]


@contextlib.contextmanager
def stock(debug: bool = True):
    """The stock interpreter inside the block (helpers re-patch, int32 arithmetic sanitized), with
    ``debug`` on by default so that Triton's device asserts — the overflow check among them — fire."""
    global _saved
    ti = _interpreter()
    if ti is None:
        yield
        return
    saved = _saved or {"options": ti.interpreter_builder.options, "grid": ti.GridExecutor.__call__,
                       "helper": ti.InterpretedFunction.__call__}
    now = {"options": ti.interpreter_builder.options, "grid": ti.GridExecutor.__call__,
           "helper": ti.InterpretedFunction.__call__}
    _restore(ti, dict(saved, options=dataclasses.replace(saved["options"], debug=debug)))
    was, _saved = _saved, None
    try:
        yield
    finally:
        _restore(ti, now)
        _saved = was


def is_light() -> bool:
    return _saved is not None
