"""The scene harness itself: an agent that crashes during a test fails that test at
teardown with what happened (its exception or exit status and its last log lines), never
silently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sshtunnel_mgr.core.config import AgentConfig
from sshtunnel_mgr.core.errors import HostKeyError
from tests.harness import AgentCrashed, Keys, pub_of, running_agent, wait_for, write_toml
from tests.integration.scene import Scene, ServiceCrashed, scene, sshtun_process


def wrong_pin(s: Scene) -> AgentConfig:
    """An agent pinning the bastion to a key it does not hold: a fatal error at connect."""
    cfg = s.agent_config([("homebox", 22, "127.0.0.1:9")])
    endpoint = cfg.bastions[0].model_copy(update={"host_key": pub_of(s.keys.client)})
    return cfg.model_copy(update={"bastions": [endpoint]})


async def test_an_in_process_agent_that_crashes_fails_the_test_at_teardown(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bad = wrong_pin(s)
        with pytest.raises(AgentCrashed) as crash:
            async with running_agent(bad, wait=False) as agent:
                await wait_for(agent.task.done)  # it crashed; the test body carries on
        text = str(crash.value)
        assert "agent failed: HostKeyError" in text
        assert "does not match the pinned one" in text
        assert "sshtunnel_mgr.agent" in text.split("last sshtun log lines:")[1]
        assert isinstance(crash.value.__cause__, HostKeyError)


async def test_expect_failure_leaves_the_crash_to_the_test(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bad = wrong_pin(s)
        async with running_agent(bad, wait=False, expect_failure=True) as agent:
            with pytest.raises(HostKeyError):
                await asyncio.wait_for(agent.task, 30)


async def test_an_agent_process_that_exits_fails_the_test_at_teardown(
    keys: Keys, tmp_path: Path
) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        bad = wrong_pin(s)
        toml = write_toml(tmp_path / "bad-agent.toml", "agent", bad)
        with pytest.raises(ServiceCrashed) as crash:
            async with sshtun_process("up", "--config", str(toml)) as agent:
                await agent.wait(60)  # it exits by itself; the test body carries on
        text = str(crash.value)
        assert "ended on its own: exit status 4" in text
        assert "last log lines:" in text
        assert "does not match the pinned one" in text


async def test_a_healthy_agent_stops_quietly(keys: Keys, tmp_path: Path) -> None:
    async with scene(keys, tmp_path, home=False) as s:
        async with s.agent([("homebox", 22, "127.0.0.1:9")]) as agent:
            assert agent.agent.links[0].status.state == "up"
        assert agent.task.done() and agent.task.exception() is None
