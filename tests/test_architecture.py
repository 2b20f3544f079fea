"""The layering of the code: imports in one direction, backend choices in one place, algorithms once.

Parses every module of ``sstkd/`` and ``kernels/`` (imports inside functions included) with
``ast``; nothing is imported.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"sstkd": REPO / "sstkd", "sstkd.kernels": REPO / "kernels"}


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module in sstkd/ and kernels/ (installed as sstkd.kernels)."""
    mods = {}
    for pkg, root in ROOTS.items():
        for f in sorted(root.rglob("*.py")):
            if "kernels" in f.relative_to(root).parts and pkg == "sstkd":
                continue  # sstkd/kernels is a link to ../kernels
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([pkg] + parts)] = f
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            # the longest known module that t names (a submodule, or the module a name comes from)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, f, known) for m, f in mods.items()}


def _is_package_edge(a: str, b: str) -> bool:
    # importing a submodule runs its package's __init__; that is not an import of the package's contents
    return a.startswith(b + ".")


def test_import_graph_is_acyclic():
    graph = {a: {b for b in bs if not _is_package_edge(a, b)} for a, bs in _graph().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_downwards_only():
    graph = _graph()
    for m, deps in graph.items():
        if m.startswith("sstkd.kernels"):
            bad = [d for d in deps if d.startswith(("sstkd.ops", "sstkd.distill", "sstkd.engine", "sstkd.models"))]
            assert not bad, f"{m} imports a layer above the kernels: {bad}"
        if m.startswith(("sstkd.models", "sstkd.data")):
            bad = [d for d in deps if d.startswith(("sstkd.distill", "sstkd.engine"))]
            assert not bad, f"{m} imports distill/engine: {bad}"
        if m.startswith("sstkd.ops"):
            bad = [d for d in deps if d.startswith(("sstkd.distill", "sstkd.engine", "sstkd.models"))]
            assert not bad, f"{m} imports a layer above the ops: {bad}"
        if m in ("sstkd._util", "sstkd.geometry", "sstkd.filters"):  # leaves
            assert all(d in ("sstkd._util",) for d in deps), f"leaf {m} imports {deps}"
        if m.startswith("sstkd.ops.backends.") or m == "sstkd.ops.algorithms" or m.startswith("sstkd.ops.reference"):
            assert "sstkd.ops.dispatch" not in deps, f"{m} sits below dispatch but imports it"


def test_backend_names_are_compared_only_in_dispatch():
    pat = re.compile(r"""[=!]=\s*["'](triton|cuda)["']|["'](triton|cuda)["']\s*[=!]=|in\s*\(\s*["'](triton|cuda)["']""")
    offenders = []
    for m, f in _modules().items():
        if m == "sstkd.ops.dispatch":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pat.search(code) and ".type" not in code:  # device.type == "cuda" is a device, not a backend
                offenders.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "backend if-chains outside sstkd/ops/dispatch.py:\n" + "\n".join(offenders)


def test_algorithms_exist_once():
    """The Lloyd refinement and the contourlet composition: one definition, in sstkd/ops/algorithms.py."""
    where = {"lloyd": [], "compose": []}
    for m, f in _modules().items():
        text = f.read_text()
        if re.search(r"for _ in range\(iters\)", text):
            where["lloyd"].append(m)
        if re.search(r"for n in reversed\(nlevs\)", text):
            where["compose"].append(m)
    assert where["lloyd"] == ["sstkd.ops.algorithms"], where
    assert where["compose"] == ["sstkd.ops.algorithms"], where
