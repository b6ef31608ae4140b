"""The package's structural rules: the algorithm (everything outside detaux_ray/distributed) imports no Ray, and
the imports between its modules, lazy ones included, form no circle."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "detaux_ray"


def core_modules(root: Path = PACKAGE) -> list[str]:
    """Every module of the package outside the Ray layer (detaux_ray/distributed)."""
    mods = []
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        if "distributed" not in parts:
            mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


def test_core_imports_without_ray():
    mods = core_modules()
    assert {"detaux_ray.disentangle.objective", "detaux_ray.discover.auxiliary", "detaux_ray.mtl.models"} <= set(mods)
    code = "import importlib, sys; sys.modules['ray'] = None\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (function-level imports too). Importing
    `a.b.c` also runs `a.b`'s `__init__`, so that is an edge as well."""
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def targets(mod: str, node) -> list[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            pkg = mod.split(".") if files[mod].name == "__init__.py" else mod.split(".")[:-1]
            base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) if node.level \
                else node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
        out = []
        for name in names:
            parts = name.split(".")
            out += [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in files]
        return out

    graph = {m: set() for m in files}
    for mod, f in files.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[mod] |= {t for t in targets(mod, node) if t != mod and not mod.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop(); on.discard(w); group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_lazy_imports_included():
    assert cycles(import_graph()) == []


def test_the_circle_check_sees_a_lazy_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import a\n")
    (pkg / "sub" / "b.py").write_text("")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub"]]


def test_the_core_never_imports_the_ray_layer():
    graph = import_graph()
    core = [m for m in graph if not m.startswith("detaux_ray.distributed") and m != "detaux_ray.recipe"]
    assert {m: sorted(t for t in graph[m] if t.startswith("detaux_ray.distributed")) for m in core} == {m: [] for m in core}


STAGES = ("detaux_ray.disentangle", "detaux_ray.discover", "detaux_ray.mtl")  # in the pipeline's order


def test_a_stage_imports_only_earlier_stages_and_the_shared_modules():
    """No upward arrows: stage 1 knows nothing of discovery or MTL, stage 2 nothing of MTL; no stage imports the
    report, the recipe or the Ray layer, which sit above all three."""
    graph = import_graph()
    above = ("detaux_ray.report", "detaux_ray.recipe", "detaux_ray.distributed")
    wrong = {}
    for i, stage in enumerate(STAGES):
        later = STAGES[i + 1:] + above
        for m in (m for m in graph if m == stage or m.startswith(stage + ".")):
            bad = sorted(t for t in graph[m] if any(t == x or t.startswith(x + ".") for x in later))
            if bad:
                wrong[m] = bad
    assert wrong == {}
