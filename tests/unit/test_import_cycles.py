"""The bastion package's modules import each other without a cycle, counting imports made
only for type checking (``if TYPE_CHECKING:``): a cycle there still ties the modules
together and makes each one harder to read alone. Read from the source with ``ast``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sshtunnel_mgr

PACKAGE = Path(sshtunnel_mgr.__file__).parent
BASTION = "sshtunnel_mgr.bastion"


def _modules(package: str) -> dict[str, Path]:
    root = PACKAGE.parent / package.replace(".", "/")
    return {
        f"{package}.{path.stem}" if path.stem != "__init__" else package: path
        for path in sorted(root.glob("*.py"))
    }


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, anywhere in its source."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parent = parts if is_package else parts[:-1]
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            subs = {f"{base}.{alias.name}" for alias in node.names}
            found |= (subs & known) or {base}
    return (found & known) - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (as the list of modules around it), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_bastion_modules_import_without_a_cycle() -> None:
    modules = _modules(BASTION)
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items() if name != BASTION}
    # The package's __init__ re-exports serve; a submodule importing a sibling through the
    # package (``from sshtunnel_mgr.bastion import x``) is an import of ``x`` alone.
    graph = {name: deps - {BASTION} for name, deps in graph.items()}
    assert _cycle(graph) == []


def test_bastion_modules_import_in_any_order() -> None:
    """Leaf modules first, then the rest backwards, in one fresh interpreter: no module
    relies on another having been imported before it."""
    names = sorted(_modules(BASTION), reverse=True)
    code = "; ".join(f"import {name}" for name in names)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
