"""Real restarts and real failures: the tunnel comes back by itself and names never stick."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import pytest

from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    free_port,
    home_sshd,
    process,
    read_until,
    run_ssh,
    running_agent,
    running_bastion,
    wait_for,
    write_ssh_config,
    write_toml,
)
from tests.integration.conftest import logged

FAST = {"base": 0.1, "cap": 0.5, "healthy_after": 30}


async def test_bastion_killed_and_restarted_agent_reconnects(keys: Keys, tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    port = free_port()
    cfg = write_toml(tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, port))
    async with home_sshd(keys, tmp_path / "home") as home:
        client_cfg = write_ssh_config(tmp_path / "client", keys, port)
        async with process(*SSHTUN, "bastion", "--config", str(cfg)) as first:
            await read_until(first.stderr, "listening on")
            async with running_agent(
                agent_config(keys, port, [("homebox", 22, f"127.0.0.1:{home.port}")], backoff=FAST)
            ) as agent:
                result = await run_ssh(client_cfg, "homebox", "echo before")
                assert result.stdout == b"before\n", result.stderr
                link = agent.agent.links[0]
                first.send_signal(signal.SIGKILL)
                await first.wait()
                await wait_for(lambda: link.status.state in ("backoff", "connecting"))
                async with process(*SSHTUN, "bastion", "--config", str(cfg)) as second:
                    await read_until(second.stderr, "listening on")
                    await wait_for(lambda: link.status.connects == 2 and link.status.state == "up")
                    result = await run_ssh(client_cfg, "homebox", "echo after")
                    assert result.stdout == b"after\n", result.stderr


async def test_agent_killed_frees_its_name_and_a_restarted_agent_takes_it(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
    ):
        acfg = write_toml(
            tmp_path / "agent.toml",
            "agent",
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")]),
        )
        client_cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        async with process(*SSHTUN, "up", "--config", str(acfg)) as agent:
            await read_until(agent.stderr, "published")
            assert bastion.state.routes.lookup("homebox", 22)
            agent.send_signal(signal.SIGKILL)
            await agent.wait()
        await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22))
        assert logged(caplog, "unpublish", "name=homebox")
        result = await run_ssh(client_cfg, "-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        assert "homebox:22 is not published" in result.stderr
        async with process(*SSHTUN, "up", "--config", str(acfg)) as agent:
            await read_until(agent.stderr, "published")
            result = await run_ssh(client_cfg, "homebox", "echo back")
            assert result.stdout == b"back\n", result.stderr


async def test_same_key_takes_over_from_a_stale_session_at_once(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen agent (SIGSTOP: its TCP connection stays open) must not block its name."""
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
    ):
        acfg = agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        client_cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        async with process(
            *SSHTUN, "up", "--config", str(write_toml(tmp_path / "agent.toml", "agent", acfg))
        ) as stale:
            await read_until(stale.stderr, "published")
            [old] = bastion.state.routes.lookup("homebox", 22)
            stale.send_signal(signal.SIGSTOP)
            try:
                async with running_agent(acfg):
                    [new] = bastion.state.routes.lookup("homebox", 22)
                    assert new.conn_id != old.conn_id
                    assert logged(
                        caplog,
                        "takeover",
                        "name=homebox",
                        f"old_conn={old.conn_id}",
                        f"new_conn={new.conn_id}",
                    )
                    result = await run_ssh(client_cfg, "homebox", "echo new-session")
                    assert result.stdout == b"new-session\n", result.stderr
                    # The stale connection finally dies: the new route stays.
                    stale.send_signal(signal.SIGKILL)
                    await stale.wait()
                    await wait_for(lambda: old.conn_id not in bastion.state.connections)
                    assert [r.conn_id for r in bastion.state.routes.lookup("homebox", 22)] == [
                        new.conn_id
                    ]
            finally:
                if stale.returncode is None:
                    stale.send_signal(signal.SIGKILL)


async def test_keepalives_drop_a_dead_agent(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with running_bastion(
        bastion_config(keys, access, keepalive_interval=0.3, keepalive_count_max=2)
    ) as bastion:
        acfg = write_toml(
            tmp_path / "agent.toml",
            "agent",
            agent_config(keys, bastion.port, [("homebox", 22, "127.0.0.1:9")]),
        )
        async with process(*SSHTUN, "up", "--config", str(acfg)) as agent:
            await read_until(agent.stderr, "published")
            agent.send_signal(signal.SIGSTOP)
            await wait_for(lambda: not bastion.state.routes.lookup("homebox", 22), timeout=20)
            assert not bastion.state.connections
            assert logged(caplog, "disconnect", keys.agent.fingerprint)


async def test_local_target_down_refuses_the_channel_and_the_tunnel_survives(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    home_port = free_port()  # nothing listens there yet
    async with (
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home_port}")])
        ) as agent,
    ):
        client_cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        result = await run_ssh(client_cfg, "-o", "LogLevel=INFO", "-W", "homebox:22", "bastion")
        assert result.returncode == 255
        assert "homebox:22: the home side refused" in result.stderr
        assert logged(caplog, "refused open", "the home side refused")
        async with home_sshd(keys, tmp_path / "home", port=home_port):
            result = await run_ssh(client_cfg, "homebox", "echo now-up")
            assert result.stdout == b"now-up\n", result.stderr
        link = agent.agent.links[0]
        assert link.status.connects == 1 and link.status.state == "up"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_agent_shuts_down_cleanly_on_signal(
    keys: Keys, tmp_path: Path, sig: signal.Signals
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with running_bastion(bastion_config(keys, access)) as bastion:
        acfg = write_toml(
            tmp_path / "agent.toml",
            "agent",
            agent_config(keys, bastion.port, [("homebox", 22, "127.0.0.1:9")]),
        )
        async with process(*SSHTUN, "up", "--config", str(acfg)) as agent:
            await read_until(agent.stderr, "published")
            agent.send_signal(sig)
            assert await asyncio.wait_for(agent.wait(), 10) == 0
        await wait_for(lambda: not bastion.state.connections)


async def test_bulk_64_mib_each_way_arrives_intact(keys: Keys, tmp_path: Path) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    blob = tmp_path / "blob"
    with blob.open("wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(1 << 20))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        running_bastion(bastion_config(keys, access)) as bastion,
        running_agent(
            agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
        ),
    ):
        cfg = write_ssh_config(tmp_path / "client", keys, bastion.port)
        down = await run_ssh(cfg, "homebox", f"cat {blob}", timeout=120)
        assert down.returncode == 0, down.stderr
        assert len(down.stdout) == 64 << 20
        assert hashlib.sha256(down.stdout).hexdigest() == digest
        up = await run_ssh(cfg, "homebox", "sha256sum", stdin=blob.read_bytes(), timeout=120)
        assert up.returncode == 0, up.stderr
        assert up.stdout.decode().split()[0] == digest
