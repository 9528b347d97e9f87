"""Session channels on the bastion, driven by a real paramiko client (which can hold a
session open without asking for anything, as an attacker would): at most
``max_sessions_per_connection`` per connection, while the connection's routed channels keep
working; a key-request session is answered or closed within ``key_request_timeout``
whatever the peer sends (nothing, a huge command, a never-ending stdin)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from pathlib import Path

import paramiko
import pytest

from sshtunnel_mgr.bastion import Bastion
from tests.harness import (
    Keys,
    access_text,
    bastion_pub,
    wait_for,
)
from tests.integration.scene import scene
from tests.integration.test_abuse import echo_scene, events

CAP = 4  # the default max_sessions_per_connection


def paramiko_login(keys: Keys, port: int, key: Path | None = None) -> paramiko.Transport:
    """A logged-in paramiko transport (a third SSH implementation), bastion key pinned."""
    pinned = paramiko.Ed25519Key(data=base64.b64decode(bastion_pub(keys).split()[1]))
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", port), timeout=20))
    transport.connect(
        hostkey=pinned,
        username="alice",
        pkey=paramiko.Ed25519Key.from_private_key_file(str(key or keys.client.path)),
    )
    return transport


def open_sessions(
    transport: paramiko.Transport, count: int
) -> tuple[list[paramiko.Channel], list[str]]:
    """Try ``count`` idle session channels: (the accepted ones, the refusals' texts)."""
    accepted, refused = [], []
    for _ in range(count):
        try:
            accepted.append(transport.open_session(timeout=20))
        except paramiko.ChannelException as exc:
            refused.append(f"{exc.code} {exc.text}")  # OPEN_RESOURCE_SHORTAGE is 4
    return accepted, refused


def echo_through(transport: paramiko.Transport, payload: bytes) -> bytes:
    """A routed direct-tcpip channel to homebox:22 (the echo service) on this connection."""
    chan = transport.open_channel("direct-tcpip", ("homebox", 22), ("127.0.0.1", 0), timeout=20)
    try:
        chan.settimeout(20)
        chan.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = chan.recv(65536)
            if not data:
                break
            got += data
        return got
    finally:
        chan.close()


def bastion_conn_of(bastion: Bastion, transport: paramiko.Transport) -> object:
    port = transport.sock.getsockname()[1]
    return next(c for c in bastion.state.connections.values() if c.peer_port == port)


async def test_session_channels_are_capped_and_routing_on_the_connection_keeps_working(
    keys: Keys, tmp_path: Path
) -> None:
    async with echo_scene(keys, tmp_path) as s:
        transport = await asyncio.to_thread(paramiko_login, keys, s.bastion.port)
        try:
            # An attacker's loop: many idle sessions on one connection (bounded here).
            accepted, refused = await asyncio.to_thread(open_sessions, transport, 250)
            assert len(accepted) == CAP
            assert len(refused) == 250 - CAP
            assert set(refused) == {"4 Resource shortage"}  # paramiko shows the code only
            conn = bastion_conn_of(s.bastion, transport)
            assert conn.open_sessions == CAP  # type: ignore[attr-defined]
            # The connection is still up and routes as before.
            assert transport.is_active()
            payload = b"still routed\n" * 1000
            assert await asyncio.to_thread(echo_through, transport, payload) == payload
            # A closed session frees its place.
            accepted[0].close()
            await wait_for(lambda: conn.open_sessions == CAP - 1)  # type: ignore[attr-defined]
            more, refused_again = await asyncio.to_thread(open_sessions, transport, 2)
            assert len(more) == 1 and len(refused_again) == 1
        finally:
            transport.close()
        # Refusals are audited (the first 10 of a connection, then every 100th), counted.
        audited = [e for e in events(s.audit, "refused") if e["stage"] == "session"]
        assert [e["refused"] for e in audited] == [*range(1, 11), 100, 200]
        assert all(e["reason"].startswith("too many sessions") for e in audited)
        assert s.bastion.state.counters["sessions_refused"] == 250 - CAP + 1


def exchange(
    transport: paramiko.Transport, command: str | None, stdin: bytes, eof: bool
) -> tuple[bytes, int | None, bool]:
    """One session: exec ``command`` (None: ask for nothing), send ``stdin``, maybe EOF;
    read until the bastion closes the channel. (stdout, exit status or None, exec accepted)."""
    chan = transport.open_session(timeout=20)
    chan.settimeout(60)
    accepted = True
    if command is not None:
        try:
            chan.exec_command(command)
        except paramiko.SSHException:
            accepted = False
    if accepted and stdin:
        with contextlib.suppress(OSError):  # the bastion may answer and close meanwhile
            chan.sendall(stdin)
    if accepted and eof:
        chan.shutdown_write()
    out = b""
    while data := chan.recv(65536):
        out += data
    status = chan.recv_exit_status() if chan.exit_status_ready() else None
    chan.close()
    return out, status, accepted


@pytest.mark.parametrize(
    ("command", "stdin", "eof"),
    [
        (None, b"", False),  # opens a session and never asks for anything
        ("sshtun-finish", b"x" * 3_000_000, False),  # a valid request, then a flood, no EOF
        ("sshtun-finish " + "A" * 30_000, b"", True),  # a huge command line
    ],
    ids=["silent", "stdin flood without EOF", "huge command"],
)
async def test_a_key_request_session_is_bounded_whatever_the_peer_sends(
    keys: Keys, tmp_path: Path, command: str | None, stdin: bytes, eof: bool
) -> None:
    limits = {"key_request_timeout": 2.0}
    async with echo_scene(keys, tmp_path, limits=limits) as s:
        transport = await asyncio.to_thread(paramiko_login, keys, s.bastion.port)
        try:
            conn = bastion_conn_of(s.bastion, transport)
            out, status, accepted = await asyncio.wait_for(
                asyncio.to_thread(exchange, transport, command, stdin, eof), 60
            )
            if command is None:
                # Closed by the bastion: nothing was answered.
                assert out == b"" and status in (None, -1)  # paramiko: -1 = no exit status
            elif len(command) > 4096:
                # Not a request: told on stderr that this bastion only routes, exit 1.
                assert accepted and out == b"" and status == 1
            else:
                assert status == 0 and b'"ok": true' in out  # answered despite the flood
            await wait_for(lambda: conn.open_sessions == 0)  # type: ignore[attr-defined]
            assert transport.is_active()
        finally:
            transport.close()
    refused = [e for e in events(s.audit, "refused") if e["stage"] in ("session", "key_request")]
    if command is None:
        assert [e["reason"] for e in refused] == [
            "no answer within key_request_timeout (2 s); session closed"
        ]
    elif len(command) > 4096:
        assert refused[0]["reason"].startswith("command 'sshtun-finish AAAA")


async def test_an_agent_announces_the_host_keys_of_many_names_within_the_session_cap(
    keys: Keys, tmp_path: Path
) -> None:
    """An sshtun agent publishing more port-22 names than the session cap still announces
    every name's home host key: it sends its key requests one at a time."""
    names = [f"h{i}" for i in range(CAP * 4)]
    access = access_text(keys, listen="*:22")
    async with (
        scene(keys, tmp_path, access=access) as s,
        s.agent([(n, 22, s.target) for n in names]),
    ):
        bastion = s.bastion
        (agent,) = [c for c in bastion.state.connections.values() if c.published]
        await wait_for(lambda: len(agent.home_host_keys) == len(names), timeout=60)
        assert set(agent.home_host_keys) == {(n, 22) for n in names}
        assert bastion.state.counters["sessions_refused"] == 0
