"""Clients that leave while their channel is being opened, and opens an agent never answers.

The home service streams as fast as it can from the moment it accepts a connection. Its
listening socket starts *gated*: its accept queue is full (backlog 0, one connection
parked in it), so the kernel drops the agent's SYNs and the agent's connect, and with it
its answer to the bastion's ``forwarded-tcpip`` open, waits until the test opens the gate.
That makes "the client left before the open completed" deterministic with real peers: the
client (asyncssh, or the real ``ssh -W`` killed with SIGKILL) leaves, the bastion sees it
go, then the gate opens and the home service starts streaming into the agent's channel.

The bastion must then close the agent's channel as soon as it opens (so the home side's
TCP connection closes too), hold only a bounded number of bytes meanwhile, count the
channel as closed, and write a ``route`` audit event saying why it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sshtunnel_mgr.bastion import Bastion
from sshtunnel_mgr.bastion.splice import PENDING_LIMIT, Pipe
from tests.harness import (
    SSH,
    Keys,
    access_text,
    bastion_pub,
    process,
    require_openssh,
    wait_for,
)
from tests.integration.scene import Scene, scene

NAME, PORT = "stream", 7000
CHUNK = 64 * 1024
STREAM_CAP = 32 * 1024 * 1024  # bytes one home connection writes at most (bounded loop)
PACKET = 64 * 1024  # one SSH packet's worth of slack above PENDING_LIMIT


@dataclass
class StreamingHome:
    """A home service that writes as fast as it can to every connection it accepts, with a
    gate: while it is closed nothing is accepted and the accept queue is full."""

    listener: socket.socket
    port: int
    fillers: list[socket.socket] = field(default_factory=list)
    accepted: int = 0
    open: int = 0
    sent: list[int] = field(default_factory=list)  # bytes written, per connection
    accepting: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def close_gate(self) -> None:
        assert self.accepting is not None
        self.accepting.cancel()
        self.accepting = None
        # backlog 0: this one parked connection fills the accept queue, later SYNs wait.
        self.fillers.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))

    def open_gate(self) -> None:
        self.accepting = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, peer = await loop.sock_accept(self.listener)
            if peer[1] in {f.getsockname()[1] for f in self.fillers}:
                sock.close()
                continue
            task = asyncio.ensure_future(self._stream(sock))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _stream(self, sock: socket.socket) -> None:
        self.accepted += 1
        self.open += 1
        index = len(self.sent)
        self.sent.append(0)
        reader, writer = await asyncio.open_connection(sock=sock)
        chunk = b"h" * CHUNK
        eof = asyncio.ensure_future(reader.read())  # b"" when the agent side closes
        try:
            while self.sent[index] < STREAM_CAP and not eof.done():
                writer.write(chunk)
                self.sent[index] += len(chunk)
                await writer.drain()
            await eof  # keep it open until the other side closes it
        except ConnectionError:
            pass
        finally:
            eof.cancel()
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def streaming_home() -> AsyncIterator[StreamingHome]:
    """The home service, accepting (gate open)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    listener.setblocking(False)
    home = StreamingHome(listener, listener.getsockname()[1])
    home.open_gate()
    try:
        yield home
    finally:
        if home.accepting is not None:
            home.accepting.cancel()
        for task in list(home.tasks):
            task.cancel()
        await asyncio.gather(*home.tasks, return_exceptions=True)
        for filler in home.fillers:
            filler.close()
        listener.close()


def audit_events(path: Path, kind: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in found if e["event"] == kind]


def client_connect(keys: Keys, port: int) -> Any:
    return asyncssh.connect(
        "127.0.0.1",
        port,
        username="alice",
        client_keys=[str(keys.client.path)],
        known_hosts=([asyncssh.import_public_key(bastion_pub(keys))], [], []),
        config=None,
        agent_path=None,
        connect_timeout=20,
    )


def opening(bastion: Bastion) -> int:
    """Routed channels the clients (not the agent's own probes) have in hand."""
    return sum(bc.open_channels for bc in bastion.state.connections.values() if not bc.published)


def splices_left(bastion: Bastion) -> int:
    """Agent ends still live or opens still in flight, over every agent connection."""
    return sum(
        len(stats.live) + len(getattr(stats, "opening", ()))
        for bc in bastion.state.connections.values()
        for stats in bc.route_stats.values()
    )


def held_bytes(bastion: Bastion) -> int:
    return sum(
        stats.held_bytes()
        for bc in bastion.state.connections.values()
        for stats in bc.route_stats.values()
    )


@contextlib.asynccontextmanager
async def publishing_agent(kind: str, s: Scene, home: StreamingHome) -> AsyncIterator[None]:
    """The sshtun agent (after its first probe through the name), or stock ``ssh -R`` as
    the agent, publishing stream:7000; then the home service's gate is closed."""
    bastion = s.bastion
    if kind == "sshtun":
        tunnels = [(NAME, PORT, f"127.0.0.1:{home.port}")]
        async with s.agent(tunnels, probe_interval=3600.0) as agent:
            await wait_for(lambda: agent.agent.links[0].status.probe_ok, timeout=30)
            await wait_for(lambda: home.open == 0 and splices_left(bastion) == 0, timeout=30)
            home.close_gate()
            yield
        return
    async with s.stock_agent(f"{NAME}:{PORT}:127.0.0.1:{home.port}") as stock:
        assert stock.returncode is None, "stock ssh -R exited"
        home.close_gate()
        yield


async def leave_with_asyncssh(keys: Keys, bastion: Bastion) -> None:
    """An asyncssh client asks for the name and drops its TCP connection mid-open."""
    async with client_connect(keys, bastion.port) as conn:
        attempt = asyncio.ensure_future(conn.open_connection(NAME, PORT))
        await wait_for(lambda: opening(bastion) == 1 or attempt.done(), timeout=30)
        assert not attempt.done(), "the open completed while the home side was gated"
        conn.abort()
        with contextlib.suppress(asyncssh.Error, OSError):
            await asyncio.wait_for(attempt, 30)


async def leave_with_openssh(cfg: Path, bastion: Bastion) -> None:
    """The real ``ssh -W stream:7000 bastion`` is killed with SIGKILL mid-open."""
    assert SSH is not None
    async with process(SSH, "-F", str(cfg), "-W", f"{NAME}:{PORT}", "bastion") as ssh:
        await wait_for(lambda: opening(bastion) == 1 or ssh.returncode is not None, timeout=30)
        assert ssh.returncode is None, "ssh -W exited before its open was in flight"
        ssh.send_signal(signal.SIGKILL)
        await ssh.wait()


async def read_some(keys: Keys, bastion: Bastion, size: int) -> int:
    """A fresh client reads ``size`` streamed bytes through the name, then closes."""
    async with client_connect(keys, bastion.port) as conn:
        reader, writer = await conn.open_connection(NAME, PORT)
        got = len(await reader.readexactly(size))
        writer.close()
        return got


@pytest.mark.parametrize("agent_kind", ["sshtun", "openssh"])
async def test_clients_that_leave_mid_open_leave_nothing_behind(
    keys: Keys, tmp_path: Path, agent_kind: str
) -> None:
    require_openssh()
    access = access_text(keys, listen=f"{NAME}:{PORT}", open_=f"{NAME}:{PORT}")
    audit = tmp_path / "audit.jsonl"
    leavers = 3  # asyncssh clients, then as many real ssh -W clients
    async with (
        streaming_home() as home,
        scene(keys, tmp_path, access=access, home=False, audit_log=audit) as s,
        publishing_agent(agent_kind, s, home),
    ):
        bastion, cfg = s.bastion, s.client_cfg
        agents = len(bastion.state.connections)
        before = home.accepted
        for i in range(2 * leavers):
            if i < leavers:
                await leave_with_asyncssh(keys, bastion)
            else:
                await leave_with_openssh(cfg, bastion)
            # The bastion saw the client go (the agent's open is still unanswered).
            await wait_for(lambda: len(bastion.state.connections) == agents, timeout=30)
        assert home.accepted == before

        # Now the agent's connects go through and the home service streams at once.
        most_held = 0

        def settled() -> bool:
            nonlocal most_held
            most_held = max(most_held, held_bytes(bastion))
            return home.accepted == before + 2 * leavers and home.open == 0

        home.open_gate()
        await wait_for(settled, timeout=60, interval=0.02)
        # Every home connection was closed from the bastion's side, early.
        assert max(home.sent) < STREAM_CAP
        await wait_for(lambda: splices_left(bastion) == 0, timeout=30)
        assert bastion.state.routed_channels() == 0
        assert most_held <= 2 * leavers * (PENDING_LIMIT + PACKET)
        routes = audit_events(audit, "route")
        assert len(routes) == 2 * leavers, routes
        for route in routes:
            assert (route["name"], route["port"]) == (NAME, PORT)
            assert route["end"] == "client left during open"

        # The name still works for the next client, on the same agent connection.
        assert await read_some(keys, bastion, 1024 * 1024) == 1024 * 1024
        await wait_for(lambda: home.open == 0 and splices_left(bastion) == 0, timeout=30)
        assert len(bastion.state.connections) == agents


async def test_an_open_the_agent_does_not_answer_times_out(keys: Keys, tmp_path: Path) -> None:
    access = access_text(keys, listen=f"{NAME}:{PORT}", open_=f"{NAME}:{PORT}")
    audit = tmp_path / "audit.jsonl"
    limits = {"open_timeout": 1.0, "max_unanswered_opens": 1}
    async with (
        streaming_home() as home,
        scene(keys, tmp_path, access=access, home=False, audit_log=audit, limits=limits) as s,
        publishing_agent("sshtun", s, home),
        client_connect(keys, s.port) as conn,
    ):
        bastion = s.bastion
        before = home.accepted
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await asyncio.wait_for(conn.open_connection(NAME, PORT), 60)
        assert refused.value.reason == (
            f"{NAME}:{PORT}: the agent did not answer the channel open in 1 s"
        )
        await wait_for(lambda: bastion.state.routed_channels() == 0)
        routes = [r for r in audit_events(audit, "route") if r["end"] != "client closed"]
        assert [r["end"] for r in routes] == ["open timed out"]
        assert any(e["stage"] == "open" for e in audit_events(audit, "refused"))
        # That open is still unanswered: with max_unanswered_opens = 1 no other is sent.
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await asyncio.wait_for(conn.open_connection(NAME, PORT), 60)
        assert refused.value.reason == (
            f"{NAME}:{PORT}: the agent has not answered 1 channel opens; try again later"
        )

        # The agent answers late: its channel is closed at once, so is the home connection.
        home.open_gate()
        await wait_for(lambda: home.accepted == before + 1 and home.open == 0, timeout=60)
        assert home.sent[-1] < STREAM_CAP
        await wait_for(lambda: splices_left(bastion) == 0, timeout=30)
        # The client's connection stayed up and the name works on it again.
        reader, writer = await conn.open_connection(NAME, PORT)
        assert len(await reader.readexactly(65536)) == 65536
        writer.close()
        await wait_for(lambda: bastion.state.routed_channels() == 0)
        ends = [r["end"] for r in audit_events(audit, "route")]
        assert ends[-3:-1] == ["open timed out", "agent not answering opens"]


# The splice itself: data for an end that is not open yet is held, bounded ----------------
class SpliceServer(asyncssh.SSHServer):
    """A bare asyncssh server whose two ``direct-tcpip`` names are the two ends of one
    ``Pipe`` pair: "source" opens first, "sink" only when the client asks for it."""

    def __init__(self, ends: dict[str, Pipe]) -> None:
        self.ends = ends

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        return self.ends[dest_host]


async def test_data_for_an_end_not_open_yet_is_held_bounded_and_delivered(
    keys: Keys,
) -> None:
    source, sink = Pipe(), Pipe()
    source.link(sink)
    size = 8 * 1024 * 1024
    data = random.Random(1).randbytes(size)
    server = await asyncssh.create_server(
        lambda: SpliceServer({"source": source, "sink": sink}),
        "127.0.0.1",
        0,
        server_host_keys=[str(keys.bastion_host_path)],
        authorized_client_keys=asyncssh.import_authorized_keys(keys.client.public_line),
    )
    try:
        port = server.sockets[0].getsockname()[1]
        async with client_connect(keys, port) as conn:
            _, into = await conn.open_connection("source", 1)
            into.write(data)
            into.write_eof()
            # The source end reads until it holds PENDING_LIMIT, then stops reading: the
            # rest waits in the SSH window and the client's own buffer.
            await wait_for(
                lambda: getattr(source, "reading_paused", False) or source.bytes_in >= size,
                timeout=60,
            )
            assert source.bytes_in <= PENDING_LIMIT + PACKET
            assert source.pending_bytes <= PENDING_LIMIT + PACKET
            assert into.channel.get_write_buffer_size() > 0  # the client is held back
            # The other end opens: everything arrives, in order, then the EOF.
            out, _ = await conn.open_connection("sink", 1)
            got = await asyncio.wait_for(out.read(), 120)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            assert source.pending_bytes == 0 and not source.reading_paused
            await asyncio.wait_for(into.drain(), 30)
    finally:
        server.close()
        await server.wait_closed()
