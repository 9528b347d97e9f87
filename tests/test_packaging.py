"""The sdist and the wheel carry what a user and a packager need, and build without
setuptools' deprecation warnings (licence metadata)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = """
import sys
from setuptools import build_meta
out = sys.argv[1]
print("BUILT", build_meta.build_sdist(out))
print("BUILT", build_meta.build_wheel(out))
"""


def test_sdist_and_wheel_contents(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "deprecated" not in result.stderr.lower(), result.stderr
    sdist_name, wheel_name = (
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("BUILT ")
    )
    with tarfile.open(out / sdist_name) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "config.example.toml", "pyproject.toml"} <= names
    assert "tests/test_packaging.py" in names and "tests/harness.py" in names
    assert "sshtunnel_mgr/config.example.toml" in names
    with zipfile.ZipFile(out / wheel_name) as wheel:
        files = set(wheel.namelist())
        metadata = wheel.read(next(n for n in files if n.endswith(".dist-info/METADATA")))
    assert "sshtunnel_mgr/config.example.toml" in files
    assert "sshtunnel_mgr/units/sshtun-agent.service" in files
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in files)
    text = metadata.decode()
    assert "License-Expression: MIT" in text
    assert "Requires-Dist: asyncssh[bcrypt]<2.25,>=2.24.1" in text
    assert "Project-URL: Homepage, https://github.com/sshtun/sshtun" in text
