"""The agent's side of sshcompat/kexguess.py, against a server that guesses.

No SSH server we can run sends a guessed first key-exchange packet (OpenSSH and Dropbear
guess only as clients), so the peer is a raw-socket server speaking the wire by hand:
its KEXINIT offers only curve25519-sha256 with ``first_kex_packet_follows`` set, and
right after it a guessed KEX_ECDH_REPLY that is empty. The agent prefers ML-KEM, so by
RFC 4253 §7 the server's guess is wrong and must be dropped unread, although negotiation
then picks curve25519 (the server's first), which is exactly when stock asyncssh 2.24
uses the guess. Once the agent's ECDH_INIT arrives, the server sends a well-formed reply
signed by a host key the agent has not pinned.

- With the shim the empty guess is dropped, the real reply is read, and the agent stops
  on the unpinned host key (its fatal HostKeyError).
- Without it (stock asyncssh) the agent parses the empty guess and fails with
  "Incomplete packet", then retries: the reply it should have read is never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sshtunnel_mgr.core.errors import HostKeyError
from sshtunnel_mgr.sshcompat import kexguess
from tests.harness import Keys, agent_config, running_agent, wait_for
from tests.integration.conftest import logged

MSG_DISCONNECT, MSG_KEXINIT, MSG_KEX_ECDH_INIT, MSG_KEX_ECDH_REPLY = 1, 20, 30, 31


def string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def binary_packet(payload: bytes) -> bytes:
    """RFC 4253 §6 before any key is in use: length, padding length, payload, padding."""
    pad = 8 - (len(payload) + 5) % 8
    pad += 8 if pad < 4 else 0
    return (len(payload) + 1 + pad).to_bytes(4, "big") + bytes([pad]) + payload + b"\0" * pad


KEXINIT = (
    bytes([MSG_KEXINIT])
    + os.urandom(16)
    + b"".join(
        string(names)
        for names in (
            b"curve25519-sha256",
            b"ssh-ed25519",
            b"aes128-gcm@openssh.com",
            b"aes128-gcm@openssh.com",
            b"hmac-sha2-256-etm@openssh.com",
            b"hmac-sha2-256-etm@openssh.com",
            b"none",
            b"none",
            b"",
            b"",
        )
    )
    + b"\x01"  # first_kex_packet_follows
    + b"\0\0\0\0"
)
WRONG_GUESS = bytes([MSG_KEX_ECDH_REPLY])  # empty: unreadable if it is not dropped
REAL_REPLY = (
    bytes([MSG_KEX_ECDH_REPLY])
    + string(string(b"ssh-ed25519") + string(b"\x01" * 32))  # a host key nobody pinned
    + string(b"\x02" * 32)
    + string(string(b"ssh-ed25519") + string(b"\x03" * 64))
)


@contextlib.asynccontextmanager
async def guessing_server() -> AsyncIterator[tuple[int, list[list[int]]]]:
    """The raw server; yields its port and, per connection, the message types it read."""
    seen: list[list[int]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        types: list[int] = []
        seen.append(types)
        writer.write(b"SSH-2.0-Guesser\r\n" + binary_packet(KEXINIT) + binary_packet(WRONG_GUESS))
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readline()  # the agent's version
            while True:  # its packets, unencrypted until NEWKEYS (which never comes)
                size = int.from_bytes(await reader.readexactly(4), "big")
                body = await reader.readexactly(size)
                types.append(body[1])
                if body[1] == MSG_KEX_ECDH_INIT:
                    writer.write(binary_packet(REAL_REPLY))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("shim", [True, False], ids=["with-shim", "without-shim"])
async def test_agent_drops_a_wrong_server_guess_only_with_the_shim(
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    shim: bool,
) -> None:
    if not shim:
        monkeypatch.setattr(kexguess, "install", lambda conn: False)
    async with guessing_server() as (port, seen):
        config = agent_config(keys, port, [("homebox", 22, "127.0.0.1:22")])
        async with running_agent(config, wait=False, expect_failure=shim) as agent:
            if shim:
                # The real reply was read: its host key is not the pinned one (fatal).
                with pytest.raises(HostKeyError, match="does not match the pinned one"):
                    await asyncio.wait_for(agent.task, 60)
            else:
                await wait_for(lambda: logged(caplog, "link down", "Incomplete packet"), 60)
                assert not agent.task.done()  # a protocol error: it retries
        assert seen and seen[0][:2] == [MSG_KEXINIT, MSG_KEX_ECDH_INIT]
