"""The real ``ssh-audit`` (PyPI) against a running sshtun bastion, gated on the hardening
policy committed in ``tests/data/ssh-audit-bastion-policy.txt`` (exit 0 = passed). A stock
OpenSSH sshd with Debian's defaults fails the same policy, so the gate is not vacuous."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Keys, home_sshd
from tests.integration.scene import scene

POLICY = Path(__file__).resolve().parents[1] / "data" / "ssh-audit-bastion-policy.txt"


async def ssh_audit(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ssh_audit",
        "--no-colors",
        "--timeout=20",
        *args,
        "-p",
        str(port),
        "127.0.0.1",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_bastion_passes_the_committed_ssh_audit_policy(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        status, out = await ssh_audit(bastion.port, "-P", str(POLICY))
    assert status == 0, out
    assert "Passed" in out and "sshtun bastion" in out


async def test_bastion_plain_audit_has_no_failures(keys: Keys, tmp_path: Path) -> None:
    """Without the policy ssh-audit always warns (curve25519 is not post-quantum; exit 2),
    but nothing of the bastion's may be a failure (exit 3)."""
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        status, out = await ssh_audit(bastion.port, "--skip-rate-test")
    assert status in (0, 2), out
    assert "[fail]" not in out
    warned = [ln for ln in out.splitlines() if "[warn]" in ln]
    assert warned and all("post-quantum" in ln for ln in warned), warned


@pytest.mark.openssh
async def test_stock_sshd_fails_the_same_policy(keys: Keys, tmp_path: Path) -> None:
    async with home_sshd(keys, tmp_path / "home") as sshd:
        status, out = await ssh_audit(sshd.port, "-P", str(POLICY))
    assert status != 0, out
    assert "Failed" in out
