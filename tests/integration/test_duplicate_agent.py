"""A second agent with the same key (started by mistake, or a restart overlapping the old
process) takes the name; when it leaves, the first one, still connected, serves it again
at once: the name is never lost while a publisher of it is up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.harness import (
    Keys,
    access_text,
    wait_for,
)
from tests.integration.conftest import logged
from tests.integration.scene import Scene, scene, tcp_service


@asynccontextmanager
async def banner_server(banner: bytes) -> AsyncIterator[int]:
    """A local TCP service that says who it is and closes."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        writer.close()

    async with tcp_service(answer) as port:
        yield port


async def who_answers(s: Scene) -> bytes:
    async with await s.connect(s.keys.client.path) as client:
        reader, writer = await client.open_connection("homebox", 22)
        data = await asyncio.wait_for(reader.read(100), 15)
        writer.close()
        return data


async def test_first_agent_serves_again_when_the_duplicate_leaves(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        scene(keys, tmp_path, home=False) as s,
        banner_server(b"first\n") as first_port,
        banner_server(b"second\n") as second_port,
    ):
        bastion = s.bastion
        second = s.agent(
            [("homebox", 22, f"127.0.0.1:{second_port}")], admin_socket=tmp_path / "second.sock"
        )
        async with s.agent([("homebox", 22, f"127.0.0.1:{first_port}")]) as first:
            assert await who_answers(s) == b"first\n"
            [original] = bastion.state.routes.lookup("homebox", 22)
            async with second:
                # The newest connection of the key serves the name (takeover).
                assert await who_answers(s) == b"second\n"
                # The first agent's own probe still works: its forward is on standby.
                assert await first.agent.links[0].probe(10)
            # The duplicate left: the first agent serves again, with no reconnect.
            await wait_for(lambda: len(bastion.state.routes.lookup("homebox", 22)) == 1)
            [route] = bastion.state.routes.lookup("homebox", 22)
            assert route.conn_id == original.conn_id  # the same, still-connected agent
            assert await who_answers(s) == b"first\n"
            assert await first.agent.links[0].probe(10)
            assert logged(caplog, "standby serves again", "name=homebox")


async def test_an_agent_whose_probe_finds_its_name_gone_publishes_it_again(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload took the name away (permitlisten removed); once the access file allows it
    again, the agent's next probe finds the name gone and publishes it again itself."""
    async with (
        scene(keys, tmp_path, home=False) as s,
        banner_server(b"home\n") as home_port,
        s.agent([("homebox", 22, f"127.0.0.1:{home_port}")]) as agent,
    ):
        bastion, access = s.bastion, s.access
        link = agent.agent.links[0]
        access.write_text(access_text(keys, listen="other:22"))
        assert bastion.reload(bastion.config)["withdrawn"] == ["homebox:22"]
        assert not await link.probe(10)
        assert "homebox:22" in link.status.probe_error
        assert not logged(caplog, "republish")  # the key may not publish it: no retry
        access.write_text(access_text(keys))
        bastion.reload(bastion.config)
        assert not await link.probe(10)  # finds the name gone, and publishes it again
        assert logged(caplog, "republish", "name=homebox:22")
        await wait_for(lambda: bool(bastion.state.routes.lookup("homebox", 22)))
        assert await link.probe(10)
        assert await who_answers(s) == b"home\n"
