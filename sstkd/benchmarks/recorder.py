"""Record what an op would launch on a GPU, without running its kernels.

:func:`record` is a context manager that, while active,

* replaces the launch of every Triton kernel (``InterpretedFunction.run`` of the
  Triton interpreter, and ``JITFunction.run``) by a recording: kernel name,
  grid, arguments, constexprs, ``num_warps`` and the sm_90 JIT cache key the
  compiled launch would look up. The kernel body is **not executed**; the
  uninitialized buffers it would write (allocated by an ``empty``-like op while
  recording) are zero-filled once, so nothing downstream reads uninitialized
  memory, and no other tensor (inputs, cached constants) is touched; values are
  meaningless, counts are not;
* makes the launchers choose their **GPU launch geometry** (tile sizes,
  programs) instead of the interpreter's, so grids and constexprs are the ones
  a GPU would see;
* counts aten operations and host syncs with a ``TorchDispatchMode``;
* counts every call of the CUDA extension's custom ops (``torch.ops.sstkd.*``)
  as **one CUDA launch** (not as an aten op). On meta tensors the op runs its
  Meta implementation (shapes only), so nothing is executed; what the op
  allocates inside is not seen, and the aten ops around it are counted as usual;
* resolves backends as on a GPU: on meta tensors the CUDA backend is available
  when its extension loads here (it is JIT-built by
  ``sstkd.ops.backends.cuda.get()``), and ``"auto"`` -- which a composed op
  asks for the passes its backend lacks -- picks what it would pick on a CUDA
  device whose first-use self-checks passed (on the CPU it would pick
  ``"torch"``).

Bytes are modeled per launch as the sum of the sizes of the distinct tensors a
launch touches (each argument read or written once in full; halo re-reads and
cache hits are not modeled), for aten ops the same over inputs and outputs. A
CUDA launch is modeled the same way from the custom op's tensor inputs and
outputs: the scratch it allocates inside (partial sums, zero-filled
accumulators), the kernels that fill it and the copies that make an input
contiguous are not modeled, so its launches and bytes are lower bounds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from sstkd._util import tensor_leaves
from sstkd.ops._checks import meta_inputs_allowed

# aten ops that launch no kernel: allocation, views, metadata.
_NO_LAUNCH = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "lift_fresh",
    "detach", "alias", "set_", "resize_", "_reshape_alias", "sym_size", "sym_stride", "sym_numel",
    "is_same_size", "_has_compatible_shallow_copy_type", "unbind", "split", "split_with_sizes", "chunk",
}
# aten ops whose result is uninitialized memory (what a recorded kernel would have written).
_UNINITIALIZED = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# aten ops that make the host wait for the device.
_SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
          "equal", "allclose"}
# namespace of the CUDA extension's custom ops (csrc/bindings.cpp: TORCH_LIBRARY(sstkd, m))
EXTENSION_NAMESPACE = "sstkd"
# kernel modules whose launchers pick an interpreter-specific geometry (``_interpreted()``
# or an ``interpreted=`` parameter); the recorder makes them pick the GPU one.
KERNEL_MODULES = ("sstkd.kernels.laplacian", "sstkd.kernels.dfb", "sstkd.kernels.quantize")
# modules where ``_interpreted()`` only selects geometry (laplacian's also guards the device)
_GEOMETRY_ONLY_FLAG = ("sstkd.kernels.dfb", "sstkd.kernels.quantize")


@dataclasses.dataclass
class Launch:
    """One recorded Triton launch."""

    kernel: str
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    maxnreg: int | None  # register cap launch option (None: ptxas's choice)
    constexprs: dict  # name -> value (sizes specialized to 1 included)
    signature: dict  # runtime argument name -> Triton type ("*fp32", "i32")
    key: str  # sm_90 JIT cache key (specialization + options)
    bytes: int  # modeled traffic: distinct tensor arguments, each once
    phase: str
    scalars: dict = dataclasses.field(default_factory=dict)  # runtime int arguments (sizes, strides)
    fn: object = dataclasses.field(default=None, repr=False, compare=False)  # the kernel object

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


@dataclasses.dataclass
class AtenOp:
    name: str
    bytes: int
    phase: str


@dataclasses.dataclass
class CudaOp:
    """One call of a CUDA extension op (``torch.ops.sstkd.<name>``): one modeled launch."""

    name: str
    bytes: int  # its tensor inputs and outputs, each once
    phase: str


@dataclasses.dataclass
class Recording:
    launches: list[Launch] = dataclasses.field(default_factory=list)
    aten: list[AtenOp] = dataclasses.field(default_factory=list)
    cuda: list[CudaOp] = dataclasses.field(default_factory=list)
    syncs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (op, phase)
    phase: str | None = "fwd"  # label of what runs next; None: not recorded (setup)
    uninitialized: set = dataclasses.field(default_factory=set)  # storages from empty-like ops

    def triton(self, phase: str | None = None) -> list[Launch]:
        return [l for l in self.launches if phase is None or l.phase == phase]

    def aten_ops(self, phase: str | None = None) -> list[AtenOp]:
        return [a for a in self.aten if phase is None or a.phase == phase]

    def cuda_ops(self, phase: str | None = None) -> list[CudaOp]:
        return [c for c in self.cuda if phase is None or c.phase == phase]

    def host_syncs(self, phase: str | None = None) -> int:
        return sum(1 for _, p in self.syncs if phase is None or p == phase)

    def variants(self) -> set[tuple[str, str]]:
        """Distinct (kernel, JIT key) pairs: what a GPU process would compile."""
        return {(l.kernel, l.key) for l in self.launches}


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        ident = (_storage_id(t), t.storage_offset(), t.numel(), t.dtype)
        if ident in seen:
            continue
        seen.add(ident)
        total += t.numel() * t.element_size()
    return total


def _storage_id(t: torch.Tensor) -> int:
    """Identity of ``t``'s storage (meta tensors have no data pointer)."""
    return t.untyped_storage()._cdata


class _AtenCounter(TorchDispatchMode):
    def __init__(self, rec: Recording):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _SYNCS and self.rec.phase is not None:
            self.rec.syncs.append((name, self.rec.phase))
        if name == "_local_scalar_dense" and args[0].device.type == "meta":
            # a meta tensor has no value: checks (finite, sorted, positive) pass with a truthy one
            return True if args[0].dtype == torch.bool else args[0].dtype.is_floating_point and 1.0 or 1
        out = func(*args, **kwargs)
        if name in _UNINITIALIZED and isinstance(out, torch.Tensor) and out.device.type != "meta":
            self.rec.uninitialized.add(_storage_id(out))
        else:  # defined data now (also guards against a freed storage's id being reused)
            for t in tensor_leaves(out):
                self.rec.uninitialized.discard(_storage_id(t))
        schema = func._schema
        is_view = bool(schema.returns) and all(
            r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        if func.namespace == EXTENSION_NAMESPACE:
            if self.rec.phase is not None:
                tensors = list(tensor_leaves(args)) + list(tensor_leaves(kwargs)) + list(tensor_leaves(out))
                self.rec.cuda.append(CudaOp(name, _tensor_bytes(tensors), self.rec.phase))
        elif self.rec.phase is not None and name not in _NO_LAUNCH and name not in _SYNCS and not is_view:
            tensors = list(tensor_leaves(args)) + list(tensor_leaves(kwargs)) + list(tensor_leaves(out))
            self.rec.aten.append(AtenOp(name, _tensor_bytes(tensors), self.rec.phase))
        return out


@functools.lru_cache(maxsize=None)
def _binder(fn):
    """Triton's own argument binder for ``fn`` specialized as for an sm_90 launch."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jf = fn if isinstance(fn, JITFunction) else None
    if jf is None:
        kw = getattr(fn, "kwargs", {}) or {}
        jf = JITFunction(fn.fn, do_not_specialize=kw.get("do_not_specialize"),
                         do_not_specialize_on_alignment=kw.get("do_not_specialize_on_alignment"))
    backend = make_backend(GPUTarget("cuda", 90, 32))
    return backend, create_function_from_signature(jf.signature, jf.params, backend)


def _jit_key(fn, args, kwargs) -> tuple[str, dict, dict, dict]:
    """(cache key, bound arguments, constexprs, runtime signature) of a launch as ``JITFunction.run`` computes them."""
    from triton.runtime.jit import compute_cache_key

    backend, binder = _binder(fn)
    bound, specialization, options = binder(*args, **kwargs)
    opts = backend.parse_options(options)
    key = compute_cache_key({}, specialization, opts)
    constexprs, signature = {}, {}
    for (name, val), spec in zip(bound.items(), specialization):
        if spec[0] == "constexpr":
            constexprs[name] = val
        else:
            signature[name] = spec[0]
    return str(key), bound, constexprs, signature


def _grid(grid, bound) -> tuple[int, int, int]:
    if callable(grid):
        grid = grid(bound)
    g = tuple(int(v) for v in grid) + (1, 1, 1)
    return g[:3]


@contextlib.contextmanager
def _gpu_geometry():
    """Launchers choose their GPU launch geometry while recording."""
    saved = []
    for name in KERNEL_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for attr, obj in list(vars(mod).items()):
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and attr != "_interpreted":
                if "interpreted" in inspect.signature(obj).parameters:
                    saved.append((mod, attr, obj))
                    setattr(mod, attr, functools.partial(obj, interpreted=False))
        if name in _GEOMETRY_ONLY_FLAG and hasattr(mod, "_interpreted"):
            saved.append((mod, "_interpreted", mod._interpreted))
            mod._interpreted = lambda: False
    try:
        yield
    finally:
        for mod, attr, obj in reversed(saved):
            setattr(mod, attr, obj)


@contextlib.contextmanager
def gpu_dispatch():
    """Backends resolve on meta tensors as they would on a CUDA device (see the module docstring)."""
    from sstkd.ops import dispatch
    from sstkd.ops.backends import cuda

    on_meta = lambda device: device is not None and torch.device(device).type == "meta"  # noqa: E731
    cuda_reason, auto, check = cuda.unavailable_reason, dispatch._auto, dispatch._auto_check

    def cuda_unavailable_reason(device=None):
        return cuda.load_error() if on_meta(device) else cuda_reason(device)

    def auto_as_on_gpu(op, tensors):
        if tensors and on_meta(tensors[0].device):
            return dispatch.auto_backend(op, tensors[0].device, tensors)
        return auto(op, tensors)

    def self_check_passed_on_meta(op, backend, device):
        return True if on_meta(device) else check(op, backend, device)

    cuda.unavailable_reason, dispatch._auto, dispatch._auto_check = (
        cuda_unavailable_reason, auto_as_on_gpu, self_check_passed_on_meta)
    try:
        yield
    finally:
        cuda.unavailable_reason, dispatch._auto, dispatch._auto_check = cuda_reason, auto, check


@contextlib.contextmanager
def record(protect=()):
    """Record Triton launches, CUDA extension ops, aten ops and host syncs instead of running the kernels.

    ``protect``: tensors a recorded launch must not zero-fill (the caller's
    inputs). Set ``recording.phase`` to label what follows ("fwd", "bwd").
    Yields a :class:`Recording`.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    rec = Recording()
    protected = {_storage_id(t) for t in tensor_leaves(list(protect))}

    def fake_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return None
        key, bound, constexprs, signature = _jit_key(self, args, kwargs)
        tensors = [v for v in bound.values() if isinstance(v, torch.Tensor)]
        if rec.phase is not None:
            rec.launches.append(Launch(
                kernel=getattr(self.fn, "__name__", str(self.fn)), grid=_grid(grid, bound),
                num_warps=int(kwargs.get("num_warps", 4)), num_stages=int(kwargs.get("num_stages", 3)), maxnreg=kwargs.get("maxnreg"),
                constexprs=constexprs, signature=signature, key=key, bytes=_tensor_bytes(tensors),
                phase=rec.phase, fn=self,
                scalars={k: v for k, v in bound.items() if k in signature and isinstance(v, int)}))
        with _disable_current_modes(), torch.no_grad():
            for t in tensors:
                sid = _storage_id(t)
                if sid in rec.uninitialized and sid not in protected:
                    rec.uninitialized.discard(sid)
                    t.untyped_storage().fill_(0)
        return None

    saved = [(cls, cls.run) for cls in (InterpretedFunction, JITFunction)]
    for cls, _ in saved:
        cls.run = fake_run
    try:
        with _gpu_geometry(), gpu_dispatch(), meta_inputs_allowed(), _AtenCounter(rec):
            yield rec
    finally:
        for cls, run in saved:
            cls.run = run
