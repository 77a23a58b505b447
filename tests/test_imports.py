"""No import cycles: the module-level import graph of the package is acyclic, and every module imports in a
fresh interpreter, in dependency order and in its reverse."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mambalab"

# Known edges of a cycle that another change removes; each must still exist (so the list cannot go stale).


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="mambalab."))


def _source(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if _source(module).name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports at module level (imports inside functions are ignored)."""
    known = set(modules())
    graph = {}
    for module in known:
        tree = ast.parse(_source(module).read_text())
        targets = set()
        for node in tree.body:  # module level only (if/try blocks included below)
            for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                if isinstance(sub, ast.Import):
                    targets |= {alias.name for alias in sub.names}
                elif isinstance(sub, ast.ImportFrom):
                    base = _resolve(module, sub)
                    targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                                for alias in sub.names}
        # importing a.b.c runs a/__init__ and a/b/__init__ first, except the packages that hold this module,
        # which Python initialises before it
        own = set(_with_parents(module))
        implied = {p for target in targets for p in _with_parents(target)[:-1] if p not in own}
        graph[module] = {t for t in targets | implied if t in known and t != module}
    return graph


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [m0, m1, ..., m0], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports():
    """A test that cannot fail is a defect: the parser finds known edges, and a cycle in a made-up graph."""
    graph = import_graph()
    assert "mambalab.ops.backends" in graph["mambalab.ops.selective_scan"]
    assert "mambalab.layers.mamba" in graph["mambalab.layers.block"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_module_level_import_graph_is_acyclic():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def dependency_order(graph: dict[str, set[str]]) -> list[str]:
    """Every module after the modules it imports (the graph must be acyclic)."""
    order: list[str] = []
    done: set[str] = set()

    def visit(node):
        if node not in done:
            done.add(node)
            for nxt in sorted(graph[node]):
                visit(nxt)
            order.append(node)

    for node in sorted(graph):
        visit(node)
    return order


@pytest.mark.parametrize("dependents_first", [False, True])
def test_every_module_imports_in_a_fresh_interpreter(dependents_first):
    """All modules imported in one fresh interpreter, in dependency order, and in the reverse order (each module
    then pulls its own imports in first: where a cycle at import time would show). A missing optional
    dependency skips the modules that need it."""
    graph = import_graph()
    names = [m for m in dependency_order(graph) if not m.endswith("__main__")]
    if dependents_first:
        names.reverse()
    code = (  # a missing optional dependency (triton) skips the modules that need it
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name.startswith('mambalab'):\n"
        "            raise\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, env=env, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
