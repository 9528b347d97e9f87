"""Key files the services read: nothing is created behind the owner's back, and a private
key others can read is refused, as OpenSSH refuses it."""

from __future__ import annotations

from pathlib import Path

from sshtunnel_mgr.core.errors import EXIT_KEYS
from tests.harness import (
    Keys,
)
from tests.integration.scene import scene, sshtun_process


async def run_cli(*args: str) -> tuple[int, str]:
    """``sshtun ARGS`` that is meant to refuse to start: its exit status and log."""
    async with sshtun_process(*args, check=False) as proc:
        code = await proc.wait(60)
    return code, "".join(proc.lines)


async def test_bastion_with_a_missing_host_key_refuses_to_start_and_creates_nothing(
    keys: Keys, tmp_path: Path
) -> None:
    typo = tmp_path / "bastion_hots_key"
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        code, err = await run_cli("bastion", "--config", str(s.bastion_file(host_key=typo)))
    assert code == EXIT_KEYS
    assert f"bastion host key {typo} does not exist" in err
    assert "sshtun keys gen" in err and "Traceback" not in err
    assert not typo.exists()  # no new identity that every pinned agent would refuse


async def test_agent_refuses_a_world_readable_private_key(keys: Keys, tmp_path: Path) -> None:
    keys.agent.path.chmod(0o644)
    async with scene(keys, tmp_path, home=False, bastion=False) as s:
        toml = s.agent_file([("homebox", 22, "127.0.0.1:9")])
        code, err = await run_cli("up", "--config", str(toml))
    assert code == EXIT_KEYS
    assert f"permissions 0644 for private key {keys.agent.path} are too open" in err
    assert f"hint: chmod 600 {keys.agent.path}" in err
