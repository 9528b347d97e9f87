"""A routed SSH channel as an awaitable byte stream: ``ChannelPipe``.

asyncssh hands a ``forwarded-tcpip`` channel's data to a session object by callbacks; the
web path (TLS, PROXY headers, HTTP) wants ``await recv()`` / ``await send()``. The pipe
buffers at most ``limit`` bytes before it pauses the channel (the SSH window then stops
the bastion), waits in ``send`` while asyncssh says writing is paused, keeps the channel
half-open after the peer's EOF (a response may still follow), and counts itself on the
connection's ``ChannelCount`` once: -1 when asyncssh reports the channel gone. It counts
the bytes each way (``bytes_in`` from the client, ``bytes_out`` to it): the web metrics and
the idle timeout read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncssh

from sshtunnel_mgr.agent.forward import ChannelCount

BUFFER_LIMIT = 256 * 1024


class ChannelPipe(asyncssh.SSHTCPSession[bytes]):
    def __init__(
        self,
        count: ChannelCount,
        on_started: Callable[[ChannelPipe], None],
        limit: int = BUFFER_LIMIT,
    ) -> None:
        self._count: ChannelCount | None = count
        self._on_started = on_started
        self._limit = limit
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._buffer = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0
        self._eof = False
        self._lost = False
        self._paused_reading = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    # asyncssh's callbacks ---------------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan

    def session_started(self) -> None:
        self._on_started(self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.bytes_in += len(data)
        self._buffer += data
        self._readable.set()
        if len(self._buffer) > self._limit and not self._paused_reading and self._chan:
            self._paused_reading = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return True  # stay half-open: the answer may still be on its way

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._readable.set()
        self._writable.set()
        count, self._count = self._count, None
        if count is not None:
            count.closed()

    # The stream -------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lost

    async def recv(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; b"" once the peer sent EOF or the channel is gone."""
        while not self._buffer:
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._paused_reading and len(self._buffer) <= self._limit // 2 and self._chan:
            self._paused_reading = False
            self._chan.resume_reading()
        return data

    async def send(self, data: bytes) -> None:
        if self._lost or self._chan is None:
            raise ConnectionResetError("the routed channel is closed")
        if data:
            self.bytes_out += len(data)
            self._chan.write(data)
        await self._writable.wait()
        if self._lost:
            raise ConnectionResetError("the routed channel is closed")

    async def send_eof(self) -> None:
        if not self._lost and self._chan is not None:
            self._chan.write_eof()

    def close(self) -> None:
        if self._chan is not None and not self._lost:
            self._chan.close()
