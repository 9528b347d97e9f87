"""The package's shape (issue 10 item 4, STYLE rule 11): no module over 400 lines, and no
import cycle anywhere in it, counting imports made only for type checking (the bastion's
and the agent's own tests check their packages the same way; this is the whole package).
Read from the source with ``ast``: nothing is imported."""

from __future__ import annotations

from pathlib import Path

import pytest

import sshtunnel_mgr
from tests.unit.test_import_cycles import _cycle, _imports

PACKAGE = Path(sshtunnel_mgr.__file__).parent
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_module_is_at_most_400_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines; split it by job"


def test_the_package_imports_without_a_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # A package's __init__ that re-exports its modules is not a cycle with them: a module
    # importing a sibling through the package imports that sibling alone.
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph = {
        name: {d for d in deps if d not in packages or not name.startswith(d + ".")}
        for name, deps in graph.items()
    }
    assert _cycle(graph) == []
