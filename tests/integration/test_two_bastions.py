"""One agent, two bastions (``[[agent.bastions]]`` twice): the agent keeps a link to each
and publishes its names on both; a real ``ssh -J`` through either reaches the home sshd;
when one bastion stops (SIGTERM: it drains; SIGKILL: its sockets just close) the other
serves at once, untouched, and the stopped one gets the names back when it returns."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshtunnel_mgr.agent.link import BastionLink
from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import AgentConfig, BastionEndpoint
from sshtunnel_mgr.keys.store import KeyInfo
from tests.harness import Keys, free_port, pub_of, run_ssh, running_agent, running_bastion, wait_for
from tests.integration.scene import Scene, scene, wait_link

pytestmark = pytest.mark.openssh

FAST = {"base": 0.1, "cap": 0.5, "healthy_after": 30}


@dataclass
class Two:
    """Bastion A on ``s.port`` (started by each test), bastion B in-process with its own
    host key on ``b.port``, and alice's pinned ssh config through each."""

    s: Scene
    b: Bastion
    b_key: KeyInfo
    via_b: Path

    def agent_config(self) -> AgentConfig:
        both = [
            BastionEndpoint(
                address=f"127.0.0.1:{self.s.port}", host_key=pub_of(self.s.keys.bastion_host)
            ),
            BastionEndpoint(address=f"127.0.0.1:{self.b.port}", host_key=pub_of(self.b_key)),
        ]
        return self.s.agent_config(backoff=FAST).model_copy(update={"bastions": both})


def serving(link: BastionLink) -> bool:
    return link.status.state == "up" and link.status.published == ["homebox:22"]


@contextlib.asynccontextmanager
async def two_bastions(keys: Keys, tmp_path: Path) -> AsyncIterator[Two]:
    b_key = keys.extra("bastion_b_host_key")
    async with (
        scene(keys, tmp_path, bastion=False) as s,
        running_bastion(s.bastion_config(port=free_port(), host_key=b_key.path)) as b,
    ):
        yield Two(s, b, b_key, s.ssh_config("alice-b", bastion_port=b.port, bastion_key=b_key))


async def test_ssh_jump_through_either_bastion_reaches_the_home_box(
    keys: Keys, tmp_path: Path
) -> None:
    async with (
        two_bastions(keys, tmp_path) as two,
        two.s.bastion_process(),
        running_agent(two.agent_config()) as agent,
    ):
        a_link, b_link = agent.agent.links
        await wait_for(lambda: serving(a_link) and serving(b_link))
        assert two.b.state.routes.lookup("homebox", 22)
        via_a = await two.s.reach("echo via-a")
        assert via_a.stdout == b"via-a\n", via_a.stderr
        via_b = await run_ssh(two.via_b, "homebox", "echo via-b")
        assert via_b.stdout == b"via-b\n", via_b.stderr
        assert sum("Accepted publickey" in line for line in two.s.home.log) == 2


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
async def test_one_bastion_stops_the_other_serves_and_it_gets_the_names_back(
    keys: Keys, tmp_path: Path, how: signal.Signals
) -> None:
    async with two_bastions(keys, tmp_path) as two, running_agent(two.agent_config()) as agent:
        a_link, b_link = agent.agent.links
        async with two.s.bastion_process() as a:
            await wait_for(lambda: serving(a_link) and serving(b_link))
            assert (await two.s.reach("echo via-a")).stdout == b"via-a\n"
            await a.stop(how)
        # No wait: B serves at once, over the link it always had.
        via_b = await run_ssh(two.via_b, "homebox", "echo via-b")
        assert via_b.stdout == b"via-b\n", via_b.stderr
        await wait_for(lambda: a_link.status.state != "up")
        assert serving(b_link) and b_link.status.connects == 1
        down = await two.s.reach("echo nobody-there")
        assert down.returncode == 255
        # A comes back on its address: the agent publishes there again.
        async with two.s.bastion_process() as a:
            await wait_link(a_link, connects=2)
            await wait_for(lambda: serving(a_link))  # published on A again
            again = await two.s.reach("echo via-a-again")
            assert again.stdout == b"via-a-again\n", again.stderr
            assert serving(b_link) and b_link.status.connects == 1
            await a.wait_log("publish", "homebox")
