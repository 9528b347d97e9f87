"""Graceful bastion shutdown: stop accepting, tell agents, drain routed sessions."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncssh
import pytest

from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    SSHTUN,
    Keys,
    access_text,
    agent_config,
    bastion_config,
    bastion_pub,
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

STREAM = "for i in $(seq 1 30); do echo line$i; sleep 0.05; done"
EXPECTED = "".join(f"line{i}\n" for i in range(1, 31)).encode()


async def test_sigterm_drains_sessions_while_the_agent_moves_to_a_new_bastion(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    port = free_port()
    bfile = write_toml(
        tmp_path / "bastion.toml", "bastion", bastion_config(keys, access, port, shutdown_grace=20)
    )
    async with (
        home_sshd(keys, tmp_path / "home") as home,
        process(*SSHTUN, "bastion", "--config", str(bfile)) as old,
    ):
        await read_until(old.stderr, "listening on")
        acfg = agent_config(
            keys,
            port,
            [("homebox", 22, f"127.0.0.1:{home.port}")],
            backoff={"base": 0.1, "cap": 0.5},
        )
        async with running_agent(acfg) as agent:
            client = write_ssh_config(tmp_path / "c", keys, port)
            stream = asyncio.create_task(run_ssh(client, "homebox", STREAM))
            await asyncio.sleep(0.4)
            old.send_signal(signal.SIGTERM)
            # The agent hears the drain notice and reconnects at once; a new bastion on the
            # same address (the old one closed its listener first) gets the name.
            link = agent.agent.links[0]
            await wait_for(lambda: link.status.state != "up")
            assert logged(caplog, "drain notice", "bastion=127.0.0.1:")
            async with process(*SSHTUN, "bastion", "--config", str(bfile)) as new:
                await read_until(new.stderr, "listening on")
                await wait_for(lambda: link.status.state == "up" and link.status.connects == 2)
                fresh = await run_ssh(client, "homebox", "echo via-new-bastion")
                assert fresh.stdout == b"via-new-bastion\n", fresh.stderr
                # The old session was never cut: it finished on the draining bastion.
                result = await stream
                assert result.returncode == 0, result.stderr
                assert result.stdout == EXPECTED
                assert await asyncio.wait_for(old.wait(), 20) == 0
                assert old.stderr is not None
                log = (await old.stderr.read()).decode()
                assert "draining routed_channels=1" in log


async def test_new_channels_are_refused_during_drain_and_grace_is_bounded(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = tmp_path / "access"
    access.write_text(access_text(keys))
    async with home_sshd(keys, tmp_path / "home") as home:
        cfg = bastion_config(keys, access, shutdown_grace=1.0)
        async with (
            running_bastion(cfg) as bastion,
            running_agent(
                agent_config(keys, bastion.port, [("homebox", 22, f"127.0.0.1:{home.port}")])
            ),
        ):
            client = write_ssh_config(tmp_path / "c", keys, bastion.port)
            early = await asyncssh.connect(
                "127.0.0.1",
                bastion.port,
                username="alice",
                config=None,
                agent_path=None,
                client_keys=[load_private_key(keys.client.path)],
                known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
            )
            # A session that would outlive the grace period.
            stream = asyncio.create_task(run_ssh(client, "homebox", "sleep 30"))
            await wait_for(lambda: bastion.state.routed_channels() == 1)
            stopping = asyncio.create_task(bastion.stop())
            await wait_for(lambda: not bastion.state.accepting)
            with pytest.raises(asyncssh.ChannelOpenError, match="this bastion is shutting down"):
                await early.open_connection("homebox", 22)
            await stopping
            early.close()
            result = await stream
            assert result.returncode != 0  # cut at the end of the grace period
            assert logged(caplog, "drain incomplete", "grace=1s", "closing them")
