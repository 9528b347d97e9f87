"""Graceful bastion shutdown: stop accepting, tell agents, drain routed sessions."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncssh
import pytest

from tests.harness import Keys, wait_for
from tests.integration.conftest import logged
from tests.integration.scene import scene, wait_link


async def test_sigterm_drains_sessions_while_the_agent_moves_to_a_new_bastion(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        s.bastion_process(shutdown_grace=20) as old,
        s.agent(backoff={"base": 0.1, "cap": 0.5}) as agent,
        s.stream() as stream,
    ):
        await stream.wait_lines(5)  # the session is routed and flowing
        old.send_signal(signal.SIGTERM)
        # The agent hears the drain notice and reconnects at once; a new bastion on the
        # same address (the old one closed its listener first) gets the name.
        link = agent.agent.links[0]
        await wait_for(lambda: link.status.state != "up")
        assert logged(caplog, "drain notice", "bastion=127.0.0.1:")
        async with s.bastion_process(shutdown_grace=20) as new:
            await wait_link(link, connects=2)
            fresh = await s.reach("echo via-new-bastion")
            assert fresh.stdout == b"via-new-bastion\n", fresh.stderr
            # The old session was never cut: it still flows through the draining bastion.
            assert old.returncode is None
            await stream.more(10)
            result = await stream.finish()
            assert result.returncode == 0, result.stderr
            assert result.stdout == stream.expected()
            assert await old.wait(20) == 0
            assert old.logged("draining routed_channels=1")
            assert new.returncode is None


async def test_new_channels_are_refused_during_drain_and_grace_is_bounded(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with scene(keys, tmp_path, shutdown_grace=1.0) as s, s.agent():
        bastion = s.bastion
        early = await s.connect(keys.client.path)
        # A session that would outlive the grace period.
        stream = asyncio.create_task(s.reach("sleep 30"))
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
