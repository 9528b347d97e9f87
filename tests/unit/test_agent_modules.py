"""The agent package's shape: modules import each other without a cycle (imports made only
for type checking count too), each stays small, none reads asyncssh's ``_channels``
(routed sessions are counted by the agent's own session objects, forward.py), and the
routed-session count itself behaves (a pure table, no sockets)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

import sshtunnel_mgr
from sshtunnel_mgr.agent.forward import ChannelCount

AGENT = Path(sshtunnel_mgr.__file__).parent / "agent"


def _agent_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "sshtunnel_mgr.agent":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("sshtunnel_mgr.agent."):
                found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.rsplit(".", 1)[1]
                for a in node.names
                if a.name.startswith("sshtunnel_mgr.agent.")
            }
    return found


def test_agent_modules_import_each_other_without_a_cycle() -> None:
    modules = {p.stem: p for p in AGENT.glob("*.py") if p.stem != "__init__"}
    graph = {name: _agent_imports(path) & set(modules) for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("path", sorted(AGENT.glob("*.py")), ids=lambda p: p.name)
def test_agent_module_is_small_and_uses_no_channel_internals(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    assert "_channels" not in text


def test_channel_count_is_idle_exactly_when_nothing_is_open() -> None:
    async def scenario() -> None:
        count = ChannelCount()
        await asyncio.wait_for(count.wait_idle(), 1)  # idle from the start
        count.opened()
        count.opened()
        waiter = asyncio.ensure_future(count.wait_idle())
        count.closed()
        await asyncio.sleep(0)
        assert count.value == 1 and not waiter.done()
        count.closed()
        await asyncio.wait_for(waiter, 1)
        assert count.value == 0
        with pytest.raises(RuntimeError, match="counted closed twice"):
            count.closed()

    asyncio.run(scenario())
