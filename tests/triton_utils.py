"""Shared helpers of the Triton kernel tests.

* :func:`assert_close_to_reference` — the tolerance oracle of DESIGN §6:
  float32 within 1e-5 relative; float16/bfloat16 within twice the error the
  reference op makes in the same low precision, plus the dtype's noise floor.
* :func:`aot_compile` — compile a ``@triton.jit`` kernel ahead of time for a
  CUDA architecture (sm_80, sm_90) without a GPU, so that compile-only errors
  are caught on a CPU-only machine where the tests otherwise run in the
  interpreter. Works with triton 3.6 and 3.8; under ``TRITON_INTERPRET=1``
  the compilation runs in a child process with the interpreter off, one for
  the whole session (:class:`CompileService`), which also serves
  :func:`compile_facts_many` (sm_90 registers, spills, SASS).
"""
from __future__ import annotations

import atexit
import collections
import copy
import dataclasses
import inspect
import os
import pickle
import select
import subprocess
import sys
import tempfile

import torch

# one definition of what a compilable @triton.jit kernel is, shared with the compile-facts instrument
from sstkd.benchmarks.compile_facts import _interpreted, _kernel_ref  # noqa: E402
from sstkd.benchmarks.compile_facts import compile_facts_many as _facts_many_here  # noqa: E402

LOW_PRECISION = (torch.float16, torch.bfloat16)
AOT_ARCHS = (80, 90)

# Relative tolerances for full-precision outputs (relative to the reference's scale).
_REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


# --------------------------------------------------------------------------- tolerance oracle
def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual.double() - expected.double()).abs().max().item()


def scale_of(t: torch.Tensor) -> float:
    """The magnitude errors are measured against (max |t|, at least a tiny positive)."""
    return max(t.double().abs().max().item(), 1e-30)


def noise_floor(dtype: torch.dtype, scale: float) -> float:
    """One unit of rounding of ``dtype`` at magnitude ``scale``."""
    return torch.finfo(dtype).eps * scale


def assert_close_to_reference(
    actual: torch.Tensor,
    exact: torch.Tensor,
    reference: torch.Tensor | None = None,
    name: str = "output",
) -> None:
    """DESIGN §6 tolerance check of a fast backend's ``actual`` result.

    Args:
        actual: output of the backend under test (any float dtype).
        exact: the reference op evaluated in float64 on the *same* inputs
            (already rounded to ``actual``'s dtype, so only the op's own error
            is measured).
        reference: the reference op run in ``actual``'s dtype; required for
            float16/bfloat16, ignored otherwise.
        name: used in the failure message.

    float32 (float64): ``max|actual − exact| ≤ 1e-5 (1e-10) · max|exact|``.
    float16/bfloat16: ``max|actual − exact| ≤ 2 · max|reference − exact| +
    eps(dtype) · max|exact|``.
    """
    if actual.shape != exact.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(exact.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: non-finite values in the {actual.dtype} result")
    err = max_abs_error(actual, exact)
    scale = scale_of(exact)
    if actual.dtype in LOW_PRECISION:
        if reference is None:
            raise ValueError(f"{name}: a {actual.dtype} check needs the reference run in {actual.dtype}")
        if reference.dtype != actual.dtype:
            raise ValueError(f"reference: dtype {reference.dtype} != actual dtype {actual.dtype}")
        ref_err = max_abs_error(reference, exact)
        tol = 2.0 * ref_err + noise_floor(actual.dtype, scale)
        detail = f"2 x reference error {ref_err:.3e} + noise floor"
    else:
        tol = _REL_TOL.get(actual.dtype, 1e-5) * scale
        detail = f"relative {_REL_TOL.get(actual.dtype, 1e-5):g} of scale {scale:.3e}"
    if not err <= tol:
        raise AssertionError(f"{name} ({actual.dtype}): max abs error {err:.3e} > tolerance {tol:.3e} ({detail})")


# --------------------------------------------------------------------------- AOT compilation
@dataclasses.dataclass
class AotResult:
    """What an ahead-of-time compilation produced (picklable, unlike ``CompiledKernel``)."""

    name: str
    arch: int
    num_warps: int
    asm: dict  # stage -> text (ttir, ttgir, llir, ptx) or bytes (cubin)
    shared: int  # static shared memory, bytes
    n_regs: int | None = None  # only known once loaded on a device


def _gpu_target(arch: int):
    try:
        from triton.backends.compiler import GPUTarget
    except ImportError:  # pragma: no cover - very old triton
        from triton.compiler.compiler import GPUTarget
    return GPUTarget("cuda", int(arch), 32)


def _jit_of(kernel):
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise TypeError(f"kernel: expected a @triton.jit function, got {type(kernel).__name__}")
    return kernel


def _compile_here(kernel, signature: dict, constexprs: dict, arch: int, num_warps: int) -> AotResult:
    import triton
    from triton.compiler import ASTSource

    jit = _jit_of(kernel)
    names = list(jit.arg_names)
    unknown = [k for k in list(signature) + list(constexprs) if k not in names]
    if unknown:
        raise ValueError(f"signature: {unknown} are not arguments of {jit.__name__} {names}")
    missing = [k for k in names if k not in signature and k not in constexprs]
    if missing:
        raise ValueError(f"signature: no type or constexpr value given for {missing} of {jit.__name__}")
    # triton >= 3.3 (3.6, 3.8): name-keyed signature in which constexprs are typed "constexpr".
    sig = {k: ("constexpr" if k in constexprs else signature[k]) for k in names}
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:
        src = ASTSource(fn=jit, signature=sig, constexprs=constexprs)
    else:  # pragma: no cover - triton 3.0-3.2: index keys and `constants`
        src = ASTSource(
            fn=jit,
            signature={names.index(k): v for k, v in sig.items() if k not in constexprs},
            constants={names.index(k): v for k, v in constexprs.items()},
        )
    ck = triton.compile(src, target=_gpu_target(arch), options={"num_warps": num_warps})
    md = ck.metadata
    shared = md.get("shared", 0) if isinstance(md, dict) else getattr(md, "shared", 0)
    return AotResult(jit.__name__, int(arch), num_warps, dict(ck.asm), int(shared or 0))


def _aot_specs(jobs):
    jobs = [tuple(j) + (4,) * (5 - len(j)) for j in jobs]
    if not any(_interpreted(j[0]) for j in jobs):
        return jobs, None
    return jobs, [(_kernel_ref(k), dict(sig), dict(ce or {}), int(arch), int(nw)) for k, sig, ce, arch, nw in jobs]


def _facts_specs(jobs):
    jobs = [tuple(j) for j in jobs]
    if not any(_interpreted(j[0]) for j in jobs):
        return jobs, None
    # (the child's compile_facts_many checks the jobs; its errors come back as RuntimeError)
    return jobs, [(_kernel_ref(j[0]),) + tuple(dict(x) if isinstance(x, dict) else x for x in j[1:]) for j in jobs]


def prefetch(kind: str, jobs) -> None:
    """Queue ``jobs`` (as :func:`aot_compile_many` (``kind="aot"``) or :func:`compile_facts_many`
    (``"facts"``) take them) in the session's compile process now, for a test that asks later.
    Nothing to do when the kernels are compiled in this process (a GPU machine)."""
    jobs, specs = (_aot_specs if kind == "aot" else _facts_specs)(jobs)
    if specs is not None:
        compile_service().submit(kind, specs)


def aot_compile_many(jobs) -> list[AotResult]:
    """Compile several ``(kernel, signature, constexprs, arch[, num_warps])`` jobs; see :func:`aot_compile`.

    Under ``TRITON_INTERPRET=1`` the kernels (and triton's own jit helpers such
    as ``tl.cdiv``) are interpreter objects that cannot be compiled, so the
    jobs run in the session's compile process with the interpreter off
    (:class:`CompileService`); its errors are re-raised here with the
    compiler's message.
    """
    jobs, specs = _aot_specs(jobs)
    if specs is None:
        return [_compile_here(k, dict(sig), dict(ce or {}), arch, nw) for k, sig, ce, arch, nw in jobs]
    return [AotResult(**fields) for fields in compile_service().run("aot", specs)]


def compile_facts_many(jobs) -> list:
    """:func:`sstkd.benchmarks.compile_facts.compile_facts_many` of ``jobs``, compiled in the session's
    compile process (:class:`CompileService`) when the kernels are interpreted: the same compiler and
    tools, without a new process (torch + triton imports) per call."""
    jobs, specs = _facts_specs(jobs)
    if specs is None:
        return _facts_many_here(jobs)
    return compile_service().run("facts", specs)


class CompileService:
    """One child process, interpreter off, that compiles every AOT / compile-facts job of the test
    session: the torch + triton imports (seconds of CPU) are paid once, not once per test, and a job
    asked for twice (the same kernel, types, constexprs and launch options) is compiled once.

    Jobs can be sent ahead (:meth:`submit`, :func:`prefetch`): the test modules queue theirs when
    they are imported, so that on a cold Triton cache (≈ a minute of compiles) the child compiles on
    the core the single-threaded tests leave idle, and the test that asks (:meth:`run`) finds its
    results done or waits only for the rest.

    Protocol: pickled ``(kind, specs, sys.path)`` requests on the child's stdin, answered in order
    with a pickled ``("ok", results)`` or ``("error", traceback)`` on a pipe of its own (the child's
    stdout and stderr go to a log, shown when it dies, so that a compiler's prints cannot corrupt the
    stream).
    """

    TIMEOUT = 1200  # seconds for one request (as the one-process-per-call compiles allowed)

    def __init__(self):
        self._proc = None
        self._cache: dict[bytes, object] = {}
        self._pending: collections.deque = collections.deque()  # (kind, keys) sent, not yet answered
        self._failed: dict[bytes, str] = {}  # key -> the traceback of the batch it was sent in

    def _start(self):
        r, w = os.pipe()
        # this process's import path, "" (the working directory) made absolute: the child must import
        # the same sstkd, not the one an editable install of another checkout points at
        env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(w)], env=env,
                                      stdin=subprocess.PIPE, stdout=self._log, stderr=self._log, pass_fds=(w,))
        os.close(w)
        self._out = os.fdopen(r, "rb")

    @staticmethod
    def _what(kind: str) -> str:
        return "AOT compilation failed" if kind == "aot" else "compile_facts: compilation failed"

    def submit(self, kind: str, specs: list) -> list[bytes]:
        """Send the jobs of ``specs`` not done, failed or on their way; returns every job's key."""
        keys = [pickle.dumps((kind, s)) for s in specs]
        if self._proc is not None and self._proc.poll() is not None:
            self.close()  # it exited (killed?) since: what it was sent is sent again below
        sent = {k for _, batch in self._pending for k in batch}
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache and k not in sent and k not in self._failed))
        if todo:
            if self._proc is None:
                self._start()
            try:
                pickle.dump((kind, [pickle.loads(k)[1] for k in todo], list(sys.path)), self._proc.stdin)
                self._proc.stdin.flush()
            except OSError as e:
                self._died(kind, e)
            self._pending.append((kind, todo))
        return keys

    def _died(self, kind: str, e: Exception):
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-6000:]
        self.close()
        raise RuntimeError(f"{self._what(kind)}: the compile process died ({e}):\n{tail}") from None

    def _receive(self) -> None:
        """Wait for the answer to the oldest request."""
        kind, batch = self._pending[0]
        try:
            if not select.select([self._out], [], [], self.TIMEOUT)[0]:
                raise TimeoutError(f"no answer in {self.TIMEOUT} s")
            status, payload = pickle.load(self._out)
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            self._died(kind, e)
        self._pending.popleft()
        if status == "ok":
            self._cache.update(zip(batch, payload))
        else:
            self._failed.update((k, payload) for k in batch)

    def run(self, kind: str, specs: list) -> list:
        keys = self.submit(kind, specs)
        retried = False
        while True:
            while any(k not in self._cache and k not in self._failed for k in keys):
                self._receive()
            failed = [k for k in keys if k in self._failed]
            if not failed:
                return [copy.deepcopy(self._cache[k]) for k in keys]
            if retried:  # failed on its own: the error is these jobs'
                raise RuntimeError(f"{self._what(kind)}:\n{self._failed[failed[0]][-6000:]}")
            # a batch fails as a whole: send this test's failed jobs alone, once, so that another
            # batch's bad job is not reported here
            for k in failed:
                del self._failed[k]
            self.submit(kind, [pickle.loads(k)[1] for k in failed])
            retried = True

    def close(self):
        if self._proc is not None:
            try:
                if self._pending:  # jobs sent ahead that no test asked for (a -k selection): not waited for
                    self._proc.kill()
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
            self._out.close()
            self._log.close()
            self._proc = None
            self._pending.clear()


_SERVICE: CompileService | None = None


def compile_service() -> CompileService:
    """The session's :class:`CompileService` (started on first use, stopped at exit)."""
    global _SERVICE
    if _SERVICE is None:
        _SERVICE = CompileService()
        atexit.register(_SERVICE.close)
    return _SERVICE


def aot_compile(kernel, signature: dict, constexprs: dict | None = None, arch: int = 90, num_warps: int = 4) -> AotResult:
    """Compile ``kernel`` for ``sm_<arch>`` without a GPU.

    Args:
        kernel: a module-level ``@triton.jit`` function (a ``JITFunction``, or
            the ``InterpretedFunction`` it becomes under ``TRITON_INTERPRET=1``).
        signature: argument name -> Triton type string of the runtime
            arguments (``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"fp32"``, ...).
            Constexpr arguments may be left out; they are typed ``"constexpr"``.
        constexprs: argument name -> value of every ``tl.constexpr`` argument.
        arch: CUDA compute capability as an int (80, 90).
        num_warps: as at launch.

    Returns an :class:`AotResult` whose ``asm`` holds every stage (``ttir``,
    ``ttgir``, ``llir``, ``ptx``, ``cubin``). Triton ships its own ``ptxas``,
    so neither a GPU, a driver nor a CUDA toolkit is needed.
    """
    return aot_compile_many([(kernel, signature, constexprs, arch, num_warps)])[0]


def _resolve(ref):
    import importlib

    module, qualname = ref
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _serve(fd: int) -> None:
    """The :class:`CompileService` child: answers requests until its stdin closes."""
    import traceback

    out = os.fdopen(fd, "wb")
    while True:
        try:
            kind, specs, path = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        sys.path.extend(p for p in path if p not in sys.path)
        try:
            if kind == "aot":
                results = [dataclasses.asdict(_compile_here(_resolve(ref), sig, ce, arch, nw))
                           for ref, sig, ce, arch, nw in specs]
            else:
                from sstkd.benchmarks.compile_facts import compile_facts_many as facts_many

                results = facts_many([(_resolve(ref),) + tuple(rest) for ref, *rest in specs])
            reply = ("ok", results)
        except BaseException:  # reported to the test, which raises it
            reply = ("error", traceback.format_exc())
        pickle.dump(reply, out)
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[2]))
