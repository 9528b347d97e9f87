"""One routed session on the agent's side, and the count of them per connection.

The bastion opens a ``forwarded-tcpip`` channel on the agent's connection for each client
of a published name; ``forward_to`` answers it by connecting to that name's local target
(asyncssh's own ``forward_connection``, which splices the two) and counts it on the
connection's ``ChannelCount``: +1 when the open arrives, -1 when the open fails or, once
open, when the channel closes. A hand-over drains an old connection by waiting for its
count to reach zero (an event, no polling, no asyncssh internals).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

import asyncssh
from asyncssh.forward import SSHForwarder

SessionFactory = Callable[[str, int], Awaitable[asyncssh.SSHTCPSession[bytes]]]


class ChannelCount:
    """Routed channels open on one connection; ``wait_idle`` returns when there are none."""

    def __init__(self) -> None:
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def value(self) -> int:
        return self._open

    def opened(self) -> None:
        self._open += 1
        self._idle.clear()

    def closed(self) -> None:
        if self._open <= 0:
            raise RuntimeError("a routed channel was counted closed twice")
        self._open -= 1
        if self._open == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class _CountedSession(asyncssh.SSHTCPSession[bytes]):
    """asyncssh's forwarder for one channel, passed every callback, counted closed once
    when asyncssh reports the channel gone."""

    def __init__(self, forwarder: SSHForwarder, count: ChannelCount) -> None:
        self._forwarder = forwarder
        self._count: ChannelCount | None = count

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._forwarder.connection_made(cast(asyncio.BaseTransport, chan))

    def session_started(self) -> None:
        self._forwarder.session_started()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._forwarder.data_received(data, datatype)

    def eof_received(self) -> bool:
        return self._forwarder.eof_received()

    def pause_writing(self) -> None:
        self._forwarder.pause_writing()

    def resume_writing(self) -> None:
        self._forwarder.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._forwarder.connection_lost(exc)
        finally:
            count, self._count = self._count, None
            if count is not None:
                count.closed()


def forward_to(
    conn: asyncssh.SSHClientConnection, count: ChannelCount, host: str, port: int
) -> SessionFactory:
    """The session factory for one published name: each channel the bastion opens for it
    is connected to ``host:port`` here (a refusal there refuses the open, with the reason)."""

    async def open_session(_orig_host: str, _orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
        count.opened()
        try:
            forwarder = await conn.forward_connection(host, port)
            if conn.is_closed():  # asyncssh would drop the session unclosed
                forwarder.close()
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED, "SSH connection closed"
                )
        except BaseException:
            count.closed()
            raise
        return _CountedSession(forwarder, count)

    return open_session
