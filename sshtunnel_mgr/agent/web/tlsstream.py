"""TLS ended on the home box: ``TlsStream`` runs Python's ``ssl`` over a routed channel
(``ssl.MemoryBIO``; no socket, no asyncssh internals) and offers the same
``recv``/``send``/``send_eof``/``close`` as the channel it wraps."""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

RECORD = 16384


class ByteStream(Protocol):
    async def recv(self, n: int = 65536) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def send_eof(self) -> None: ...
    def close(self) -> None: ...


class TlsStream:
    """The server side of one TLS connection over ``raw``."""

    def __init__(self, raw: ByteStream, context: ssl.SSLContext) -> None:
        self._raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._eof = False

    @property
    def server_name(self) -> str | None:
        return self._tls.server_hostname

    @property
    def alpn(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            await self._raw.send(pending)

    async def _fill(self) -> bool:
        data = await self._raw.recv()
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self, timeout: float) -> None:
        """The TLS handshake, bounded by ``timeout``; ``ssl.SSLError``, ``TimeoutError`` or
        ``ConnectionError`` if it does not complete."""
        async with asyncio.timeout(timeout):
            try:
                while not self._step():
                    await self._flush()
                    if not await self._fill():
                        raise ConnectionResetError("the client left during the TLS handshake")
            except ssl.SSLError:
                await self._flush()  # the alert, for the client's sake
                raise
            await self._flush()

    def _step(self) -> bool:
        """One handshake step: True once done; False when it needs the client's bytes."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    async def recv(self, n: int = 65536) -> bytes:
        """Plaintext, up to ``n`` bytes; b"" at the client's close_notify or EOF."""
        while not self._eof:
            try:
                data = self._tls.read(n)
            except ssl.SSLWantReadError:
                await self._flush()  # e.g. a key update answered
                await self._fill()  # at EOF, the next read reports it (clean or ragged)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            await self._flush()
            return data
        return b""

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), 4 * RECORD):
            self._tls.write(view[start : start + 4 * RECORD])
            await self._flush()
        if not data:
            await self._flush()

    async def send_eof(self) -> None:
        """close_notify, then EOF on the channel (TLS has no half-close of its own)."""
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the client's close_notify is not awaited
        except ssl.SSLError:
            return
        await self._flush()
        await self._raw.send_eof()

    def close(self) -> None:
        self._raw.close()
