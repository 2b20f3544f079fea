"""The GPU cost of every op, read on the CPU: launches, bytes, host syncs, JIT variants, compile facts.

:func:`cost_report` runs each op (forward, then backward) of the Triton
backend with :func:`sstkd.benchmarks.recorder.record`: the kernels are *recorded*
at their GPU launch geometry, not executed, and the tensors are ``"meta"``
tensors by default (sizes without storage), so a training-shape report takes
seconds and no memory. Per op × shape × dtype it reports

* launches forward / backward, Triton and aten separately (aten: every
  dispatched op that is not a view, an allocation or a metadata query);
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
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os

import torch

from sstkd._util import tensor_leaves
from sstkd.benchmarks.recorder import record

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
    (after one unrecorded call that fills the ops' caches), with the op's args and kwargs."""
    spec = get_spec(op)
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
        tl_, at = rec.triton(ph), rec.aten_ops(ph)
        row[ph] = {
            "triton_launches": len(tl_), "aten_launches": len(at), "host_syncs": rec.host_syncs(ph),
            "triton_bytes": sum(l.bytes for l in tl_), "aten_bytes": sum(a.bytes for a in at),
            "compulsory_bytes": int(spec.bytes(ph, args, kwargs)),
            "aten_ops": _counts(a.name for a in at),
        }
    mb = sum(row[p]["triton_bytes"] + row[p]["aten_bytes"] for p in ("fwd", "bwd"))
    cb = row["fwd"]["compulsory_bytes"] + row["bwd"]["compulsory_bytes"]
    row["launches"] = sum(row[p]["triton_launches"] + row[p]["aten_launches"] for p in ("fwd", "bwd"))
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


# --------------------------------------------------------------------------- the report
def _check_names(ops, dtypes):
    known = [c[0] for c in TRAINING_CASES]
    bad = [o for o in ops if o not in known]
    if bad:
        raise ValueError(f"ops: unknown op(s) {bad}; choose from {known}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"dtypes: unknown dtype(s) {bad}; choose from {list(DTYPES)}")


def cost_report(ops=None, dtypes=("fp32", "bf16"), *, cases=TRAINING_CASES, device="meta",
                backend: str = "triton", with_facts: bool = True, new_shapes: bool = True) -> dict:
    """The cost report of ``ops`` (default: all in ``cases``) × ``dtypes`` at the ``cases`` shapes.

    Returns ``{"rows": [case_row ...], "facts_note": str, "model": {...}}``.
    """
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    ops = list(ops) if ops is not None else [c[0] for c in cases]
    _check_names(ops, dtypes)
    if device != "meta" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError("device: recording Triton launches on real tensors needs TRITON_INTERPRET=1")
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
    return {"rows": rows, "facts_note": note,
            "model": {"copy_bandwidth": H200_COPY_BW, "warp_issue_per_s": H200_WARP_ISSUE, "device": device,
                      "backend": backend}}


def _fmt_bytes_x(row) -> str:
    return f"{row['modeled_x']:.1f}X / {row['compulsory_x']:.1f}X"


def format_markdown(report: dict) -> str:
    """The report as Markdown: one table of ops, one of kernel variants."""
    lines = ["| op | shape | dtype | launches fwd (Triton+aten) | launches bwd (Triton+aten) | bytes modeled / "
             "compulsory (X = input) | host syncs | JIT variants (+ new shapes) | SASS per input element | "
             "predicted H200 ms (bytes; issue) | compulsory floor ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        p = r["predicted"]
        issue = f"{p['issue_ms']:.3f}" if p["issue_ms"] is not None else "n/a"
        lines.append(
            f"| {r['op']} | {tuple(r['shape'])} | {r['dtype']} | {r['fwd']['triton_launches']}+"
            f"{r['fwd']['aten_launches']} | {r['bwd']['triton_launches']}+{r['bwd']['aten_launches']} | "
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
    if report.get("facts_note"):
        lines += ["", f"Compile facts: {report['facts_note']}"]
    return "\n".join(lines) + "\n"


def _fmt_opt(v) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _short(ce: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ce.items() if k not in ("PREC",))


def result_paths(out_dir: str, date: str | None = None, tag: str | None = None) -> tuple[str, str]:
    """``static-<date>[-<tag>].{md,json}`` in ``out_dir``."""
    date = date or datetime.date.today().strftime("%Y%m%d")
    base = os.path.join(out_dir, f"static-{date}" + (f"-{tag}" if tag else ""))
    return base + ".md", base + ".json"


def write_results(report: dict, out_dir: str = os.path.join("bench", "results"), date: str | None = None,
                  tag: str | None = None):
    """``static-<date>[-<tag>].{md,json}`` in ``out_dir`` (the JSON records when it was written, which
    is how readers find the newest); returns the two paths."""
    date = date or datetime.date.today().strftime("%Y%m%d")
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = result_paths(out_dir, date, tag)
    base = md_path[:-len(".md")]
    with open(json_path, "w") as f:
        json.dump({**report, "written": datetime.datetime.now().isoformat(timespec="seconds")}, f, indent=1,
                  default=str)
    with open(base + ".md", "w") as f:
        f.write(f"# Static GPU cost report ({date})\n\n"
                "Counts from `sstkd cost` (kernels recorded at their GPU launch geometry, not executed); "
                f"predicted times on an H200 at {H200_COPY_BW / 1e12:.1f} TB/s copy bandwidth and "
                f"{H200_WARP_ISSUE:.2e} warp-instructions/s. See bench/README.md.\n\n")
        f.write(format_markdown(report))
    return base + ".md", base + ".json"


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
