"""Smoke tests of the scaling benchmarks (benchmarks/idle_agents.py, parallel_streams.py):
each runs for real with a tiny N against a real sshtun bastion, real ``sshtun up`` agents,
a real OpenSSH sshd (home box, and the reference bastion) and real ``ssh -J`` clients, and
must print its table. Nothing here asserts a time, a rate or a memory size."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.harness import require_openssh

pytestmark = pytest.mark.openssh

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


async def run_script(name: str, *args: str, timeout: float = 240) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / name),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()  # SIGKILL by its PID; its children are stopped by its own clean-up
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def table_rows(out: str, first_cells: tuple[str, ...]) -> list[list[str]]:
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and tuple(cells[: len(first_cells)]) == first_cells:
            rows.append(cells)
    return rows


async def test_idle_agents_prints_its_table() -> None:
    require_openssh(server=True)
    code, out, err = await run_script(
        "idle_agents.py",
        *("--counts", "6", "--setups", "1", "--holders", "2", "--settle", "0"),
        *("--idle-window", "0.5"),
    )
    assert code == 0, out + err[-3000:]
    assert "| workers | N idle agents | bastion processes |" in out
    (row,) = table_rows(out, ("1", "6"))
    assert len(row) == 13 and row[-1] == "0", row  # every agent published, every ssh -J ok
    assert re.search(r"w=1 n=6: 6/6 published", err), err[-3000:]
    assert "load average (1/5/15 min) before" in out


async def test_parallel_streams_prints_its_table() -> None:
    require_openssh(server=True)
    code, out, err = await run_script(
        "parallel_streams.py",
        *("--streams", "2", "--workers", "1", "--agents", "1", "--total-mib", "2"),
        *("--rounds", "1", "--pause", "0"),
    )
    assert code == 0, out + err[-3000:]
    assert "| streams | bastion | aggregate MiB/s |" in out
    for setup in ("sshtun-w1", "openssh"):
        (row,) = table_rows(out, ("2", setup))
        assert len(row) == 10 and row[8] == "2/2", row  # both streams got all their bytes
    assert "load average (1/5/15 min) before" in out
