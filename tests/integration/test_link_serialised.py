"""Every change to an agent's link goes through one lock, so none interleaves with another
across an await: a reload during a reconnect's publishing, or during a key rotation's
hand-over, applies in full (a withdrawn name stays withdrawn, an added one is published on
the connection that serves the link). Ordering is forced with a real in-process sshtun
bastion that holds its answer to chosen ``tcpip-forward`` or ``direct-tcpip`` requests
until the test releases it (events, no sleeps).

Also: the agent counts the routed sessions on each of its connections itself (no asyncssh
internals), a hand-over drains on that count, and a probe whose open is answered late
closes the late channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.core.config import AgentConfig, TunnelConfig
from sshtunnel_mgr.keys.store import load_private_key
from tests.harness import (
    Keys,
    access_text,
    agent_config,
    free_port,
    running_agent,
    wait_for,
)
from tests.integration.scene import scene, tcp_service

FAST = {"base": 0.05, "cap": 0.2, "healthy_after": 30}
PORT = 8080  # not 22: no home host key announcement opens extra connections to the target


class Gate:
    """Holds the bastion's answer to the requests it matches until ``release()``."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._open = asyncio.Event()

    def release(self) -> None:
        self._open.set()

    async def hold(self) -> None:
        self.reached.set()
        await self._open.wait()


def connection_class(bastion: Bastion) -> type[Any]:
    """The bastion's asyncssh server class (the one behind each live connection)."""
    return type(next(iter(bastion.state.connections.values())))


def hold_publishes(
    monkeypatch: pytest.MonkeyPatch, bastion: Bastion, match: Callable[[object, str], bool]
) -> Gate:
    """Hold the bastion's answer to each ``tcpip-forward`` that ``match(conn, name)``."""
    cls = connection_class(bastion)
    original = cls.server_requested
    gate = Gate()

    def server_requested(self: object, host: str, port: int) -> object:
        if not match(self, host):
            return original(self, host, port)

        async def later() -> object:
            await gate.hold()
            return original(self, host, port)

        return later()

    monkeypatch.setattr(cls, "server_requested", server_requested)
    return gate


def hold_opens(monkeypatch: pytest.MonkeyPatch, bastion: Bastion) -> Gate:
    """Hold the bastion's answer to every ``direct-tcpip`` open."""
    cls = connection_class(bastion)
    original = cls.connection_requested
    gate = Gate()

    def connection_requested(self: object, *args: Any) -> object:
        async def later() -> object:
            await gate.hold()
            return await original(self, *args)

        return later()

    monkeypatch.setattr(cls, "connection_requested", connection_requested)
    return gate


@contextlib.asynccontextmanager
async def home_service() -> AsyncIterator[tuple[int, list[asyncio.Event]]]:
    """A local TCP service that echoes; one event per connection, set when it closes."""
    ended: list[asyncio.Event] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        ended.append(done)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            done.set()

    async with tcp_service(serve) as port:
        yield port, ended


def agent_cfg(keys: Keys, port: int, names: list[str], target: str) -> AgentConfig:
    return agent_config(keys, port, [(n, PORT, target) for n in names], backoff=FAST)


def tunnels(cfg: AgentConfig, names: list[str], target: str) -> AgentConfig:
    return cfg.model_copy(
        update={"tunnels": [TunnelConfig(name=n, port=PORT, target=target) for n in names]}
    )


def routed(bastion: Bastion, name: str) -> bool:
    return bool(bastion.state.routes.lookup(name, PORT))


def listen(*names: str) -> str:
    return ",".join(f"{n}:{PORT}" for n in names)


async def settle() -> None:
    """Let freshly started tasks run up to their first real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_reload_during_a_reconnect_applies_in_full(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link reconnects and is still publishing when a reload withdraws one of its
    names and adds another. Before: the withdrawn name was published anyway (the publish
    in flight finished after the withdrawal) and the added one never was (the reload saw
    a link that was not up and left it to the publish in flight, which had the old list)."""
    access = access_text(keys, listen=listen("homebox", "other", "nas"))
    async with (
        scene(keys, tmp_path, access=access, home=False) as s,
        home_service() as (home, _),
    ):
        bastion = s.bastion
        target = f"127.0.0.1:{home}"
        cfg = agent_cfg(keys, bastion.port, ["homebox", "other"], target)
        async with running_agent(cfg) as agent:
            link = agent.agent.links[0]
            gate = hold_publishes(monkeypatch, bastion, lambda _conn, name: name == "other")
            [first] = bastion.state.connections.values()
            assert first.conn is not None
            first.conn.disconnect(asyncssh.DISC_CONNECTION_LOST, "test: reconnect")
            await asyncio.wait_for(gate.reached.wait(), 15)  # publishing "other" again
            reload = asyncio.create_task(
                link.sync_tunnels(tunnels(cfg, ["homebox", "nas"], target))
            )
            await settle()
            gate.release()
            answer = await asyncio.wait_for(reload, 15)
            assert answer == {"withdrawn": [f"other:{PORT}"], "published": [f"nas:{PORT}"]}
            await wait_for(lambda: link.status.state == "up")
            await wait_for(lambda: routed(bastion, "nas"), timeout=5)
            await wait_for(lambda: not routed(bastion, "other"), timeout=5)
            assert sorted(link.status.published) == [f"homebox:{PORT}", f"nas:{PORT}"]
            assert await link.probe(10)


async def test_a_reload_during_a_hand_over_keeps_every_name_on_the_new_connection(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key rotation's hand-over is publishing on the new key's connection when a reload
    withdraws a name and adds another. Before: the hand-over published the withdrawn name
    on the new connection again, and the reload published the added name on the old
    connection, which the hand-over then retired: the name was gone from the bastion
    while the agent listed it as published."""
    new = keys.extra("agent_next")
    names = listen("homebox", "other", "nas")
    access = access_text(keys, listen=names, extra=[f'permitlisten="{names}" {new.public_line}'])
    async with (
        scene(keys, tmp_path, access=access, home=False) as s,
        home_service() as (home, _),
    ):
        bastion = s.bastion
        target = f"127.0.0.1:{home}"
        cfg = agent_cfg(keys, bastion.port, ["homebox", "other"], target)
        async with running_agent(cfg) as agent:
            link = agent.agent.links[0]
            [old] = bastion.state.connections.values()
            on_new = hold_publishes(monkeypatch, bastion, lambda conn, _name: conn is not old)
            nas_on_old = hold_publishes(
                monkeypatch, bastion, lambda conn, name: conn is old and name == "nas"
            )
            handover = asyncio.create_task(link.hand_over(load_private_key(new.path), None))
            await asyncio.wait_for(on_new.reached.wait(), 15)
            reload = asyncio.create_task(
                link.sync_tunnels(tunnels(cfg, ["homebox", "nas"], target))
            )
            await settle()
            on_new.release()
            answer = await asyncio.wait_for(handover, 15)
            assert answer["ok"], answer
            nas_on_old.release()
            changes = await asyncio.wait_for(reload, 15)
            assert changes == {"withdrawn": [f"other:{PORT}"], "published": [f"nas:{PORT}"]}
            await asyncio.wait_for(link.wait_drained(), 15)
            await wait_for(lambda: old.conn_id not in bastion.state.connections)
            await wait_for(lambda: routed(bastion, "nas"), timeout=5)
            await wait_for(lambda: not routed(bastion, "other"), timeout=5)
            [serving] = bastion.state.connections.values()
            assert [r.conn_id for r in bastion.state.routes.lookup("nas", PORT)] == [
                serving.conn_id
            ]
            assert sorted(link.status.published) == [f"homebox:{PORT}", f"nas:{PORT}"]
            assert await link.probe(10)


async def echo(writer: asyncssh.SSHWriter[bytes], reader: asyncssh.SSHReader[bytes]) -> None:
    writer.write(b"ping\n")
    assert await asyncio.wait_for(reader.readline(), 15) == b"ping\n"


async def test_the_agent_counts_its_routed_sessions_and_a_hand_over_drains_on_them(
    keys: Keys, tmp_path: Path
) -> None:
    new = keys.extra("agent_next")
    names = listen("homebox", "down")
    access = access_text(
        keys, listen=names, open_=names, extra=[f'permitlisten="{names}" {new.public_line}']
    )
    async with (
        scene(keys, tmp_path, access=access, home=False) as s,
        home_service() as (home, ended),
    ):
        bastion = s.bastion
        cfg = agent_config(
            keys,
            bastion.port,
            [("homebox", PORT, f"127.0.0.1:{home}"), ("down", PORT, f"127.0.0.1:{free_port()}")],
            backoff=FAST,
        )
        async with running_agent(cfg) as agent, await s.connect(keys.client.path) as alice:
            link = agent.agent.links[0]
            # The first health probe is done ("down" fails it).
            await wait_for(lambda: link.status.probe_error != "")
            await wait_for(lambda: link.routed_sessions() == 0)
            sessions = [await alice.open_connection("homebox", PORT) for _ in range(3)]
            for reader, writer in sessions:
                await echo(writer, reader)
            assert link.routed_sessions() == 3
            # An open the home side refuses leaves no count behind.
            with pytest.raises(asyncssh.ChannelOpenError, match="the home side refused"):
                await alice.open_connection("down", PORT)
            assert link.routed_sessions() == 3

            old = link.conn
            assert old is not None
            answer = await link.hand_over(load_private_key(new.path), None)
            assert answer["ok"] and answer["sessions"] == 3, answer
            assert link.routed_sessions() == 0  # the new connection carries none yet
            assert link.draining_sessions() == 3
            drained = asyncio.create_task(link.wait_drained())
            for _reader, writer in sessions[:2]:
                writer.close()
            await wait_for(lambda: link.draining_sessions() == 1)
            assert not drained.done() and not old.is_closed()
            await echo(sessions[2][1], sessions[2][0])  # the last one still flows
            sessions[2][1].close()
            await asyncio.wait_for(drained, 15)
            assert old.is_closed() and link.draining_sessions() == 0
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ended)), 15)
            reader, writer = await alice.open_connection("homebox", PORT)  # on the new one
            await echo(writer, reader)
            assert link.routed_sessions() == 1
            writer.close()
            await wait_for(lambda: link.routed_sessions() == 0)


async def test_a_probe_answered_late_closes_the_late_channel(
    keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe gives up after its timeout without cancelling the open (SSH cannot take an
    open back); when the bastion answers after all, the agent closes that channel, so
    neither the bastion nor the home service is left holding it."""
    access = access_text(keys, listen=listen("homebox"))
    async with (
        scene(keys, tmp_path, access=access, home=False) as s,
        home_service() as (home, ended),
    ):
        bastion = s.bastion
        cfg = agent_cfg(keys, bastion.port, ["homebox"], f"127.0.0.1:{home}")
        async with running_agent(cfg) as agent:
            link = agent.agent.links[0]
            await wait_for(lambda: link.status.probe_ok)  # the first health probe is done
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ended)), 15)
            before = len(ended)
            gate = hold_opens(monkeypatch, bastion)
            assert not await link.probe(0.2)
            assert gate.reached.is_set()
            assert link.status.probe_error == f"homebox:{PORT}: timed out"
            gate.release()
            await wait_for(lambda: len(ended) == before + 1)  # the late open reached home
            await asyncio.wait_for(ended[before].wait(), 15)  # ... and was closed
            await wait_for(lambda: link.routed_sessions() == 0)
            await wait_for(lambda: bastion.state.routed_channels() == 0)
            assert await link.probe(10)
