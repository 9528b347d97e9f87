"""Many short routed channels torn down from both ends while data flows both ways.

A write to a channel that is closing used to raise inside the bastion's splice, and
asyncssh then dropped the whole SSH connection the data came in on (an agent, with every
session on it): "Channel not open for sending". Here the agent connection, the client
connection and the bastion must all stay up, and the name must work afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from tests.harness import (
    Keys,
    access_text,
    wait_for,
)
from tests.integration.conftest import logged
from tests.integration.scene import scene

CHANNELS = 160  # in all
AT_ONCE = 32  # open at the same time
CHUNK = 32 * 1024
NAME, PORT = "stress", 7000


@contextlib.asynccontextmanager
async def home_service(seed: int) -> AsyncIterator[int]:
    """The local target. First byte from the client: ``E`` echoes; ``S`` streams to the
    client while discarding what it sends, and one connection in three is closed (or
    reset) from this side after a little data, mid-transfer."""
    rng = random.Random(seed)
    chunk = b"h" * CHUNK

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            mode = await reader.readexactly(1)
            if mode == b"E":
                while data := await reader.read(CHUNK):
                    writer.write(data)
                    await writer.drain()
                return
            stop_after = rng.choice([None, None, rng.randrange(1, 64)])
            reset = rng.random() < 0.5

            async def discard() -> None:
                while await reader.read(CHUNK):
                    pass

            sink = asyncio.ensure_future(discard())
            try:
                for sent in range(4096):  # bounded: 128 MiB at most
                    if stop_after is not None and sent >= stop_after:
                        if reset:
                            writer.transport.abort()
                        break
                    writer.write(chunk)
                    await writer.drain()
                    if sink.done():
                        break
            finally:
                sink.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def one_channel(conn: asyncssh.SSHClientConnection, rng: random.Random) -> str:
    """Open the name, send and receive at once, then end it from the client side in one
    of several ways (unless the home side ended it first)."""
    reader, writer = await conn.open_connection(NAME, PORT)
    writer.write(b"S")
    read_limit = rng.randrange(0, 2 * 1024 * 1024)
    how = rng.choice(["close", "abort", "eof-then-close"])
    chunk = b"c" * CHUNK

    async def pump() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionError):
            for _ in range(512):  # bounded: 16 MiB at most
                writer.write(chunk)
                await writer.drain()

    pumping = asyncio.ensure_future(pump())
    got = 0
    try:
        while got < read_limit:
            data = await reader.read(CHUNK)
            if not data:
                return "home"
            got += len(data)
    except (ConnectionError, asyncssh.Error):
        return "home"
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping
        if how == "abort":
            writer.channel.abort()
        elif how == "eof-then-close":
            with contextlib.suppress(OSError):
                writer.write_eof()
            writer.close()
        else:
            writer.close()
    return how


async def echo_round_trip(conn: asyncssh.SSHClientConnection, size: int) -> bytes:
    reader, writer = await conn.open_connection(NAME, PORT)
    data = random.Random(size).randbytes(size)
    writer.write(b"E" + data)
    writer.write_eof()
    back = await reader.readexactly(size)
    writer.close()
    return hashlib.sha256(back).digest() if back == data else b""


async def test_channels_torn_down_from_both_ends_mid_transfer(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access = access_text(keys, listen=f"{NAME}:{PORT}", open_=f"{NAME}:{PORT}")
    rng = random.Random(2)
    async with (
        home_service(seed=1) as home_port,
        scene(keys, tmp_path, access=access, home=False) as s,
        s.agent([(NAME, PORT, f"127.0.0.1:{home_port}")]) as agent,
        await s.connect(keys.client.path, username="client") as client,
    ):
        bastion = s.bastion
        link = agent.agent.links[0]
        [agent_conn_id] = [c for c, bc in bastion.state.connections.items() if bc.published]
        gate = asyncio.Semaphore(AT_ONCE)

        async def limited(i: int) -> str:
            async with gate:
                return await one_channel(client, random.Random(rng.random()))

        endings = await asyncio.wait_for(
            asyncio.gather(*(limited(i) for i in range(CHANNELS))), timeout=240
        )
        # Both ends really did tear channels down.
        assert endings.count("home") >= 10
        assert sum(e != "home" for e in endings) >= 10

        assert not client.is_closed()
        assert link.status.state == "up" and link.status.connects == 1
        assert agent_conn_id in bastion.state.connections
        assert not logged(caplog, "link down")
        assert not logged(caplog, "disconnect", f"conn={agent_conn_id} ")
        client_conn = next(bc for bc in bastion.state.connections.values() if not bc.published)
        await wait_for(lambda: client_conn.open_channels == 0, timeout=30)
        # The name still works, both ways, on the same connections.
        assert await echo_round_trip(client, 256 * 1024)
        assert link.status.connects == 1


async def test_agent_logs_why_the_bastion_dropped_it(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        scene(keys, tmp_path, home=False) as s,
        s.agent([("homebox", 22, "127.0.0.1:9")]) as agent,
    ):
        bastion = s.bastion
        [agent_conn] = bastion.state.connections.values()
        assert agent_conn.conn is not None
        agent_conn.conn.disconnect(asyncssh.DISC_PROTOCOL_ERROR, "splice test reason")
        link = agent.agent.links[0]
        await wait_for(lambda: link.status.connects == 2 and link.status.state == "up")
        assert logged(
            caplog, "link down", "connection to bastion lost: splice test reason (code 2)"
        )
