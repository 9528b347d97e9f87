"""A browser that resets its connection must not take the agent's link down.

Found by benchmarks/web_bench.py (h2load, new connection per request): a client's RST
that the bastion had not read yet, then the home side's EOF, made the bastion's
``write_eof`` on the client's socket raise ``OSError(ENOTCONN)`` inside asyncssh's channel
callback, which closed the agent's whole SSH connection (every name it published).

Made deterministic here with real sockets: the client uploads until the home server (which
never reads) backs the splice up, so the bastion has stopped reading the client's socket;
the client then resets its connection (SO_LINGER 0) and the home server closes its end.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from tests.harness import Keys, wait_for
from tests.integration.conftest import logged
from tests.integration.web_peers import web_bastion

pytestmark = pytest.mark.asyncio

HELLO = (Path(__file__).resolve().parents[1] / "data" / "tlshello" / "curl_sni.bin").read_bytes()
CHUNK = bytes(256 * 1024)


async def fill_until_blocked(sock: socket.socket, limit: int = 512 * 1024 * 1024) -> int:
    """Send until a send makes no progress for 2 s (the splice is backed up); bounded."""
    loop = asyncio.get_running_loop()
    sent = 0
    while sent < limit:
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, CHUNK), 2)
        except TimeoutError:
            return sent
        sent += len(CHUNK)
    raise AssertionError(f"{sent} bytes sent and the splice never backed up")


async def test_a_reset_client_with_the_home_side_closing_keeps_the_agent_link(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    homes: list[asyncio.StreamWriter] = []

    async def never_reads(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        homes.append(writer)
        await release.wait()
        writer.write_eof()  # the home side's EOF (a FIN: closing with unread data would RST)

    home = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    home_port = home.sockets[0].getsockname()[1]
    tunnels = [("cloud.test", 443, f"127.0.0.1:{home_port}")]
    try:
        async with web_bastion(
            keys, tmp_path, tunnels, "cloud.test:443", public=["cloud.test"]
        ) as web:
            sock = socket.socket()
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", web.https))
            await loop.sock_sendall(sock, HELLO)
            await wait_for(lambda: bool(homes))
            await fill_until_blocked(sock)  # the bastion no longer reads this socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST, unseen by the bastion while it is not reading
            release.set()
            await wait_for(lambda: len(web.records("route")) == 1, timeout=30)
            # The agent's link is the same one: nothing unpublished, no second login.
            assert not web.records("unpublish")
            assert not logged(caplog, "disconnect conn=")
            assert len(web.records("login")) == 1 and len(web.bastion.state.routes) == 1
    finally:
        release.set()
        for writer in homes:
            writer.close()
        home.close()
        await home.wait_closed()
