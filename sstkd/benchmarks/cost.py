"""The GPU cost of every op, read on the CPU: launches, bytes, host syncs, JIT variants, compile facts.

:func:`cost_report` runs each op (forward, then backward) of one backend --
``"triton"`` or ``"cuda"`` (:data:`MEASURABLE`) -- with
:func:`sstkd.benchmarks.recorder.record`: the kernels are *recorded* at their GPU
launch geometry, not executed, and the tensors are ``"meta"`` tensors by default
(sizes without storage), so a training-shape report takes seconds and no memory.
The CUDA backend is measured on meta tensors only, through the Meta
implementations of its extension's ops (the extension is JIT-built here on first
use; no GPU needed); a composed op runs the CUDA passes there are and, for the
rest, what ``"auto"`` would pick on a GPU (Triton). Per op × shape × dtype it reports

* launches forward / backward, Triton, CUDA (one per extension op call) and aten
  separately (aten: every dispatched op that is not a view, an allocation or a
  metadata query);
* modeled bytes: the sum over launches of the bytes of the distinct tensors
  each launch reads or writes (every argument once, in full; halo re-reads
  and cache hits are not modeled, so this is a lower bound of a kernel's DRAM
  traffic when its working set exceeds the L2), against the op's compulsory
  bytes (its spec's ``fwd_bytes`` / ``bwd_bytes``);
* host syncs (``.item()``, ``bool(tensor)``, ``nonzero``, ...);
* JIT variants: distinct ``(kernel, sm_90 cache key)`` pairs at this shape and
  the ones other training shapes add;
* per Triton kernel variant its sm_90 compile facts (registers, spills, static
  SASS per thread) when :mod:`sstkd.benchmarks.compile_facts` can compile it, and
  per op the SASS instructions executed per element of its input ((static SASS +
  main-loop body × extra iterations) × threads × programs, summed over launches,
  / input elements);
* a predicted H200 time: Σ over launches of max(bytes / copy bandwidth,
  warp-instructions / issue rate). Warp-instructions are (static SASS + the main
  loop's body × its extra iterations, from the launch arguments) × warps ×
  programs; inner loops of kernels not in ``_LOOP_TRIPS`` count once (a lower bound).
  A CUDA launch counts its bytes only: its launch geometry is decided inside the
  C++ launcher, so its issue time is not modeled (``issue_known`` is False).

:func:`compare_backends` measures the ops both Triton and CUDA implement with both
and says which is predicted faster (:func:`predicted_faster`);
:func:`write_prediction` writes the verdicts to ``bench/results/backend-prediction.json``,
which ``backend="auto"`` follows until committed GPU timings exist
(:func:`sstkd.ops.dispatch.auto_order`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import shutil
import subprocess

import torch

from sstkd._util import tensor_leaves
from sstkd.benchmarks.recorder import gpu_dispatch, record
from sstkd.ops.dispatch import PREDICTION_FILE  # the file auto_order reads

# H200 (sm_90): measured device copy bandwidth (bytes read + written) and the chip's warp-instruction
# issue rate (132 SMs × 4 schedulers × 1.98 GHz); /work/shared/research/gpu-compile-facts.md.
H200_COPY_BW = 4.3e12
H200_WARP_ISSUE = 132 * 4 * 1.98e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}

# The training-shape report: (op, shape, make_inputs params). Images: a teacher's stride-4
# features on a 512² crop, batch 8; intensities: 8 maps of 128², 128 levels.
TRAINING_CASES = (
    ("lp_dec", (8, 256, 128, 128), {}),
    ("lp_rec", (8, 256, 128, 128), {}),
    ("dfb_dec", (8, 256, 128, 128), {"levels": 3}),
    ("dfb_rec", (8, 256, 128, 128), {"levels": 3}),
    ("contourlet_dec", (8, 256, 128, 128), {"nlevs": [3, 3]}),
    ("contourlet_rec", (8, 256, 128, 128), {"nlevs": [3, 3]}),
    ("contourlet_energy", (8, 256, 128, 128), {"nlevs": [3, 3]}),
    ("quantize_count", (8, 128 * 128), {"levels": 128, "iters": 3}),
    ("reproject", (8, 128 * 128), {"levels": 128, "channels": 64}),
    ("cooccurrence", (8, 128, 128), {"levels": 128}),
)
# Other training shapes (student features, a Cityscapes crop): what they add to the JIT cache.
NEW_SHAPES = {
    4: ((8, 64, 128, 256), (4, 128, 96, 160)),
    2: ((8, 128 * 256), (4, 96 * 160)),
    3: ((8, 128, 256), (4, 96, 160)),
}


# --------------------------------------------------------------------------- op descriptions
def specs() -> list:
    """The op descriptions (``sstkd.ops.specs.SPECS``)."""
    from sstkd.ops.specs import SPECS

    return list(SPECS)


def get_spec(name: str):
    for s in specs():
        if s.name == name:
            return s
    raise ValueError(f"ops: unknown op {name!r}; choose from {[s.name for s in specs()]}")


# --------------------------------------------------------------------------- backends
def _load_extension(device: torch.device) -> None:
    """The CUDA backend's recording needs its extension loaded (JIT-built on first use) and meta tensors."""
    if device.type != "meta":
        raise RuntimeError("it is measured on meta tensors only (device='meta'): its kernels cannot run on "
                           f"{device.type} tensors here")
    from sstkd.ops.backends import cuda

    cuda.get()


# The backends whose launches the recorder can count (the reference "torch" backend is not a kernel
# set), each with what its recording needs first (raises RuntimeError saying why it cannot be had).
_PREPARE = {"triton": lambda device: None, "cuda": _load_extension}
MEASURABLE = tuple(_PREPARE)
# File-name prefix of each backend's report (``sstkd gpu-check`` reads ``static-*.json`` as Triton reports).
_FILE_PREFIX = {"triton": "static", "cuda": "cuda-static"}


def check_measurable(backend, device="meta") -> str:
    """``backend`` if the cost report can measure it here on ``device``.

    Raises ``ValueError`` for a backend it does not measure and ``RuntimeError``
    saying why one cannot be measured here (Triton without ``TRITON_INTERPRET=1``,
    a CUDA extension that cannot be built: no toolkit, a CPU-only torch, ...).
    Measuring ``"cuda"`` loads the extension, JIT-building it on first use (minutes, once).
    """
    if not isinstance(backend, str) or backend not in _PREPARE:
        raise ValueError(f"backend: the cost report measures {MEASURABLE}, got {backend!r}")
    from sstkd.ops import dispatch

    dev = torch.device(device)
    try:
        _PREPARE[backend](dev)
    except RuntimeError as e:
        raise RuntimeError(f"backend={backend!r} cannot be measured here: {e}") from None
    with gpu_dispatch():  # resolved as the recording resolves it
        ok, why = dispatch.backend_status(backend, dev)
    if not ok:
        raise RuntimeError(f"backend={backend!r} cannot be measured here: {why}")
    return backend


def _check_lacking_passes(op: str, backend: str, device) -> None:
    """A composed op's passes that ``backend`` lacks come from ``auto``'s pick on a GPU: RuntimeError
    when a fast backend implements one but cannot be recorded here."""
    from sstkd.ops import dispatch

    own = dispatch.table(backend)
    if op in own:
        return
    dev = torch.device(device)
    fast = {p: [b for b in dispatch.FAST_BACKENDS if p in dispatch.table(b)]
            for p in dispatch.PASSES.get(op, ()) if p not in own}
    with gpu_dispatch():
        missing = [p for p, impl in fast.items() if impl and dispatch.auto_backend(p, dev) not in impl]
        whys = {b: dispatch.backend_status(b, dev)[1] for p in missing for b in fast[p]}
    if missing:
        raise RuntimeError(f"backend={backend!r} cannot be measured here for {op}: on a GPU its passes {missing} "
                           f"come from {' or '.join(whys)}, which cannot be recorded here: "
                           + "; ".join(f"{b}: {w}" for b, w in whys.items()))


def implemented(backend: str, ops) -> list[str]:
    """The ``ops`` that ``backend`` implements (a composed op: any of its passes)."""
    from sstkd.ops import dispatch

    return dispatch.implemented_ops(backend, ops)


# --------------------------------------------------------------------------- one case
def _record_case(spec, shape, params, dtype, device, backend):
    args, kwargs = spec.make_inputs(tuple(shape), dtype, device, **params)
    inputs = [t for i in spec.grad_inputs for t in tensor_leaves(args[i])]
    for t in inputs:
        t.requires_grad_(True)
    with record(protect=tensor_leaves(args)) as rec:
        out = spec.op(*args, **kwargs, backend=backend)
        rec.phase = None  # cotangents: not part of the op
        outs = [o for o in tensor_leaves(out) if o.requires_grad]
        cots = [torch.ones_like(o) for o in outs]
        rec.phase = "bwd"
        if outs:
            torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    return rec, args, kwargs


def measure(op: str, shape, params: dict | None = None, dtype=torch.float32, *, device="meta",
            backend: str = "triton", warm: bool = True):
    """:class:`~sstkd.benchmarks.recorder.Recording` of ``op`` forward + backward at ``shape``
    (after one unrecorded call that fills the ops' caches), with the op's args and kwargs.

    Errors: :func:`check_measurable`; ``ValueError`` when ``backend`` does not implement ``op``."""
    spec = get_spec(op)
    check_measurable(backend, device)
    if not implemented(backend, [op]):
        raise ValueError(f"ops: backend {backend!r} does not implement {op}; "
                         f"it implements {implemented(backend, [s.name for s in specs()])}")
    _check_lacking_passes(op, backend, device)
    params = dict(params or {})
    if warm:
        _record_case(spec, shape, params, dtype, device, backend)
    return _record_case(spec, shape, params, dtype, device, backend)


def _input_bytes(spec, args) -> int:
    """X: bytes of the op's largest input (the image, the intensity map, all sub-bands of a synthesis)."""
    return max(sum(t.numel() * t.element_size() for t in tensor_leaves(args[i])) for i in spec.grad_inputs)


def case_row(op: str, shape, params: dict | None = None, dtype=torch.float32, *, device="meta",
             backend: str = "triton", new_shapes=(), facts: dict | None = None) -> dict:
    """The report row of one op × shape × dtype (see the module docstring)."""
    spec = get_spec(op)
    params = dict(params or {})
    rec, args, kwargs = measure(op, shape, params, dtype, device=device, backend=backend)
    x_bytes = _input_bytes(spec, args)
    row = {"op": op, "shape": list(shape), "params": params, "dtype": str(dtype).replace("torch.", ""),
           "backend": backend, "input_bytes": x_bytes}
    for ph in ("fwd", "bwd"):
        tl_, cu, at = rec.triton(ph), rec.cuda_ops(ph), rec.aten_ops(ph)
        row[ph] = {
            "triton_launches": len(tl_), "cuda_launches": len(cu), "aten_launches": len(at),
            "host_syncs": rec.host_syncs(ph),
            "triton_bytes": sum(l.bytes for l in tl_), "cuda_bytes": sum(c.bytes for c in cu),
            "aten_bytes": sum(a.bytes for a in at),
            "compulsory_bytes": int(spec.bytes(ph, args, kwargs)),
            "cuda_ops": _counts(c.name for c in cu), "aten_ops": _counts(a.name for a in at),
        }
    kinds = ("triton", "cuda", "aten")
    mb = sum(row[p][f"{k}_bytes"] for p in ("fwd", "bwd") for k in kinds)
    cb = row["fwd"]["compulsory_bytes"] + row["bwd"]["compulsory_bytes"]
    row["launches"] = sum(row[p][f"{k}_launches"] for p in ("fwd", "bwd") for k in kinds)
    row["modeled_bytes"] = mb
    row["compulsory_bytes"] = cb
    row["modeled_x"] = mb / x_bytes
    row["compulsory_x"] = cb / x_bytes
    row["host_syncs"] = rec.host_syncs()
    base = rec.variants()
    row["jit_variants"] = len(base)
    added = set()
    for s in new_shapes:
        r2, _, _ = measure(op, s, params, dtype, device=device, backend=backend, warm=False)
        added |= r2.variants() - base
    row["jit_new_shapes"] = [list(s) for s in new_shapes]
    row["jit_variants_added"] = len(added)
    row["kernels"] = _kernel_rows(rec, facts)
    row["predicted"] = _predict(rec, facts)
    x_elems = x_bytes // max(1, max(t.element_size() for i in spec.grad_inputs for t in tensor_leaves(args[i])))
    ti = row["predicted"]["thread_instructions"]
    row["sass_per_element"] = ti / x_elems if ti is not None else None
    return row


def _counts(names) -> dict:
    out: dict = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _variant_id(l) -> tuple:
    return (l.kernel, l.key)


def _kernel_rows(rec, facts) -> list[dict]:
    rows: dict = {}
    for l in rec.launches:
        r = rows.setdefault(_variant_id(l), {
            "kernel": l.kernel, "num_warps": l.num_warps, "constexprs": {k: _plain(v) for k, v in l.constexprs.items()},
            "signature": l.signature, "launches": 0, "programs": 0, "bytes": 0})
        r["launches"] += 1
        r["programs"] += l.programs
        r["bytes"] += l.bytes
        f = (facts or {}).get(_variant_id(l))
        if f is not None:
            r["facts"] = f
    return list(rows.values())


def _plain(v):
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


# Iterations per program of each kernel's main (largest) loop, from its launch arguments; a
# kernel not listed is counted as if its loops ran once (a lower bound of its issue time).
_LOOP_TRIPS = {
    "_lp_analysis_kernel": lambda s, c: s["ROWS"] + 7,
    "_lp_synthesis_kernel": lambda s, c: s["ROWS"] + 7,
    "_count_kernel": lambda s, c: _cdiv(s["CHUNK"], c["BLOCK_N"]) * _cdiv(s["L"], c["BLOCK_L"]),
    "_reproject_grad_table_kernel": lambda s, c: _cdiv(s["CHUNK"], c["BLOCK_N"]) * _cdiv(s["L"], c["BLOCK_L"]),
    "_minmax_kernel": lambda s, c: _cdiv(s["CHUNK"], c["BLOCK_N"]),
    "_reproject_kernel": lambda s, c: _cdiv(s["D"], c["BLOCK_D"]),
    "_reproject_grad_s_kernel": lambda s, c: _cdiv(s["D"], c["BLOCK_D"]),
    "_cooc_atomic_kernel": lambda s, c: s["NUM_OFF"],
    "_cooc_backward_kernel": lambda s, c: s["NUM_OFF"],
}


def loop_trips(launch) -> int:
    """Main-loop iterations per program of a recorded launch (1 when unknown)."""
    f = _LOOP_TRIPS.get(launch.kernel)
    if f is None:
        return 1
    try:
        return max(1, int(f(launch.scalars, launch.constexprs)))
    except (KeyError, TypeError, ZeroDivisionError):
        return 1


def _predict(rec, facts) -> dict:
    """Predicted H200 milliseconds: bandwidth-bound, issue-bound and their per-launch max."""
    bw = issue = total = 0.0
    thread_instr = 0
    issue_known = True
    for l in rec.launches:
        t_bw = l.bytes / H200_COPY_BW
        f = (facts or {}).get(_variant_id(l))
        sass = f.get("sass_total") if f else None
        if sass is not None:
            sass += (loop_trips(l) - 1) * f.get("loop_body", 0)
        if sass is None:
            issue_known = False
            t_is = 0.0
        else:
            t_is = sass * l.num_warps * l.programs / H200_WARP_ISSUE
            thread_instr += sass * 32 * l.num_warps * l.programs
        bw += t_bw
        issue += t_is
        total += max(t_bw, t_is)
    for c in rec.cuda:  # bytes only: the launch geometry is chosen inside the C++ launcher
        issue_known = False
        bw += c.bytes / H200_COPY_BW
        total += c.bytes / H200_COPY_BW
    for a in rec.aten:
        bw += a.bytes / H200_COPY_BW
        total += a.bytes / H200_COPY_BW
    return {"bandwidth_ms": bw * 1e3, "issue_ms": issue * 1e3 if issue_known else None,
            "predicted_ms": total * 1e3, "issue_known": issue_known,
            "thread_instructions": thread_instr if issue_known else None}


# --------------------------------------------------------------------------- compile facts
def _family(l) -> tuple:
    """A kernel, its argument dtypes and register cap: the variants that share a compile-facts
    representative."""
    return (l.kernel, tuple(sorted(l.signature.items())), l.maxnreg)


def compile_facts_for(recordings) -> tuple[dict, str]:
    """``({(kernel, key): facts dict}, note)`` for every Triton variant the recordings launched.

    Compiling every variant for sm_90 takes minutes each on a small CPU, so one representative
    per kernel and argument dtypes -- the variant launching the most programs -- is compiled by
    :mod:`sstkd.benchmarks.compile_facts` and its facts stand for its siblings (which differ only
    in constexpr switches such as the polyphase split or the operand layout). Facts are cached
    in memory per process. Empty dict and the reason when that module or its tools are missing.
    """
    try:
        from sstkd.benchmarks import compile_facts as cf
    except ImportError as e:
        return {}, f"compile facts unavailable: {e}"
    reps: dict = {}
    members: dict = {}
    for rec in recordings:
        for l in rec.launches:
            fam = _family(l)
            members.setdefault(fam, set()).add(_variant_id(l))
            if fam not in reps or l.programs > reps[fam].programs:
                reps[fam] = l
    todo = [fam for fam in reps if _variant_id(reps[fam]) not in _FACTS_CACHE]
    jobs = [(reps[f].fn, reps[f].signature, reps[f].constexprs, 90, reps[f].num_warps, reps[f].num_stages)
            + ((reps[f].maxnreg,) if reps[f].maxnreg is not None else ()) for f in todo]
    missing = set()
    if jobs:
        for fam, f in zip(todo, cf.compile_facts_many(jobs)):
            body = max((lp.instructions for lp in f.loops), default=0) if f.loops else 0
            d = {"registers": f.registers, "spill_bytes": f.spills, "stack": f.stack, "shared": f.shared,
                 "loop_body": body,
                 "blocks_per_sm": f.blocks_per_sm(), "sass_total": sum(f.sass.values()) if f.sass else None,
                 "representative": _plain_constexprs(reps[fam].constexprs), "missing": dict(f.missing)}
            if f.sass:
                s = f.summary()
                d.update(sass_fma=s["fma"], sass_int=s["int"], sass_ldg=s["ldg"], sass_stg=s["stg"])
            _FACTS_CACHE[_variant_id(reps[fam])] = d
    out = {}
    for fam, rep in reps.items():
        d = _FACTS_CACHE[_variant_id(rep)]
        missing.update(f"{k}: {v}" for k, v in d.get("missing", {}).items())
        for vid in members[fam]:
            out[vid] = d
    return out, "; ".join(sorted(missing)) or (
        f"sm_90, one representative variant per kernel and argument dtypes ({len(reps)} compiled)")


_FACTS_CACHE: dict = {}


def _plain_constexprs(ce: dict) -> dict:
    return {k: _plain(v) for k, v in ce.items()}


# --------------------------------------------------------------------------- CUDA extension facts
_RESOURCES = re.compile(r"Function (\S+?):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _demangle(names: list[str]) -> list[str]:
    """``c++filt`` names (the mangled ones when it is missing)."""
    path = shutil.which("c++filt")
    if path is None or not names:
        return list(names)
    try:
        out = subprocess.run([path], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return list(names)
    lines = out.splitlines()
    return lines if len(lines) == len(names) else list(names)


def _base_name(demangled: str) -> str:
    """``lp_level_kernel`` of ``void sstkd::(anon)::lp_level_kernel<...>(...)``."""
    head = re.split(r"[<(]", demangled.replace("(anonymous namespace)::", ""), maxsplit=1)[0]
    words = head.rsplit("::", 1)[-1].split()
    return words[-1] if words else demangled


def cuda_kernel_facts(arch: int = 90) -> tuple[list[dict], str]:
    """sm_<arch> facts of every kernel in the loaded CUDA extension, grouped by kernel (template
    instances together): ``([{kernel, instances, registers: [min, max], stack, local, shared,
    sass: [min, max], fma: max, int: max}], note)``, read from the built library with the
    ``cuobjdump`` bundled in the triton wheel (registers, stack / local = spills, static shared
    memory, static SASS per thread). The extension's launch geometry is chosen in C++, so these
    facts do not enter the predicted times. Empty list and the reason when a tool or the sm_<arch>
    code is missing. Loads (or JIT-builds) the extension.
    """
    from sstkd.benchmarks import compile_facts as cf
    from sstkd.ops.backends import cuda

    lib = getattr(cuda.get(), "__file__", None)
    if not lib or not os.path.isfile(lib):
        return [], f"CUDA kernel facts unavailable: the extension has no library file ({lib!r})"
    tool, why = cf.tool_path("cuobjdump")
    if tool is None:
        return [], f"CUDA kernel facts unavailable: {why}"
    sm = f"sm_{arch}"
    with open(lib, "rb") as f:
        so = {"so": f.read()}
    rc, res = cf.run_tool(tool, ["--dump-resource-usage", "-arch", sm, "{so}"], so)
    found = _RESOURCES.findall(res) if rc == 0 else []
    if not found:
        return [], f"CUDA kernel facts unavailable: no {sm} code in {lib} (cuobjdump: {res.strip()[:200]})"
    rc, sass = cf.run_tool(tool, ["-sass", "-arch", sm, "{so}"], so)
    listings = {}  # mangled name -> its SASS listing
    for part in re.split(r"\n\s*Function : ", "\n" + sass)[1:] if rc == 0 else ():
        head, _, body = part.partition("\n")
        listings[head.strip()] = body
    groups: dict = {}
    for (mangled, reg, stack, shared, local), name in zip(found, _demangle([f[0] for f in found])):
        mix = cf.parse_sass(listings[mangled])[0] if mangled in listings else {}
        g = groups.setdefault(_base_name(name), {"kernel": _base_name(name), "instances": 0, "regs": [], "stack": 0,
                                                 "local": 0, "shared": 0, "sass": [], "fma": 0, "int": 0})
        g["instances"] += 1
        g["regs"].append(int(reg))
        g["stack"] = max(g["stack"], int(stack))
        g["local"] = max(g["local"], int(local))
        g["shared"] = max(g["shared"], int(shared))
        if mix:
            g["sass"].append(sum(mix.values()))
            g["fma"] = max(g["fma"], sum(mix.get(f, 0) for f in cf.FMA_OPS))
            g["int"] = max(g["int"], sum(mix.get(f, 0) for f in cf.INT_OPS))
    rows = []
    for g in groups.values():
        rows.append({"kernel": g["kernel"], "instances": g["instances"], "registers": [min(g["regs"]), max(g["regs"])],
                     "stack": g["stack"], "local": g["local"], "shared": g["shared"],
                     "sass": [min(g["sass"]), max(g["sass"])] if g["sass"] else None,
                     "fma": g["fma"] if g["sass"] else None, "int": g["int"] if g["sass"] else None})
    note = f"{sm} code of {os.path.basename(lib)} read with {os.path.basename(tool)}"
    if not listings:
        note += f" (no SASS listing: counts n/a; cuobjdump -sass: {sass.strip()[:200]})"
    return rows, note


def _format_cuda_kernels(rows: list[dict], note: str) -> list[str]:
    if not rows:
        return ["", f"CUDA kernels: {note}"]
    lines = ["", f"CUDA extension kernels ({note}; template instances grouped; not used by the predicted times):",
             "", "| kernel | instances | registers | stack / local bytes | static shared bytes | "
             "static SASS (max FFMA / integer) |", "|---|---|---|---|---|---|"]
    span = lambda v: "n/a" if v is None else (f"{v[0]}" if v[0] == v[1] else f"{v[0]}-{v[1]}")  # noqa: E731
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['instances']} | {span(r['registers'])} | {r['stack']} / {r['local']} | "
                     f"{r['shared']} | {span(r['sass'])} ({r['fma']} / {r['int']}) |")
    return lines


# --------------------------------------------------------------------------- the report
def _check_names(ops, dtypes, backend="triton", cases=TRAINING_CASES):
    known = [c[0] for c in cases]
    bad = [o for o in ops if o not in known]
    if bad:
        raise ValueError(f"ops: unknown op(s) {bad}; choose from {known}")
    if not isinstance(backend, str) or backend not in MEASURABLE:
        raise ValueError(f"backend: the cost report measures {MEASURABLE}, got {backend!r}")
    bad = [o for o in ops if not implemented(backend, [o])]
    if bad:
        raise ValueError(f"ops: backend {backend!r} does not implement {bad}; it implements "
                         f"{implemented(backend, known)}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"dtypes: unknown dtype(s) {bad}; choose from {list(DTYPES)}")


def cost_report(ops=None, dtypes=("fp32", "bf16"), *, cases=TRAINING_CASES, device="meta",
                backend: str = "triton", with_facts: bool = True, new_shapes: bool = True) -> dict:
    """The cost report of ``ops`` (default: all in ``cases`` that ``backend`` implements) × ``dtypes``
    at the ``cases`` shapes.

    Returns ``{"rows": [case_row ...], "facts_note": str, "model": {...}}``. Errors:
    ``ValueError`` for unknown names or an op ``backend`` does not implement; ``RuntimeError``
    when ``backend`` cannot be measured here (:func:`check_measurable`).
    """
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    if ops is None:
        ops = implemented(backend, [c[0] for c in cases]) if backend in MEASURABLE else []
    ops = list(ops)
    _check_names(ops, dtypes, backend, cases)
    if device != "meta" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("device: recording Triton launches on real tensors needs TRITON_INTERPRET=1")
    check_measurable(backend, device)
    chosen = [c for c in cases if c[0] in ops]
    facts, note = {}, "compile facts not requested"
    if with_facts:
        recs = [measure(op, shape, params, DTYPES[d], device=device, backend=backend)[0]
                for op, shape, params in chosen for d in dtypes]
        facts, note = compile_facts_for(recs)
    rows = []
    for op, shape, params in chosen:
        extra = NEW_SHAPES.get(len(shape), ()) if new_shapes else ()
        for d in dtypes:
            rows.append(case_row(op, shape, params, DTYPES[d], device=device, backend=backend,
                                 new_shapes=extra, facts=facts))
    report = {"rows": rows, "facts_note": note,
              "model": {"copy_bandwidth": H200_COPY_BW, "warp_issue_per_s": H200_WARP_ISSUE, "device": device,
                        "backend": backend}}
    if with_facts and any(r[ph]["cuda_launches"] for r in rows for ph in ("fwd", "bwd")):
        report["cuda_kernels"], report["cuda_facts_note"] = cuda_kernel_facts()
    return report


def _fmt_bytes_x(row) -> str:
    return f"{row['modeled_x']:.1f}X / {row['compulsory_x']:.1f}X"


def format_markdown(report: dict) -> str:
    """The report as Markdown: one table of ops, one of kernel variants."""
    cuda = any(r[ph].get("cuda_launches", 0) for r in report["rows"] for ph in ("fwd", "bwd"))
    kinds = ("cuda", "triton", "aten") if cuda else ("triton", "aten")
    label = "+".join({"cuda": "CUDA", "triton": "Triton", "aten": "aten"}[k] for k in kinds)
    lines = [f"| op | shape | dtype | launches fwd ({label}) | launches bwd ({label}) | bytes modeled / "
             "compulsory (X = input) | host syncs | JIT variants (+ new shapes) | SASS per input element | "
             "predicted H200 ms (bytes; issue) | compulsory floor ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        p = r["predicted"]
        issue = f"{p['issue_ms']:.3f}" if p["issue_ms"] is not None else "n/a"
        fwd, bwd = ("+".join(str(r[ph].get(f"{k}_launches", 0)) for k in kinds) for ph in ("fwd", "bwd"))
        lines.append(
            f"| {r['op']} | {tuple(r['shape'])} | {r['dtype']} | {fwd} | {bwd} | "
            f"{_fmt_bytes_x(r)} | {r['host_syncs']} | {r['jit_variants']} (+{r['jit_variants_added']}) | "
            f"{_fmt_opt(r.get('sass_per_element'))} | "
            f"{p['predicted_ms']:.3f} ({p['bandwidth_ms']:.3f}; {issue}) | "
            f"{r['compulsory_bytes'] / H200_COPY_BW * 1e3:.3f} |")
    reps: dict = {}
    for r in report["rows"]:
        for k in r["kernels"]:
            f = k.get("facts")
            if f is None:
                continue
            dts = "/".join(sorted({t[1:] for t in k["signature"].values() if t.startswith("*")}))
            key = (k["kernel"], dts, json.dumps(f.get("representative"), sort_keys=True))
            entry = reps.setdefault(key, {"f": f, "warps": k["num_warps"], "ops": set(), "variants": 0})
            entry["ops"].add(r["op"])
            entry["variants"] += 1
    if reps:
        lines += ["", "Compile facts on sm_90 (one representative variant per kernel and pointer dtypes; "
                  "constexprs of the representative):", "",
                  "| kernel | pointer dtypes | representative constexprs | warps | registers | spill bytes | "
                  "blocks/SM | SASS per thread (FFMA / integer) | used by |", "|---|---|---|---|---|---|---|---|---|"]
        for (name, dts, _), e in sorted(reps.items()):
            f = e["f"]
            lines.append(f"| {name} | {dts} | {_short(f.get('representative') or {})} | {e['warps']} | "
                         f"{f['registers']} | {f['spill_bytes']} | {f['blocks_per_sm']} | "
                         f"{f['sass_total']} ({f.get('sass_fma')} / {f.get('sass_int')}) | "
                         f"{', '.join(sorted(e['ops']))} |")
    if cuda:
        lines += ["", "CUDA launches: one per call of an extension op (`torch.ops.sstkd.*`), bytes = its tensor "
                  "inputs and outputs. Their issue time is not modeled (launch geometry is chosen in C++): they "
                  "count bytes / copy bandwidth only, so a row with CUDA launches has no issue column; its "
                  "Triton launches keep max(bytes, issue)."]
    if "cuda_kernels" in report:
        lines += _format_cuda_kernels(report["cuda_kernels"], report.get("cuda_facts_note", ""))
    if report.get("facts_note"):
        lines += ["", f"Compile facts: {report['facts_note']}"]
    return "\n".join(lines) + "\n"


def _fmt_opt(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _short(ce: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ce.items() if k not in ("PREC",))


# --------------------------------------------------------------------------- Triton or CUDA
# A verdict needs the winner's predicted time at most this fraction of the loser's; closer is a tie.
TIE_RATIO = 0.9
# Assumed GPU time of one launch outside a CUDA graph (launch gap + a tiny kernel's latency: "a few
# microseconds", /work/shared/research/gpu-compile-facts.md). Only the Triton-or-CUDA verdict uses it.
LAUNCH_GAP_S = 2e-6


def predicted_faster(rows: dict) -> dict:
    """Which backend is predicted faster, from ``{backend: row}`` (:func:`case_row` rows, or any dict
    with ``"launches"`` and ``"predicted"``) of the same op, shape and dtype.

    Like is compared with like: each backend's time is its launches × :data:`LAUNCH_GAP_S` plus its
    whole prediction (bytes and issue) when both backends' issue times are modeled, else plus its
    bytes-bound time alone -- the CUDA kernels' issue time is not modeled (:func:`_predict`), and a
    bytes-only lower bound against a full prediction would favour them for nothing. The launch term
    counts what the per-launch roofline leaves out (a backend that saves bytes with many more small
    launches is not faster). A winner needs at most :data:`TIE_RATIO` of the other's time; otherwise
    it is a tie (``"faster": None``).

    Returns ``{"faster": backend or None, "basis": "bytes+issue" | "bytes", "ms": {backend: ms}}``.
    """
    full = all(r["predicted"]["issue_known"] for r in rows.values())
    key = "predicted_ms" if full else "bandwidth_ms"
    ms = {b: float(r["predicted"][key]) + r["launches"] * LAUNCH_GAP_S * 1e3 for b, r in rows.items()}
    order = sorted(ms, key=ms.get)
    faster = order[0] if len(order) > 1 and ms[order[0]] <= TIE_RATIO * ms[order[1]] else None
    return {"faster": faster, "basis": "bytes+issue" if full else "bytes", "ms": ms}


def compare_backends(ops=None, dtypes=("fp32", "bf16"), *, cases=TRAINING_CASES, backends=("triton", "cuda"),
                     facts: dict | None = None) -> dict:
    """Measure the ``ops`` (default: every op of ``cases`` that all ``backends`` implement) with each of
    ``backends`` on meta tensors and say which is predicted faster, per op × dtype and per op (the
    times summed over ``dtypes``).

    Returns ``{"rows": [{op, shape, params, dtype, backends: {b: {launches, modeled_x, predicted}},
    faster, basis, ms}], "ops": {op: {faster, basis, ms, order}}, "model": {...}}``; ``order`` is the
    preference of ``backend="auto"`` it implies (a tie keeps the default: Triton first).
    Errors as :func:`cost_report`.
    """
    from sstkd.ops import dispatch

    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    backends = tuple(backends)
    if len(backends) < 2 or len(set(backends)) != len(backends):
        raise ValueError(f"backends: two or more distinct backends to compare, got {backends!r}")
    known = [c[0] for c in cases]
    both = [o for o in known if all(implemented(b, [o]) for b in backends if b in MEASURABLE)]
    ops = list(ops) if ops is not None else both
    for b in backends:
        _check_names(ops, dtypes, b, cases)
    for b in backends:
        check_measurable(b)
    rows, per_op = [], {}
    for op, shape, params in (c for c in cases if c[0] in ops):
        for d in dtypes:
            got = {b: case_row(op, shape, params, DTYPES[d], backend=b, facts=facts) for b in backends}
            verdict = predicted_faster(got)
            rows.append({"op": op, "shape": list(shape), "params": params, "dtype": d, **verdict,
                         "backends": {b: {"launches": r["launches"], "modeled_x": r["modeled_x"],
                                          "predicted": r["predicted"]} for b, r in got.items()}})
            per_op.setdefault(op, []).append(got)
    summary = {}
    for op, cases_ in per_op.items():
        full = all(r["predicted"]["issue_known"] for got in cases_ for r in got.values())
        summed = {b: {"launches": sum(got[b]["launches"] for got in cases_), "predicted": {
            "predicted_ms": sum(got[b]["predicted"]["predicted_ms"] for got in cases_),
            "bandwidth_ms": sum(got[b]["predicted"]["bandwidth_ms"] for got in cases_),
            "issue_known": full}} for b in backends}
        verdict = predicted_faster(summed)
        default = [b for b in dispatch.DEFAULT_AUTO_ORDER if b in backends]
        first = [verdict["faster"]] if verdict["faster"] else []
        verdict["order"] = first + [b for b in default if b not in first]
        summary[op] = verdict
    return {"rows": rows, "ops": summary, "dtypes": list(dtypes),
            "model": {"copy_bandwidth": H200_COPY_BW, "warp_issue_per_s": H200_WARP_ISSUE, "device": "meta",
                      "launch_gap_s": LAUNCH_GAP_S, "tie_ratio": TIE_RATIO, "backends": list(backends)}}


def format_comparison(comparison: dict) -> str:
    """The "predicted faster" section: per op × dtype the predicted H200 time of each backend and the winner."""
    backends = comparison["model"]["backends"]
    lines = ["| op | shape | dtype | " + " | ".join(f"{b} launches / modeled X" for b in backends) + " | "
             + " | ".join(f"{b} predicted ms" for b in backends) + " | basis | predicted faster |",
             "|---|---|---|" + "---|" * (2 * len(backends) + 2)]
    for r in comparison["rows"]:
        cells = [f"{r['backends'][b]['launches']} / {r['backends'][b]['modeled_x']:.1f}X" for b in backends]
        cells += [f"{r['ms'][b]:.3f}" for b in backends]
        lines.append(f"| {r['op']} | {tuple(r['shape'])} | {r['dtype']} | " + " | ".join(cells)
                     + f" | {r['basis']} | {r['faster'] or 'tie'} |")
    lines += ["", f"Per op ({' + '.join(comparison['dtypes'])} summed) and the order `backend=\"auto\"` follows "
              "until committed GPU timings exist:", ""]
    for op, v in comparison["ops"].items():
        ms = ", ".join(f"{b} {t:.3f} ms" for b, t in v["ms"].items())
        lines.append(f"* {op}: {v['faster'] or 'tie'} ({v['basis']}: {ms}) -> {' > '.join(v['order'])}")
    lines += ["", f"Predicted ms here = launches x {LAUNCH_GAP_S * 1e6:g} us (assumed launch gap, no CUDA graph) "
              "+ the report's prediction; basis `bytes`: the CUDA kernels' issue time is not modeled, so both "
              f"are compared on bytes / copy bandwidth alone. A winner needs <= {TIE_RATIO:g}x the other's "
              "time, else a tie (auto keeps Triton first)."]
    return "\n".join(lines) + "\n"


def write_prediction(comparison: dict, out_dir: str = os.path.join("bench", "results")) -> tuple[str, str]:
    """``backend-prediction.{json,md}`` in ``out_dir`` (replaced): the verdicts of
    :func:`compare_backends`; the JSON is what ``backend="auto"`` reads. Returns the two paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, PREDICTION_FILE)
    md_path = json_path[:-len(".json")] + ".md"
    with open(json_path, "w") as f:
        json.dump({"kind": "sstkd static prediction", **comparison,
                   "written": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=1, default=str)
    with open(md_path, "w") as f:
        f.write("# Triton or CUDA: which is predicted faster on an H200\n\n"
                "From `sstkd cost --compare` (kernels recorded on meta tensors, not executed). "
                "`backend=\"auto\"` follows the per-op order below until committed GPU timings exist "
                "(`sstkd info` says which it follows). See bench/README.md.\n\n")
        f.write(format_comparison(comparison))
    from sstkd.ops import dispatch

    dispatch.reload_preferences()  # this process follows the new verdicts too
    return json_path, md_path


def result_paths(out_dir: str, date: str | None = None, tag: str | None = None,
                 backend: str = "triton") -> tuple[str, str]:
    """``static-<date>[-<tag>].{md,json}`` in ``out_dir`` for the Triton report, ``<backend>-static-...``
    for another backend's (``sstkd gpu-check`` reads every ``static-*.json`` as a Triton report)."""
    date = date or datetime.date.today().strftime("%Y%m%d")
    if backend not in _FILE_PREFIX:
        raise ValueError(f"backend: the cost report measures {MEASURABLE}, got {backend!r}")
    prefix = _FILE_PREFIX[backend]
    base = os.path.join(out_dir, f"{prefix}-{date}" + (f"-{tag}" if tag else ""))
    return base + ".md", base + ".json"


def write_results(report: dict, out_dir: str = os.path.join("bench", "results"), date: str | None = None,
                  tag: str | None = None):
    """:func:`result_paths` of the report's backend in ``out_dir`` (the JSON records when it was written,
    which is how readers find the newest); returns the two paths."""
    date = date or datetime.date.today().strftime("%Y%m%d")
    backend = report.get("model", {}).get("backend", "triton")
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = result_paths(out_dir, date, tag, backend)
    with open(json_path, "w") as f:
        json.dump({**report, "written": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=1,
                  default=str)
    with open(md_path, "w") as f:
        f.write(f"# Static GPU cost report ({date}, backend {backend}"
                + ")\n\nCounts from `sstkd cost` (kernels recorded at their GPU launch geometry, not executed); "
                f"predicted times on an H200 at {H200_COPY_BW / 1e12:.1f} TB/s copy bandwidth and "
                f"{H200_WARP_ISSUE:.2e} warp-instructions/s. See bench/README.md.\n\n")
        f.write(format_markdown(report))
    return md_path, json_path


# --------------------------------------------------------------------------- compile counts
def train_step_compiles(crops=((512, 512), (512, 1024)), batch: int = 8, device="meta") -> dict:
    """JIT variants of one PSPNet-R101 -> R18 ``SSTKDLoss`` training step (``sstkd`` preset, Triton
    ops) at the first crop, and what each further crop adds: ``{"first": n, "added": [m, ...]}``."""
    import torch.nn.functional as F

    from sstkd.benchmarks.train_step import TrainStepConfig, build_pair
    from sstkd.distill import FeatureTap, SSTKDConfig, SSTKDLoss

    seen, counts = set(), []
    for crop in crops:
        cfg = TrainStepConfig(batch=batch, crop=tuple(crop))
        student, teacher, batches = build_pair(torch.device(device), cfg)
        crit = SSTKDLoss(student.backbone.channels[0], teacher.backbone.channels[0], cfg.num_classes,
                         SSTKDConfig.preset("sstkd", backend="triton")).to(device)
        s_tap = FeatureTap(student, {"low": "backbone.layer1"})
        t_tap = FeatureTap(teacher, {"low": "backbone.layer1"}, detach=True)
        x, y = batches[0]
        with record() as rec:
            out = student(x)
            with torch.no_grad():
                t_out = teacher(x)
            loss = F.cross_entropy(out["out"], y) + crit(out["out"], t_out["out"], s_tap["low"], t_tap["low"],
                                                         target=y)["loss"]
            loss.backward()
        s_tap.remove()
        t_tap.remove()
        v = rec.variants()
        counts.append(len(v - seen))
        seen |= v
    return {"crops": [list(c) for c in crops], "first": counts[0], "added": counts[1:]}


def verify_compiles(full: bool = True, device="meta") -> int:
    """JIT variants ``sstkd verify`` (Triton; fp32, fp16, bf16; every layout) compiles on a GPU
    (``full``: its GPU shapes) -- counted by recording the matrix, values are not checked."""
    from sstkd import verify

    with record() as rec:
        verify.run_matrix(["triton"], [torch.float32, torch.float16, torch.bfloat16], torch.device(device),
                          small=not full, log=lambda *a: None)
    return len(rec.variants())
