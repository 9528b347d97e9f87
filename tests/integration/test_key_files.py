"""Key files the services read: nothing is created behind the owner's back, and a private
key others can read is refused, as OpenSSH refuses it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sshtunnel_mgr.core.errors import EXIT_KEYS
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    free_port,
    process,
    write_toml,
)


async def run_cli(*args: str) -> tuple[int, str]:
    async with process(*SSHTUN, *args) as proc:
        code = await asyncio.wait_for(proc.wait(), 60)
        assert proc.stderr is not None
        return code, (await proc.stderr.read()).decode()


async def test_bastion_with_a_missing_host_key_refuses_to_start_and_creates_nothing(
    keys: Keys, tmp_path: Path
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    typo = tmp_path / "bastion_hots_key"
    cfg = bastion_config(keys, access, free_port()).model_copy(update={"host_key": typo})
    code, err = await run_cli(
        "bastion", "--config", str(write_toml(tmp_path / "b.toml", "bastion", cfg))
    )
    assert code == EXIT_KEYS
    assert f"bastion host key {typo} does not exist" in err
    assert "sshtun keys gen" in err and "Traceback" not in err
    assert not typo.exists()  # no new identity that every pinned agent would refuse


async def test_agent_refuses_a_world_readable_private_key(keys: Keys, tmp_path: Path) -> None:
    keys.agent.path.chmod(0o644)
    cfg = agent_config(keys, free_port(), [("homebox", 22, "127.0.0.1:9")])
    code, err = await run_cli("up", "--config", str(write_toml(tmp_path / "a.toml", "agent", cfg)))
    assert code == EXIT_KEYS
    assert f"permissions 0644 for private key {keys.agent.path} are too open" in err
    assert f"hint: chmod 600 {keys.agent.path}" in err
