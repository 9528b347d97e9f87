"""The static checks run with the tests, so CI runs them on every push: ruff (lint and
format), ``mypy --strict`` on the package, and the import contracts (import-linter).

They run the tools as subprocesses from the repository root, exactly as a developer does;
a failure shows the tools' own output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["sshtunnel_mgr", "tests", "benchmarks"]


def _run(argv: list[str]) -> None:
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `pip install -e '.[test]'` installs it")
    return path


def test_ruff_lint_is_clean(tmp_path: Path) -> None:
    _run([_tool("ruff"), "check", "--no-cache", *CHECKED])


def test_ruff_format_is_clean(tmp_path: Path) -> None:
    _run([_tool("ruff"), "format", "--check", "--no-cache", *CHECKED])


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    # A cache of its own per run: a stale shared cache can hide an error.
    _run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")])


def test_import_contracts_are_kept() -> None:
    """The layers of README's "Layout" and a pure core (pyproject's [tool.importlinter])."""
    _run([_tool("lint-imports"), "--no-cache"])
