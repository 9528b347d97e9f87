"""The package logs only through ``event()``: a %-formatted message could carry a value a
peer chose onto a line of its own (see logsetup.py). Checked on the source, as a lint."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sshtunnel_mgr

PACKAGE = Path(sshtunnel_mgr.__file__).parent
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
NAME = re.compile(r"[a-z][a-z0-9_-]*( [a-z][a-z0-9_-]*)*")


def _calls() -> list[tuple[str, ast.Call]]:
    found: list[tuple[str, ast.Call]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "logsetup.py":  # event() itself
            continue
        tree = ast.parse(path.read_text(), str(path))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        found += [(f"{path.relative_to(PACKAGE)}:{n.lineno}", n) for n in calls]
    return found


def test_no_logger_method_is_called_directly() -> None:
    direct = [
        f"{where}: {ast.unparse(call.func)}"
        for where, call in _calls()
        if isinstance(call.func, ast.Attribute)
        and call.func.attr in LEVELS
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id in {"log", "logger", "logging", "_log"}
    ]
    assert direct == [], "log through logsetup.event(): " + ", ".join(direct)


def _literals(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, other = _literals(node.body), _literals(node.orelse)
        return None if body is None or other is None else body + other
    return None


def test_event_names_are_literal_words() -> None:
    """An event's name is ours (lower-case words), never built from a value."""
    bad = []
    for where, call in _calls():
        if isinstance(call.func, ast.Name) and call.func.id == "event" and len(call.args) >= 3:
            names = _literals(call.args[2])
            if names is None or not all(NAME.fullmatch(n) for n in names):
                bad.append(f"{where}: {ast.unparse(call.args[2])}")
    assert bad == []
