"""GPU compile facts of a Triton kernel, measured without a GPU.

:func:`compile_facts` compiles a ``@triton.jit`` kernel for ``sm_<arch>`` at
its real launch configuration (argument types, constexprs, ``num_warps``,
``num_stages``) with ``triton.compile(ASTSource(...), target=GPUTarget(...))``
and reads the result with the tools that ship inside the triton wheel
(``<triton>/backends/nvidia/bin/``):

* ``ptxas -v`` on the kernel's PTX (the flags triton itself uses): registers,
  spill stores / loads, stack frame;
* ``cuobjdump -res-usage`` on the cubin: registers, stack, shared, local memory;
* ``cuobjdump -sass`` on the cubin: the static SASS instruction mix, and the
  bodies of the loops (backward branches) the kernel contains.

These are facts about the compiled code, not timings: a kernel without loops
executes each static instruction once per thread, so ``static count × threads
/ outputs per program`` is its instruction count per output element
(:meth:`CompileFacts.per_output`); a kernel that marches a loop is normalised by
its loop body and the outputs one iteration produces
(:meth:`CompileFacts.loop_per_output`).

A missing tool does not raise: its fields stay ``None`` and ``missing`` names
the tool and why (callers that need the numbers, such as the budget tests,
check :attr:`CompileFacts.complete`).

Under ``TRITON_INTERPRET=1`` kernels are interpreter objects that cannot be
compiled, so the compilation runs in a child process with the interpreter off
(the kernel must then be a module-level function of an importable module).

:func:`nvcc_compile_facts` does the same for CUDA C++ kernels (``csrc/``): ``nvcc -cubin
-arch=sm_<arch> -Xptxas -v`` (registers, spills, stack per kernel), then the same
``cuobjdump -res-usage`` / ``-sass`` readings. The cubin and the ptxas log are cached
under ``$SSTKD_CACHE_DIR`` by a hash of the sources, the headers next to them, nvcc and
the flags; every tool's reading of a given PTX or cubin is cached there by a hash of the
tool and the bytes it read (``tool-runs/``: a report or test reads unchanged kernels in
milliseconds instead of a second each).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections import Counter

from sstkd import _util

__all__ = [
    "CompileFacts",
    "LoopFacts",
    "compile_facts",
    "compile_facts_many",
    "tool_path",
    "parse_sass",
    "blocks_per_sm",
    "FMA_OPS",
    "FP_OPS",
    "INT_OPS",
    "MEMORY_OPS",
    "UNIFORM_OPS",
    "facts_from_asm",
    "nvcc_compile_facts",
]

# SASS mnemonic families (the part before the first '.').
# HFMA2 is left out of the multiply-adds: ptxas uses ``HFMA2.MMA`` as a register move.
FMA_OPS = ("FFMA", "DFMA")
FP_OPS = FMA_OPS + ("FMUL", "FADD", "DMUL", "DADD", "HMUL2", "HADD2", "FMNMX", "FSEL", "FSETP", "DSETP",
                    "MUFU", "FCHK", "FRND")
INT_OPS = ("IMAD", "IADD3", "IADD", "IMUL", "LOP3", "LOP", "ISETP", "SHF", "SHL", "SHR", "LEA", "IABS",
           "IMNMX", "VIMNMX", "SEL", "SGXT", "BMSK", "POPC", "FLO", "PRMT", "IDP", "BREV", "VIADD", "VIADDMNMX")
MEMORY_OPS = ("LDG", "STG", "LDS", "STS", "LDL", "STL", "LD", "ST", "ATOMG", "ATOM", "RED", "ATOMS", "LDGSTS",
              "LDSM", "STSM", "UBLKCP", "UTMALDG")
# Uniform-datapath integer ops (one per warp, not per thread): counted apart from INT_OPS.
UNIFORM_OPS = ("UIADD3", "UIMAD", "ULOP3", "USHF", "ULEA", "UISETP", "USEL", "UMOV", "ULDC", "UPRMT", "UFLO",
               "UPOPC", "USGXT", "UBMSK", "UIMNMX", "ULOP", "USHL", "USHR", "UIABS", "UVIMNMX")
# Occupancy limits of sm_80 / sm_90 (per SM).
_REGS_PER_SM = 65536
_MAX_THREADS_PER_SM = {80: 2048, 90: 2048}
_MAX_BLOCKS_PER_SM = 32
_SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}

_TOOLS = ("ptxas", "cuobjdump")


@dataclasses.dataclass
class LoopFacts:
    """A loop of the SASS: the instructions between a label and the backward branch to it."""

    start: int  # index of the first instruction of the body
    end: int  # index of the backward branch
    mix: dict  # mnemonic family -> count in the body

    @property
    def instructions(self) -> int:
        return sum(self.mix.values())


@dataclasses.dataclass
class CompileFacts:
    """What the sm_<arch> compilation of one kernel variant costs per thread (static counts)."""

    kernel: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int | None = None  # per thread
    spill_stores: int | None = None  # bytes per thread
    spill_loads: int | None = None  # bytes per thread
    stack: int | None = None  # bytes of stack frame per thread
    local: int | None = None  # bytes of local memory per thread (cuobjdump)
    shared: int = 0  # bytes of shared memory per block (triton metadata, static + dynamic)
    sass: dict | None = None  # mnemonic family -> static count (NOPs left out)
    loops: list | None = None  # [LoopFacts], in code order
    ptxas_log: str = ""
    missing: dict = dataclasses.field(default_factory=dict)  # tool -> why its facts are absent

    # ------------------------------------------------------------------ derived
    @property
    def threads(self) -> int:
        return 32 * self.num_warps

    @property
    def complete(self) -> bool:
        """Every tool ran: registers, spills and the SASS mix are all known."""
        return not self.missing and None not in (self.registers, self.spill_stores, self.sass)

    @property
    def spills(self) -> int | None:
        """Spill stores + spill loads, bytes per thread."""
        if self.spill_stores is None or self.spill_loads is None:
            return None
        return self.spill_stores + self.spill_loads

    def count(self, families, mix: dict | None = None) -> int:
        """Static instructions of the given mnemonic families (whole kernel, or ``mix``)."""
        mix = self.sass if mix is None else mix
        if mix is None:
            raise RuntimeError(f"{self.kernel}: no SASS ({self.missing.get('cuobjdump', 'not compiled')})")
        if isinstance(families, str):
            families = (families,)
        return sum(mix.get(f, 0) for f in families)

    def summary(self, mix: dict | None = None) -> dict:
        """``total``, ``fma``, ``fmul``, ``fadd``, ``fp``, ``int``, ``ldg``, ``stg``, ``bar``, ... of ``mix``."""
        mix = self.sass if mix is None else mix
        if mix is None:
            raise RuntimeError(f"{self.kernel}: no SASS ({self.missing.get('cuobjdump', 'not compiled')})")
        c = lambda f: self.count(f, mix)  # noqa: E731
        return {
            "total": sum(mix.values()),
            "fma": c(FMA_OPS),
            "fmul": c(("FMUL", "DMUL", "HMUL2")),
            "fadd": c(("FADD", "DADD", "HADD2")),
            "fp": c(FP_OPS),
            "int": c(INT_OPS),
            "uniform": c(UNIFORM_OPS),
            "imad": c("IMAD"),
            "iadd3": c("IADD3"),
            "lop3": c("LOP3"),
            "isetp": c("ISETP"),
            "ldg": c("LDG"),
            "stg": c("STG"),
            "lds": c("LDS"),
            "sts": c("STS"),
            "shared_mem": c(("LDS", "STS", "LDSM", "STSM", "LDGSTS")),
            "local_mem": c(("LDL", "STL")),
            "bar": c("BAR"),
            "atomic": c(("ATOMG", "RED", "ATOM")),
            "bra": c("BRA"),
        }

    def per_output(self, outputs_per_program: int) -> dict:
        """:meth:`summary` of the whole kernel × threads / outputs: dynamic instructions per output
        element of a kernel without loops (each static instruction runs once per thread)."""
        return self._normalise(self.summary(), outputs_per_program, "outputs_per_program")

    def main_loop(self) -> LoopFacts:
        """The loop with the largest body (the row march of a streaming kernel)."""
        if self.loops is None:
            raise RuntimeError(f"{self.kernel}: no SASS ({self.missing.get('cuobjdump', 'not compiled')})")
        if not self.loops:
            raise ValueError(f"{self.kernel}: the compiled kernel has no loop")
        return max(self.loops, key=lambda lp: lp.instructions)

    def loop_per_output(self, outputs_per_iteration: int) -> dict:
        """:meth:`summary` of :meth:`main_loop`'s body × threads / the outputs one iteration of
        the program produces: the steady-state instructions per output element."""
        return self._normalise(self.summary(self.main_loop().mix), outputs_per_iteration, "outputs_per_iteration")

    def _normalise(self, counts: dict, outputs: int, name: str) -> dict:
        if isinstance(outputs, bool) or not isinstance(outputs, int) or outputs <= 0:
            raise ValueError(f"{name}: expected a positive int, got {outputs!r}")
        return {k: v * self.threads / outputs for k, v in counts.items()}

    def blocks_per_sm(self) -> int | None:
        """Resident blocks per SM allowed by registers, threads and shared memory."""
        if self.registers is None:
            return None
        return blocks_per_sm(self.registers, self.threads, self.shared, self.arch)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["threads"] = self.threads
        d["blocks_per_sm"] = self.blocks_per_sm()
        if self.sass is not None:
            d["summary"] = self.summary()
        d.pop("ptxas_log")
        return d


def blocks_per_sm(registers: int, threads: int, shared: int = 0, arch: int = 90) -> int:
    """Resident blocks of ``threads`` threads per SM at ``registers`` per thread (allocated per warp
    in units of 256) and ``shared`` bytes per block, on sm_80 / sm_90."""
    if registers <= 0 or threads <= 0:
        raise ValueError(f"registers / threads: expected positive ints, got {registers}, {threads}")
    warps = -(-threads // 32)
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = (_REGS_PER_SM // regs_per_warp) // warps
    by_threads = _MAX_THREADS_PER_SM.get(arch, 2048) // (warps * 32)
    by_shared = _SHARED_PER_SM.get(arch, 228 * 1024) // shared if shared > 0 else _MAX_BLOCKS_PER_SM
    return min(by_regs, by_threads, by_shared, _MAX_BLOCKS_PER_SM)


# --------------------------------------------------------------------------- tools
def tool_path(name: str) -> tuple[str | None, str]:
    """``(path, "")`` of a tool bundled with triton (``ptxas``, ``cuobjdump``, ``nvdisasm``), or
    ``(None, reason)`` when it is not there or not executable."""
    try:
        import triton
    except ImportError as e:  # pragma: no cover - triton is a dependency
        return None, f"triton is not importable ({e})"
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.isfile(path):
        return None, f"{name} is not bundled with triton {triton.__version__} (looked for {path})"
    if not os.access(path, os.X_OK):
        return None, f"{path} is not executable"
    return path, ""


def _run(cmd: list[str], timeout: int = 300) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)
    return proc.returncode, proc.stdout + proc.stderr


def run_tool(tool: str, args: list[str], inputs: dict[str, bytes]) -> tuple[int, str]:
    """``_run([tool, *args])`` with ``inputs`` (extension -> content) written to ``k.<extension>`` in a
    temporary folder ``{tmp}``, and ``{<extension>}`` in ``args`` replaced by their paths; a successful run's output is cached under
    ``$SSTKD_CACHE_DIR/tool-runs`` by a hash of the tool file, the arguments and the inputs (the
    tools are deterministic: the same cubin always reads the same)."""
    import hashlib

    st = os.stat(tool)
    h = hashlib.sha256("\0".join([os.path.realpath(tool), str(st.st_size), str(st.st_mtime_ns), *args]).encode())
    for name in sorted(inputs):
        h.update(name.encode() + b"\0" + hashlib.sha256(inputs[name]).digest())
    cached = os.path.join(_util.cache_dir(), "tool-runs", h.hexdigest()[:32] + ".txt")
    try:
        with open(cached) as f:
            return 0, f.read()
    except OSError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, f"k.{name}") for name in inputs}
        for name, data in inputs.items():
            with open(paths[name], "wb") as f:
                f.write(data)
        rc, out = _run([tool, *(a.format(**paths, tmp=tmp) for a in args)])
    if rc == 0:
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            with open(f"{cached}.{os.getpid()}.tmp", "w") as f:
                f.write(out)
            os.replace(f"{cached}.{os.getpid()}.tmp", cached)
        except OSError:  # a read-only cache only costs the next run time
            pass
    return rc, out


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Z0-9_.]+)?\s*([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET = re.compile(r"`?\((\.L_x_\d+)\)|(0x[0-9a-f]+)")


def parse_sass(text: str, kernel: str | None = None) -> tuple[dict, list]:
    """Mnemonic-family counts and loops of one kernel's ``cuobjdump -sass`` listing.

    NOPs (alignment padding) are left out. A loop is a branch to an earlier
    instruction, given as an address (``BRA 0x1a0``, as cuobjdump prints) or a
    label (``BRA `(.L_x_0)``, as nvdisasm prints); its body is every instruction from
    the target to the branch. The ``BRA`` to itself after ``EXIT`` is no loop.
    """
    if kernel is not None:  # keep the listing of that function only
        parts = re.split(r"\n\s*Function : ", "\n" + text)
        chosen = [p for p in parts[1:] if p.split("\n", 1)[0].strip() == kernel]
        if chosen:
            text = chosen[0]
    ops: list[str] = []
    addrs: list[int] = []
    labels: dict[str, int] = {}
    branches: list[tuple[int, object]] = []
    for line in text.splitlines():
        lab = _LABEL.match(line)
        if lab:
            labels[lab.group(1)] = len(ops)
            continue
        m = _SASS_LINE.search(line)
        if not m:
            continue
        op = m.group(2)
        if op == "NOP":
            continue
        if op in ("BRA", "JMP"):
            t = _TARGET.search(m.group(3))
            if t:
                branches.append((len(ops), t.group(1) or int(t.group(2), 16)))
        ops.append(op)
        addrs.append(int(m.group(1), 16))
    loops = []
    for at, target in branches:
        if isinstance(target, str):
            start = labels.get(target)
        else:  # first instruction at or after the target address
            start = next((i for i, a in enumerate(addrs) if a >= target), None)
        if start is not None and start < at:  # a branch to itself is the end-of-kernel trap
            loops.append(LoopFacts(start, at, dict(Counter(ops[start:at + 1]))))
    loops.sort(key=lambda lp: (lp.start, lp.end))
    return dict(Counter(ops)), loops


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _read_tools(facts: CompileFacts, name: str, ptx: str, cubin: bytes) -> None:
    arch = f"sm_{facts.arch}{'a' if facts.arch >= 90 else ''}"
    ptxas, why = tool_path("ptxas")
    if ptxas is None:
        facts.missing["ptxas"] = why
    else:
        # the flags triton's own make_cubin passes (minus line info)
        rc, out = run_tool(ptxas, ["-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", "{ptx}", "-o", "{tmp}/v.cubin"],
                            {"ptx": ptx.encode()})
        facts.ptxas_log = out
        regs, stack = _PTXAS_REGS.search(out), _PTXAS_STACK.search(out)
        if rc != 0 or not regs or not stack:
            facts.missing["ptxas"] = f"ptxas -v failed (rc {rc}): {out[-500:]}"
        else:
            facts.registers = int(regs.group(1))
            facts.stack, facts.spill_stores, facts.spill_loads = (int(g) for g in stack.groups())
    cuobjdump, why = tool_path("cuobjdump")
    if cuobjdump is None:
        facts.missing["cuobjdump"] = why
        return
    rc, out = run_tool(cuobjdump, ["-res-usage", "{cubin}"], {"cubin": cubin})
    res = _RES_USAGE.search(out)
    if rc != 0 or not res:
        facts.missing["cuobjdump"] = f"cuobjdump -res-usage failed (rc {rc}): {out[-500:]}"
        return
    reg, stack, _shared, local = (int(g) for g in res.groups())
    facts.local = local
    if facts.registers is None:  # the cubin's own numbers stand in for ptxas -v
        facts.registers, facts.stack = reg, stack
    rc, out = run_tool(cuobjdump, ["-sass", "{cubin}"], {"cubin": cubin})
    if rc != 0 or "Function" not in out:
        facts.missing["cuobjdump"] = f"cuobjdump -sass failed (rc {rc}): {out[-500:]}"
        return
    facts.sass, facts.loops = parse_sass(out, name)


# --------------------------------------------------------------------------- compilation
def _gpu_target(arch: int):
    try:
        from triton.backends.compiler import GPUTarget
    except ImportError:  # pragma: no cover - old triton
        from triton.compiler.compiler import GPUTarget
    return GPUTarget("cuda", int(arch), 32)


def _check_job(kernel, signature, constexprs, arch, num_warps, num_stages, maxnreg=None) -> None:
    if not isinstance(signature, dict) or not all(isinstance(v, str) for v in signature.values()):
        raise TypeError(f"signature: expected a dict of argument name -> type string, got {signature!r}")
    if constexprs is not None and not isinstance(constexprs, dict):
        raise TypeError(f"constexprs: expected a dict, got {type(constexprs).__name__}")
    if isinstance(arch, bool) or arch not in (80, 86, 89, 90):
        raise ValueError(f"arch: expected one of 80, 86, 89, 90, got {arch!r}")
    if isinstance(num_warps, bool) or not isinstance(num_warps, int) or num_warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"num_warps: expected a power of two in 1..32, got {num_warps!r}")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages: expected an int >= 1, got {num_stages!r}")
    if maxnreg is not None and (isinstance(maxnreg, bool) or not isinstance(maxnreg, int) or not 16 <= maxnreg <= 255):
        raise ValueError(f"maxnreg: expected None or an int in 16..255, got {maxnreg!r}")


def _compile_here(kernel, signature, constexprs, arch, num_warps, num_stages, maxnreg=None) -> CompileFacts:
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise TypeError(f"kernel: expected a @triton.jit function, got {type(kernel).__name__}")
    names = list(kernel.arg_names)
    unknown = [k for k in list(signature) + list(constexprs) if k not in names]
    if unknown:
        raise ValueError(f"signature: {unknown} are not arguments of {kernel.__name__} {names}")
    defaults = {k: p.default for k, p in inspect.signature(kernel.fn).parameters.items()
                if p.default is not inspect.Parameter.empty}
    constexprs = {**{k: v for k, v in defaults.items() if k not in signature}, **constexprs}
    missing = [k for k in names if k not in signature and k not in constexprs]
    if missing:
        raise ValueError(f"signature: no type or constexpr value given for {missing} of {kernel.__name__}")
    sig = {k: ("constexpr" if k in constexprs else signature[k]) for k in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    ck = triton.compile(src, target=_gpu_target(arch), options=options)
    md = ck.metadata
    shared = md.get("shared", 0) if isinstance(md, dict) else getattr(md, "shared", 0)
    name = md.get("name") if isinstance(md, dict) else getattr(md, "name", None)
    return facts_from_asm(kernel.__name__, ck.asm, arch, num_warps, num_stages, int(shared or 0), symbol=name)


def facts_from_asm(kernel: str, asm: dict, arch: int, num_warps: int, num_stages: int = 3, shared: int = 0,
                   symbol: str | None = None) -> CompileFacts:
    """:class:`CompileFacts` of an already compiled kernel: ``asm`` is a ``CompiledKernel.asm`` dict
    (needs ``"ptx"`` and ``"cubin"``); ``symbol`` the kernel's name in the cubin (default ``kernel``)."""
    if not isinstance(asm, dict) or not isinstance(asm.get("ptx"), str) or not isinstance(asm.get("cubin"), bytes):
        raise ValueError("asm: expected a dict with the kernel's 'ptx' (str) and 'cubin' (bytes)")
    facts = CompileFacts(kernel, int(arch), num_warps, num_stages, shared=int(shared))
    _read_tools(facts, symbol or kernel, asm["ptx"], asm["cubin"])
    return facts


def _interpreted(kernel) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover
        return False
    return isinstance(kernel, InterpretedFunction)


def _kernel_ref(kernel) -> tuple[str, str]:
    fn = getattr(kernel, "fn", None)
    if fn is None or not hasattr(fn, "__qualname__"):
        raise TypeError(f"kernel: expected a @triton.jit function, got {type(kernel).__name__}")
    if fn.__module__ == "__main__" or "<locals>" in fn.__qualname__:
        raise ValueError(f"kernel: {fn.__qualname__} must be a module-level function of an importable module "
                         "to be compiled under TRITON_INTERPRET=1")
    return fn.__module__, fn.__qualname__


def compile_facts_many(jobs) -> list[CompileFacts]:
    """:func:`compile_facts` of several ``(kernel, signature, constexprs[, arch[, num_warps[, num_stages[,
    maxnreg]]]])`` jobs; under ``TRITON_INTERPRET=1`` all of them run in one child process."""
    full = []
    for j in jobs:
        j = tuple(j)
        if not 3 <= len(j) <= 7:
            raise ValueError(f"jobs: expected (kernel, signature, constexprs[, arch, num_warps, num_stages, maxnreg]), "
                             f"got a tuple of {len(j)}")
        k, sig, ce, arch, nw, ns, mr = j + (90, 4, 3, None)[len(j) - 3:]
        ce = dict(ce or {})
        _check_job(k, sig, ce, arch, nw, ns, mr)
        full.append((k, dict(sig), ce, int(arch), nw, ns, mr))
    if not any(_interpreted(j[0]) for j in full):
        return [_compile_here(*j) for j in full]
    specs = [(_kernel_ref(j[0]),) + j[1:] for j in full]
    with tempfile.TemporaryDirectory() as tmp:
        job_file, out_file = os.path.join(tmp, "jobs.pkl"), os.path.join(tmp, "out.pkl")
        with open(job_file, "wb") as f:
            pickle.dump(specs, f)
        # this process's import path, "" (the working directory) made absolute: the child must import
        # the same sstkd, not the one an editable install of another checkout points at
        env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        proc = subprocess.run([sys.executable, "-m", "sstkd.benchmarks.compile_facts", job_file, out_file],
                              env=env, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"compile_facts: compilation failed:\n{proc.stderr[-6000:]}")
        with open(out_file, "rb") as f:
            rows = pickle.load(f)
    out = []
    for d in rows:
        loops = d.pop("loops")
        facts = CompileFacts(**d)
        facts.loops = None if loops is None else [LoopFacts(**lp) for lp in loops]
        out.append(facts)
    return out


def compile_facts(kernel, signature: dict, constexprs: dict | None = None, *, arch: int = 90,
                  num_warps: int = 4, num_stages: int = 3, maxnreg: int | None = None) -> CompileFacts:
    """Compile ``kernel`` for ``sm_<arch>`` without a GPU and read its compile facts.

    Args:
        kernel: a ``@triton.jit`` function (module-level when ``TRITON_INTERPRET=1``).
        signature: argument name -> Triton type of every runtime argument
            (``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"fp32"``, ...).
        constexprs: argument name -> value of every ``tl.constexpr`` argument
            (arguments with defaults may be left out).
        arch: compute capability (80, 86, 89, 90).
        num_warps, num_stages, maxnreg: as at launch (``maxnreg``: the register cap, None = ptxas's choice).

    Returns a :class:`CompileFacts`; fields a missing tool would provide are
    ``None`` and ``missing`` says why.
    """
    return compile_facts_many([(kernel, signature, constexprs, arch, num_warps, num_stages, maxnreg)])[0]


# --------------------------------------------------------------------------- CUDA C++ (nvcc)
_PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)'")


def _ptxas_per_function(log: str) -> dict:
    """``{mangled name: (registers, stack, spill stores, spill loads)}`` of an ``nvcc -Xptxas -v`` log."""
    out = {}
    parts = _PTXAS_ENTRY.split(log)
    for name, body in zip(parts[1::2], parts[2::2]):
        regs, stack = _PTXAS_REGS.search(body), _PTXAS_STACK.search(body)
        if regs and stack:
            out[name] = (int(regs.group(1)), *(int(g) for g in stack.groups()))
    return out


def _nvcc_cubin(source: str, nvcc: str, arch: int, include_dirs, flags, cache_dir: str | None):
    """``(cubin path, ptxas log)`` of ``source``, compiled once per content hash (cached)."""
    import glob
    import hashlib

    cmd_flags = ["-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17", "-Xptxas", "-v", *flags]
    cmd_flags += [f"-I{d}" for d in include_dirs]
    h = hashlib.sha256()
    headers = sorted({f for d in [os.path.dirname(os.path.abspath(source)), *include_dirs]
                      for pat in ("*.cuh", "*.h") for f in glob.glob(os.path.join(d, pat))})
    for f in [source, *headers]:
        with open(f, "rb") as fh:
            h.update(fh.read())
    # the include directories' headers are hashed above; their paths differ per checkout (left out)
    h.update("\0".join([os.path.realpath(nvcc), *(f for f in cmd_flags if not f.startswith("-I"))]).encode())
    if cache_dir is None:
        cache_dir = os.path.join(_util.cache_dir(), f"facts-{h.hexdigest()[:16]}")
    cubin, log_file = os.path.join(cache_dir, "k.cubin"), os.path.join(cache_dir, "ptxas.log")
    if not (os.path.exists(cubin) and os.path.exists(log_file)):
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{cubin}.{os.getpid()}.tmp"
        rc, out = _run([nvcc, *cmd_flags, source, "-o", tmp], timeout=1200)
        if rc != 0:
            raise RuntimeError(f"nvcc failed (rc {rc}) on {source}:\n{out[-4000:]}")
        with open(log_file + f".{os.getpid()}.tmp", "w") as f:
            f.write(out)
        os.replace(log_file + f".{os.getpid()}.tmp", log_file)
        os.replace(tmp, cubin)
    with open(log_file) as f:
        return cubin, f.read()


def nvcc_compile_facts(source: str, kernels, *, nvcc: str, arch: int = 90, include_dirs=(), flags=(),
                       cache_dir: str | None = None) -> list[CompileFacts]:
    """Compile the CUDA C++ file ``source`` for ``sm_<arch>`` with ``nvcc`` and read the facts of each
    of ``kernels``: ``(label, symbol part, threads per block, shared bytes per block)`` -- the kernel is
    the one function whose mangled name contains ``symbol part`` (``shared``: its dynamic shared
    memory at launch, for :meth:`CompileFacts.blocks_per_sm`). Raises ``RuntimeError`` when nvcc
    fails or a kernel is not (uniquely) in the cubin; a missing cuobjdump is reported in ``missing``."""
    if isinstance(arch, bool) or arch not in (80, 86, 89, 90):
        raise ValueError(f"arch: expected one of 80, 86, 89, 90, got {arch!r}")
    if not os.path.isfile(source):
        raise ValueError(f"source: {source} is not a file")
    if not nvcc or not os.access(nvcc, os.X_OK):
        raise ValueError(f"nvcc: {nvcc!r} is not an executable")
    cubin, log = _nvcc_cubin(source, nvcc, arch, list(include_dirs), list(flags), cache_dir)
    per_fn = _ptxas_per_function(log)
    cuobjdump, why = tool_path("cuobjdump")
    sass = res = ""
    if cuobjdump is not None:
        with open(cubin, "rb") as f:
            data = f.read()
        rc, sass = run_tool(cuobjdump, ["-sass", "{cubin}"], {"cubin": data})
        rc2, res = run_tool(cuobjdump, ["-res-usage", "{cubin}"], {"cubin": data})
        if rc != 0 or rc2 != 0:
            why, cuobjdump = f"cuobjdump failed on {cubin}: {(sass + res)[-500:]}", None
    out = []
    for label, part, threads, shared in kernels:
        names = [n for n in per_fn if part in n]
        if len(names) != 1:
            raise RuntimeError(f"{label}: {len(names)} kernels in {source} match {part!r}: {names}")
        name = names[0]
        if threads % 32:
            raise ValueError(f"{label}: threads must be a multiple of 32, got {threads}")
        facts = CompileFacts(label, int(arch), threads // 32, 0, shared=int(shared))
        facts.registers, facts.stack, facts.spill_stores, facts.spill_loads = per_fn[name]
        facts.ptxas_log = log
        if cuobjdump is None:
            facts.missing["cuobjdump"] = why
        else:
            m = re.search(re.escape(name) + r":\s*\n\s*" + _RES_USAGE.pattern, res)
            facts.local = int(m.group(4)) if m else None
            if m is None:
                facts.missing["cuobjdump"] = f"no -res-usage entry for {name}"
            facts.sass, facts.loops = parse_sass(sass, name)
        out.append(facts)
    return out


def _child_main(job_file: str, out_file: str) -> None:
    import importlib

    with open(job_file, "rb") as f:
        specs = pickle.load(f)
    rows = []
    for (module, qualname), sig, ce, arch, nw, ns, mr in specs:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        rows.append(dataclasses.asdict(_compile_here(obj, sig, ce, arch, nw, ns, mr)))
    with open(out_file, "wb") as f:  # plain dicts: this module is __main__ here
        pickle.dump(rows, f)


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
