"""Fatal agent errors are loud and final: no retry loop against a wrong bastion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.agent import Agent
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint, TunnelConfig
from sshtunnel_mgr.core.errors import EXIT_HOSTKEY, EXIT_PERMISSION, HostKeyError, PermissionRefused
from sshtunnel_mgr.keys.store import public_line
from tests.harness import (
    SSHTUN,
    Keys,
    agent_config,
    process,
    write_toml,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene


def impostor_pinned(keys: Keys, port: int, known_hosts: Path | None = None) -> AgentConfig:
    other = public_line(asyncssh.generate_private_key("ssh-ed25519"), "")
    endpoint = (
        BastionEndpoint(address=f"127.0.0.1:{port}", known_hosts=known_hosts)
        if known_hosts
        else BastionEndpoint(address=f"127.0.0.1:{port}", host_key=other)
    )
    if known_hosts:
        known_hosts.write_text(f"[127.0.0.1]:{port} {other}\n")
    return AgentConfig(
        key=keys.agent.path,
        bastions=[endpoint],
        tunnels=[TunnelConfig(name="homebox", target="127.0.0.1:9")],
    )


@pytest.mark.parametrize("pin", ["host_key", "known_hosts"])
async def test_host_key_mismatch_is_fatal_not_retried(
    keys: Keys, tmp_path: Path, pin: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        cfg = impostor_pinned(keys, bastion.port, tmp_path / "kh" if pin == "known_hosts" else None)
        agent = Agent(cfg)
        with pytest.raises(HostKeyError, match="does not match the pinned one"):
            await asyncio.wait_for(agent.run(asyncio.Event()), 15)
        assert agent.links[0].status.state == "failed"
        assert not logged(caplog, "auth ok")  # it never authenticated to the impostor


async def test_cli_up_exits_with_hostkey_status_and_a_hint(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bastion = s.bastion
        cfg = write_toml(tmp_path / "agent.toml", "agent", impostor_pinned(keys, bastion.port))
        async with process(*SSHTUN, "up", "--config", str(cfg)) as proc:
            assert await asyncio.wait_for(proc.wait(), 20) == EXIT_HOSTKEY
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
    assert "sshtun: error: bastion 127.0.0.1:" in err
    assert "does not match the pinned one" in err
    assert "hint: if the bastion's key really changed" in err
    assert "Traceback" not in err


async def test_refused_login_is_fatal_with_permission_status(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = f'permitopen="homebox:22" {keys.client.public_line}\n'
    async with scene(keys, tmp_path, access=access, home=False) as s:
        bastion = s.bastion
        agent = Agent(agent_config(keys, bastion.port, [("homebox", 22, "127.0.0.1:9")]))
        with pytest.raises(PermissionRefused, match="refused key"):
            await asyncio.wait_for(agent.run(asyncio.Event()), 15)
        assert logged(caplog, "auth refused", f"unknown key {keys.agent.fingerprint}")
        cfg = write_toml(tmp_path / "agent.toml", "agent", agent.config)
        async with process(*SSHTUN, "up", "--config", str(cfg)) as proc:
            assert await asyncio.wait_for(proc.wait(), 20) == EXIT_PERMISSION
            assert proc.stderr is not None
            assert "permitlisten" in (await proc.stderr.read()).decode()


async def test_unreachable_bastion_is_retried_with_backoff(keys: Keys, tmp_path: Path) -> None:
    from tests.harness import free_port, wait_for

    cfg = agent_config(
        keys, free_port(), [("homebox", 22, "127.0.0.1:9")], backoff={"base": 0.05, "cap": 0.2}
    )
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    link = agent.links[0]
    await wait_for(lambda: link.backoff.attempts >= 3)
    assert link.status.state in ("backoff", "connecting")
    assert "connect:" in link.status.last_error
    stop.set()
    await asyncio.wait_for(task, 5)
    assert link.status.state == "stopped"
